"""The distillation loop's guards on a toy policy whose numbers are known in closed form: images that
grow tenfold per iteration stop the run at the first iteration past the limit with the last good
checkpoint kept; more than half the iterations skipped is an error; resume refuses another seed, other
settings and fewer iterations, and returns the saved set for the same count."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from fastdd.distillation.loop import MAX_SKIPPED_SHARE, PIXEL_LIMIT, Policy, Step, run_loop
from fastdd.distillation.state import load_checkpoint
from fastdd.errors import ResumeError, RunFailedError


@dataclass
class ToyConfig:
    lr_img: float = 1.0
    factor: float = 10.0


class Growing(Policy):
    """x ← x − lr·g with g = (1 − factor)·x: the images are multiplied by ``factor`` every iteration."""

    method = "toy"

    def __init__(self, factor: float = 10.0, seed: int = 0, nan_at: tuple[int, ...] = ()):
        self.config = ToyConfig(factor=factor)
        self.seed, self.nan_at = seed, nan_at
        self.images = torch.ones(2, 1, 2, 2, requires_grad=True)
        self.tensors = {"images": self.images}
        self.optimizers = {"img": torch.optim.SGD([self.images], lr=1.0)}
        self.generators = {"g": torch.Generator().manual_seed(seed)}
        self.pixel_scale = (0.0, 1.0)  # mean 0, std 1: the limit is PIXEL_LIMIT itself

    def step(self, it: int) -> Step:
        x = self.images.detach()
        loss = torch.tensor(float("nan")) if it in self.nan_at else x.sum()
        return Step(loss, ((1 - self.config.factor) * x,))

    def apply(self, step: Step) -> None:
        self.images.grad = step.grads[0]
        self.optimizers["img"].step()

    def result(self, iterations, skipped, extra_meta):
        return self.images.detach().clone()


def test_images_that_blow_up_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    assert PIXEL_LIMIT == 1e3  # 10**3 is the last allowed value, 10**4 the first refused
    with pytest.raises(RunFailedError, match=r"at iteration 4 .* lower lr_img \(now 1\).*checkpoint \(iteration 3\)"):
        run_loop(Growing(), 10, out=tmp_path, checkpoint_every=1, show_progress=False)
    index = json.loads((tmp_path / "checkpoint.json").read_text())
    assert index["iteration"] == 3
    x = torch.zeros(2, 1, 2, 2, requires_grad=True)
    load_checkpoint(tmp_path, {"images": x}, {"img": torch.optim.SGD([x], lr=1.0)}, {"g": torch.Generator()})
    assert torch.equal(x.detach(), torch.full_like(x, 1e3))


def test_the_read_back_catches_a_blow_up_between_checkpoints(tmp_path):
    # checkpoints every 100: the images reach 1e4 after iteration 3, and iteration 4's read-back sees them
    with pytest.raises(RunFailedError, match=r"at iteration 4 .*no checkpoint was written"):
        run_loop(Growing(), 10, out=tmp_path, checkpoint_every=100, show_progress=False)
    with pytest.raises(RunFailedError, match="no run folder"):
        run_loop(Growing(), 10, show_progress=False)


def test_images_that_stay_in_range_run_to_the_end():
    policy = Growing(factor=1.5)  # 1.5**17 ≈ 985 < 1000
    run_loop(policy, 17, show_progress=False)
    assert torch.allclose(policy.images.detach(), torch.full((2, 1, 2, 2), 1.5**17))
    with pytest.raises(RunFailedError, match="at iteration 18"):  # the check after the last iteration
        run_loop(Growing(factor=1.5), 18, show_progress=False)


def test_more_than_half_the_iterations_skipped_is_an_error(tmp_path):
    assert MAX_SKIPPED_SHARE == 0.5
    run_loop(Growing(factor=1.0, nan_at=(0, 2)), 4, show_progress=False)  # 2 of 4: allowed
    with pytest.raises(RunFailedError, match=r"3 of 4 iterations were skipped \(3 for non-finite loss or gradient\)"):
        run_loop(Growing(factor=1.0, nan_at=(0, 1, 3)), 4, out=tmp_path, show_progress=False)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["iteration"] == 4  # nothing lost


def test_resume_refuses_another_seed_other_settings_and_fewer_iterations(tmp_path):
    run_loop(Growing(factor=1.0), 3, out=tmp_path, show_progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ResumeError, match=r"seed 0, not 7.*seed=0"):
        run_loop(Growing(factor=1.0, seed=7), 5, out=tmp_path, resume=True, show_progress=False)
    with pytest.raises(ResumeError, match=r"other settings: factor 1.0 there, 2.0 now"):
        run_loop(Growing(factor=2.0), 5, out=tmp_path, resume=True, show_progress=False)
    with pytest.raises(ResumeError, match=r"has done 3 iterations, more than the 2 asked for"):
        run_loop(Growing(factor=1.0), 2, out=tmp_path, resume=True, show_progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # refused starts change nothing
    done = run_loop(Growing(factor=1.0), 3, out=tmp_path, resume=True, show_progress=False)
    assert done.start == 3

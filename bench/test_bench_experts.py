"""Group ``experts``: expert training throughput (images/s) at CIFAR shape with the default ConvNet.

- ``test_train_experts``: :func:`fastdd.train_experts`, one expert, one epoch over 2,560 random
  CIFAR-shaped images (:func:`fastdd.data.from_pixels`; 10 minibatches of 256, MTT's settings: SGD
  lr 0.01), without and with DSA; the time includes its test-accuracy pass (256 images) and writing the
  trajectory, as a real run has. ``images_per_s`` counts the training images.
- ``test_train_step``: the training step it repeats (forward, backward, SGD step on the flat
  parameters) on one minibatch of 256, without the data loop; ``images_per_s`` and ``flop_per_s`` (conv +
  linear FLOPs of forward and backward, counted with ``FlopCounterMode``).

About a minute in all (``--bench-size full``); ``tiny``: 64 images of 3×16×16, width 16.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.data import from_pixels

SIZES = {
    "full": dict(n_train=2560, n_test=256, im=32, width=128, batch=256, rounds=2, step_rounds=5),
    "tiny": dict(n_train=64, n_test=16, im=16, width=16, batch=32, rounds=1, step_rounds=2),
}


def _dataset(s, device):
    g = torch.Generator().manual_seed(0)
    tx = torch.rand(s["n_train"], 3, s["im"], s["im"], generator=g)
    vx = torch.rand(s["n_test"], 3, s["im"], s["im"], generator=g)
    return from_pixels(
        "bench-cifar", tx, torch.arange(s["n_train"]) % 10, vx, torch.arange(s["n_test"]) % 10, 10, device=device
    )


@pytest.mark.benchmark(group="experts")
@pytest.mark.parametrize("augment", [None, "dsa"], ids=["plain", "dsa"])
def test_train_experts(augment, device, run, bench_size, tmp_path):
    s = SIZES[bench_size]
    ds = _dataset(s, device)
    rounds = itertools.count()

    def train(out):
        return fastdd.train_experts(
            ds,
            "convnet",
            num_experts=1,
            epochs=1,
            out=out,
            seed=0,
            batch_size=s["batch"],
            augment=augment,
            model_kwargs={"width": s["width"]},
            show_progress=False,
        )

    buf, sec = run(train, setup=lambda: (tmp_path / f"round{next(rounds)}",), rounds=s["rounds"])
    assert buf.manifest["complete"]
    run.benchmark.extra_info.update(
        augment=augment or "none",
        train_images=s["n_train"],
        batch=s["batch"],
        width=s["width"],
        im_size=s["im"],
        images_per_s=s["n_train"] / sec,
    )


@pytest.mark.benchmark(group="experts")
def test_train_step(device, run, bench_size):
    from torch.utils.flop_counter import FlopCounterMode

    s = SIZES[bench_size]
    g = torch.Generator().manual_seed(0)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=10, im_size=(s["im"], s["im"]), width=s["width"])
    theta = torch.nn.Parameter(net.init(g).to(device))
    opt = torch.optim.SGD([theta], lr=0.01)
    x = torch.randn(s["batch"], 3, s["im"], s["im"], generator=g).to(device)
    y = (torch.arange(s["batch"]) % 10).to(device)

    def step():
        loss = F.cross_entropy(net(x, theta), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    _, sec = run(step, rounds=s["step_rounds"], warmup=1)
    run.benchmark.extra_info.update(
        batch=s["batch"], width=s["width"], images_per_s=s["batch"] / sec, flops=flops, flop_per_s=flops / sec
    )

"""The method registry and the public way to add a method: docs/extending.md's worked example runs as
written (registers, runs, checkpoints, resumes bitwise, evaluates), and the same code installed as a
throwaway package with a ``fastdd.methods`` entry point runs through the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import fastdd
from fastdd.distillation.loop import Policy, Step
from fastdd.distillation.registry import get_method, make_config, register_method, unregister_method

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BUILTIN = {"dd", "mtt", "selmatch", "tesla", "datm", "dc", "dsa", "dm"}


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_fastdd_lists_its_eight_methods_and_the_cli_offers_them():
    assert BUILTIN <= set(fastdd.methods())
    from fastdd.cli import build_parser

    parser = build_parser()
    distill = parser._subparsers._group_actions[0].choices["distill"]
    method = next(a for a in distill._actions if a.dest == "method")
    assert list(method.choices) == fastdd.methods()


def test_the_worked_example_runs_as_written(tmp_path, monkeypatch):
    blocks = _blocks()
    assert len(blocks) == 2
    assert len(blocks[0].strip().splitlines()) < 60  # the method itself, imports included
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    try:
        for code in blocks:
            exec(compile(code, str(DOC), "exec"), scope)
        assert "meanmatch" in fastdd.methods()
        index = (tmp_path / "runs" / "meanmatch" / "checkpoint.json").read_text()
        assert '"iteration": 30' in index
        syn = scope["syn"]
        assert syn.images.shape == (20, 1, 8, 8) and syn.meta["iterations"] == 30
        start = scope["ds"].train.images[
            torch.cat(scope["ds"].sample_per_class(2, fastdd.rng.generator(0, "meanmatch", "init")))
        ]
        assert not torch.equal(syn.images, start)  # the images moved
    finally:
        unregister_method("meanmatch")
    assert "meanmatch" not in fastdd.methods()


@dataclass
class _Cfg:
    lr_img: float = 0.1


class _Nothing(Policy):
    def __init__(self, setup):
        self.config, self.seed, self.method = setup.config, setup.seed, setup.method
        self.x = torch.zeros(3, requires_grad=True)
        self.tensors, self.optimizers, self.generators = {"x": self.x}, {}, {}

    def step(self, it):
        return Step(torch.zeros(()), ())

    def apply(self, step):
        pass

    def result(self, iterations, skipped, extra_meta):
        return self.x.detach()


def test_register_method_checks_what_it_is_given():
    try:
        register_method("nothing", config=_Cfg, policy=_Nothing, defaults={"lr_img": 0.5})
        assert get_method("nothing").defaults == {"lr_img": 0.5}
        with pytest.raises(ValueError, match="already registered"):
            register_method("nothing", config=_Cfg, policy=_Nothing)
        register_method("nothing", config=_Cfg, policy=_Nothing, replace=True)
        with pytest.raises(TypeError, match="'lr_img' must be a number"):
            make_config(get_method("nothing"), {"lr_img": "fast"})
        with pytest.raises(TypeError, match="unrolls no student training: mode"):
            fastdd.distill(fastdd.load_dataset("digits"), "nothing", 1, mode="bptt", iterations=1, show_progress=False)
        out = fastdd.distill(fastdd.load_dataset("digits"), "nothing", 1, iterations=2, show_progress=False)
        assert torch.equal(out, torch.zeros(3))
    finally:
        unregister_method("nothing")
    with pytest.raises(TypeError, match="Policy subclass"):
        register_method("bad", config=_Cfg, policy=object)
    with pytest.raises(TypeError, match="has no option 'lr'"):
        register_method("bad", config=_Cfg, policy=_Nothing, defaults={"lr": 1})
    with pytest.raises(TypeError, match="must be a dataclass"):
        register_method("bad", config=dict, policy=_Nothing)
    with pytest.raises(ValueError, match="method name"):
        register_method("two words", config=_Cfg, policy=_Nothing)
    with pytest.raises(ValueError, match="unknown method 'bad'; choose one of: "):
        get_method("bad")


def test_a_plugin_package_runs_through_the_cli(tmp_path):
    """A throwaway package holding the worked example, installed by pip (into a target folder, so the
    environment is untouched) with an entry point in ``fastdd.methods``."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "fastdd_meanmatch.py").write_text(_blocks()[0])
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "fastdd-meanmatch"
        version = "0.0.1"

        [tool.setuptools]
        py-modules = ["fastdd_meanmatch"]

        [project.entry-points."fastdd.methods"]
        meanmatch = "fastdd_meanmatch:MeanMatch"
        """)
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(pkg),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}

    def fastdd_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fastdd", *args], capture_output=True, text=True, env=env, timeout=300
        )

    help_text = " ".join(fastdd_cli("distill", "--help").stdout.split())  # argparse wraps lines by width
    assert "meanmatch" in help_text and "class means matched under random projections" in help_text
    distill = ("distill", "--dataset", "digits", "--method", "meanmatch", "--ipc", "1")
    run = fastdd_cli(*distill, "--iterations", "3", "--options", '{"batch_real": 16}', "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    assert "distilled 10 images (meanmatch, ipc 1)" in run.stdout
    back = fastdd.SyntheticSet.load(tmp_path / "run" / "synthetic")
    assert back.meta["method"] == "meanmatch" and back.images.shape == (10, 1, 8, 8)
    bad = fastdd_cli(*distill, "--options", '{"batch_rea": 16}', "--out", str(tmp_path / "run2"))
    assert bad.returncode == 2 and "--options: meanmatch has no option 'batch_rea'" in bad.stderr

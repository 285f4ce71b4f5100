"""The quickstarts, on the embedded MNIST digits (mnist5k: 4,000 train / 1,000 test real digits).

:func:`quickstart` (``fastdd quickstart``, about a minute on 2 CPU cores) shows what distillation is
for: one image per class, distilled by distribution matching (DM) from random real digits, trains a
ConvNet far better than one random real digit per class does under the same protocol. It writes
``report.md`` with the two accuracies and their spread, the start images beside the distilled ones, and
the loss curve.

:func:`selmatch_example` (``fastdd quickstart --example selmatch``, about 15 minutes) runs the longer
pipeline: ConvNet experts, forgetting scores from their snapshots, SelMatch at IPC 10 (window
initialisation, frozen hard part, trajectory matching), evaluated beside a random subset.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .data import Dataset, load_dataset
from .distillation import distill
from .evaluation import EvalResult, evaluate
from .experts import ExpertBuffer, train_experts
from .io import atomic_write_text
from .plots import save_curves, save_image_grid
from .runs import RunDir
from .scores import Scores, forgetting_from_experts
from .synthetic import SyntheticSet

WIDTH = 32  # a ConvNet of width 32 for distillation and evaluation: the whole run fits a few CPU minutes


@dataclass
class _Step:
    """What every step of a quickstart uses: the data, the run folder, and where its lines go."""

    ds: Dataset
    run: RunDir
    show_progress: bool
    echo: Callable[[str], Any]


def _start(out: str | os.PathLike, config: dict[str, Any], steps: int, show_progress: bool, echo) -> _Step:
    """Create the run folder (``config.yaml``), load mnist5k and say so (step 1 of ``steps``)."""
    echo = echo or (lambda msg: print(msg, flush=True))
    run = RunDir(out, config)
    ds = load_dataset("mnist5k")
    echo(f"[1/{steps}] data: {ds.describe()}")
    return _Step(ds, run, show_progress, echo)


def _finish(step: _Step, lines: list[str], t0: float) -> None:
    """Write ``report.md`` (the ``lines``) and say where, with the seconds since ``t0``."""
    atomic_write_text(step.run / "report.md", "\n".join(lines) + "\n")
    step.echo(f"report: {step.run / 'report.md'} ({time.time() - t0:.0f} s)")


def _log_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``log.csv`` (column → text)."""
    with open(path) as f:
        return list(csv.DictReader(f))


def quickstart(
    out: str | os.PathLike = "runs/quickstart",
    *,
    iterations: int = 300,
    eval_epochs: int = 300,
    num_eval: int = 3,
    seed: int = 0,
    show_progress: bool = True,
    echo=None,
) -> dict:
    """DM at IPC 1 against a random real subset of the same size; writes ``out/report.md`` and
    ``out/quickstart.png``. Returns the numbers it reported."""
    t0 = time.time()
    config = dict(
        dataset="mnist5k",
        method="dm",
        ipc=1,
        iterations=iterations,
        eval_epochs=eval_epochs,
        num_eval=num_eval,
        seed=seed,
        width=WIDTH,
    )
    step = _start(out, config, 3, show_progress, echo)
    syn, start = _dm_distill(step, iterations, seed)
    res = _dm_evaluate(step, syn, eval_epochs, num_eval, seed)
    _dm_figure(step, syn, start, res)
    _finish(step, _dm_report(step.ds, res, iterations, eval_epochs, num_eval, time.time() - t0), t0)
    step.echo("next: `fastdd quickstart --example selmatch` (SelMatch at IPC 10 with experts, ~15 min)")
    return {"dm": res.to_dict(), "seconds": time.time() - t0, "out": str(Path(out))}


def _dm_distill(step: _Step, iterations: int, seed: int) -> tuple[SyntheticSet, torch.Tensor]:
    """Step 2: DM at IPC 1 into ``run/dm`` (saved as ``run/dm/synthetic``); returns the set and the real images
    it started from ``(10, 1, 28, 28)``, normalised."""
    ds, run = step.ds, step.run
    t = time.time()
    syn = distill(
        ds,
        "dm",
        ipc=1,
        iterations=iterations,
        seed=seed,
        model_kwargs={"width": WIDTH},
        batch_real=64,
        out=run / "dm",
        checkpoint_every=max(1, iterations // 3),
        show_progress=step.show_progress,
    )
    syn.save(run / "dm" / "synthetic", denormalize=ds.denormalize)
    start = ds.train.images[torch.tensor(syn.meta["init_indices"])]
    step.echo(
        f"[2/3] DM: 10 images (one per class) distilled from random real digits, {iterations} iterations "
        f"(a fresh random ConvNet each) in {time.time() - t:.0f} s"
    )
    return syn, start


def _dm_evaluate(step: _Step, syn: SyntheticSet, eval_epochs: int, num_eval: int, seed: int) -> EvalResult:
    """Step 3: the DM set and a random real one under the MTT protocol (``eval_epochs`` epochs, ``num_eval``
    runs), said as accuracies in %."""
    t = time.time()
    kw = dict(
        num_eval=num_eval,
        seed=seed,
        epochs=eval_epochs,
        model_kwargs={"width": WIDTH},
        show_progress=step.show_progress,
    )
    res = evaluate(syn, step.ds, "mtt", random_baseline=True, **kw)
    assert isinstance(res, EvalResult)  # one architecture
    echo = step.echo
    echo(
        f"[3/3] evaluation: a fresh ConvNet trained {eval_epochs} epochs on each set (MTT protocol, DSA), "
        f"{num_eval} runs, final-epoch test accuracy, in {time.time() - t:.0f} s:"
    )
    echo(f"      DM, 1 image per class:          {100 * res.mean:.1f} ± {100 * res.std:.1f} %")
    echo(f"      random real, 1 image per class: {100 * res.random.mean:.1f} ± {100 * res.random.std:.1f} %")
    echo(f"      improvement over random (IOR):  {100 * res.ior:+.1f} points")
    return res


def _dm_figure(step: _Step, syn: SyntheticSet, start: torch.Tensor, res: EvalResult) -> None:
    """``quickstart.png``: the start images beside the distilled ones, and the loss curve."""
    from .plots import save_quickstart_figure

    ds, rows = step.ds, _log_rows(step.run / "dm" / "log.csv")
    save_quickstart_figure(
        step.run / "quickstart.png",
        ds.denormalize(start),
        ds.denormalize(syn.images),
        [int(r["iteration"]) for r in rows],
        [float(r["loss"]) for r in rows],
        f"DM {100 * res.mean:.1f} % vs random {100 * res.random.mean:.1f} %",
    )


def _dm_report(
    ds: Dataset, res: EvalResult, iterations: int, eval_epochs: int, num_eval: int, seconds: float
) -> list[str]:
    """The lines of the DM quickstart's ``report.md`` (``seconds``: the total time)."""
    spread = max(res.std, res.random.std)
    return [
        "# fastdd quickstart: distribution matching on mnist5k, one image per class",
        "",
        f"Data: {ds.describe()}.",
        "",
        f"DM (Zhao & Bilen 2023) started from one random real digit per class and matched, for {iterations} "
        f"iterations, the mean embedding of each class's image to that of 64 real digits of the class under a "
        f"fresh random ConvNet-{WIDTH} each time (siamese DSA).",
        "",
        f"Evaluation: a fresh ConvNet-{WIDTH} trained {eval_epochs} epochs on the 10 images (SGD lr 0.01, "
        f"momentum 0.9, ×0.1 at mid-training, DSA), {num_eval} runs; the random subset is a different random "
        "real digit per class in each run, trained the same way. Final-epoch accuracy on the 1,000 test digits.",
        "",
        "| set (10 images) | test accuracy (%) |",
        "|---|---|",
        f"| random real digits | {100 * res.random.mean:.1f} ± {100 * res.random.std:.1f} |",
        f"| DM, distilled | {100 * res.mean:.1f} ± {100 * res.std:.1f} |",
        "",
        f"IOR (improvement over random): {100 * res.ior:+.1f} points; the larger spread over runs is "
        f"{100 * spread:.1f}.",
        "",
        "![start images, distilled images, loss](quickstart.png)",
        "",
        "Larger example (experts, forgetting scores, SelMatch at IPC 10; about 15 minutes on 2 cores): "
        "`fastdd quickstart --example selmatch`. Longer runs and every method: docs/results.md.",
        "",
        f"Total time: {seconds:.0f} s.",
    ]


@dataclass
class _SelMatchExample:
    """The settings of :func:`selmatch_example` (as written to ``config.yaml``, after the data set's name)."""

    ipc: int
    num_experts: int
    expert_epochs: int
    iterations: int
    alpha: float
    beta: float
    eval_epochs: int
    num_eval: int
    seed: int


def selmatch_example(
    out: str | os.PathLike = "runs/quickstart-selmatch",
    *,
    ipc: int = 10,
    num_experts: int = 2,
    expert_epochs: int = 4,
    iterations: int = 20,
    alpha: float = 0.5,
    beta: float = 6.0,
    eval_epochs: int = 150,
    num_eval: int = 2,
    seed: int = 0,
    show_progress: bool = True,
    echo=None,
) -> dict:
    """Run the quickstart into ``out``; returns the numbers it reported."""
    t0 = time.time()
    ex = _SelMatchExample(ipc, num_experts, expert_epochs, iterations, alpha, beta, eval_epochs, num_eval, seed)
    step = _start(out, {"dataset": "mnist5k", **asdict(ex)}, 5, show_progress, echo)
    buf = _sm_experts(step, ex)
    scores = forgetting_from_experts(buf, step.ds)
    step.echo(
        f"[3/5] difficulty: forgetting events over the experts' snapshots; mean {float(scores.values.mean()):.2f}, "
        f"{int((scores.values == 0).sum())} never forgotten"
    )
    syn = _sm_distill(step, ex, buf, scores)
    res = _sm_evaluate(step, ex, syn)
    _sm_figures(step, syn)
    _finish(step, _sm_report(step.ds, ex, buf, syn, res, time.time() - t0), t0)
    return {"expert_accuracy": buf.manifest["test_accuracy"], "selmatch": res.to_dict(), "out": str(Path(out))}


def _sm_experts(step: _Step, ex: _SelMatchExample) -> ExpertBuffer:
    """Step 2: ``ex.num_experts`` default ConvNets trained ``ex.expert_epochs`` epochs into ``run/experts``."""
    buf = train_experts(
        step.ds,
        "convnet",
        num_experts=ex.num_experts,
        epochs=ex.expert_epochs,
        out=step.run / "experts",
        seed=ex.seed,
        show_progress=step.show_progress,
    )
    step.echo(
        f"[2/5] experts: {len(buf)} ConvNets x {ex.expert_epochs} epochs (SGD lr 0.01), test accuracy "
        + ", ".join(f"{100 * a:.1f}%" for a in buf.manifest["test_accuracy"])
    )
    return buf


def _sm_distill(step: _Step, ex: _SelMatchExample, buf: ExpertBuffer, scores: Scores) -> SyntheticSet:
    """Step 4: SelMatch at ``ex.ipc`` into ``run/selmatch`` (saved as ``run/selmatch/synthetic``)."""
    t = time.time()
    syn = distill(
        step.ds,
        "selmatch",
        ipc=ex.ipc,
        experts=buf,
        scores=scores,
        iterations=ex.iterations,
        seed=ex.seed,
        alpha=ex.alpha,
        beta=ex.beta,
        syn_steps=10,
        expert_epochs=1,
        max_start_epoch=max(1, ex.expert_epochs - 1),
        batch_syn=50,
        lr_img=100.0,
        lr_lr=1e-5,
        lr_init=0.01,
        out=step.run / "selmatch",
        checkpoint_every=10,
        show_progress=step.show_progress,
    )
    syn.save(step.run / "selmatch" / "synthetic", denormalize=step.ds.denormalize)
    n_frozen = int(syn.frozen.sum())
    step.echo(
        f"[4/5] SelMatch: {len(syn)} images ({n_frozen} real frozen, {len(syn) - n_frozen} distilled), "
        f"{ex.iterations} iterations in {time.time() - t:.0f} s, learned lr {float(syn.lr):.4f}"
    )
    return syn


def _sm_evaluate(step: _Step, ex: _SelMatchExample, syn: SyntheticSet) -> EvalResult:
    """Step 5: the SelMatch set and a random real one under the MTT protocol, said as accuracies in %."""
    res = evaluate(
        syn,
        step.ds,
        protocol="mtt",
        num_eval=ex.num_eval,
        seed=ex.seed,
        epochs=ex.eval_epochs,
        random_baseline=True,
        show_progress=step.show_progress,
    )
    assert isinstance(res, EvalResult)  # one architecture
    step.echo(
        f"[5/5] evaluation (MTT protocol, {ex.eval_epochs} epochs, {ex.num_eval} runs, final-epoch test accuracy): "
        f"SelMatch {100 * res.mean:.2f} ± {100 * res.std:.2f} %, random real {100 * res.random.mean:.2f} ± "
        f"{100 * res.random.std:.2f} %"
    )
    return res


def _sm_figures(step: _Step, syn: SyntheticSet) -> None:
    """``loss.png`` and ``lr.png`` (per iteration, from ``selmatch/log.csv``) and ``images.png`` (the set)."""
    rows = _log_rows(step.run / "selmatch" / "log.csv")
    its = [int(r["iteration"]) for r in rows]
    save_curves(
        step.run / "loss.png",
        {"matching loss": (its, [float(r["loss"]) for r in rows])},
        xlabel="iteration",
        ylabel="loss",
        title="SelMatch on mnist5k",
    )
    save_curves(
        step.run / "lr.png",
        {"learned lr": (its, [float(r["syn_lr"]) for r in rows])},
        xlabel="iteration",
        ylabel="student learning rate",
    )
    save_image_grid(step.ds.denormalize(syn.images), step.run / "images.png", labels=syn.labels, mean=[0.0], std=[1.0])


def _sm_report(
    ds: Dataset, ex: _SelMatchExample, buf: ExpertBuffer, syn: SyntheticSet, res: EvalResult, seconds: float
) -> list[str]:
    """The lines of the SelMatch example's ``report.md`` (``seconds``: the total time)."""
    accs = buf.manifest["test_accuracy"]
    return [
        "# fastdd quickstart (mnist5k)",
        "",
        f"Data: {ds.describe()}.",
        "",
        f"Experts: {len(buf)} ConvNets trained {ex.expert_epochs} epochs, final test accuracy "
        + ", ".join(f"{100 * a:.1f}%" for a in accs)
        + ".",
        "",
        f"SelMatch: IPC {ex.ipc}, alpha {ex.alpha} (distilled fraction), beta {ex.beta} (window start), difficulty = "
        f"forgetting over the expert snapshots, {ex.iterations} iterations, learned lr {float(syn.lr):.4f}.",
        "",
        f"Evaluation: MTT protocol shortened to {ex.eval_epochs} epochs, {ex.num_eval} runs, final-epoch test "
        "accuracy.",
        "",
        "| set | IPC | accuracy (%) |",
        "|---|---|---|",
        f"| random real | {ex.ipc} | {100 * res.random.mean:.2f} ± {100 * res.random.std:.2f} |",
        f"| SelMatch | {ex.ipc} | {100 * res.mean:.2f} ± {100 * res.std:.2f} |",
        "",
        "![images](images.png) ![loss](loss.png) ![lr](lr.png)",
        "",
        "Short CPU run: the point is the pipeline, not the papers' numbers (see docs/results.md).",
        "",
        f"Total time: {seconds:.0f} s.",
    ]

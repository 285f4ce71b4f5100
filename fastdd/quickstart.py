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
from pathlib import Path

import torch

from .data import load_dataset
from .distillation import distill
from .evaluation import evaluate
from .experts import train_experts
from .io import atomic_write_text
from .plots import save_curves, save_image_grid
from .runs import RunDir
from .scores import forgetting_from_experts

WIDTH = 32  # a ConvNet of width 32 for distillation and evaluation: the whole run fits a few CPU minutes


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
    from .plots import save_quickstart_figure

    echo = echo or (lambda msg: print(msg, flush=True))
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
    run = RunDir(out, config)
    ds = load_dataset("mnist5k")
    echo(f"[1/3] data: {ds.describe()}")

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
        show_progress=show_progress,
    )
    syn.save(run / "dm" / "synthetic", denormalize=ds.denormalize)
    start = ds.train.images[torch.tensor(syn.meta["init_indices"])]
    echo(
        f"[2/3] DM: 10 images (one per class) distilled from random real digits, {iterations} iterations "
        f"(a fresh random ConvNet each) in {time.time() - t:.0f} s"
    )

    t = time.time()
    kw = dict(
        num_eval=num_eval, seed=seed, epochs=eval_epochs, model_kwargs={"width": WIDTH}, show_progress=show_progress
    )
    res = evaluate(syn, ds, "mtt", random_baseline=True, **kw)
    echo(
        f"[3/3] evaluation: a fresh ConvNet trained {eval_epochs} epochs on each set (MTT protocol, DSA), "
        f"{num_eval} runs, final-epoch test accuracy, in {time.time() - t:.0f} s:"
    )
    echo(f"      DM, 1 image per class:          {100 * res.mean:.1f} ± {100 * res.std:.1f} %")
    echo(f"      random real, 1 image per class: {100 * res.random.mean:.1f} ± {100 * res.random.std:.1f} %")
    echo(f"      improvement over random (IOR):  {100 * res.ior:+.1f} points")

    rows = list(csv.DictReader(open(run / "dm" / "log.csv")))
    save_quickstart_figure(
        run / "quickstart.png",
        ds.denormalize(start),
        ds.denormalize(syn.images),
        [int(r["iteration"]) for r in rows],
        [float(r["loss"]) for r in rows],
        f"DM {100 * res.mean:.1f} % vs random {100 * res.random.mean:.1f} %",
    )
    spread = max(res.std, res.random.std)
    lines = [
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
        f"Total time: {time.time() - t0:.0f} s.",
    ]
    atomic_write_text(run / "report.md", "\n".join(lines) + "\n")
    echo(f"report: {run / 'report.md'} ({time.time() - t0:.0f} s)")
    echo("next: `fastdd quickstart --example selmatch` (SelMatch at IPC 10 with experts, ~15 min)")
    return {"dm": res.to_dict(), "seconds": time.time() - t0, "out": str(Path(out))}


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
    echo = echo or (lambda msg: print(msg, flush=True))
    t0 = time.time()
    config = dict(
        dataset="mnist5k",
        ipc=ipc,
        num_experts=num_experts,
        expert_epochs=expert_epochs,
        iterations=iterations,
        alpha=alpha,
        beta=beta,
        eval_epochs=eval_epochs,
        num_eval=num_eval,
        seed=seed,
    )
    run = RunDir(out, config)
    ds = load_dataset("mnist5k")
    echo(f"[1/5] data: {ds.describe()}")

    buf = train_experts(
        ds,
        "convnet",
        num_experts=num_experts,
        epochs=expert_epochs,
        out=run / "experts",
        seed=seed,
        show_progress=show_progress,
    )
    accs = buf.manifest["test_accuracy"]
    echo(
        f"[2/5] experts: {len(buf)} ConvNets x {expert_epochs} epochs (SGD lr 0.01), test accuracy "
        + ", ".join(f"{100 * a:.1f}%" for a in accs)
    )

    scores = forgetting_from_experts(buf, ds)
    echo(
        f"[3/5] difficulty: forgetting events over the experts' snapshots; mean {float(scores.values.mean()):.2f}, "
        f"{int((scores.values == 0).sum())} never forgotten"
    )

    t = time.time()
    syn = distill(
        ds,
        "selmatch",
        ipc=ipc,
        experts=buf,
        scores=scores,
        iterations=iterations,
        seed=seed,
        alpha=alpha,
        beta=beta,
        syn_steps=10,
        expert_epochs=1,
        max_start_epoch=max(1, expert_epochs - 1),
        batch_syn=50,
        lr_img=100.0,
        lr_lr=1e-5,
        lr_init=0.01,
        out=run / "selmatch",
        checkpoint_every=10,
        show_progress=show_progress,
    )
    syn.save(run / "selmatch" / "synthetic", denormalize=ds.denormalize)
    n_frozen = int(syn.frozen.sum())
    echo(
        f"[4/5] SelMatch: {len(syn)} images ({n_frozen} real frozen, {len(syn) - n_frozen} distilled), "
        f"{iterations} iterations in {time.time() - t:.0f} s, learned lr {float(syn.lr):.4f}"
    )

    res = evaluate(
        syn,
        ds,
        protocol="mtt",
        num_eval=num_eval,
        seed=seed,
        epochs=eval_epochs,
        random_baseline=True,
        show_progress=show_progress,
    )
    echo(
        f"[5/5] evaluation (MTT protocol, {eval_epochs} epochs, {num_eval} runs, final-epoch test accuracy): "
        f"SelMatch {100 * res.mean:.2f} ± {100 * res.std:.2f} %, random real {100 * res.random.mean:.2f} ± "
        f"{100 * res.random.std:.2f} %"
    )

    rows = list(csv.DictReader(open(run / "selmatch" / "log.csv")))
    its = [int(r["iteration"]) for r in rows]
    save_curves(
        run / "loss.png",
        {"matching loss": (its, [float(r["loss"]) for r in rows])},
        xlabel="iteration",
        ylabel="loss",
        title="SelMatch on mnist5k",
    )
    save_curves(
        run / "lr.png",
        {"learned lr": (its, [float(r["syn_lr"]) for r in rows])},
        xlabel="iteration",
        ylabel="student learning rate",
    )
    save_image_grid(ds.denormalize(syn.images), run / "images.png", labels=syn.labels, mean=[0.0], std=[1.0])
    lines = [
        "# fastdd quickstart (mnist5k)",
        "",
        f"Data: {ds.describe()}.",
        "",
        f"Experts: {len(buf)} ConvNets trained {expert_epochs} epochs, final test accuracy "
        + ", ".join(f"{100 * a:.1f}%" for a in accs)
        + ".",
        "",
        f"SelMatch: IPC {ipc}, alpha {alpha} (distilled fraction), beta {beta} (window start), difficulty = "
        f"forgetting over the expert snapshots, {iterations} iterations, learned lr {float(syn.lr):.4f}.",
        "",
        f"Evaluation: MTT protocol shortened to {eval_epochs} epochs, {num_eval} runs, final-epoch test accuracy.",
        "",
        "| set | IPC | accuracy (%) |",
        "|---|---|---|",
        f"| random real | {ipc} | {100 * res.random.mean:.2f} ± {100 * res.random.std:.2f} |",
        f"| SelMatch | {ipc} | {100 * res.mean:.2f} ± {100 * res.std:.2f} |",
        "",
        "![images](images.png) ![loss](loss.png) ![lr](lr.png)",
        "",
        "Short CPU run: the point is the pipeline, not the papers' numbers (see docs/results.md).",
        "",
        f"Total time: {time.time() - t0:.0f} s.",
    ]
    atomic_write_text(run / "report.md", "\n".join(lines) + "\n")
    echo(f"report: {run / 'report.md'} ({time.time() - t0:.0f} s)")
    return {"expert_accuracy": accs, "selmatch": res.to_dict(), "out": str(Path(out))}

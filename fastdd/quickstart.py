"""The quickstart: the whole pipeline on the embedded MNIST digits, on 2 CPU cores in a few minutes.

1. load mnist5k (4,000 train / 1,000 test real digits);
2. train a few ConvNet experts, recording their trajectories;
3. difficulty scores: forgetting events across the experts' epoch snapshots;
4. SelMatch: window initialisation from the scores, the harder part kept real and frozen, the easier
   part distilled by trajectory matching against the experts (a short run);
5. evaluate the SelMatch set beside a random real subset of the same size, under one protocol
   (MTT's, shortened), and write ``report.md`` with a table and PNGs.

Everything is scaled down to run in minutes on a CPU; the numbers show the pipeline working, not
the papers' accuracies (see docs/results.md for longer runs).
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from .data import load_dataset
from .distill import distill
from .evaluate import evaluate
from .experts import train_experts
from .io import atomic_write_text
from .plots import save_curves, save_image_grid
from .runs import RunDir
from .scores import forgetting_from_experts


def quickstart(out: str | os.PathLike = "runs/quickstart", *, ipc: int = 10, num_experts: int = 2,
               expert_epochs: int = 4, iterations: int = 20, alpha: float = 0.5, beta: float = 6.0,
               eval_epochs: int = 150, num_eval: int = 2, seed: int = 0, show_progress: bool = True,
               echo=None) -> dict:
    """Run the quickstart into ``out``; returns the numbers it reported."""
    echo = echo or (lambda msg: print(msg, flush=True))
    t0 = time.time()
    config = dict(dataset="mnist5k", ipc=ipc, num_experts=num_experts, expert_epochs=expert_epochs,
                  iterations=iterations, alpha=alpha, beta=beta, eval_epochs=eval_epochs, num_eval=num_eval, seed=seed)
    run = RunDir(out, config)
    ds = load_dataset("mnist5k")
    echo(f"[1/5] data: {ds.describe()}")

    buf = train_experts(ds, "convnet", num_experts=num_experts, epochs=expert_epochs, out=run / "experts",
                        seed=seed, show_progress=show_progress)
    accs = buf.manifest["test_accuracy"]
    echo(f"[2/5] experts: {len(buf)} ConvNets x {expert_epochs} epochs (SGD lr 0.01), test accuracy "
         + ", ".join(f"{100 * a:.1f}%" for a in accs))

    scores = forgetting_from_experts(buf, ds)
    echo(f"[3/5] difficulty: forgetting events over the experts' snapshots; mean {float(scores.values.mean()):.2f}, "
         f"{int((scores.values == 0).sum())} never forgotten")

    t = time.time()
    syn = distill(ds, "selmatch", ipc=ipc, experts=buf, scores=scores, iterations=iterations, seed=seed,
                  alpha=alpha, beta=beta, syn_steps=10, expert_epochs=1, max_start_epoch=max(1, expert_epochs - 1),
                  batch_syn=50, lr_img=100.0, lr_lr=1e-5, lr_init=0.01, out=run / "selmatch", checkpoint_every=10,
                  show_progress=show_progress)
    syn.save(run / "selmatch" / "synthetic", denormalize=ds.denormalize)
    n_frozen = int(syn.frozen.sum())
    echo(f"[4/5] SelMatch: {len(syn)} images ({n_frozen} real frozen, {len(syn) - n_frozen} distilled), "
         f"{iterations} iterations in {time.time() - t:.0f} s, learned lr {float(syn.lr):.4f}")

    res = evaluate(syn, ds, protocol="mtt", num_eval=num_eval, seed=seed, epochs=eval_epochs, random_baseline=True,
                   show_progress=show_progress)
    echo(f"[5/5] evaluation (MTT protocol, {eval_epochs} epochs, {num_eval} runs, final-epoch test accuracy): "
         f"SelMatch {100 * res.mean:.2f} ± {100 * res.std:.2f} %, random real {100 * res.random.mean:.2f} ± "
         f"{100 * res.random.std:.2f} %")

    rows = list(csv.DictReader(open(run / "selmatch" / "log.csv")))
    its = [int(r["iteration"]) for r in rows]
    save_curves(run / "loss.png", {"matching loss": (its, [float(r["loss"]) for r in rows])},
                xlabel="iteration", ylabel="loss", title="SelMatch on mnist5k")
    save_curves(run / "lr.png", {"learned lr": (its, [float(r["syn_lr"]) for r in rows])},
                xlabel="iteration", ylabel="student learning rate")
    save_image_grid(ds.denormalize(syn.images), run / "images.png", labels=syn.labels, mean=[0.0], std=[1.0])
    lines = ["# fastdd quickstart (mnist5k)", "", f"Data: {ds.describe()}.", "",
             f"Experts: {len(buf)} ConvNets trained {expert_epochs} epochs, final test accuracy "
             + ", ".join(f"{100 * a:.1f}%" for a in accs) + ".", "",
             f"SelMatch: IPC {ipc}, alpha {alpha} (distilled fraction), beta {beta} (window start), difficulty = "
             f"forgetting over the expert snapshots, {iterations} iterations, learned lr {float(syn.lr):.4f}.", "",
             f"Evaluation: MTT protocol shortened to {eval_epochs} epochs, {num_eval} runs, final-epoch test accuracy.",
             "", "| set | IPC | accuracy (%) |", "|---|---|---|",
             f"| random real | {ipc} | {100 * res.random.mean:.2f} ± {100 * res.random.std:.2f} |",
             f"| SelMatch | {ipc} | {100 * res.mean:.2f} ± {100 * res.std:.2f} |", "",
             "![images](images.png) ![loss](loss.png) ![lr](lr.png)", "",
             "Short CPU run: the point is the pipeline, not the papers' numbers (see docs/results.md).", "",
             f"Total time: {time.time() - t0:.0f} s."]
    atomic_write_text(run / "report.md", "\n".join(lines) + "\n")
    echo(f"report: {run / 'report.md'} ({time.time() - t0:.0f} s)")
    return {"expert_accuracy": accs, "selmatch": res.to_dict(), "out": str(Path(out))}

"""The quickstart: the whole pipeline on the embedded MNIST digits, on 2 CPU cores in a few minutes.

Trains a few ConvNet experts on mnist5k (recording their trajectories), then evaluates random real
subsets at a few IPC under the MTT protocol (shortened), and writes ``report.md`` with a table and
PNGs. The distillation methods plug in here when they land.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


from .data import load_dataset
from .evaluate import evaluate
from .experts import train_experts
from .io import atomic_write_text
from .plots import save_curves, save_image_grid
from .runs import RunDir
from .select import random_indices, real_subset


def quickstart(out: str | os.PathLike = "runs/quickstart", *, num_experts: int = 2, expert_epochs: int = 3,
               ipcs: tuple[int, ...] = (1, 10), eval_epochs: int = 200, num_eval: int = 2, seed: int = 0,
               show_progress: bool = True, echo=None) -> dict:
    """Run the quickstart into ``out``; returns the numbers it reported."""
    echo = echo or (lambda msg: print(msg, flush=True))
    t0 = time.time()
    config = dict(dataset="mnist5k", num_experts=num_experts, expert_epochs=expert_epochs, ipcs=list(ipcs),
                  eval_epochs=eval_epochs, num_eval=num_eval, seed=seed)
    run = RunDir(out, config)
    ds = load_dataset("mnist5k")
    echo(f"[1/3] data: {ds.describe()}")

    buf = train_experts(ds, "convnet", num_experts=num_experts, epochs=expert_epochs, out=run / "experts",
                        seed=seed, show_progress=show_progress)
    accs = buf.manifest["test_accuracy"]
    echo(f"[2/3] experts: {len(buf)} ConvNets x {expert_epochs} epochs (SGD lr 0.01) -> test accuracy "
         + ", ".join(f"{100 * a:.1f}%" for a in accs) + f"; trajectories in {buf.path}")

    (run / "log.csv").unlink(missing_ok=True)  # a re-run starts a fresh log
    log = run.csv("log.csv", ["stage", "ipc", "mean", "std", "runs", "seconds"])
    rows = []
    for ipc in ipcs:
        t = time.time()
        syn = real_subset(ds, random_indices(ds, ipc, seed=seed), method="random")
        res = evaluate(syn, ds, protocol="mtt", num_eval=num_eval, seed=seed, epochs=eval_epochs,
                       show_progress=show_progress)
        rows.append((ipc, res))
        log.log(stage="random", ipc=ipc, mean=res.mean, std=res.std, runs=num_eval, seconds=time.time() - t)
        syn.save(run / f"random_ipc{ipc}")
        echo(f"[3/3] random real subset, IPC {ipc:>3}: {100 * res.mean:.2f} ± {100 * res.std:.2f} % "
             f"(mtt protocol, {eval_epochs} epochs, {num_eval} runs)")
    log.close()

    save_image_grid(syn.images, run / "random_images.png", labels=syn.labels, mean=ds.mean, std=ds.std)
    save_curves(run / "accuracy_vs_ipc.png", {"random real": ([r[0] for r in rows], [100 * r[1].mean for r in rows])},
                xlabel="images per class", ylabel="test accuracy (%)", title="mnist5k, MTT protocol")
    lines = ["# fastdd quickstart (mnist5k)", "",
             f"Data: {ds.describe()}.", "",
             f"Experts: {len(buf)} ConvNets trained {expert_epochs} epochs, final test accuracy "
             + ", ".join(f"{100 * a:.1f}%" for a in accs) + ".", "",
             f"Evaluation: MTT protocol shortened to {eval_epochs} epochs, {num_eval} runs, final-epoch test accuracy.",
             "", "| set | IPC | accuracy (%) |", "|---|---|---|"]
    lines += [f"| random real | {ipc} | {100 * r.mean:.2f} ± {100 * r.std:.2f} |" for ipc, r in rows]
    lines += ["", "![accuracy vs IPC](accuracy_vs_ipc.png)", "", "![random images](random_images.png)", "",
              f"Total time: {time.time() - t0:.0f} s."]
    atomic_write_text(run / "report.md", "\n".join(lines) + "\n")
    echo(f"report: {run / 'report.md'} ({time.time() - t0:.0f} s)")
    return {"expert_accuracy": accs, "random": {ipc: r.to_dict() for ipc, r in rows}, "out": str(Path(out))}

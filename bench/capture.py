"""The capture script: every loop fastdd has, on tiny settings, with every output tensor saved, so that a
refactor can show it changed nothing (run it before and after, then compare: all tensors bitwise equal).

    python bench/capture.py capture before.safetensors     # on the old commit (e.g. in a git worktree)
    python bench/capture.py capture after.safetensors      # on the new one
    python bench/capture.py compare before.safetensors after.safetensors

What it runs (scikit-learn's digits, 8x8, a width-8 ConvNet; about a minute on 2 CPU cores): expert training
(with and without DSA), every distillation method (dd, mtt, selmatch, tesla, datm, dc, dsa, dm; the MTT
family in each gradient mode it supports), a checkpointed run interrupted and resumed, evaluation under the
mtt / selmatch / soft / dd protocols with the random baseline, forgetting scores, and the selections.
Only the public API is used, so the same script runs on older commits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MTT = dict(syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0, lr_lr=1e-3, batch_syn=6)
MODEL = {"width": 8, "depth": 2}


def capture(path: str) -> dict[str, torch.Tensor]:
    import fastdd

    torch.set_num_threads(1)  # the same reduction order on every machine
    out: dict[str, torch.Tensor] = {}
    ds = fastdd.load_dataset("digits")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        buf = fastdd.train_experts(
            ds, "convnet", num_experts=2, epochs=3, out=tmp / "exp", seed=0, model_kwargs=MODEL, show_progress=False
        )
        out["experts"] = buf.load_all()
        dsa = fastdd.train_experts(
            ds,
            "convnet",
            num_experts=1,
            epochs=1,
            out=tmp / "exp_dsa",
            seed=1,
            model_kwargs=MODEL,
            augment="dsa",
            show_progress=False,
        )
        out["experts_dsa"] = dsa.load_all()
        scores = torch.arange(len(ds.train), dtype=torch.float32).flip(0) % 97

        def keep(name: str, syn) -> None:
            out[f"{name}.images"] = syn.images
            out[f"{name}.labels"] = syn.labels.float()
            if syn.lr is not None:
                out[f"{name}.lr"] = syn.lr.reshape(-1)

        runs = {
            "mtt.adjoint": dict(method="mtt", mode="adjoint"),
            "mtt.bptt": dict(method="mtt", mode="bptt"),
            "mtt.tesla_mode": dict(method="mtt", mode="tesla"),
            "selmatch": dict(method="selmatch", scores=scores, hardest="high", alpha=0.5),
            "tesla": dict(method="tesla", soft_labels="tesla"),
            "datm": dict(method="datm", threshold=None),
        }
        for name, kw in runs.items():
            keep(
                name, fastdd.distill(ds, ipc=2, experts=buf, iterations=3, seed=0, show_progress=False, **{**MTT, **kw})
            )
        keep(
            "dd",
            fastdd.distill(
                ds,
                "dd",
                experts=None,
                iterations=3,
                seed=0,
                show_progress=False,
                steps=2,
                epochs=1,
                model="convnet",
                real_batch=128,
            ),
        )
        for method, kw in (
            ("dc", {"outer_loop": 2, "inner_loop": 1}),
            ("dsa", {"outer_loop": 2, "inner_loop": 1}),
            ("dm", {}),
        ):
            keep(
                method,
                fastdd.distill(
                    ds, method, 1, iterations=2, seed=0, show_progress=False, model_kwargs=MODEL, batch_real=16, **kw
                ),
            )
        # a checkpointed run, interrupted after 2 iterations and resumed to 4
        fastdd.distill(
            ds,
            "mtt",
            2,
            experts=buf,
            iterations=2,
            seed=0,
            out=tmp / "run",
            checkpoint_every=1,
            show_progress=False,
            **MTT,
        )
        keep(
            "mtt.resumed",
            fastdd.distill(
                ds,
                "mtt",
                2,
                experts=buf,
                iterations=4,
                seed=0,
                out=tmp / "run",
                resume=True,
                checkpoint_every=1,
                show_progress=False,
                **MTT,
            ),
        )
        syn = fastdd.distill(ds, "mtt", 2, experts=buf, iterations=2, seed=0, show_progress=False, **MTT)
        for protocol, kw in (("mtt", {}), ("selmatch", {"epochs": 2}), ("soft", {})):
            target = (
                fastdd.distill(
                    ds, "datm", 2, experts=buf, iterations=1, seed=0, show_progress=False, threshold=None, **MTT
                )
                if protocol == "soft"
                else syn
            )
            res = fastdd.evaluate(
                target,
                ds,
                protocol,
                num_eval=2,
                seed=0,
                show_progress=False,
                random_baseline=protocol != "soft",  # soft labels' argmax classes are unbalanced
                **{"epochs": 3, "model_kwargs": MODEL, "model": "convnet", **kw},
            )
            accs = res.accuracies + (res.random.accuracies if res.random is not None else [])
            out[f"eval.{protocol}"] = torch.tensor(accs, dtype=torch.float64)
        dd_set = fastdd.distill(
            ds, "dd", iterations=2, seed=0, show_progress=False, steps=2, epochs=1, model="convnet", real_batch=128
        )
        out["eval.dd"] = torch.tensor(
            fastdd.evaluate(dd_set, ds, "dd", num_eval=2, seed=0).accuracies, dtype=torch.float64
        )
        out["forgetting"] = fastdd.forgetting_scores(
            ds, epochs=2, runs=1, seed=0, model_kwargs=MODEL, show_progress=False
        ).float()
        for method in ("random", "herding", "kcenter", "kmeans"):
            extra = {} if method == "random" else {"extractor": buf}
            out[f"select.{method}"] = fastdd.select(ds, method, 2, seed=0, **extra).float()
        out["select.window"] = fastdd.select(ds, "window", 2, scores=scores, beta=1.0, hardest="high").float()
    save_file({k: v.detach().contiguous().cpu() for k, v in out.items()}, path)
    return out


def compare(a: str, b: str) -> int:
    x, y = load_file(a), load_file(b)
    bad = sorted(k for k in x.keys() & y.keys() if x[k].shape != y[k].shape or not torch.equal(x[k], y[k]))
    missing = sorted(x.keys() ^ y.keys())
    for k in bad:
        diff = (x[k].double() - y[k].double()).abs().max().item() if x[k].shape == y[k].shape else "shape"
        print(f"DIFFERENT {k}: max |a - b| = {diff}")
    for k in missing:
        print(f"ONLY IN {'A' if k in x else 'B'}: {k}")
    same = len(x.keys() & y.keys()) - len(bad)
    print(f"{same} of {len(x.keys() | y.keys())} tensors bitwise equal")
    return 1 if bad or missing else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture", help="run every loop and save its tensors")
    c.add_argument("out")
    c = sub.add_parser("compare", help="compare two captures bitwise")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    if args.cmd == "capture":
        n = len(capture(args.out))
        print(f"{n} tensors -> {args.out}")
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())

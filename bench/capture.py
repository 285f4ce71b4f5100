"""The capture script: every loop fastdd has, on tiny settings, with every output tensor saved, so that a
refactor can show it changed nothing (run it before and after, then compare: all tensors bitwise equal).

    python bench/capture.py capture before.safetensors     # on the old commit (e.g. in a git worktree)
    python bench/capture.py capture after.safetensors      # on the new one
    python bench/capture.py compare before.safetensors after.safetensors
    python bench/capture.py compare old.safetensors new.safetensors --common   # an older commit lacks newer loops

What it runs (scikit-learn's digits, 8x8, a width-8 ConvNet; about a minute on 2 CPU cores): expert training
(with and without DSA), every distillation method (dd, mtt, selmatch, tesla, datm, dc, dsa, dm; the MTT
family in each gradient mode it supports), a checkpointed run interrupted and resumed, evaluation under the
mtt / selmatch / soft / dd protocols with the random baseline, forgetting scores, and the selections; and,
where the checked-out fastdd has them, PAD, NCFM (sampler and factor 2), FTD's EMA and SAM experts,
curriculum experts, EL2N and GraNd, the truncated mode and RaT-BPTT, and the teacher, SRe2L, RDED and the kd
protocol (67 tensors at this commit).
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
        _newer(fastdd, ds, buf, tmp, keep, out)
    save_file({k: v.detach().contiguous().cpu() for k, v in out.items()}, path)
    return out


def _newer(fastdd, ds, buf, tmp: Path, keep, out: dict[str, torch.Tensor]) -> None:
    """The loops added after the first capture (PAD, NCFM, FTD's SAM experts and EMA, the truncated mode,
    RaT-BPTT, EL2N/GraNd, curriculum experts), each only where the checked-out fastdd has it, so the script
    still runs on older commits (compare those with ``--common``)."""
    have = set(fastdd.methods()) if hasattr(fastdd, "methods") else set()
    if hasattr(fastdd, "el2n_scores"):
        out["el2n"] = fastdd.el2n_scores(
            ds, epochs=1, num_runs=2, seed=0, model_kwargs=MODEL, show_progress=False
        ).values
        out["grand"] = fastdd.grand_scores(ds, num_runs=1, seed=0, model_kwargs=MODEL, show_progress=False).values
    if hasattr(fastdd, "Curriculum") and "el2n" in out:
        cur = fastdd.Curriculum(init_ratio=0.5, add_end_epoch=1, remove_epochs=(1,), remove_ratios=(0.2,))
        el2n = fastdd.el2n_scores(ds, epochs=1, num_runs=1, seed=0, model_kwargs=MODEL, show_progress=False)
        kw = dict(num_experts=1, epochs=2, seed=0, model_kwargs=MODEL, show_progress=False)
        out["experts_curriculum"] = fastdd.train_experts(
            ds, "convnet", out=tmp / "exp_cur", curriculum=cur, scores=el2n, **kw
        ).load_all()
        out["experts_sam"] = fastdd.train_experts(
            ds, "convnet", out=tmp / "exp_sam", sam_rho=0.05, sam_alpha=0.4, sam_adaptive=True, **kw
        ).load_all()
    runs = {
        "mtt.truncated": dict(method="mtt", mode="truncated", window=2),
        "mtt.ema": dict(method="mtt", ema_decay=0.9),
        "pad": dict(method="pad", threshold=None, pad_depth_ratio=0.25),
    }
    for name, kw in runs.items():
        if kw["method"] in have and (name != "mtt.truncated" or "truncated" in _modes()):
            syn = fastdd.distill(ds, ipc=2, experts=buf, iterations=3, seed=0, show_progress=False, **{**MTT, **kw})
            keep(name, syn)
    if "ncfm" in have:
        ncfm = dict(num_freqs=64, batch_real=16, factor=2, init="mix", sampling_net=True)
        keep("ncfm", fastdd.distill(ds, "ncfm", 1, experts=buf, iterations=2, seed=0, show_progress=False, **ncfm))
    if "truncated" in _modes():
        dd = dict(steps=2, epochs=2, model="convnet", real_batch=128, mode="truncated", window=1, rat_bptt=True)
        keep("dd.rat_bptt", fastdd.distill(ds, "dd", iterations=3, seed=0, show_progress=False, **dd))
    if hasattr(fastdd, "train_teacher") and {"sre2l", "rded"} <= have:  # the decoupled family and kd
        teacher = fastdd.train_teacher(ds, "convnetbn", model_kwargs=MODEL, epochs=1, seed=0, show_progress=False)
        out["teacher.theta"], out["teacher.buffers"] = teacher.theta, teacher.buffers
        keep("sre2l", fastdd.distill(ds, "sre2l", 2, teacher=teacher, iterations=3, seed=0, show_progress=False))
        rded = fastdd.distill(ds, "rded", 1, teacher=teacher, seed=0, show_progress=False, factor=2, mipc=20)
        keep("rded", rded)
        res = fastdd.evaluate(rded, ds, "kd", teacher=teacher, num_eval=1, epochs=2, show_progress=False)
        out["kd.accuracies"] = torch.tensor([*res.accuracies, *res.random.accuracies], dtype=torch.float64)


def _modes() -> tuple[str, ...]:
    from fastdd.engine import unroll

    return tuple(getattr(unroll, "MODES", ()))


def compare(a: str, b: str, common: bool = False) -> int:
    """Print every tensor that differs; exit status 1 if one does, or (unless ``common``) if a key is in
    one capture only."""
    x, y = load_file(a), load_file(b)
    bad = sorted(k for k in x.keys() & y.keys() if x[k].shape != y[k].shape or not torch.equal(x[k], y[k]))
    missing = sorted(x.keys() ^ y.keys())
    for k in bad:
        diff = (x[k].double() - y[k].double()).abs().max().item() if x[k].shape == y[k].shape else "shape"
        print(f"DIFFERENT {k}: max |a - b| = {diff}")
    for k in missing:
        print(f"ONLY IN {'A' if k in x else 'B'}: {k}" + (" (not compared)" if common else ""))
    same = len(x.keys() & y.keys()) - len(bad)
    total = len(x.keys() & y.keys()) if common else len(x.keys() | y.keys())
    print(f"{same} of {total} tensors bitwise equal")
    return 1 if bad or (missing and not common) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture", help="run every loop and save its tensors")
    c.add_argument("out")
    c = sub.add_parser("compare", help="compare two captures bitwise")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--common", action="store_true", help="compare only the tensors both captures have")
    args = ap.parse_args(argv)
    if args.cmd == "capture":
        n = len(capture(args.out))
        print(f"{n} tensors -> {args.out}")
        return 0
    return compare(args.a, args.b, args.common)


if __name__ == "__main__":
    sys.exit(main())

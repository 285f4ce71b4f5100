"""docs/results.md's rows for the 2024-26 methods on mnist5k: FTD-experts MTT, PAD and NCFM at IPC 1 and 10,
EL2N and GraNd selection at IPC 10 and 40, and RaT-BPTT beside DD. Same protocol, network, seeds and folders
as the main table (bench/results_mnist5k.py, which must have trained its experts first); each stage keeps
what is done, so rerunning continues.

    python bench/results_mnist5k.py table-experts --num-experts 5 --epochs 8   # the table's plain experts
    python bench/results_2024.py scores                 # EL2N and GraNd of mnist5k's train split, 3 seeds each
    python bench/results_2024.py experts                # FTD's SAM experts and PAD's SAM + curriculum experts
    python bench/results_2024.py distill --method ftd --ipc 10 --seeds 0 1 2       # ftd | pad | ncfm
    python bench/results_2024.py eval                   # every cell that is ready, 3 runs each
    python bench/results_2024.py dd --seeds 0 1 2       # DD and RaT-BPTT with the DD row's settings, 1,000 its
    python bench/results_2024.py table                  # the Markdown rows of docs/results.md

Every setting is written to the JSON files under runs/results/table (the main table's folder).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import results_mnist5k as base

import fastdd
from fastdd.experts import Curriculum
from fastdd.scores import Scores, load_scores, save_scores

OUT = Path("runs/results/table")
IPCS = (1, 10)
SELECT_IPCS = (10, 40)
SCORE_SEEDS = (0, 1, 2)
# The table's experts: 5 ConvNet-32, 8 epochs, SGD 0.01. FTD's and PAD's differ only in what the papers add.
SAM = dict(sam_rho=0.01, sam_alpha=0.3, sam_adaptive=True)  # GSAM, FTD's Tab 7 alpha for CIFAR-10 IPC 1/10
# PAD's CIFAR-10 curriculum (IR 0.75, AEE 20, removal after 40 and 60 of 100 epochs) scaled to 8 epochs.
CURRICULUM = Curriculum(init_ratio=0.75, add_end_epoch=2, remove_epochs=(3, 5), remove_ratios=(0.1, 0.2))
# FTD runs 5,000 iterations with decay 0.9995-0.9999 (an average over the last ~2,000); the table runs 100-150,
# so the average spans its last ~40 (decay 0.975).
FTD = dict(ema_decay=0.975)
# PAD = DATM's options (correct init, learned soft labels, a start-epoch window that grows) + the deep-layer mask;
# CIFAR-10's lr_y and depth ratio per IPC, the start window scaled to the 8-epoch experts.
PAD = {
    1: dict(lr_y=5.0, pad_depth_ratio=0.0, current_max_start_epoch=None, expansion_end=None),
    10: dict(lr_y=2.0, pad_depth_ratio=0.25, current_max_start_epoch=3, expansion_end=50),
}
# NCFM's configs (AdamW 0.01 on pixels, 4,096 frequencies, calibration, factor 2 with "mix" init) on the plain
# experts, with the table's DM budget: 64 real digits per class (NCFM: 1,024), 200 iterations (NCFM: 20,000).
NCFM = dict(factor=2, init="mix", batch_real=64, iterations=200)
ITERATIONS = {1: 150, 10: 100}  # the MTT family, as the table's MTT and SelMatch


def _scores_path(kind: str, seed: int) -> Path:
    return OUT / f"{kind}_seed{seed}.npz"


def run_scores(args) -> None:
    """EL2N (10 epochs, 2 networks: the library's defaults) and GraNd (at initialisation, 2 networks) per seed."""
    ds = fastdd.load_dataset("mnist5k")
    kw = dict(model_kwargs={"width": base.WIDTH}, num_runs=2)
    for seed in SCORE_SEEDS:
        for kind, fn in (("el2n", fastdd.el2n_scores), ("grand", fastdd.grand_scores)):
            path = _scores_path(kind, seed)
            if not path.exists():
                t = time.time()
                save_scores(fn(ds, seed=seed, **kw), path, labels=ds.train.labels)
                print(f"{kind} seed {seed}: {time.time() - t:.0f} s", flush=True)


def run_experts(args) -> None:
    """FTD's experts (SAM) and PAD's (SAM + the EL2N curriculum of seed 0), otherwise the table's experts."""
    ds = fastdd.load_dataset("mnist5k")
    common = dict(num_experts=5, epochs=8, seed=0, model_kwargs={"width": base.WIDTH}, resume=True)
    t = time.time()
    fastdd.train_experts(ds, "convnet", out=OUT / "experts_ftd", **common, **SAM)
    print(f"FTD experts: {time.time() - t:.0f} s", flush=True)
    t = time.time()
    el2n = load_scores(_scores_path("el2n", 0))
    fastdd.train_experts(ds, "convnet", out=OUT / "experts_pad", curriculum=CURRICULUM, scores=el2n, **common, **SAM)
    print(f"PAD experts: {time.time() - t:.0f} s", flush=True)


def _method_options(method: str, ipc: int) -> tuple[dict, dict, int]:
    """(options, extra arguments, iterations) of one method at one IPC."""
    if method == "ncfm":
        opts = dict(NCFM)
        its = opts.pop("iterations")
        return opts, {"experts": fastdd.ExpertBuffer(OUT / "experts")}, its
    buf = fastdd.ExpertBuffer(OUT / ("experts_ftd" if method == "ftd" else "experts_pad"))
    mtt_args = argparse.Namespace(syn_steps=10, max_start=10, lr_img=1000.0, ipc=ipc)
    opts = base._mtt_options(mtt_args, buf)
    opts.update(FTD if method == "ftd" else PAD[ipc])
    return opts, {"experts": buf}, ITERATIONS[ipc]


def run_distill(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    opts, extra, its = _method_options(args.method, args.ipc)
    method = "mtt" if args.method == "ftd" else args.method
    for seed in args.seeds:
        name = f"{args.method}_ipc{args.ipc}_seed{seed}"
        folder = OUT / name
        if (folder / "synthetic" / "synthetic.json").exists():
            print(f"{name}: done already")
            continue
        t = time.time()
        syn = fastdd.distill(
            ds, method, ipc=args.ipc, iterations=its, seed=seed, out=folder, checkpoint_every=25, resume=True,
            **extra, **opts,
        )  # fmt: skip
        syn.save(folder / "synthetic")
        record = {"method": args.method, "ipc": args.ipc, "seed": seed, "iterations": its, "options": opts}
        if syn.lr is not None:
            record["syn_lr"] = float(syn.lr.reshape(-1)[0])
        base._save(OUT, name, {**record, "seconds": time.time() - t})


def _selection(ds, kind: str, order: str, ipc: int, seed: int):
    """The ``order`` (``hardest`` / ``easiest``) ``ipc`` per class by the ``kind`` scores of ``seed``."""
    from fastdd.selection import real_subset

    scores: Scores = load_scores(_scores_path(kind, seed))
    idx = fastdd.select(ds, kind, ipc, scores=scores, easiest=order == "easiest")
    return real_subset(ds, idx, method=f"{kind}-{order}"), f"{kind} {order}, scores seed {seed}"


SELECTIONS = [(k, o) for k in ("el2n", "grand") for o in ("hardest", "easiest")]


def run_eval(args) -> None:
    """Every ready cell, --num-eval runs each under the table's protocol (run r: set r, evaluation seed 1000 + r,
    as the table's cells)."""
    from fastdd.evaluation import train_on

    ds = fastdd.load_dataset("mnist5k")
    cells = [(m, ipc) for m in ("ftd", "pad", "ncfm") for ipc in IPCS]
    cells += [(f"{k}-{o}", ipc) for k, o in SELECTIONS for ipc in SELECT_IPCS]
    for method, ipc in cells:
        path = OUT / f"eval_{method}_ipc{ipc}.json"
        if path.exists() or (args.only and method not in args.only):
            continue
        p = base.table_protocol(ipc)
        runs = []
        for r in range(args.num_eval):
            if "-" in method:
                kind, order = method.split("-")
                if not _scores_path(kind, SCORE_SEEDS[r]).exists():
                    break
                sub, what = _selection(ds, kind, order, ipc, SCORE_SEEDS[r])
            else:
                if not (OUT / f"{method}_ipc{ipc}_seed{r}" / "synthetic" / "synthetic.json").exists():
                    print(f"{method} ipc {ipc}: seed {r} not distilled yet, skipped")
                    break
                sub, what = base.load_distilled(OUT, method, ipc, r), f"distil seed {r}"
            t = time.time()
            distilled = None if sub.frozen is None else ~sub.frozen
            acc = train_on(sub.images, sub.labels, ds, p, p.lr, seed=1000 + r, distilled=distilled)
            runs.append({"set": what, "eval_seed": 1000 + r, "accuracy": acc, "seconds": time.time() - t})
            print(method, ipc, runs[-1], flush=True)
        if len(runs) == args.num_eval:
            record = {"method": method, "ipc": ipc, "protocol": asdict(p), "runs": runs}
            base._save(OUT, f"eval_{method}_ipc{ipc}", record)


def run_dd(args) -> None:
    """DD and RaT-BPTT side by side with the DD row's settings (LeNet, fixed init, 1 step of 10 images x 3 epochs,
    Adam 0.05 halved 6 times over the run), on --iterations each: ``bptt`` back-propagates through all 3 steps,
    ``ratbptt`` through a window of 2 after a prefix of N0 in {0, 1} steps drawn per iteration."""
    ds = fastdd.load_dataset("mnist5k")
    out = Path("runs/results")
    for variant in ("bptt", "ratbptt"):
        for seed in args.seeds:
            name = f"dd_{variant}_{args.iterations}_seed{seed}"
            if (out / f"{name}.json").exists():
                continue
            t = time.time()
            opts: dict = dict(
                model="lenet", steps=1, epochs=3, images_per_class=1, lr_init=0.02, lr=0.05, init="xavier",
                init_mode="fixed", decay_every=args.iterations // 6,
            )  # fmt: skip
            if variant == "bptt":
                opts["mode"] = "bptt"
            else:
                opts.update(mode="truncated", window=2, rat_bptt=True)
            syn = fastdd.distill(ds, "dd", iterations=args.iterations, seed=seed, out=out / name, **opts)
            syn.save(out / name / "synthetic")
            res = fastdd.evaluate(syn, ds, "dd", num_eval=1)
            record = {"experiment": f"dd fixed init, {variant}", "seed": seed, "iterations": args.iterations}
            base._save(out, name, {**record, "options": opts, "accuracy": res.accuracies[0], "lrs": syn.lr.tolist(),
                                   "seconds": time.time() - t})  # fmt: skip


def run_table(args) -> None:
    """The Markdown rows: accuracy and IOR against the main table's random cells."""
    names = {"ftd": "MTT, FTD experts + EMA", "pad": "PAD", "ncfm": "NCFM"}
    names.update({f"{k}-{o}": f"{k.upper() if k == 'el2n' else 'GraNd'} {o}" for k, o in SELECTIONS})
    for ipcs, methods in ((IPCS, ("ftd", "pad", "ncfm")), (SELECT_IPCS, [f"{k}-{o}" for k, o in SELECTIONS])):
        print(f"| method | {' | '.join(f'IPC {i}' for i in ipcs)} | {' | '.join(f'IOR {i}' for i in ipcs)} |")
        print("|---" * (1 + 2 * len(ipcs)) + "|")
        random = {ipc: base.cell_accuracies(OUT, "random", ipc) for ipc in ipcs}
        for m in ("random", *methods):
            accs = {ipc: base.cell_accuracies(OUT, m, ipc) for ipc in ipcs}
            cells = [base.cell_text(accs[ipc]) for ipc in ipcs]
            iors = [base.ior_text(None if m == "random" else accs[ipc], random[ipc]) for ipc in ipcs]
            print(f"| {names.get(m, 'random real')} | {' | '.join(cells)} | {' | '.join(iors)} |")
        print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["scores", "experts", "distill", "eval", "dd", "table"])
    ap.add_argument("--method", choices=["ftd", "pad", "ncfm"], default="ftd")
    ap.add_argument("--ipc", type=int, choices=IPCS, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-eval", type=int, default=3)
    ap.add_argument("--only", nargs="+", default=None, help="eval: only these cells' methods (e.g. ftd pad)")
    ap.add_argument("--iterations", type=int, default=1000, help="dd: iterations of each run (the DD row: 6,000)")
    args = ap.parse_args()
    stages = dict(scores=run_scores, experts=run_experts, distill=run_distill, eval=run_eval, dd=run_dd)
    stages["table"] = run_table
    stages[args.stage](args)


if __name__ == "__main__":
    main()

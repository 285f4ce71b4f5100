"""The mnist5k results of docs/results.md. Each experiment writes JSON into --out (default runs/results).

    python bench/results_mnist5k.py dd --seeds 0 1 2                  # DD, fixed init, LeNet, 10 images
    python bench/results_mnist5k.py experts                            # ConvNet experts for MTT / SelMatch
    python bench/results_mnist5k.py mtt --ipc 1 --seeds 0 1 2          # MTT vs random at IPC 1

The table of random / MTT / SelMatch at IPC 1, 10, 40 and the full train split (one protocol, ConvNet
of width 32 throughout so that it fits a CPU budget):

    python bench/results_mnist5k.py table-experts --num-experts 5 --epochs 8   # experts + forgetting scores
    python bench/results_mnist5k.py table-distill --method mtt --ipc 10 --seeds 0 1 2 --iterations 200 --lr-img 1000
                                                  # likewise --method selmatch; --ipc 1 (300 iterations), 40
    python bench/results_mnist5k.py table-eval --num-eval 3           # every cell, 3 runs each
    python bench/results_mnist5k.py table-coverage                     # coverage.json + coverage.png

CPU budget note: everything here was run on a shared 2-core CPU; settings are scaled down from the papers'
(iterations, evaluation epochs) and stated in each JSON file and in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

import fastdd
from fastdd.evaluation import Protocol, resolve_protocol, selmatch_epochs


def _save(out: Path, name: str, obj: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(obj, indent=2) + "\n")
    print(json.dumps(obj, indent=2), flush=True)


def run_dd(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    for seed in args.seeds:
        t = time.time()
        opts = dict(
            model="lenet",
            steps=1,
            epochs=3,
            images_per_class=1,
            lr_init=0.02,
            lr=args.dd_lr,
            init="xavier",
            init_mode="fixed",
            decay_every=args.decay_every or args.iterations // 3,
        )
        syn = fastdd.distill(ds, "dd", iterations=args.iterations, seed=seed, out=args.out / f"dd_seed{seed}", **opts)
        syn.save(args.out / f"dd_seed{seed}" / "synthetic")
        res = fastdd.evaluate(syn, ds, "dd", num_eval=1)
        _save(
            args.out,
            f"dd_seed{seed}",
            {
                "experiment": "dd fixed init",
                "seed": seed,
                "iterations": args.iterations,
                "options": opts,
                "accuracy": res.accuracies[0],
                "lrs": syn.lr.tolist(),
                "seconds": time.time() - t,
            },
        )


def run_experts(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    fastdd.train_experts(
        ds, "convnet", num_experts=args.num_experts, epochs=args.epochs, out=args.out / "experts", seed=0
    )


def _protocol(args) -> dict:
    return dict(protocol="mtt", num_eval=args.num_eval, epochs=args.eval_epochs)


def _mtt_options(args, buf) -> dict:
    """The MTT settings every mnist5k run here shares (SelMatch adds its window and α)."""
    return dict(
        syn_steps=args.syn_steps,
        expert_epochs=2,
        max_start_epoch=min(args.max_start, buf.num_epochs - 2),
        lr_img=args.lr_img,
        lr_lr=1e-5,
        lr_init=0.01,
        batch_syn=min(10 * args.ipc, 100),
    )


def run_mtt(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    buf = fastdd.ExpertBuffer(args.out / "experts")
    for seed in args.seeds:
        t = time.time()
        opts = _mtt_options(args, buf)
        syn = fastdd.distill(
            ds,
            "mtt",
            ipc=args.ipc,
            experts=buf,
            iterations=args.iterations,
            seed=seed,
            out=args.out / f"mtt_ipc{args.ipc}_seed{seed}",
            checkpoint_every=50,
            resume=True,
            **opts,
        )
        syn.save(args.out / f"mtt_ipc{args.ipc}_seed{seed}" / "synthetic")
        res = fastdd.evaluate(syn, ds, seed=seed, random_baseline=True, **_protocol(args))
        _save(
            args.out,
            f"mtt_ipc{args.ipc}_seed{seed}",
            {
                "experiment": "mtt vs random",
                "ipc": args.ipc,
                "seed": seed,
                "iterations": args.iterations,
                "options": opts,
                "protocol": res.protocol,
                "mtt": res.accuracies,
                "random": res.random.accuracies,
                "syn_lr": float(syn.lr),
                "seconds": time.time() - t,
            },
        )


# ------------------------------------------------------------------------------------------ the table
WIDTH = 32
TABLE_IPCS = (1, 10, 40)
DISTILL_SEEDS = {1: 3, 10: 3, 40: 3}  # distilled sets per IPC; evaluation run r uses set r % count
# SelMatch: the window starts at rank 60 of 400 per class (hardest first) at every IPC; all of an
# IPC-1 set is distilled (int(1 * 0.5) would distil nothing).
SELMATCH = {1: dict(alpha=1.0, beta=60.0), 10: dict(alpha=0.5, beta=6.0), 40: dict(alpha=0.5, beta=1.5)}


# DM and DSA: ConvNet-32, 64 real images per class per matching step, real initialisation, siamese DSA.
# DM: DM's lr_img 1. DSA: lr_img 1, ten times DC's 0.1, because these runs make about 1 % of DC's pixel
# updates; fewer networks and inner epochs than DC's table (10, 50) / (40, 15), to fit the CPU budget.
TABLE_MATCHING = {
    "dm": {1: dict(iterations=300), 10: dict(iterations=300), 40: dict(iterations=200)},
    "dsa": {
        1: dict(iterations=100, outer_loop=1, inner_loop=1),
        10: dict(iterations=30, outer_loop=10, inner_loop=10),
        40: dict(iterations=2, outer_loop=40, inner_loop=5),
    },
}
MATCHING_OPTIONS = {"dm": dict(batch_real=64, lr_img=1.0), "dsa": dict(batch_real=64, lr_img=1.0)}
TABLE_METHODS = (("random", "random real"), ("dm", "DM"), ("dsa", "DSA"), ("mtt", "MTT"), ("selmatch", "SelMatch"))


def table_protocol(ipc: int, class_size: int = 400) -> Protocol:
    """One protocol for every cell: ConvNet-32, SGD lr 0.01 momentum 0.9 wd 5e-4, ×0.1 at mid-training,
    DSA, batch 256, and SelMatch's equal-compute epoch rule with 20 (not 50) full-data epochs:
    epochs = min(1000, round(20 · class_size / ipc)) (IPC 1: 1000, 10: 800, 40: 200, full: 20)."""
    return resolve_protocol("mtt", model_kwargs={"width": WIDTH}, lr=0.01, epochs=selmatch_epochs(ipc, class_size, 20))


def run_table_experts(args) -> None:
    from fastdd.scores import forgetting_from_experts

    ds = fastdd.load_dataset("mnist5k")
    buf = fastdd.train_experts(
        ds,
        "convnet",
        num_experts=args.num_experts,
        epochs=args.epochs,
        out=args.out / "table" / "experts",
        seed=0,
        model_kwargs={"width": WIDTH},
    )
    scores = forgetting_from_experts(buf, ds)
    from safetensors.torch import save_file

    save_file({"forgetting": scores.values.float().contiguous()}, str(args.out / "table" / "forgetting.safetensors"))
    print("expert test accuracy:", buf.manifest["test_accuracy"])
    v = scores.values
    print(f"forgetting: mean {float(v.mean()):.3f}, never forgotten {int((v == 0).sum())} / {len(v)}")


def table_scores(args):
    from safetensors.torch import load_file

    from fastdd.scores import Scores

    v = load_file(str(args.out / "table" / "forgetting.safetensors"))["forgetting"]
    return Scores(v, hardest="high", kind="forgetting", source="table experts")


def distilled_seeds(out: Path, method: str, ipc: int) -> list[int]:
    """Seeds of the finished ``method`` sets at ``ipc`` under ``out`` (ascending)."""
    return sorted(
        int(q.name.split("seed")[1])
        for q in out.glob(f"{method}_ipc{ipc}_seed*")
        if (q / "synthetic" / "synthetic.json").exists()
    )


def load_distilled(out: Path, method: str, ipc: int, seed: int):
    from fastdd.synthetic import SyntheticSet

    return SyntheticSet.load(out / f"{method}_ipc{ipc}_seed{seed}" / "synthetic")


def run_table_distill(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    ipc = args.ipc
    if args.method in TABLE_MATCHING:
        opts = {**MATCHING_OPTIONS[args.method], **TABLE_MATCHING[args.method][ipc], "model_kwargs": {"width": WIDTH}}
        iterations = opts.pop("iterations")
        return _distill_seeds(args, ds, iterations, opts, {}, checkpoint_every=max(1, iterations // 4))
    buf = fastdd.ExpertBuffer(args.out / "table" / "experts")
    opts = _mtt_options(args, buf)
    extra = {"experts": buf}
    if args.method == "selmatch":
        opts.update(SELMATCH[ipc])
        extra["scores"] = table_scores(args)
    _distill_seeds(args, ds, args.iterations, opts, extra, checkpoint_every=25)


def _distill_seeds(args, ds, iterations: int, opts: dict, extra: dict, checkpoint_every: int) -> None:
    """One set per ``--seeds`` entry under ``runs/results/table/<method>_ipc<ipc>_seed<seed>`` (finished ones
    are kept, interrupted ones resume), each with a JSON record of its settings and time."""
    ipc = args.ipc
    for seed in args.seeds:
        name = f"{args.method}_ipc{ipc}_seed{seed}"
        folder = args.out / "table" / name
        if (folder / "synthetic" / "synthetic.json").exists():
            print(f"{name}: done already")
            continue
        t = time.time()
        syn = fastdd.distill(
            ds,
            args.method,
            ipc=ipc,
            iterations=iterations,
            seed=seed,
            out=folder,
            checkpoint_every=checkpoint_every,
            resume=True,
            **extra,
            **opts,
        )
        syn.save(folder / "synthetic")
        record = {"method": args.method, "ipc": ipc, "seed": seed, "iterations": iterations, "options": opts}
        if syn.lr is not None:
            record["syn_lr"] = float(syn.lr)
        _save(args.out / "table", name, {**record, "seconds": time.time() - t})


def run_table_eval(args) -> None:
    """Every cell of the table, ``--num-eval`` runs each (JSON per cell; cells already done are kept)."""
    from fastdd.evaluation import train_on
    from fastdd.selection import random_indices, real_subset

    ds = fastdd.load_dataset("mnist5k")
    out = args.out / "table"
    cells = [("random", ipc) for ipc in TABLE_IPCS] + [("full", 400)]
    cells += [(m, ipc) for m in ("dm", "dsa", "mtt", "selmatch") for ipc in TABLE_IPCS]
    for method, ipc in cells:
        path = out / f"eval_{method}_ipc{ipc}.json"
        if path.exists():
            continue
        p = table_protocol(ipc)
        runs = []
        for r in range(args.num_eval):
            if method == "random":
                sub, what = real_subset(ds, random_indices(ds, ipc, seed=r)), f"random subset seed {r}"
            elif method == "full":
                sub, what = real_subset(ds, torch.arange(len(ds.train))), "full train split"
            else:
                seeds = distilled_seeds(out, method, ipc)
                if len(seeds) < DISTILL_SEEDS[ipc]:
                    print(f"{method} ipc {ipc}: {len(seeds)} of {DISTILL_SEEDS[ipc]} distilled sets ready, skipped")
                    break
                s = seeds[r % len(seeds)]
                sub, what = load_distilled(out, method, ipc, s), f"distil seed {s}"
            t = time.time()
            distilled = None if sub.frozen is None else ~sub.frozen
            acc = train_on(
                sub.images,
                sub.labels,
                ds,
                p,
                p.lr,
                seed=1000 + r,
                distilled=distilled,
                show_progress=True,
                desc=f"{method} ipc {ipc} run {r}",
            )
            runs.append({"set": what, "eval_seed": 1000 + r, "accuracy": acc, "seconds": time.time() - t})
            print(method, ipc, runs[-1], flush=True)
        if len(runs) == args.num_eval:
            _save(out, f"eval_{method}_ipc{ipc}", {"method": method, "ipc": ipc, "protocol": asdict(p), "runs": runs})


CROSS_ARCH = ("convnet", "alexnet", "vgg11", "resnet18bn")


def run_table_crossarch(args) -> None:
    """One cross-architecture row: the DM IPC-10 sets of --seeds and as many random subsets, trained on each
    of CROSS_ARCH under the table protocol shortened to --eval-epochs, one run per set."""
    ds = fastdd.load_dataset("mnist5k")
    out = args.out / "table"
    path = out / "crossarch_dm_ipc10.json"
    if path.exists():
        return
    p = table_protocol(10)
    rows = {}
    for model in CROSS_ARCH:
        kw = {"width": WIDTH} if model == "convnet" else {}
        accs, raccs = [], []
        for s in [s for s in distilled_seeds(out, "dm", 10) if s in args.seeds]:
            res = fastdd.evaluate(
                load_distilled(out, "dm", 10, s),
                ds,
                p,
                num_eval=1,
                seed=1000 + s,
                epochs=args.eval_epochs,
                model=model,
                model_kwargs=kw,
                random_baseline=True,
            )
            accs += res.accuracies
            raccs += res.random.accuracies
            print(model, s, res, flush=True)
        rows[model] = {"dm": accs, "random": raccs}
    _save(out, "crossarch_dm_ipc10", {"protocol": asdict(p), "epochs": args.eval_epochs, "rows": rows})


def pixel_drift(ds, syn) -> float | None:
    """Median, over the set's distilled images, of (pixel distance to the nearest training digit) /
    (the image's norm): how far distillation moved the images from real digits (None: nothing distilled)."""
    learned = torch.ones(len(syn), dtype=torch.bool) if syn.frozen is None else ~syn.frozen.cpu()
    if syn.meta.get("method") == "random" or not bool(learned.any()):
        return None
    x = syn.images[learned].flatten(1)
    d = torch.cdist(x, ds.train.images.flatten(1)).min(1).values
    return float((d / x.norm(dim=1)).median())


def run_table_coverage(args) -> None:
    """Coverage (train overall / easy / hard half by forgetting, and test) of every table set, in the
    feature space of expert 0's final snapshot; JSON + a figure under runs/results/table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastdd.knn_coverage import coverage_from_features, mean_nn_distance
    from fastdd.scores import forgetting_from_experts
    from fastdd.selection import (
        extract_features,
        random_indices,
        real_subset,
        resolve_extractor,
    )

    ds = fastdd.load_dataset("mnist5k")
    out = args.out / "table"
    buf = fastdd.ExpertBuffer(out / "experts")
    fn = resolve_extractor(ds, buf)
    train_f, test_f = extract_features(ds, "train", fn), extract_features(ds, "test", fn)
    radius = mean_nn_distance(train_f)
    scores = table_scores(args)
    test_scores = forgetting_from_experts(buf, ds, split="test")
    rows = []
    for ipc in TABLE_IPCS:
        sets = [("random", s, real_subset(ds, random_indices(ds, ipc, seed=s))) for s in range(3)]
        sets += [
            (m, s, load_distilled(out, m, ipc, s))
            for m in ("dm", "dsa", "mtt", "selmatch")
            for s in distilled_seeds(out, m, ipc)
        ]
        for method, seed, syn in sets:
            res = coverage_from_features(
                train_f,
                extract_features(ds, extractor=fn, images=syn.images),
                train_labels=ds.train.labels,
                test_features=test_f,
                test_labels=ds.test.labels,
                scores=scores,
                test_scores=test_scores,
                radius=radius,
            )
            rows.append(
                {
                    "method": method,
                    "ipc": ipc,
                    "seed": seed,
                    **{
                        k: getattr(res, k)
                        for k in ("train", "train_easy", "train_hard", "test", "test_easy", "test_hard")
                    },
                    "drift": pixel_drift(ds, syn),
                }
            )
            print(rows[-1], flush=True)
    _save(out, "coverage", {"radius": radius, "extractor": getattr(fn, "description", ""), "rows": rows})
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharey=True)
    keys = ("train", "train_easy", "train_hard", "test", "test_easy", "test_hard")
    titles = [f"{split}, {part}" for split in ("train", "test") for part in ("all", "easy half", "hard half")]
    for ax, key, title in zip(axes.flat, keys, titles):
        for method, style in (("random", "o-"), ("dm", "d-"), ("dsa", "v-"), ("mtt", "s-"), ("selmatch", "^-")):
            xs = [i for i in TABLE_IPCS if any(r["method"] == method and r["ipc"] == i for r in rows)]
            ys = [[100 * r[key] for r in rows if r["method"] == method and r["ipc"] == i] for i in xs]
            if xs:
                ax.errorbar(
                    xs,
                    [sum(y) / len(y) for y in ys],
                    yerr=[(max(y) - min(y)) / 2 for y in ys],
                    fmt=style,
                    capsize=3,
                    label=method,
                )
        ax.set_xscale("log")
        ax.set_xticks(TABLE_IPCS, [str(i) for i in TABLE_IPCS])
        ax.set_xlabel("images per class")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("coverage (%)")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(out / "coverage.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "experiment",
        choices=[
            "dd",
            "experts",
            "mtt",
            "table-experts",
            "table-distill",
            "table-eval",
            "table-coverage",
            "table-crossarch",
        ],
    )
    ap.add_argument("--method", choices=["mtt", "selmatch", "dm", "dsa"], default="mtt")
    ap.add_argument("--out", type=Path, default=Path("runs/results"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--num-experts", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--syn-steps", type=int, default=20)
    ap.add_argument("--max-start", type=int, default=10)
    ap.add_argument("--lr-img", type=float, default=100.0)
    ap.add_argument("--num-eval", type=int, default=3)
    ap.add_argument("--dd-lr", type=float, default=0.05, help="DD: Adam learning rate on images and rates")
    ap.add_argument("--decay-every", type=int, default=None, help="DD: halve the Adam rate every this many iterations")
    ap.add_argument("--eval-epochs", type=int, default=300)
    args = ap.parse_args()
    {
        "dd": run_dd,
        "experts": run_experts,
        "mtt": run_mtt,
        "table-experts": run_table_experts,
        "table-distill": run_table_distill,
        "table-eval": run_table_eval,
        "table-coverage": run_table_coverage,
        "table-crossarch": run_table_crossarch,
    }[args.experiment](args)


def summarize(out: Path = Path("runs")) -> str:
    """Markdown tables of the JSON results under ``out`` (used for docs/results.md)."""
    import statistics as st

    lines = []
    dd = sorted(out.glob("dd6k/dd_seed*.json"))
    if dd:
        accs = [json.loads(p.read_text())["accuracy"] for p in dd]
        lines += ["| seed | test accuracy (%) | learned rates |", "|---|---|---|"]
        for p in dd:
            r = json.loads(p.read_text())
            lines.append(
                f"| {r['seed']} | {100 * r['accuracy']:.1f} | " + ", ".join(f"{v:.3f}" for v in r["lrs"]) + " |"
            )
        lines += [f"| **mean ± std** | **{100 * st.mean(accs):.1f} ± {100 * st.pstdev(accs):.1f}** | |", ""]
    mtt = sorted(out.glob("results/mtt_ipc1_seed*.json"))
    if mtt:
        lines += ["| seed | MTT runs (%) | random runs (%) | learned α |", "|---|---|---|---|"]
        for p in mtt:
            r = json.loads(p.read_text())
            lines.append(
                f"| {r['seed']} | "
                + ", ".join(f"{100 * a:.1f}" for a in r["mtt"])
                + " | "
                + ", ".join(f"{100 * a:.1f}" for a in r["random"])
                + f" | {r['syn_lr']:.4f} |"
            )
        seeds_m = [st.mean(json.loads(p.read_text())["mtt"]) for p in mtt]
        seeds_r = [st.mean(json.loads(p.read_text())["random"]) for p in mtt]
        lines += [
            f"| **mean ± std over seeds** | **{100 * st.mean(seeds_m):.1f} ± {100 * st.pstdev(seeds_m):.1f}** | "
            f"**{100 * st.mean(seeds_r):.1f} ± {100 * st.pstdev(seeds_r):.1f}** | |",
            "",
        ]
    return "\n".join(lines)


def cell_accuracies(out: Path, method: str, ipc: int) -> list[float] | None:
    """The runs' test accuracies (%) of one table cell (``out/eval_<method>_ipc<ipc>.json``), or ``None``."""
    p = out / f"eval_{method}_ipc{ipc}.json"
    return [100 * r["accuracy"] for r in json.loads(p.read_text())["runs"]] if p.exists() else None


def cell_text(accs: list[float] | None) -> str:
    """``mean ± std`` (population) of a cell's accuracies, or a dash."""
    return "—" if accs is None else f"{statistics.mean(accs):.1f} ± {statistics.pstdev(accs):.1f}"


def ior_text(accs: list[float] | None, random: list[float] | None) -> str:
    """A cell's IOR in points (its mean minus random's at the same IPC), or a dash."""
    return "—" if accs is None or random is None else f"{statistics.mean(accs) - statistics.mean(random):+.1f}"


def summarize_table(out: Path = Path("runs/results/table")) -> str:
    """Markdown of the accuracy table (eval_*.json) and the coverage table (coverage.json)."""
    st = statistics

    def cell(method: str, ipc: int) -> str:
        return cell_text(cell_accuracies(out, method, ipc))

    def ior(method: str, ipc: int) -> str:
        a = None if method == "random" else cell_accuracies(out, method, ipc)
        return ior_text(a, cell_accuracies(out, "random", ipc))

    lines = [
        "| method | IPC 1 | IPC 10 | IPC 40 | full train split (400 per class) | IOR 1 | IOR 10 | IOR 40 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, name in TABLE_METHODS:
        full = cell("full", 400) if method == "random" else "—"
        lines.append(
            f"| {name} | "
            + " | ".join(cell(method, i) for i in TABLE_IPCS)
            + f" | {full} | "
            + " | ".join(ior(method, i) for i in TABLE_IPCS)
            + " |"
        )
    ca = out / "crossarch_dm_ipc10.json"
    if ca.exists():
        c = json.loads(ca.read_text())
        lines += [
            "",
            f"Cross-architecture, DM IPC 10 ({c['epochs']} epochs, one run per set; IOR in brackets):",
            "",
            "| set | " + " | ".join(c["rows"]) + " |",
            "|---|" + "---|" * len(c["rows"]),
        ]
        for key, name in (("dm", "DM"), ("random", "random real")):
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{st.mean(100 * a for a in v[key]):.1f} ± {st.pstdev([100 * a for a in v[key]]):.1f}"
                    + (
                        f" ({st.mean(100 * a for a in v['dm']) - st.mean(100 * a for a in v['random']):+.1f})"
                        if key == "dm"
                        else ""
                    )
                    for v in c["rows"].values()
                )
                + " |"
            )
    lines.append("")
    cov = out / "coverage.json"
    if cov.exists():
        c = json.loads(cov.read_text())
        lines += [
            f"Radius r = {c['radius']:.4g} ({c['extractor']}).",
            "",
            "| method | IPC | train, all | train, easy | train, hard | test, all | test, easy | test, hard |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for ipc in TABLE_IPCS:
            for method, name in TABLE_METHODS:
                rows = [r for r in c["rows"] if r["method"] == method and r["ipc"] == ipc]
                if rows:
                    lines.append(
                        f"| {name} | {ipc} | "
                        + " | ".join(
                            f"{st.mean(100 * r[k] for r in rows):.1f}"
                            + (f" ± {st.pstdev([100 * r[k] for r in rows]):.1f}" if len(rows) > 1 else "")
                            for k in ("train", "train_easy", "train_hard", "test", "test_easy", "test_hard")
                        )
                        + " |"
                    )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

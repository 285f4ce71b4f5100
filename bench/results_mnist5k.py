"""The mnist5k results of docs/results.md. Each experiment writes JSON into --out (default runs/results).

    python bench/results_mnist5k.py dd --seeds 0 1 2                  # DD, fixed init, LeNet, 10 images
    python bench/results_mnist5k.py experts                            # ConvNet experts for MTT / SelMatch
    python bench/results_mnist5k.py mtt --ipc 1 --seeds 0 1 2          # MTT vs random at IPC 1
    python bench/results_mnist5k.py selmatch --ipc 10 --seeds 0        # SelMatch (scores from the experts)

CPU budget note: everything here was run on a shared 2-core CPU; settings are scaled down from the papers'
(iterations, evaluation epochs) and stated in each JSON file and in docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fastdd


def _save(out: Path, name: str, obj: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(obj, indent=2) + "\n")
    print(json.dumps(obj, indent=2), flush=True)


def run_dd(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    for seed in args.seeds:
        t = time.time()
        opts = dict(model="lenet", steps=1, epochs=3, images_per_class=1, lr_init=0.02, lr=args.dd_lr, init="xavier",
                    init_mode="fixed", mode="bptt", decay_every=args.decay_every or args.iterations // 3)
        syn = fastdd.distill(ds, "dd", iterations=args.iterations, seed=seed, out=args.out / f"dd_seed{seed}", **opts)
        syn.save(args.out / f"dd_seed{seed}" / "synthetic")
        res = fastdd.evaluate(syn, ds, "dd", num_eval=1)
        _save(args.out, f"dd_seed{seed}", {"experiment": "dd fixed init", "seed": seed, "iterations": args.iterations,
                                          "options": opts, "accuracy": res.accuracies[0], "lrs": syn.lr.tolist(),
                                          "seconds": time.time() - t})


def run_experts(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    fastdd.train_experts(ds, "convnet", num_experts=args.num_experts, epochs=args.epochs, out=args.out / "experts",
                         seed=0)


def _protocol(args) -> dict:
    return dict(protocol="mtt", num_eval=args.num_eval, epochs=args.eval_epochs)


def run_mtt(args) -> None:
    ds = fastdd.load_dataset("mnist5k")
    buf = fastdd.ExpertBuffer(args.out / "experts")
    for seed in args.seeds:
        t = time.time()
        opts = dict(syn_steps=args.syn_steps, expert_epochs=2, max_start_epoch=min(args.max_start, buf.num_epochs - 2),
                    lr_img=args.lr_img, lr_lr=1e-5, lr_init=0.01, batch_syn=min(10 * args.ipc, 100), mode="bptt")
        syn = fastdd.distill(ds, "mtt", ipc=args.ipc, experts=buf, iterations=args.iterations, seed=seed,
                             out=args.out / f"mtt_ipc{args.ipc}_seed{seed}", checkpoint_every=50, resume=True, **opts)
        syn.save(args.out / f"mtt_ipc{args.ipc}_seed{seed}" / "synthetic")
        res = fastdd.evaluate(syn, ds, seed=seed, random_baseline=True, **_protocol(args))
        _save(args.out, f"mtt_ipc{args.ipc}_seed{seed}", {
            "experiment": "mtt vs random", "ipc": args.ipc, "seed": seed, "iterations": args.iterations,
            "options": opts, "protocol": res.protocol, "mtt": res.accuracies, "random": res.random.accuracies,
            "syn_lr": float(syn.lr), "seconds": time.time() - t})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", choices=["dd", "experts", "mtt"])
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
    {"dd": run_dd, "experts": run_experts, "mtt": run_mtt}[args.experiment](args)


if __name__ == "__main__":
    main()


def summarize(out: Path = Path("runs")) -> str:
    """Markdown tables of the JSON results under ``out`` (used for docs/results.md)."""
    import statistics as st
    lines = []
    dd = sorted(out.glob("results6k/dd_seed*.json"))
    if dd:
        accs = [json.loads(p.read_text())["accuracy"] for p in dd]
        lines += ["| seed | test accuracy (%) | learned rates |", "|---|---|---|"]
        for p in dd:
            r = json.loads(p.read_text())
            lines.append(f"| {r['seed']} | {100 * r['accuracy']:.1f} | " + ", ".join(f"{v:.3f}" for v in r["lrs"]) + " |")
        lines += [f"| **mean ± std** | **{100 * st.mean(accs):.1f} ± {100 * st.pstdev(accs):.1f}** | |", ""]
    mtt = sorted(out.glob("results/mtt_ipc1_seed*.json"))
    if mtt:
        lines += ["| seed | MTT runs (%) | random runs (%) | learned α |", "|---|---|---|---|"]
        m_all, r_all = [], []
        for p in mtt:
            r = json.loads(p.read_text())
            m_all += r["mtt"]
            r_all += r["random"]
            lines.append(f"| {r['seed']} | " + ", ".join(f"{100 * a:.1f}" for a in r["mtt"]) + " | "
                         + ", ".join(f"{100 * a:.1f}" for a in r["random"]) + f" | {r['syn_lr']:.4f} |")
        seeds_m = [st.mean(json.loads(p.read_text())["mtt"]) for p in mtt]
        seeds_r = [st.mean(json.loads(p.read_text())["random"]) for p in mtt]
        lines += [f"| **mean ± std over seeds** | **{100 * st.mean(seeds_m):.1f} ± {100 * st.pstdev(seeds_m):.1f}** | "
                  f"**{100 * st.mean(seeds_r):.1f} ± {100 * st.pstdev(seeds_r):.1f}** | |", ""]
    return "\n".join(lines)

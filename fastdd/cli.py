"""The ``fastdd`` command line: ``fastdd <command> --help`` for each command's options."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import FastDDError
from .io import atomic_write_json


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist5k", help="data set name (default: mnist5k, embedded)")
    p.add_argument("--root", default=None, help="folder holding the data (not needed for mnist5k / digits)")
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST/FashionMNIST/SVHN/CIFAR into --root")
    p.add_argument("--zca", action="store_true", help="ZCA-whiten (fitted on the train split) instead of mean/std")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _load(args):
    from .data import load_dataset
    return load_dataset(args.dataset, args.root, download=args.download, zca=args.zca, device=args.device)


def cmd_experts(args) -> int:
    from .experts import train_experts
    from .runs import RunDir
    from .models import model_for
    ds = _load(args)
    model_for(ds, args.model)  # a model that does not fit the data fails here, before anything is written
    RunDir(args.out, vars(args) | {"command": "experts"})
    buf = train_experts(ds, args.model, num_experts=args.num_experts, epochs=args.epochs, out=args.out, seed=args.seed,
                        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, batch_size=args.batch_size,
                        decay=args.decay, augment=args.augment, shard_size=args.shard_size)
    accs = buf.manifest["test_accuracy"]
    print(f"{buf}\nfinal test accuracy per expert: " + ", ".join(f"{100 * a:.2f}%" for a in accs))
    return 0


def cmd_select(args) -> int:
    from .select import real_subset, select
    ds = _load(args)
    idx = select(ds, args.method, args.ipc, seed=args.seed)
    syn = real_subset(ds, idx, method=args.method, ipc=args.ipc, seed=args.seed)
    path = syn.save(args.out)
    print(f"selected {len(idx)} images ({args.ipc} per class, {args.method}) from {ds.name} -> {path}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate
    from .runs import RunDir
    from .select import random_indices, real_subset
    from .synthetic import SyntheticSet
    ds = _load(args)
    if (args.syn is None) == (args.random_ipc is None):
        raise SystemExit("fastdd evaluate: give exactly one of --syn FOLDER or --random-ipc N")
    if args.syn is not None:
        syn = SyntheticSet.load(args.syn, device=args.device)
    else:
        syn = real_subset(ds, random_indices(ds, args.random_ipc, seed=args.seed))
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "model", "batch_size")}
    res = evaluate(syn, ds, args.protocol, num_eval=args.num_eval, seed=args.seed, random_baseline=args.random_baseline,
                   **overrides)
    print(res)
    if args.out:
        run = RunDir(args.out, vars(args) | {"command": "evaluate"})
        atomic_write_json(run / "result.json", res.to_dict())
        log = run.csv("log.csv", ["set", "run", "test_accuracy"])
        for name, r in (("evaluated", res), ("random", res.random)):
            for i, a in enumerate(r.accuracies if r is not None else []):
                log.log(set=name, run=i, test_accuracy=a)
        log.close()
        print(f"result -> {run / 'result.json'}")
    return 0


def cmd_import_buffer(args) -> int:
    from .experts import import_reference_buffer
    from .models import build_model
    kw = json.loads(args.model_kwargs) if args.model_kwargs else {}
    net = build_model(args.model, in_channels=args.channels, num_classes=args.num_classes,
                      im_size=(args.im_size, args.im_size), **kw)
    buf = import_reference_buffer(args.files, net, args.out, dataset=args.dataset)
    print(f"imported {buf}")
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import quickstart
    quickstart(args.out, num_experts=args.num_experts, expert_epochs=args.expert_epochs, eval_epochs=args.eval_epochs,
               num_eval=args.num_eval, seed=args.seed)
    return 0


def cmd_datasets(args) -> int:
    from .data import DATASETS, EMBEDDED
    for name in DATASETS:
        print(f"{name:14s} {'embedded, no download' if name in EMBEDDED else 'local folder (--root)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    ap = argparse.ArgumentParser(prog="fastdd", description="Fast, memory-scalable dataset distillation.")
    ap.add_argument("--version", action="version", version=f"fastdd {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("quickstart", help="experts + evaluation on the embedded MNIST digits, with a report",
                       description="Train a few experts on mnist5k, evaluate random subsets, write report.md.")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--num-experts", type=int, default=2)
    p.add_argument("--expert-epochs", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=200)
    p.add_argument("--num-eval", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("experts", help="train expert trajectories", description="Train expert networks on the real "
                       "train split; snapshot their parameters at init and after every epoch.")
    _data_args(p)
    p.add_argument("--model", default="convnet")
    p.add_argument("--num-experts", type=int, default=10)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--decay", action="store_true", help="lr x0.1 once at epoch epochs//2+1")
    p.add_argument("--augment", choices=["dsa"], default=None)
    p.add_argument("--shard-size", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/experts", help="folder for the trajectories (resumes if it has some)")
    p.set_defaults(func=cmd_experts)

    p = sub.add_parser("select", help="select real images per class and save them as a set",
                       description="Class-balanced selection of real training images.")
    _data_args(p)
    p.add_argument("--method", default="random")
    p.add_argument("--ipc", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("evaluate", help="evaluate a saved set (or a random subset) under a protocol",
                       description="Train fresh networks on a set; report final-epoch test accuracy, mean ± std.")
    _data_args(p)
    p.add_argument("--syn", default=None, help="folder of a saved SyntheticSet")
    p.add_argument("--random-ipc", type=int, default=None, help="evaluate a random real subset of this IPC instead")
    p.add_argument("--protocol", default="mtt", choices=["mtt", "selmatch"])
    p.add_argument("--num-eval", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--model", default=None, help="override the protocol's network")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--random-baseline", action="store_true", help="also evaluate random real subsets of the same IPC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder for config.yaml and result.json")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("import-buffer", help="convert the reference code's replay_buffer_*.pt files",
                       description="Import MTT-style replay_buffer_*.pt expert files (read with weights_only=True).")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="convnet")
    p.add_argument("--model-kwargs", default=None, help='JSON, e.g. \'{"depth": 4}\'')
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--im-size", type=int, default=32)
    p.add_argument("--dataset", default="unknown")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_import_buffer)

    p = sub.add_parser("datasets", help="list the data sets fastdd can load")
    p.set_defaults(func=cmd_datasets)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FastDDError, ValueError, FileNotFoundError) as e:
        print(f"fastdd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

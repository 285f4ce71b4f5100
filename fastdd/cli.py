"""The ``fastdd`` command line: ``fastdd <command> --help`` for each command's options."""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .distributed import is_main
from .errors import FastDDError
from .io import atomic_write_json, check_out_folder
from .options import parse_json_object
from .version import __version__

Subparsers = argparse._SubParsersAction  # what add_subparsers returns: each command adds its parser to it


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist5k", help="data set name (default: mnist5k, embedded)")
    p.add_argument("--root", default=None, help="folder holding the data (not needed for mnist5k / digits)")
    p.add_argument(
        "--download", action="store_true", help="let torchvision download MNIST/FashionMNIST/SVHN/CIFAR into --root"
    )
    p.add_argument("--zca", action="store_true", help="ZCA-whiten (fitted on the train split) instead of mean/std")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _eval_args(p: argparse.ArgumentParser) -> None:
    """The evaluation protocol and its overrides."""
    p.add_argument(
        "--protocol",
        default="mtt",
        choices=["mtt", "selmatch", "soft", "kd", "dd"],
        help="mtt (DC/DSA/DM/MTT), selmatch, soft (train on the set's soft labels), kd (a student on a "
        "teacher's region soft labels: needs --teacher; SRe2L, RDED), dd (replay a DD set)",
    )
    p.add_argument("--num-eval", type=_at_least(1), default=5)
    p.add_argument(
        "--epochs",
        type=_at_least(0),
        default=None,
        help="override the protocol's epochs E (it trains E + 1 passes, as the reference code does: 0 trains one)",
    )
    p.add_argument("--lr", type=_positive, default=None, help="override the learning rate")
    p.add_argument("--model", default=None, help="override the protocol's network")
    p.add_argument("--batch-size", type=_at_least(1), default=None)
    _kd_args(p)


def _kd_args(p: argparse.ArgumentParser) -> None:
    """The ``kd`` protocol's teacher and settings (docs/evaluate.md)."""
    from .relabel import KDProtocol

    d = KDProtocol()
    p.add_argument("--teacher", default=None, help="kd: the teacher's folder (fastdd teacher)")
    p.add_argument(
        "--label-mode",
        choices=["online", "stored"],
        default=None,
        help=f"kd: the teacher labels each augmented batch (online) or a relabel store replays "
        f"(default: {d.label_mode})",
    )
    p.add_argument("--store", default=None, help="kd: a relabel store of the set (fastdd relabel); implies stored")
    p.add_argument("--temperature", type=_positive, default=None, help=f"kd: T (default: {d.temperature:g})")
    p.add_argument(
        "--schedule",
        choices=["cosine", "half_cosine", "constant"],
        default=None,
        help=f"kd: AdamW's schedule (default: {d.schedule}; RDED's: half_cosine)",
    )
    p.add_argument(
        "--mix", choices=["cutmix", "mixup", "none"], default=None, help=f"kd: batch mixing (default: {d.mix})"
    )


def _at_least(low: int):
    """An argparse type: an integer >= ``low`` (the error names the option and the value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _number(text: str, check, want: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
    if not (math.isfinite(value) and check(value)):
        raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
    return value


def _positive(text: str) -> float:
    return _number(text, lambda v: v > 0, "a finite number > 0")


def _non_negative(text: str) -> float:
    return _number(text, lambda v: v >= 0, "a finite number >= 0")


def _fraction(text: str) -> float:
    return _number(text, lambda v: 0 < v < 1, "a fraction in (0, 1)")


def _share(text: str) -> float:
    return _number(text, lambda v: 0 < v <= 1, "a number in (0, 1]")


def _byte_count(text: str) -> int:
    from .engine import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _config(args) -> dict:
    """The parsed arguments as a plain dict for config.yaml."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def _load(args):
    from .data import load_dataset

    return load_dataset(args.dataset, args.root, download=args.download, zca=args.zca, device=args.device)


def _extractor(args, ds):
    """--extractor (an expert folder) or, without it, the default ConvNet trained --extractor-epochs epochs."""
    from .features import default_extractor, resolve_extractor

    if args.extractor:
        return resolve_extractor(ds, args.extractor)
    return default_extractor(ds, args.seed, epochs=args.extractor_epochs, show_progress=True)


def _overrides(args) -> dict:
    """The evaluation protocol's overrides (``None``: the protocol's own value); ``kd``: its settings, teacher and
    store (refused with the other protocols)."""
    over = {k: getattr(args, k) for k in ("epochs", "lr", "model", "batch_size")}
    kd = {k: getattr(args, k, None) for k in ("label_mode", "temperature", "schedule", "mix")}
    kd = {k: v for k, v in kd.items() if v is not None}
    if args.protocol != "kd":
        given = [f"--{k.replace('_', '-')}" for k in ("teacher", "store", *kd) if getattr(args, k, None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for --protocol kd only")
        return over
    if args.teacher is None:
        raise ValueError("--protocol kd trains on a teacher's soft labels: give --teacher FOLDER (fastdd teacher)")
    return {**over, **kd, "teacher": args.teacher, "store": args.store}


def cmd_experts(args) -> int:
    from .experts import train_experts
    from .models import model_for

    check_out_folder(args.out, "--out")
    ds = _load(args)
    kw = parse_json_object(args.model_kwargs, "--model-kwargs")
    curriculum = None if args.curriculum is None else parse_json_object(args.curriculum, "--curriculum")
    if (curriculum is None) != (args.scores is None):
        raise ValueError("--curriculum and --scores go together (PAD: --curriculum '{}' --scores el2n)")
    if args.scores == "forgetting":
        raise ValueError("--scores forgetting: compute them with `fastdd sweep window` first and pass the .npy")
    try:
        model_for(ds, args.model, **kw)  # a model that does not fit the data fails here, before anything is written
    except TypeError as e:
        raise ValueError(f"--model-kwargs: {e}") from None
    scores = None if args.scores is None else _scores_for(args, ds)  # a bad file fails before training
    buf = train_experts(
        ds,
        args.model,
        num_experts=args.num_experts,
        epochs=args.epochs,
        out=args.out,
        seed=args.seed,
        model_kwargs=kw,
        resume=not args.no_resume,
        run_config=_config(args),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        decay=args.decay,
        augment=args.augment,
        sam_rho=args.sam_rho,
        sam_alpha=args.sam_alpha,
        sam_adaptive=args.sam_adaptive,
        curriculum=curriculum,
        scores=scores,
        shard_size=args.shard_size,
        loggers=args.log,
    )
    accs = buf.manifest["test_accuracy"]
    _say(f"{buf}\nfinal test accuracy per expert: " + ", ".join(f"{100 * a:.2f}%" for a in accs))
    return 0


def cmd_teacher(args) -> int:
    from .teacher import train_teacher

    check_out_folder(args.out, "--out")
    ds = _load(args)
    teacher = train_teacher(
        ds,
        args.model,
        model_kwargs=parse_json_object(args.model_kwargs, "--model-kwargs"),
        out=args.out,
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        augment=args.augment,
        resume=not args.no_resume,
        checkpoint_every=args.checkpoint_every,
    )
    _say(f"{teacher} -> {args.out}")
    return 0


def cmd_relabel(args) -> int:
    from .relabel import relabel_set
    from .synthetic import SyntheticSet
    from .teacher import load_teacher

    check_out_folder(args.out, "--out")
    ds = _load(args)
    syn = SyntheticSet.load(args.syn, device=args.device)
    teacher = load_teacher(args.teacher, ds)
    over = {k: getattr(args, k) for k in ("epochs", "batch_size", "temperature", "schedule", "mix")}
    store = relabel_set(
        syn, ds, teacher, args.out, seed=args.seed, show_progress=True, **{k: v for k, v in over.items() if v}
    )
    _say(f"{store.describe()} -> {args.out}")
    return 0


def cmd_select(args) -> int:
    from .selection import real_subset, select

    check_out_folder(args.out, "--out")
    ds = _load(args)
    extra: dict[str, Any] = {}
    if getattr(args, "scores", None):
        from .scores import load_scores

        extra["scores"] = load_scores(args.scores, ds)
    for k in ("beta", "hardest"):
        if getattr(args, k, None) is not None:
            extra[k] = getattr(args, k)
    if getattr(args, "easiest", False):
        extra["easiest"] = True
    if args.method in ("herding", "kcenter", "kmeans"):
        from .selection import check_ipc

        check_ipc(ds, args.ipc)  # before training an extractor
        extra["extractor"] = _extractor(args, ds)
    try:
        idx = select(ds, args.method, args.ipc, seed=args.seed, show_progress=True, **extra)
    except TypeError as e:  # an option the method does not use
        raise ValueError(str(e)) from e
    meta = {
        k: v
        for k, v in (("beta", getattr(args, "beta", None)), ("scores", getattr(args, "scores", None)))
        if v is not None
    }
    syn = real_subset(ds, idx, method=args.method, ipc=args.ipc, seed=args.seed, **meta)
    path = syn.save(args.out)
    print(f"selected {len(idx)} images ({args.ipc} per class, {args.method}) from {ds.name} -> {path}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate
    from .runs import RunDir
    from .selection import random_indices, real_subset
    from .synthetic import SyntheticSet
    from .tracking import Tracker

    if (args.syn is None) == (args.random_ipc is None):
        raise ValueError("give exactly one of --syn FOLDER or --random-ipc N")
    if args.out:
        check_out_folder(args.out, "--out")
    if args.log and not args.out:
        raise ValueError("--log writes into the run folder: give --out")
    tracker = Tracker(args.log)  # a missing extra fails before the evaluation runs
    ds = _load(args)
    if args.val_fraction:  # carved first, so that a --random-ipc subset comes from what is left
        ds = ds.with_validation(args.val_fraction, seed=args.seed)
    if args.syn is not None:
        syn = SyntheticSet.load(args.syn, device=args.device)
    else:
        syn = real_subset(ds, random_indices(ds, args.random_ipc, seed=args.seed))
    if args.protocol == "dd":
        if args.random_baseline or args.real_baseline or args.models or args.val_fraction:
            raise ValueError(
                "--protocol dd replays a DD set's steps on the test split; it takes no "
                "baselines, --models or --val-fraction"
            )
        res = evaluate(syn, ds, "dd", num_eval=args.num_eval, seed=args.seed, experts=args.experts)
    else:
        res = evaluate(
            syn,
            ds,
            args.protocol,
            num_eval=args.num_eval,
            seed=args.seed,
            random_baseline=True if args.random_baseline else None,  # None: on for kd (relabelled), else off
            real_baseline=args.real_baseline,
            real_epochs=args.real_epochs,
            split="val" if args.val_fraction else "test",
            models=args.models,
            **_overrides(args),
        )
    if not is_main():
        return 0
    print(res)
    if args.out:
        run = RunDir(args.out, _config(args))
        atomic_write_json(run / "result.json", res.to_dict())
        log = run.csv("log.csv", ["set", "run", "test_accuracy"])
        per_model = res.results if hasattr(res, "results") else {None: res}
        for model, one in per_model.items():
            for name, r in (("evaluated", one), ("random", one.random), ("real", one.real), ("hard labels", one.hard)):
                for i, a in enumerate(r.accuracies if r is not None else []):
                    log.log(set=name if model is None else f"{model}: {name}", run=i, test_accuracy=a)
        log.close()
        with tracker:
            tracker.start(run.path)
            tracker.log_config(_config(args))
            tracker.log_evaluation(res)  # each run's accuracy at its index, the means and scores as the summary
        print(f"result -> {run / 'result.json'}")
    return 0


COMPUTED_SCORES = ("forgetting", "el2n", "grand")  # --scores values that compute the scores (sweep window)


def _scores_for(args, ds):
    """The --scores argument: a file, or 'forgetting' / 'el2n' / 'grand' to compute the scores (saved under --out)."""
    from .scores import Scores, el2n_scores, forgetting_scores, grand_scores, load_scores, save_scores

    if args.scores in ("el2n", "grand"):
        compute = el2n_scores if args.scores == "el2n" else grand_scores
        epochs = {} if args.score_epochs is None else {"epochs": args.score_epochs}
        s = compute(ds, num_runs=args.score_runs, seed=args.seed, **epochs)
        path = save_scores(s, f"{args.out}/{args.scores}.npz", labels=ds.train.labels)
        print(f"{args.scores} scores ({s.meta['epochs']} epochs x {args.score_runs} runs) -> {path}")
        return Scores(s.values, hardest=s.hardest, kind=s.kind, source=str(path), meta=s.meta)
    if args.scores == "forgetting":
        import io

        import numpy as np

        from .io import atomic_write_bytes

        vals = forgetting_scores(ds, epochs=args.forgetting_epochs, runs=args.forgetting_runs, seed=args.seed)
        buf = io.BytesIO()
        np.save(buf, vals.numpy())
        atomic_write_bytes(f"{args.out}/forgetting.npy", buf.getvalue())
        print(
            f"forgetting scores ({args.forgetting_epochs} epochs x {args.forgetting_runs} runs) -> "
            f"{args.out}/forgetting.npy"
        )
        return Scores(vals, hardest="high", kind="forgetting", source=f"{args.out}/forgetting.npy")
    return load_scores(args.scores, ds)


def cmd_sweep_window(args) -> int:
    from .evaluation import EvalResult
    from .runs import RunDir
    from .scores import Scores
    from .selection import check_ipc
    from .window_sweep import sweep_window, window_betas

    check_out_folder(args.out, "--out")
    ds = _load(args)
    check_ipc(ds, args.ipc)
    scores = _scores_for(args, ds) if args.scores not in COMPUTED_SCORES else None  # a bad file fails before --out
    RunDir(args.out, _config(args) | {"command": "sweep window"})
    if scores is None:
        scores = _scores_for(args, ds)
    if args.hardest is not None and args.hardest != scores.hardest:
        scores = Scores(scores.values, hardest=args.hardest, kind=scores.kind, source=scores.source)
    betas = window_betas(ds, args.ipc, args.betas, args.beta_step, args.beta_max)
    print(
        f"window sweep on {ds.name}, ipc {args.ipc}, {scores.kind} scores (hardest={scores.hardest}), "
        f"{len(betas)} betas: {', '.join(f'{b:g}' for b in betas)}"
    )

    def report(beta: float, res: EvalResult, val: EvalResult | None) -> None:
        start = int(args.ipc * beta)
        also = "" if val is None else f"; validation {100 * val.mean:.2f} ± {100 * val.std:.2f} %"
        print(f"beta {beta:g} (ranks {start}..{start + args.ipc - 1}): {res}{also}")

    sweep = sweep_window(
        ds,
        args.ipc,
        scores,
        betas,
        protocol=args.protocol,
        num_eval=args.num_eval,
        seed=args.seed,
        out=args.out,
        on_result=report,
        **_overrides(args),
    )
    best, run = sweep.best, Path(args.out)
    on = "the validation split" if sweep.best_beta_on == "val" else "the test split (no validation split)"
    print(
        f"best beta: {sweep.best_beta:g} ({100 * best.mean:.2f} ± {100 * best.std:.2f} %), chosen on {on} -> "
        f"{run / 'sweep.csv'}, {run / 'sweep.png'}"
    )
    return 0


def cmd_coverage(args) -> int:
    from .knn_coverage import coverage
    from .runs import RunDir
    from .selection import random_indices, real_subset
    from .synthetic import SyntheticSet

    if not args.syn and not args.random_ipc:
        raise ValueError("give --syn FOLDER [FOLDER ...] and/or --random-ipc N [N ...]")
    check_out_folder(args.out, "--out")
    ds = _load(args)
    sets = []  # (name, method, set)
    for path in args.syn or []:
        syn = SyntheticSet.load(path, device=args.device)
        sets.append((str(path), syn.meta.get("method", "unknown"), syn))
    for ipc in args.random_ipc or []:
        sets.append((f"random ipc {ipc}", "random", real_subset(ds, random_indices(ds, ipc, seed=args.seed))))
    run = RunDir(args.out, _config(args) | {"command": "coverage"})
    scores = None
    if args.scores:
        from .scores import load_scores

        scores = load_scores(args.scores, ds)
    fn = _extractor(args, ds)
    print(f"feature space: {getattr(fn, 'description', fn)}")
    results = coverage([syn for _, _, syn in sets], ds, fn, scores, split=args.split, show_progress=True)
    radius = results[0].radius
    print(f"radius r = {radius:.6g} (mean nearest-neighbour distance among {len(ds.train)} train features)")
    fields = ["set", "method", "ipc", "num_images", "radius", "train", "train_easy", "train_hard", "test"]
    log = run.csv("coverage.csv", fields)
    rows = []
    for (name, method, syn), res in zip(sets, results):
        row = {"set": name, "method": method, "ipc": syn.ipc, "num_images": len(syn), "radius": radius}
        row |= {k: ("" if getattr(res, k) is None else getattr(res, k)) for k in fields[5:]}
        log.log(**row)
        rows.append(row)
        print(f"{name}: {res}")
    log.close()
    pngs = _coverage_plots(run, ds.name, rows, radius, None if scores is None or args.split == "test" else scores.kind)
    print(f"-> {run / 'coverage.csv'}, " + ", ".join(str(p) for p in pngs))
    return 0


def _coverage_plots(run, ds_name: str, rows: list[dict], radius: float, scores_kind: str | None) -> list[Path]:
    """coverage_vs_ipc.png (coverage in % against IPC, per method and split) and, when scores of this kind split
    the train split into halves, coverage_easy_hard.png; returns the paths written."""
    from .plots import save_curves

    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    plots = [
        ("coverage_vs_ipc.png", {"train": "(train)", "test": "(test)"}, f"coverage of {ds_name} (r = {radius:.3g})")
    ]
    if scores_kind is not None:
        halves = {"train_easy": "easy", "train_hard": "hard"}
        plots.append(("coverage_easy_hard.png", halves, f"{ds_name} train: easy vs hard half ({scores_kind})"))
    for name, columns, title in plots:
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
        for method, rs in by_method.items():
            rs = sorted(rs, key=lambda r: r["ipc"])
            for key, label in columns.items():
                if rs[0][key] != "":  # a split not measured (--split)
                    series[f"{method} {label}"] = ([r["ipc"] for r in rs], [100 * r[key] for r in rs])
        save_curves(run / name, series, xlabel="images per class", ylabel="coverage (%)", title=title)
    return [run / name for name, _, _ in plots]


def cmd_import_buffer(args) -> int:
    from .experts import import_reference_buffer
    from .models import build_model

    kw = parse_json_object(args.model_kwargs, "--model-kwargs")
    if len(args.im_size) > 2:
        raise ValueError(f"--im-size takes H [W], got {len(args.im_size)} numbers")
    size = args.im_size if len(args.im_size) == 2 else args.im_size * 2
    try:
        net = build_model(
            args.model, in_channels=args.channels, num_classes=args.num_classes, im_size=tuple(size), **kw
        )
    except TypeError as e:
        raise ValueError(f"--model-kwargs: {e}") from None
    check_out_folder(args.out, "--out")
    buf = import_reference_buffer(args.files, net, args.out, dataset=args.dataset, shard_size=args.shard_size)
    print(f"imported {buf}")
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import decoupled_example, quickstart, selmatch_example

    if args.example == "decoupled":
        decoupled_example(
            args.out or "runs/quickstart-decoupled",
            ipc=args.ipc or 1,
            teacher_epochs=args.teacher_epochs,
            iterations=args.iterations or 1000,
            eval_epochs=args.eval_epochs or 300,
            num_eval=args.num_eval or 3,
            seed=args.seed,
        )
        return 0
    if args.example == "dm":
        quickstart(
            args.out or "runs/quickstart",
            iterations=args.iterations or 300,
            eval_epochs=args.eval_epochs or 300,
            num_eval=args.num_eval or 3,
            seed=args.seed,
        )
        return 0
    selmatch_example(
        args.out or "runs/quickstart-selmatch",
        ipc=args.ipc or 10,
        num_experts=args.num_experts,
        expert_epochs=args.expert_epochs,
        iterations=args.iterations or 100,
        alpha=args.alpha,
        beta=args.beta,
        eval_epochs=args.eval_epochs,
        num_eval=args.num_eval or 3,
        seed=args.seed,
    )
    return 0


def cmd_distill(args) -> int:
    from .tracking import Tracker

    with Tracker(args.log) as tracker:  # the loop starts the loggers; they close after the evaluation
        return _distill(args, tracker)


def _distill(args, tracker) -> int:
    from .distillation import distill
    from .distillation.registry import RunConfig, SelectConfig
    from .engine import EngineConfig
    from .runs import RunDir

    options = parse_json_object(args.options, "--options")
    select_options = parse_json_object(args.select_options, "--select-options") if args.select_options else None
    check_out_folder(args.out, "--out")
    ds = _load(args)
    scores = None
    if args.scores:
        from .scores import load_scores

        scores = load_scores(args.scores, ds)
    flags = {
        k: v
        for k, v in (
            ("theta_storage", args.theta_storage),
            ("memory_budget", args.memory_budget),
            ("deterministic", args.deterministic or None),
        )
        if v is not None
    }
    for key in flags:  # the engine flags win over the same keys in --options
        options.pop(key, None)
    engine = EngineConfig(**flags)
    if args.val_fraction:
        ds = ds.with_validation(args.val_fraction, seed=args.seed)
    select = SelectConfig(args.select_every, args.select_protocol, select_options or {}) if args.select_every else None
    run = RunConfig(
        out=args.out,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        seed=args.seed,
        select=select,
        loggers=tracker.loggers,
        log_images_every=args.log_images_every,
    )
    try:
        syn = distill(
            ds,
            args.method,
            args.ipc,
            experts=args.experts,
            iterations=args.iterations,
            preset=args.preset,
            scores=scores,
            engine=engine,
            run=run,
            teacher=args.teacher,
            **options,
        )
    except TypeError as e:  # an --options key the method does not have, or a value of the wrong type
        raise ValueError(f"--options: {e}") from None
    if is_main():  # the set is saved before anything else can fail
        RunDir(args.out, _config(args))
        syn.save(Path(args.out) / "synthetic", denormalize=ds.denormalize)
        _curves(Path(args.out))
        print(f"distilled {len(syn)} images ({syn.meta['method']}, ipc {syn.ipc}) -> {Path(args.out) / 'synthetic'}")
    if args.evaluate:  # every rank takes its share of the evaluation runs
        from .evaluation import evaluate

        protocol = args.protocol or (
            "dd"
            if syn.meta["method"] == "dd"
            else "kd"
            if args.teacher is not None
            else "soft"
            if syn.labels.dim() == 2
            else "mtt"
        )
        if protocol == "dd":
            res = evaluate(syn, ds, "dd", num_eval=args.num_eval, seed=args.seed, experts=args.experts)
        elif protocol == "kd":
            if args.teacher is None:
                raise ValueError("--protocol kd needs --teacher FOLDER")
            res = evaluate(syn, ds, "kd", num_eval=args.num_eval, seed=args.seed, teacher=args.teacher)
        else:
            res = evaluate(syn, ds, protocol, num_eval=args.num_eval, seed=args.seed, random_baseline=True)
        _say(str(res))
        tracker.log_evaluation(res, runs=False)  # rank 0's loggers: the means and scores as the summary
    return 0


def _curves(folder: Path) -> None:
    """loss.png and lr.png from a run's log.csv."""
    import csv

    from .plots import save_curves

    rows = list(csv.DictReader(open(folder / "log.csv")))
    if not rows:
        return
    its = [int(r["iteration"]) for r in rows]
    save_curves(folder / "loss.png", {"loss": (its, [float(r["loss"]) for r in rows])}, "iteration", "loss")
    key = next((k for k in ("syn_lr", "mean_lr") if k in rows[0]), None)
    if key is not None:  # methods that learn a rate (the MTT family, DD)
        save_curves(folder / "lr.png", {key: (its, [float(r[key]) for r in rows])}, "iteration", "learning rate")


def _bench_mode(text: str) -> str:
    from .bench import mode_label

    try:
        return mode_label(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def cmd_bench(args) -> int:
    from .bench import memory_scaling

    memory_scaling(
        args.steps,
        args.modes,
        batch=args.batch,
        im_size=args.im_size,
        channels=args.channels,
        width=args.width,
        device=args.device,
        max_mib=args.max_mib,
        out=args.out,
        ipc=args.ipc,
        num_classes=args.num_classes,
        depth=args.depth,
        dsa=args.dsa,
        max_gib=args.max_gib,
        max_ipc_steps=args.max_gib_steps,
        timeout=args.timeout,
    )
    print(f"table (csv, md), json and plot -> {args.out}")
    return 0


def cmd_datasets(args) -> int:
    from .data import DATASETS, EMBEDDED

    for name in DATASETS:
        print(f"{name:14s} {'embedded, no download' if name in EMBEDDED else 'local folder (--root)'}")
    return 0


def cmd_env(args) -> int:
    import json

    from .environment import format_report, report

    r = report(self_check=not args.no_check)
    print(json.dumps(r, indent=1) if args.json else format_report(r))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fastdd`` parser: one sub-command per ``cmd_*`` function; every option's ``--help`` says its default."""
    ap = argparse.ArgumentParser(prog="fastdd", description="Fast, memory-scalable dataset distillation.")
    ap.add_argument("--version", action="version", version=f"fastdd {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    for add in (
        _add_quickstart,
        _add_distill,
        _add_bench,
        _add_experts,
        _add_teacher,
        _add_relabel,
        _add_select,
        _add_evaluate,
        _add_sweep,
        _add_coverage,
        _add_import_buffer,
        _add_datasets,
        _add_env,
    ):
        add(sub)
    _show_defaults(ap)
    return ap


def _seed_and_out(p: argparse.ArgumentParser, **out: Any) -> None:
    """``--seed`` (default 0) and ``--out`` with the command's own ``required`` / ``default`` / ``help``."""
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--out", **out)


def _extractor_args(p: argparse.ArgumentParser, used_by: str = "") -> None:
    """``--extractor`` and ``--extractor-epochs``: the feature space (``used_by`` prefixes the help)."""
    p.add_argument(
        "--extractor",
        default=None,
        help=f"{used_by}expert folder whose final snapshot gives the features "
        "(default: a ConvNet trained --extractor-epochs epochs on the train split)",
    )
    p.add_argument(
        "--extractor-epochs", type=_at_least(1), default=5, help="epochs of the default extractor (default: 5)"
    )


def _add_quickstart(sub: Subparsers) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline on the embedded MNIST digits, with a report",
        description="On mnist5k: DM at one image per class against one random real digit per class "
        "under the same protocol (default, about a minute on 2 CPU cores), --example "
        "selmatch (experts, difficulty scores, SelMatch and MTT at IPC 10) or --example decoupled (a teacher, "
        "RDED and SRe2L under its soft labels beside a relabelled random subset). Writes report.md and PNGs.",
    )
    p.add_argument(
        "--example",
        choices=["dm", "selmatch", "decoupled"],
        default="dm",
        help="dm (default, about a minute on 2 CPU cores): DM at IPC 1 against random real digits; "
        "selmatch (about 13 min): experts, forgetting scores, then SelMatch and MTT at IPC 10, each beside "
        "a random real subset; decoupled (about 2 min): a batch-norm teacher, then RDED and SRe2L at IPC 1 "
        "under the kd protocol beside a random real subset relabelled by the same teacher; a rerun into the "
        "same --out reuses what it made (experts, scores, teacher, sets)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="run folder (default runs/quickstart, runs/quickstart-selmatch or runs/quickstart-decoupled)",
    )
    p.add_argument(
        "--iterations",
        type=_at_least(1),
        default=None,
        help="distillation iterations (dm 300, selmatch 100, decoupled: SRe2L's 1000)",
    )
    p.add_argument(
        "--eval-epochs",
        type=_at_least(1),
        default=None,
        help="evaluation epochs (dm 300; selmatch: the equal-compute rule, 800 at IPC 10; decoupled: kd's 300)",
    )
    p.add_argument("--num-eval", type=_at_least(1), default=None, help="evaluation runs per set (default 3)")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument(
        "--ipc", type=_at_least(1), default=None, help="images per class (selmatch example 10, decoupled example 1)"
    )
    p.add_argument("--teacher-epochs", type=_at_least(1), default=20, help="decoupled example: the teacher's epochs")
    p.add_argument("--num-experts", type=_at_least(1), default=5, help="selmatch example")
    p.add_argument("--expert-epochs", type=_at_least(3), default=8, help="selmatch example")
    p.add_argument("--alpha", type=_share, default=0.5, help="selmatch example: fraction of each class distilled")
    p.add_argument(
        "--beta",
        type=_non_negative,
        default=6.0,
        help="selmatch example: window start, in multiples of ipc (6: "
        "past the ~55 hardest digits per class, i.e. an easy window, as SelMatch prefers at small ipc)",
    )
    p.set_defaults(func=cmd_quickstart)


def _add_distill(sub: Subparsers) -> None:
    from .distillation.registry import get_method, methods

    names = methods()
    p = sub.add_parser(
        "distill",
        help=f"distil a data set ({', '.join(names)})",
        description="Distil with a method or a preset; writes log.csv, checkpoints, loss.png, lr.png "
        "and config.yaml into --out, and the set (with images.png) into --out/synthetic. "
        "Methods: " + "; ".join(f"{n}: {get_method(n).description}" for n in names),
    )
    _data_args(p)
    p.add_argument(
        "--method",
        default="mtt",
        choices=names,
        help="a registered method (fastdd.methods(); plugins join through the entry-point group fastdd.methods)",
    )
    p.add_argument("--preset", default=None, help="a name from fastdd.PRESETS (sets method, ipc, options)")
    p.add_argument("--ipc", type=_at_least(1), default=None, help="images per class (default: the preset's)")
    need_experts = [n for n in names if get_method(n).needs_experts]
    p.add_argument(
        "--experts",
        default=None,
        help=f"expert folder (fastdd experts / import-buffer); required by {', '.join(need_experts) or 'none'} "
        "and by dd with init_mode 'pretrained'",
    )
    need_teacher = [n for n in names if get_method(n).needs_teacher]
    p.add_argument(
        "--teacher",
        default=None,
        help=f"teacher folder (fastdd teacher); required by {', '.join(need_teacher) or 'none'}, "
        "and used by --evaluate with --protocol kd",
    )
    p.add_argument(
        "--scores",
        default=None,
        help="difficulty score file for SelMatch (.npz C-scores, .npy forgetting counts, or .npz from "
        "fastdd.save_scores, e.g. EL2N / GraNd)",
    )
    p.add_argument(
        "--iterations", type=_at_least(1), default=None, help="outer iterations (default: the preset's, else 1000)"
    )
    p.add_argument("--options", default=None, help='JSON method options, e.g. \'{"syn_steps": 20, "mode": "adjoint"}\'')
    _seed_and_out(p, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--checkpoint-every", type=_at_least(1), default=100)
    _engine_args(p)
    _distill_selection_args(p)
    p.add_argument("--evaluate", action="store_true", help="evaluate the result (and a random subset) afterwards")
    p.add_argument(
        "--protocol",
        default=None,
        choices=["mtt", "selmatch", "soft", "kd", "dd"],
        help="evaluation protocol (default: dd for a DD set, kd with --teacher (a random subset relabelled by the "
        "same teacher beside it), soft for a soft-label set, else mtt)",
    )
    p.add_argument("--num-eval", type=_at_least(1), default=3)
    _log_args(p, images=True)
    p.set_defaults(func=cmd_distill)


def _log_args(p: argparse.ArgumentParser, images: bool = False) -> None:
    """``--log`` (experiment tracking into --out, docs/tracking.md) and, with ``images``, ``--log-images-every``."""
    from .tracking import LOGGER_NAMES

    p.add_argument(
        "--log",
        nargs="+",
        action="extend",
        choices=LOGGER_NAMES,
        default=None,
        metavar="LOGGER",
        help="experiment tracking into the run folder: tensorboard (--out/tensorboard), wandb (--out/wandb; "
        "WANDB_MODE=offline needs no account), csv (--out/csv); several as --log tensorboard csv or --log "
        'tensorboard --log csv; tensorboard and wandb need pip install "fastdd[tensorboard]" / '
        '"fastdd[wandb]" (default: none)',
    )
    if images:
        p.add_argument(
            "--log-images-every",
            type=_at_least(0),
            default=None,
            help="with --log: iterations between pictures of the set (default: --checkpoint-every; 0: none)",
        )


def _engine_args(p: argparse.ArgumentParser) -> None:
    """distill's engine flags (they win over the same keys in ``--options``)."""
    p.add_argument(
        "--theta-storage",
        default=None,
        choices=["auto", "checkpoint", "all", "host"],
        help="where the adjoint keeps the student's parameters: auto (default: all of them when small "
        "against one step's activations, else checkpoint), every ceil(sqrt(N))-th (checkpoint), all "
        "of them, or all in host memory (host: pinned on CUDA machines)",
    )
    p.add_argument(
        "--memory-budget",
        default=None,
        type=_byte_count,
        metavar="BYTES",
        help="what mode 'auto' may give a BPTT graph: bytes or e.g. 8GiB, 512MiB (default 4GiB); "
        "auto is decided once per run from this, never from the free memory",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic cuDNN / algorithms for the run (on CUDA: adjoint equals bptt, reruns agree)",
    )


def _distill_selection_args(p: argparse.ArgumentParser) -> None:
    """distill's validation split and the choice of the kept set on it."""
    p.add_argument(
        "--val-fraction",
        type=_fraction,
        default=None,
        help="carve a stratified validation split of this "
        "fraction out of train (seeded by --seed); distillation then uses only the rest",
    )
    p.add_argument(
        "--select-every",
        type=_at_least(1),
        default=None,
        help="keep the set that scores best on the validation "
        "split (needs --val-fraction), scoring every this many iterations; default: the last set",
    )
    p.add_argument(
        "--select-protocol",
        default="mtt",
        choices=["mtt", "selmatch", "soft"],
        help="protocol of the validation scoring (one run)",
    )
    p.add_argument(
        "--select-options", default=None, help="JSON evaluate() overrides for the scoring, e.g. '{\"epochs\": 300}'"
    )


def _add_bench(sub: Subparsers) -> None:
    p = sub.add_parser(
        "bench", help="benchmarks (memory-scaling)", description="Benchmarks that write a table and a plot."
    )
    bsub = p.add_subparsers(dest="bench", required=True, metavar="benchmark")
    b = bsub.add_parser(
        "memory-scaling",
        help="peak memory of one meta-gradient vs IPC, minibatch and unrolled steps, per mode",
        description="Peak memory of one MTT meta-gradient (random CIFAR-like data, ConvNet) for every mode x "
        "(IPC or minibatch) x unrolled steps, each point in a fresh process; points that would not fit "
        "--max-mib are predicted from a per-mode linear fit (peak = a + b * images_per_step * "
        "(steps for bptt | 1 for adjoint/tesla) + the parameter vectors kept), which is checked on a "
        "held-out measured point. Writes memory_scaling.csv/.md/.json/.png into --out.",
    )
    b.add_argument(
        "--steps", type=_at_least(1), nargs="+", default=[10, 20, 40, 80], help="unrolled steps (default 10 20 40 80)"
    )
    b.add_argument(
        "--modes",
        nargs="+",
        default=["adjoint", "bptt"],
        type=_bench_mode,
        metavar="MODE",
        help="bptt, adjoint, tesla; adjoint:STORAGE / tesla:STORAGE with STORAGE auto (default), checkpoint, "
        "all or host, e.g. adjoint:all (default: adjoint bptt)",
    )
    b.add_argument(
        "--ipc",
        type=_at_least(1),
        nargs="+",
        default=None,
        help="images per class: a set of num-classes x IPC images, each step a minibatch of --batch or, "
        "without --batch, all of them (as at high IPC)",
    )
    b.add_argument(
        "--batch",
        type=_at_least(1),
        nargs="+",
        default=None,
        help="images per unrolled step (minibatch); without --ipc the set is that many images (default 100)",
    )
    b.add_argument("--num-classes", type=_at_least(1), default=10)
    b.add_argument("--im-size", type=_at_least(1), default=32)
    b.add_argument("--channels", type=_at_least(1), default=3)
    b.add_argument("--width", type=_at_least(1), default=128)
    b.add_argument("--depth", type=_at_least(1), default=3)
    b.add_argument("--dsa", action="store_true", help="DSA augmentation at every step (as distillation runs)")
    b.add_argument("--device", default="cpu", help="cpu (peak resident memory) or cuda (max_memory_allocated)")
    _memory_limit_args(b)
    b.add_argument("--timeout", type=_positive, default=3600, help="seconds allowed per measured point")
    b.add_argument("--out", default="runs/bench/memory_scaling")
    b.set_defaults(func=cmd_bench)


def _memory_limit_args(b: argparse.ArgumentParser) -> None:
    """bench memory-scaling's limits: which points are measured, and the IPC that fits a memory size."""
    b.add_argument(
        "--max-mib",
        type=_positive,
        default=16000,
        help="measure a point only if the fit of the mode's points measured so far predicts at most "
        "this many MiB; beyond, predict it (default 16000)",
    )
    b.add_argument(
        "--max-gib",
        type=_positive,
        default=None,
        help="also report, per mode and step count, the largest IPC (batch = all images) the fit "
        "predicts to fit this many GiB",
    )
    b.add_argument(
        "--max-gib-steps",
        type=_at_least(1),
        nargs="+",
        default=None,
        metavar="N",
        help="unrolled steps at which --max-gib is answered (default: --steps; any N, from the fit)",
    )


def _score_args(p: argparse.ArgumentParser) -> None:
    """``--score-epochs`` and ``--score-runs``: how ``--scores el2n | grand`` computes the scores."""
    p.add_argument(
        "--score-epochs",
        type=_at_least(0),
        default=None,
        help="with --scores el2n / grand: training epochs before scoring (default: el2n 10, grand 0 = at init)",
    )
    p.add_argument("--score-runs", type=_at_least(1), default=2, help="with --scores el2n / grand (default: 2)")


def _add_experts(sub: Subparsers) -> None:
    p = sub.add_parser(
        "experts",
        help="train expert trajectories",
        description="Train expert networks on the real "
        "train split; snapshot their parameters at init and after every epoch.",
    )
    _data_args(p)
    p.add_argument("--model", default="convnet")
    p.add_argument("--model-kwargs", default=None, help="JSON model options, e.g. '{\"width\": 64}'")
    p.add_argument("--num-experts", type=_at_least(1), default=10)
    p.add_argument("--epochs", type=_at_least(1), default=20)
    p.add_argument("--lr", type=_positive, default=0.01)
    p.add_argument("--momentum", type=_non_negative, default=0.0)
    p.add_argument("--weight-decay", type=_non_negative, default=0.0)
    p.add_argument("--batch-size", type=_at_least(1), default=256)
    p.add_argument("--decay", action="store_true", help="lr x0.1 once at epoch epochs//2+1")
    p.add_argument("--augment", choices=["dsa"], default=None)
    p.add_argument(
        "--sam-rho",
        type=_non_negative,
        default=0.0,
        help="sharpness-aware (GSAM) radius rho; 0 = plain SGD (FTD's flat experts: 0.01)",
    )
    p.add_argument("--sam-alpha", type=_non_negative, default=0.0, help="GSAM alpha; 0 = plain SAM (FTD's code: 0.4)")
    p.add_argument("--sam-adaptive", action="store_true", help="ASAM's parameter-scaled perturbation (FTD's code: on)")
    p.add_argument(
        "--curriculum",
        default=None,
        help='PAD\'s difficulty curriculum as JSON, e.g. \'{"init_ratio": 0.75, "add_end_epoch": 20, '
        "\"remove_epochs\": [40, 60], \"remove_ratios\": [0.1, 0.2]}' ('{}' = those, PAD's README); needs --scores "
        "(default: none)",
    )
    p.add_argument(
        "--scores",
        default=None,
        help="with --curriculum: the difficulty of every training example: a score file (.npz from "
        "fastdd.save_scores, .npz C-scores, .npy forgetting counts) or 'el2n' / 'grand' to compute them "
        "(saved as --out/el2n.npz; resume with that file) (default: none)",
    )
    _score_args(p)
    p.add_argument("--shard-size", type=_at_least(1), default=10)
    _seed_and_out(p, default="runs/experts", help="folder for the trajectories (resumes if it has some)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue experts already in --out")
    _log_args(p)
    p.set_defaults(func=cmd_experts)


def _add_teacher(sub: Subparsers) -> None:
    from .teacher import AUGMENTS, TeacherConfig

    d = TeacherConfig()
    p = sub.add_parser(
        "teacher",
        help="train a teacher for sre2l, rded and the kd protocol",
        description="Train one network on the real train split (SGD with momentum, cosine to 0) and save it "
        "(teacher.safetensors + teacher.json with its data set, class order, recipe and test accuracy). A checkpoint "
        "is kept in --out while it trains; rerunning the same command continues it bitwise.",
    )
    _data_args(p)
    p.add_argument(
        "--model", default=d.model, help="network (batch norm for sre2l, which matches its running statistics)"
    )
    p.add_argument("--model-kwargs", default=None, help="JSON model options, e.g. '{\"width\": 32}'")
    p.add_argument("--epochs", type=_at_least(1), default=d.epochs)
    p.add_argument("--lr", type=_positive, default=d.lr)
    p.add_argument("--momentum", type=_non_negative, default=d.momentum)
    p.add_argument("--weight-decay", type=_non_negative, default=d.weight_decay)
    p.add_argument("--batch-size", type=_at_least(1), default=d.batch_size)
    p.add_argument("--augment", choices=list(AUGMENTS), default=d.augment)
    p.add_argument(
        "--checkpoint-every", type=_at_least(1), default=1, help="epochs between checkpoints (a killed run resumes)"
    )
    _seed_and_out(
        p, default="runs/teacher", help="folder for the teacher (resumes its checkpoint; a finished one is reused)"
    )
    p.add_argument("--no-resume", action="store_true", help="refuse a --out that already holds a teacher or checkpoint")
    p.set_defaults(func=cmd_teacher)


def _add_relabel(sub: Subparsers) -> None:
    p = sub.add_parser(
        "relabel",
        help="store a teacher's per-crop soft labels for a set (the kd protocol's stored mode)",
        description="For every epoch of the kd protocol: the crops, flips, mixes and batch order, and the "
        "teacher's fp16 logits on them, one checked safetensors file per epoch (FKD-style, as SRe2L stores them). "
        "Evaluate with: fastdd evaluate --protocol kd --teacher T --store OUT (the same settings and --seed).",
    )
    _data_args(p)
    p.add_argument("--syn", required=True, help="folder of a saved SyntheticSet")
    p.add_argument("--teacher", required=True, help="the teacher's folder (fastdd teacher)")
    p.add_argument("--epochs", type=_at_least(1), default=None, help="passes to label (default: the kd protocol's 300)")
    p.add_argument("--batch-size", type=_at_least(1), default=None, help="default: RDED's rule by IPC")
    p.add_argument("--temperature", type=_positive, default=None, help="recorded; applied at training (default 20)")
    p.add_argument("--schedule", choices=["cosine", "half_cosine", "constant"], default=None)
    p.add_argument("--mix", choices=["cutmix", "mixup", "none"], default=None)
    _seed_and_out(p, required=True, help="folder for the store")
    p.set_defaults(func=cmd_relabel)


def _add_select(sub: Subparsers) -> None:
    p = sub.add_parser(
        "select",
        help="select real images per class and save them as a set",
        description="Class-balanced selection of real training images.",
    )
    _data_args(p)
    p.add_argument(
        "--method",
        default="random",
        help="random | window | forgetting | el2n | grand | herding | kcenter | kmeans (default: random)",
    )
    p.add_argument("--ipc", type=_at_least(1), required=True)
    p.add_argument(
        "--scores",
        default=None,
        help="window / forgetting / el2n / grand: score file (.npz C-scores, .npy forgetting, .npz from "
        "fastdd.save_scores, e.g. el2n.npz / grand.npz written by fastdd sweep window)",
    )
    p.add_argument(
        "--beta",
        type=_non_negative,
        default=None,
        help="window: start at rank int(ipc*beta) of each class (forgetting / el2n / grand: default 0)",
    )
    p.add_argument(
        "--hardest",
        choices=["low", "high"],
        default=None,
        help="which end of the scores is hard (default: the file type's convention)",
    )
    p.add_argument(
        "--easiest",
        action="store_true",
        help="forgetting / el2n / grand: rank each class easiest first (the ipc easiest at beta 0)",
    )
    _extractor_args(p, used_by="herding / kcenter / kmeans: ")
    _seed_and_out(p, required=True)
    p.set_defaults(func=cmd_select)


def _add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a saved set (or a random subset) under a protocol",
        description="Train fresh networks on a set; report final-epoch test accuracy, mean ± std.",
    )
    _data_args(p)
    p.add_argument("--syn", default=None, help="folder of a saved SyntheticSet")
    p.add_argument(
        "--random-ipc", type=_at_least(1), default=None, help="evaluate a random real subset of this IPC instead"
    )
    _eval_args(p)
    p.add_argument(
        "--random-baseline",
        action="store_true",
        help="also evaluate random real subsets of the same IPC (gives IOR; always on with --protocol kd, "
        "relabelled by the same teacher)",
    )
    p.add_argument(
        "--real-baseline",
        action="store_true",
        help="also train on the whole real train split with hard labels (gives HLR, and LRS with --random-baseline)",
    )
    p.add_argument(
        "--real-epochs", type=_at_least(1), default=20, help="epochs of the real-split baseline (default 20)"
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="cross-architecture: evaluate on each, e.g. convnet resnet18bn vgg11 alexnet",
    )
    p.add_argument(
        "--val-fraction",
        type=_fraction,
        default=None,
        help="score on a stratified validation split of "
        "this fraction of train (seeded by --seed) instead of test, for tuning",
    )
    p.add_argument("--experts", default=None, help="protocol dd: experts of a DD set made with pretrained inits")
    _seed_and_out(p, default=None, help="run folder for config.yaml and result.json")
    _log_args(p)
    p.set_defaults(func=cmd_evaluate)


def _add_sweep(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sweep",
        help="hyper-parameter sweeps (window: SelMatch's sliding-window search over beta)",
        description="Sweeps that evaluate one setting per grid point.",
    )
    sweeps = p.add_subparsers(dest="sweep", required=True, metavar="sweep")
    p = sweeps.add_parser(
        "window",
        help="evaluate the window selection at every beta of a grid",
        description="For one IPC, select the window [int(ipc*beta), int(ipc*beta)+ipc) of every "
        "class (hardest first) at each beta and evaluate it; writes sweep.csv (beta, mean, std), "
        "sweep.json and sweep.png into --out and prints the best beta.",
    )
    _data_args(p)
    p.add_argument("--ipc", type=_at_least(1), required=True)
    p.add_argument(
        "--scores",
        required=True,
        help="score file (.npz C-scores, .npy forgetting counts, .npz from fastdd.save_scores), or "
        "'forgetting' / 'el2n' / 'grand' to compute them",
    )
    p.add_argument("--hardest", choices=["low", "high"], default=None, help="override the scores' convention")
    p.add_argument("--forgetting-epochs", type=_at_least(1), default=20, help="with --scores forgetting (default: 20)")
    p.add_argument("--forgetting-runs", type=_at_least(1), default=1, help="with --scores forgetting (default: 1)")
    _score_args(p)
    p.add_argument(
        "--betas",
        type=_non_negative,
        nargs="+",
        default=None,
        help="explicit grid (default: 0, 0.1, ... up to the largest beta whose window fits in the smallest class)",
    )
    p.add_argument("--beta-step", type=_positive, default=0.1)
    p.add_argument("--beta-max", type=_non_negative, default=None, help="cap the default grid")
    _eval_args(p)
    _seed_and_out(p, required=True, help="run folder")
    p.set_defaults(func=cmd_sweep_window)


def _add_coverage(sub: Subparsers) -> None:
    p = sub.add_parser(
        "coverage",
        help="coverage of the real data by saved sets / random subsets",
        description="Fraction of real samples within r (the mean nearest-neighbour distance among "
        "the real train features) of some image of the set, in a feature space; overall and, with "
        "--scores, for the easy / hard half of each class. Writes coverage.csv and PNG plots.",
    )
    _data_args(p)
    p.add_argument("--syn", nargs="+", default=None, help="folders of saved SyntheticSets")
    p.add_argument(
        "--random-ipc", type=_at_least(1), nargs="+", default=None, help="also random real subsets of these IPCs"
    )
    p.add_argument("--scores", default=None, help="score file for the easy / hard halves of the train split")
    _extractor_args(p)
    p.add_argument("--split", choices=["train", "test", "both"], default="both")
    _seed_and_out(p, required=True, help="run folder")
    p.set_defaults(func=cmd_coverage)


def _add_import_buffer(sub: Subparsers) -> None:
    p = sub.add_parser(
        "import-buffer",
        help="convert the reference code's replay_buffer_*.pt files",
        description="Import MTT-style replay_buffer_*.pt expert files (read with weights_only=True).",
    )
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="convnet")
    p.add_argument("--model-kwargs", default=None, help="JSON, e.g. '{\"depth\": 4}'")
    p.add_argument("--channels", type=_at_least(1), default=3)
    p.add_argument("--num-classes", type=_at_least(1), default=10)
    p.add_argument("--im-size", type=_at_least(1), nargs="+", default=[32], help="H [W] of the images")
    p.add_argument("--shard-size", type=_at_least(1), default=10, help="experts per output file")
    p.add_argument("--dataset", default="unknown")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_import_buffer)


def _add_datasets(sub: Subparsers) -> None:
    p = sub.add_parser("datasets", help="list the data sets fastdd can load")
    p.set_defaults(func=cmd_datasets)


def _add_env(sub: Subparsers) -> None:
    p = sub.add_parser(
        "env",
        help="versions, devices, backends and the kernels' self-check, for bug reports",
        description="Report fastdd's, Python's, torch's, Triton's, CUDA's and cuDNN's versions, the GPUs, the "
        "backend each op uses on each device, the FAISS build, thread counts, the environment variables fastdd "
        "reads, and the Triton kernels' self-check on each CUDA device.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-check", action="store_true", help="do not run the kernels' self-check on the GPUs")
    p.set_defaults(func=cmd_env)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's ``--help`` line says its default: ``(default: X)`` is appended where the help does not
    already name it (flags, options that default to unset and the subcommand choosers excepted)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
            continue
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or unset or action.nargs == 0:
            continue
        text = action.help or ""
        if "default" not in text:
            action.help = f"{text} (default: %(default)s)".strip()


#: The commands that run under torchrun (split over the ranks); the others run on one process.
DISTRIBUTED_COMMANDS = ("distill", "experts", "evaluate")


def _say(text: str) -> None:
    """Print on rank 0 only (and in a single process)."""
    if is_main():
        print(text)


#: The errors a user's input causes: reported as ``fastdd <command>: error: ...`` with exit status 2.
USER_ERRORS = (FastDDError, ValueError, TypeError, OSError)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (``fastdd: warning: ...``), not Python's two-line form."""
    print(f"fastdd: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The console script. Under torchrun (``WORLD_SIZE`` > 1) ``distill``, ``experts`` and ``evaluate``
    join the process group first (:func:`fastdd.distributed.init`; ``--device cuda`` becomes
    ``cuda:<LOCAL_RANK>``; ``FASTDD_DIST_TIMEOUT`` seconds bound a wait for a dead rank).

    A mistake in the input (an argument, an option, a file, an environment variable) ends with one line,
    ``fastdd <command>: error: ...`` naming it, and exit status 2; a run that fails
    (:class:`~fastdd.errors.RunFailedError`) the same way with status 1; ``FASTDD_DEBUG=1`` adds the traceback.
    """
    from . import distributed as fd
    from .errors import RunFailedError, RunInterrupted
    from .kernels import current_backend

    debug = os.environ.get("FASTDD_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        current_backend()  # FASTDD_BACKEND is checked before anything else, for every command
    except ValueError as e:
        print(f"fastdd: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    joined = finished = False
    try:
        if fd.launched() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if args.command not in DISTRIBUTED_COMMANDS:
                raise ValueError(
                    f"{args.command} runs on one process; under torchrun fastdd runs {', '.join(DISTRIBUTED_COMMANDS)}"
                )
            fd.init(getattr(args, "device", None))
            joined = True
        if getattr(args, "device", None) is not None:
            try:
                args.device = str(fd.resolve_device(args.device))
            except ValueError as e:
                raise ValueError(f"--device: {e}") from None
        code = args.func(args)
        finished = True
        return code
    except RunInterrupted as e:  # a checkpoint was written (when the run has a folder): a clean stop
        print(f"fastdd {args.command}: {e}", file=sys.stderr)
        return 128 + e.signal
    except RunFailedError as e:
        if debug:
            traceback.print_exc()
        print(f"fastdd {args.command}: error: {e}", file=sys.stderr)
        return 1
    except USER_ERRORS as e:
        if debug:
            traceback.print_exc()
        print(f"fastdd {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        if joined:
            fd.shutdown(synchronize=finished)


def _message(e: BaseException) -> str:
    """An exception's message; an ``OSError`` with its file name ("permission denied: runs/x")."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror.lower()}: {e.filename}"
    return str(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

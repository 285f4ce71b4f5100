"""The fastdd command line: help for every command, clear errors, a small end-to-end run on digits."""

import subprocess
import sys

import pytest

from fastdd.cli import build_parser, main

COMMANDS = ["quickstart", "experts", "select", "evaluate", "import-buffer", "datasets"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: fastdd " + cmd in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "fastdd.cli", "--help"], capture_output=True, text=True, check=True)
    assert all(c in out.stdout for c in COMMANDS)


def test_errors_are_reported_not_raised(capsys, tmp_path):
    assert main(["select", "--dataset", "nosuchdata", "--ipc", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset 'nosuchdata'" in capsys.readouterr().err
    assert main(["select", "--dataset", "digits", "--ipc", "1000", "--out", str(tmp_path / "x")]) == 2
    assert "larger than the smallest class" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "cifar10", "--root", str(tmp_path / "nodata"), "--random-ipc", "1"]) == 2
    err = capsys.readouterr().err
    assert "nodata" in err and "download" in err
    assert main(["experts", "--dataset", "digits", "--model", "lenet", "--out", str(tmp_path / "x")]) == 2
    assert "does not fit 8x8" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing written on error"


def test_end_to_end_on_digits(tmp_path, capsys):
    assert (
        main(
            [
                "experts",
                "--dataset",
                "digits",
                "--num-experts",
                "1",
                "--epochs",
                "1",
                "--model",
                "convnet",
                "--out",
                str(tmp_path / "exp"),
            ]
        )
        == 0
    )
    assert (tmp_path / "exp" / "manifest.json").exists() and (tmp_path / "exp" / "config.yaml").exists()
    assert main(["select", "--dataset", "digits", "--ipc", "2", "--out", str(tmp_path / "sel")]) == 0
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "digits",
                "--syn",
                str(tmp_path / "sel"),
                "--epochs",
                "2",
                "--num-eval",
                "1",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "% (1 runs, protocol mtt)" in out
    assert (tmp_path / "ev" / "result.json").exists()
    assert (tmp_path / "ev" / "log.csv").read_text().splitlines()[0] == "set,run,test_accuracy"
    assert (tmp_path / "exp" / "log.csv").read_text().splitlines()[0] == "expert,epoch,train_loss,test_accuracy"


def test_parser_has_every_command():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_experts_in_a_folder_with_other_settings_keeps_its_config(tmp_path, capsys):
    out = str(tmp_path / "exp")
    base = ["experts", "--dataset", "digits", "--num-experts", "1", "--model-kwargs", '{"width": 8}', "--out", out]
    assert main(base + ["--epochs", "1"]) == 0
    config = (tmp_path / "exp" / "config.yaml").read_text()
    assert "func" not in config and "width" in config
    assert main(base + ["--epochs", "2"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (tmp_path / "exp" / "config.yaml").read_text() == config
    assert main(base + ["--epochs", "1", "--no-resume"]) == 2


def test_help_shows_every_default():
    import argparse

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from ((f"{name} {c}", a) for c, a in walk(sub))
            elif action.option_strings and action.nargs != 0 and action.default is not None:
                yield "", action

    checked = 0
    for command, action in walk(build_parser()):
        if action.default is argparse.SUPPRESS or action.default is False:
            continue
        assert "default" in (action.help or ""), f"{command} {action.option_strings[0]} hides its default"
        checked += 1
    assert checked > 60
    out = subprocess.run([sys.executable, "-m", "fastdd", "experts", "--help"], capture_output=True, text=True)
    assert "(default: 20)" in out.stdout and "(default: runs/experts)" in " ".join(out.stdout.split())  # rendered


@pytest.mark.parametrize("cmd", ["sweep window", "bench memory-scaling", "coverage", "distill"])
def test_help_of_nested_and_long_commands(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd.split(), "--help"])
    assert e.value.code == 0
    assert "usage: fastdd " + cmd in capsys.readouterr().out


def test_coverage_command_reports_what_fastdd_coverage_computes(tmp_path, capsys):
    import csv

    import numpy as np

    import fastdd
    from fastdd.features import default_extractor
    from fastdd.scores import load_scores
    from fastdd.selection import random_indices, real_subset

    ds = fastdd.load_dataset("digits")
    np.save(tmp_path / "f.npy", np.random.default_rng(0).random(len(ds.train)).astype(np.float32))
    args = ["--dataset", "digits", "--random-ipc", "1", "2", "--scores", str(tmp_path / "f.npy"), "--seed", "2"]
    assert main(["coverage", *args, "--extractor-epochs", "1", "--out", str(tmp_path / "cov")]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "cov" / "coverage.csv")))
    sets = [real_subset(ds, random_indices(ds, ipc, seed=2)) for ipc in (1, 2)]
    fn = default_extractor(ds, 2, epochs=1)
    scores = load_scores(tmp_path / "f.npy", ds)
    results = fastdd.coverage(sets, ds, fn, scores, show_progress=False)
    assert fastdd.coverage(sets[1], ds, fn, scores, show_progress=False) == results[1]  # one set: the same numbers
    for row, res in zip(rows, results):
        for key in ("radius", "train", "train_easy", "train_hard", "test"):
            assert row[key] == f"{getattr(res, key):.6g}", key
        assert f"{row['set']}: {res}" in printed
    assert f"radius r = {results[0].radius:.6g} " in printed

"""Bad input, as an attacker or a careless user types it: every case runs the ``fastdd`` command line in a
process of its own and must end with its exit status, no traceback, and a message that names the culprit
(the argument, the option key, the file and field). Crafted files must not make fastdd read or delete
anything outside their folder, and a start that fails must leave the run folder byte-for-byte as it was.

To stay within a minute on 2 cores, the processes are forked from one driver that has imported fastdd
once (each case still runs ``fastdd.cli.main`` in a fresh child process, with its own stdout, stderr and
exit status); two run at a time. The fixtures (experts, a finished run, a saved set) are made once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import fastdd

MTT = {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1}
DIGITS = ["--dataset", "digits"]

# The driver: imports fastdd (and the heavy modules its commands import lazily) once, with no computation,
# so forking is safe; then it runs every case in a forked
# child whose stdout / stderr are files, exactly as the console script would (an exception that escapes
# main() prints Python's traceback and exits 1).
DRIVER = r"""
import json, os, sys, time
import fastdd.cli
import fastdd.plots, sklearn.datasets  # what the commands import on first use: imported once, not per case
cases, parallel = json.load(sys.stdin), int(sys.argv[1])
running, results, began = {}, {}, {}

def start(case):
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:
        os.chdir(case["cwd"])
        os.environ.update(case["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            f = os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
        import torch
        torch.set_num_threads(1)
        try:
            code = fastdd.cli.main(case["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)

for case in cases:
    while len(running) >= parallel:
        pid, status = os.wait()
        done = running.pop(pid)
        results[done] = os.waitstatus_to_exitcode(status)
        print(done, round(time.time() - began[done], 2), file=sys.stderr)
    began[case["id"]] = time.time()
    running[start(case)] = case["id"]
while running:
    pid, status = os.wait()
    done = running.pop(pid)
    results[done] = os.waitstatus_to_exitcode(status)
    print(done, round(time.time() - began[done], 2), file=sys.stderr)
print(json.dumps(results))
"""


@dataclass
class Case:
    id: str
    argv: list[str]
    rc: int  # the exit status wanted
    names: tuple[str, ...] = ()  # what stderr must mention (the culprit)
    env: dict[str, str] = field(default_factory=dict)
    unchanged: str | None = None  # a folder that must be byte-for-byte as it was


def _snapshot(folder: Path) -> dict[str, bytes]:
    return (
        {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))}
        if folder.exists()
        else {}
    )


def _distill_argv(experts: str, out: str, iterations: int = 3, options: dict | None = None, *extra: str) -> list[str]:
    return [
        "distill",
        *DIGITS,
        "--method",
        "mtt",
        "--ipc",
        "1",
        "--experts",
        experts,
        "--iterations",
        str(iterations),
        "--options",
        json.dumps(options or MTT),
        "--out",
        out,
        *extra,
    ]


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    obj = edit(obj)
    path.write_text(json.dumps(obj))


def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - n, len(data)):  # the last bytes: tensor data, past the safetensors header
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The fixtures every case starts from, and the cases themselves (built in a fresh folder)."""
    root = tmp_path_factory.mktemp("bad")
    ds = fastdd.load_dataset("digits")
    fastdd.train_experts(
        ds,
        "convnet",
        num_experts=1,
        epochs=2,
        out=root / "exp",
        seed=0,
        show_progress=False,
        model_kwargs={"width": 8, "depth": 1},
    )
    syn = fastdd.distill(
        ds, "mtt", 1, experts=root / "exp", iterations=3, seed=0, out=root / "run", show_progress=False, **MTT
    )
    syn.save(root / "set")
    (root / "victim.txt").write_text("keep me")
    net = fastdd.build_model("convnet", in_channels=1, num_classes=10, im_size=(8, 8), width=8, depth=1)
    frozen = [t.clone() for t in net.unflatten(net.init(torch.Generator().manual_seed(0)))]
    torch.save([[frozen, frozen, frozen]], root / "replay_buffer_0.pt")  # what MTT's code saves on a CPU
    torch.save([], root / "empty.pt")
    (root / "a_file").write_text("not a folder")

    def copy(src: str, dst: str, edit=None) -> str:
        shutil.copytree(root / src, root / dst)
        if edit is not None:
            edit(root / dst)
        return dst

    victim = str(root / "victim.txt")
    ck = lambda f: lambda d: _edit_json(d / "checkpoint.json", f)  # noqa: E731
    mf = lambda f: lambda d: _edit_json(d / "manifest.json", f)  # noqa: E731

    def shard_link(d: Path) -> None:
        (d / "link.safetensors").symlink_to(root / "exp" / "experts_0000.safetensors")  # outside d
        _edit_json(d / "manifest.json", lambda m: {**m, "shards": [{**m["shards"][0], "file": "link.safetensors"}]})

    def ckpt_link(d: Path) -> None:
        (d / "link.safetensors").symlink_to(root / "victim.txt")
        _edit_json(d / "checkpoint.json", lambda m: {**m, "file": "link.safetensors"})

    def shard(key, value):
        return mf(lambda m: {**m, "shards": [{**m["shards"][0], key: value}]})

    def drop(key):
        return lambda obj: {k: v for k, v in obj.items() if k != key}

    resume = ("--resume",)
    cases = [
        # paths from files stay inside their folder
        Case(
            "checkpoint-dotdot",
            _distill_argv("exp", copy("run", "r1", ck(lambda m: {**m, "file": "../victim.txt"})), 4, None, *resume),
            2,
            ("checkpoint.json", "'file'", "../victim.txt"),
            unchanged="r1",
        ),
        Case(
            "checkpoint-absolute",
            _distill_argv("exp", copy("run", "r2", ck(lambda m: {**m, "file": victim})), 4, None, *resume),
            2,
            ("checkpoint.json", "'file'"),
            unchanged="r2",
        ),
        Case(
            "checkpoint-symlink",
            _distill_argv("exp", copy("run", "r3", ckpt_link), 4, None, *resume),
            2,
            ("checkpoint.json", "symbolic link"),
            unchanged="r3",
        ),
        Case(
            "checkpoint-crafted-fresh-run-deletes-nothing",
            _distill_argv("exp", copy("run", "r4", ck(lambda m: {**m, "file": "../victim.txt"}))),
            0,
        ),
        Case(
            "manifest-dotdot",
            _distill_argv(copy("exp", "e1", shard("file", "../exp/experts_0000.safetensors")), "o1"),
            2,
            ("manifest.json", "'shards[0].file'", ".."),
        ),
        Case(
            "manifest-absolute",
            _distill_argv(copy("exp", "e2", shard("file", str(root / "exp/experts_0000.safetensors"))), "o2"),
            2,
            ("manifest.json", "'shards[0].file'"),
        ),
        Case(
            "manifest-symlink",
            _distill_argv(copy("exp", "e3", shard_link), "o3"),
            2,
            ("manifest.json", "'shards[0].file'", "symbolic link"),
        ),
        # checked files
        Case(
            "set-flipped-bytes",
            [
                "evaluate",
                *DIGITS,
                "--syn",
                copy("set", "s1", lambda d: _flip(d / "synthetic.safetensors")),
                "--num-eval",
                "1",
                "--epochs",
                "1",
            ],
            2,
            ("synthetic.safetensors", "SHA-256"),
        ),
        Case(
            "checkpoint-flipped-bytes",
            _distill_argv("exp", copy("run", "r5", lambda d: _flip(d / "checkpoint_3.safetensors")), 4, None, *resume),
            2,
            ("checkpoint_3.safetensors", "SHA-256"),
            unchanged="r5",
        ),
        Case(
            "set-without-checksums-loads-with-a-notice",
            [
                "evaluate",
                *DIGITS,
                "--syn",
                copy("set", "s2", lambda d: _edit_json(d / "synthetic.json", drop("files"))),
                "--num-eval",
                "1",
                "--epochs",
                "1",
            ],
            0,
            ("predates checksums",),
        ),
        # validate, then write: a failed start leaves the folder as it was
        Case(
            "corrupt-experts-keep-the-log",
            _distill_argv(
                copy("exp", "e4", lambda d: _flip(d / "experts_0000.safetensors")), copy("run", "r6"), 4, None, *resume
            ),
            2,
            ("experts_0000.safetensors", "SHA-256"),
            unchanged="r6",
        ),
        Case("corrupt-experts-fresh-start", _distill_argv("e4", copy("run", "r7"), 4), 2, ("SHA-256",), unchanged="r7"),
        # resume is honest
        Case(
            "resume-other-seed",
            _distill_argv("exp", copy("run", "r8"), 4, None, "--resume", "--seed", "7"),
            2,
            ("seed 0", "--seed 0"),
            unchanged="r8",
        ),
        Case(
            "resume-fewer-iterations",
            _distill_argv("exp", copy("run", "r9"), 2, None, *resume),
            2,
            ("3 iterations", "iterations >= 3"),
            unchanged="r9",
        ),
        Case(
            "resume-same-iterations-returns-the-set",
            _distill_argv("exp", copy("run", "r10"), 3, None, *resume),
            0,
            ("already done all 3 iterations",),
        ),
        Case(
            "resume-other-settings",
            _distill_argv("exp", copy("run", "r11"), 4, {**MTT, "syn_steps": 3}, *resume),
            2,
            ("other settings", "syn_steps 2 there, 3 now"),
            unchanged="r11",
        ),
        # one error style, no tracebacks
        Case("device-cuda", _distill_argv("exp", "o4", 3, None, "--device", "cuda"), 2, ("--device", "cuda")),
        Case("device-gpu", _distill_argv("exp", "o5", 3, None, "--device", "gpu"), 2, ("--device", "'gpu'")),
        Case("options-list", _distill_argv("exp", "o6", 3, [1, 2]), 2, ("--options", "a list")),
        Case("options-null", _distill_argv("exp", "o7")[:-3] + ["null", "--out", "o7"], 2, ("--options", "null")),
        Case(
            "options-malformed",
            _distill_argv("exp", "o8")[:-3] + ["{syn_steps: 2", "--out", "o8"],
            2,
            ("--options", "not valid JSON"),
        ),
        Case(
            "options-wrong-type",
            _distill_argv("exp", "o9", 3, {**MTT, "syn_steps": "three"}),
            2,
            ("--options", "'syn_steps'", "an integer"),
        ),
        Case(
            "options-unknown-key",
            _distill_argv("exp", "o10", 3, {**MTT, "synsteps": 2}),
            2,
            ("--options", "'synsteps'"),
        ),
        Case("backend-bogus-version", ["--version"], 2, ("FASTDD_BACKEND", "'bogus'"), env={"FASTDD_BACKEND": "bogus"}),
        Case(
            "backend-bogus-distill",
            _distill_argv("exp", "o11"),
            2,
            ("FASTDD_BACKEND",),
            env={"FASTDD_BACKEND": "bogus"},
        ),
        Case("out-under-a-file", _distill_argv("exp", "a_file/run"), 2, ("--out", "a_file", "not a folder")),
        Case("out-unwritable", _distill_argv("exp", "/sys/fastdd-test-run"), 2, ("/sys/fastdd-test-run",)),
        Case(
            "manifest-missing-model-spec",
            _distill_argv(copy("exp", "e5", mf(drop("model_spec"))), "o12"),
            2,
            ("manifest.json", "'model_spec'"),
        ),
        Case(
            "manifest-missing-shards",
            _distill_argv(copy("exp", "e6", mf(drop("shards"))), "o13"),
            2,
            ("manifest.json", "'shards'"),
        ),
        Case(
            "manifest-wrong-type",
            _distill_argv(copy("exp", "e7", mf(lambda m: {**m, "shards": "x"})), "o14"),
            2,
            ("manifest.json", "'shards'", "list"),
        ),
        Case(
            "manifest-is-a-list",
            _distill_argv(copy("exp", "e8", mf(lambda m: [m])), "o15"),
            2,
            ("manifest.json", "JSON object"),
        ),
        Case(
            "checkpoint-missing-optimizers",
            _distill_argv("exp", copy("run", "r12", ck(drop("optimizers"))), 4, None, *resume),
            2,
            ("checkpoint.json", "'optimizers'"),
            unchanged="r12",
        ),
        Case(
            "checkpoint-wrong-type",
            _distill_argv("exp", copy("run", "r13", ck(lambda m: {**m, "iteration": "3"})), 4, None, *resume),
            2,
            ("checkpoint.json", "'iteration'", "integer"),
            unchanged="r13",
        ),
        Case(
            "set-json-is-a-list",
            [
                "evaluate",
                *DIGITS,
                "--syn",
                copy("set", "s3", lambda d: _edit_json(d / "synthetic.json", lambda m: [m])),
                "--num-eval",
                "1",
            ],
            2,
            ("synthetic.json", "JSON object"),
        ),
        Case(
            "set-label-out-of-range",
            ["evaluate", *DIGITS, "--syn", copy("set", "s4", _relabel), "--num-eval", "1"],
            2,
            ("s4", "labels", "[0, 10)"),
        ),
        Case(
            "set-nan-lr",
            ["evaluate", *DIGITS, "--syn", copy("set", "s5", _nan_lr), "--num-eval", "1"],
            2,
            ("s5", "learned lr", "finite"),
        ),
        Case(
            "model-kwargs-typo",
            ["experts", *DIGITS, "--model-kwargs", '{"widht": 8}', "--out", "o16"],
            2,
            ("--model-kwargs", "'widht'", "width"),
        ),
        Case("import-empty-list", ["import-buffer", "empty.pt", "--out", "o17"], 2, ("empty.pt", "no experts")),
        # numbers in range
        Case(
            "evaluate-negative-epochs",
            ["evaluate", *DIGITS, "--random-ipc", "1", "--epochs", "-1"],
            2,
            ("--epochs", "-1"),
        ),
        Case("negative-lr-img", _distill_argv("exp", "o18", 3, {**MTT, "lr_img": -100}), 2, ("lr_img", "-100")),
        Case(
            "lr-img-1e12-blows-up",
            _distill_argv("exp", "o19", 20, {**MTT, "lr_img": 1e12}, "--checkpoint-every", "1"),
            1,
            ("lr_img", "standard deviations", "without a set"),
        ),
        Case("lr-img-1e30-blows-up", _distill_argv("exp", "o20", 5, {**MTT, "lr_img": 1e30}), 1, ("lr_img",)),
        Case(
            "import-identical-snapshots-warns",
            [
                "import-buffer",
                "replay_buffer_0.pt",
                "--model-kwargs",
                '{"width": 8, "depth": 1}',
                "--channels",
                "1",
                "--im-size",
                "8",
                "--dataset",
                "digits",
                "--out",
                "frozen",
            ],
            0,
            ("replay_buffer_0.pt", "expert 0", "identical", "epochs 0-1, 1-2"),
        ),
    ]
    return root, cases


def _edit_tensors(d: Path, edit) -> None:
    """Rewrite a saved set's tensor file through ``edit(tensors)`` and drop its checksum record (a set as an
    older fastdd, or a hand, wrote it), so that only the value checks can catch it."""
    from safetensors.torch import load_file, save_file

    t = load_file(str(d / "synthetic.safetensors"))
    edit(t)
    save_file(t, str(d / "synthetic.safetensors"), metadata={"format": "fastdd.synthetic/1"})
    _edit_json(d / "synthetic.json", lambda m: {k: v for k, v in m.items() if k != "files"})


def _relabel(d: Path) -> None:
    _edit_tensors(d, lambda t: t["labels"].__setitem__(0, 12))


def _nan_lr(d: Path) -> None:
    _edit_tensors(d, lambda t: t["lr"].__setitem__(0, float("nan")))


def _run_cases(root: Path, cases: list[Case], parallel: int = 2) -> dict[str, tuple[int, str, str]]:
    jobs = [
        {
            "id": c.id,
            "argv": c.argv,
            "cwd": str(root),
            "env": c.env,
            "stdout": str(root / f"{c.id}.out"),
            "stderr": str(root / f"{c.id}.err"),
        }
        for c in cases
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("FASTDD_BACKEND", "FASTDD_DEBUG")}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(parallel)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr  # the driver's stderr: each case's seconds
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return {c.id: (codes[c.id], (root / f"{c.id}.out").read_text(), (root / f"{c.id}.err").read_text()) for c in cases}


@pytest.fixture(scope="module")
def outcomes(world):
    root, cases = world
    # the followup case (distill on the imported frozen experts) needs the import first
    before = {c.id: _snapshot(root / c.unchanged) for c in cases if c.unchanged}
    results = _run_cases(root, cases)
    follow = [
        Case(
            "every-iteration-skipped-fails",
            _distill_argv("frozen", "o21"),
            1,
            ("3 of 3 iterations were skipped", "non-finite", "identical snapshots"),
        )
    ]
    results.update(_run_cases(root, follow, parallel=1))
    after = {c.id: _snapshot(root / c.unchanged) for c in cases if c.unchanged}
    return root, {c.id: c for c in cases + follow}, results, before, after


CASE_IDS = [
    "checkpoint-dotdot",
    "checkpoint-absolute",
    "checkpoint-symlink",
    "checkpoint-crafted-fresh-run-deletes-nothing",
    "manifest-dotdot",
    "manifest-absolute",
    "manifest-symlink",
    "set-flipped-bytes",
    "checkpoint-flipped-bytes",
    "set-without-checksums-loads-with-a-notice",
    "corrupt-experts-keep-the-log",
    "corrupt-experts-fresh-start",
    "resume-other-seed",
    "resume-fewer-iterations",
    "resume-same-iterations-returns-the-set",
    "resume-other-settings",
    "device-cuda",
    "device-gpu",
    "options-list",
    "options-null",
    "options-malformed",
    "options-wrong-type",
    "options-unknown-key",
    "backend-bogus-version",
    "backend-bogus-distill",
    "out-under-a-file",
    "out-unwritable",
    "manifest-missing-model-spec",
    "manifest-missing-shards",
    "manifest-wrong-type",
    "manifest-is-a-list",
    "checkpoint-missing-optimizers",
    "checkpoint-wrong-type",
    "set-json-is-a-list",
    "set-label-out-of-range",
    "set-nan-lr",
    "model-kwargs-typo",
    "import-empty-list",
    "evaluate-negative-epochs",
    "negative-lr-img",
    "lr-img-1e12-blows-up",
    "lr-img-1e30-blows-up",
    "import-identical-snapshots-warns",
    "every-iteration-skipped-fails",
]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_cli_case(outcomes, case_id):
    root, cases, results, before, after = outcomes
    case = cases[case_id]
    rc, out, err = results[case_id]
    assert rc == case.rc, f"exit {rc}, wanted {case.rc}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    for name in case.names:
        assert name in err, f"{name!r} not named in:\n{err}"
    if case.rc == 2 and case.argv[0] != "--version" and not case.env:
        command = case.argv[0]
        assert f"fastdd {command}: error: " in err, err
    if case.unchanged:
        assert after[case_id] == before[case_id], f"{case.unchanged} changed on a failed start"
    assert (root / "victim.txt").read_text() == "keep me"


def test_every_case_is_listed(world):
    _, cases = world
    assert {c.id for c in cases} | {"every-iteration-skipped-fails"} == set(CASE_IDS)


def test_a_failed_resume_keeps_the_log_whole(outcomes):
    root, _, _, before, _ = outcomes
    log = before["corrupt-experts-keep-the-log"]["log.csv"].decode().splitlines()
    assert len(log) == 4 and (root / "r6" / "log.csv").read_text().splitlines() == log  # header + 3 iterations


def test_the_crafted_fresh_run_left_the_victim_and_wrote_its_own_checkpoint(outcomes):
    root = outcomes[0]
    assert (root / "victim.txt").read_text() == "keep me"
    index = json.loads((root / "r4" / "checkpoint.json").read_text())
    assert index["file"] == "checkpoint_3.safetensors" and (root / "r4" / index["file"]).is_file()


def test_debug_shows_the_traceback(world):
    root, _ = world
    case = Case("debug", _distill_argv("exp", "o30", 3, {**MTT, "lr_img": -1}), 2, env={"FASTDD_DEBUG": "1"})
    rc, _, err = _run_cases(root, [case], parallel=1)["debug"]
    assert rc == 2 and "Traceback" in err and "fastdd distill: error: lr_img must be" in err

"""Runs that survive faults: SIGTERM / Ctrl-C write a checkpoint and stop cleanly; a save that fails
(full disk, vanished folder) keeps the previous checkpoint; a dead rank stops the others with an error."""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_helpers import run_ranks
from test_distributed import _distill, _experts

from fastdd.errors import CheckpointWarning

TESTS = Path(__file__).resolve().parent
_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from fastdd.errors import RunInterrupted
from test_distributed import _distill
try:
    _distill("mtt", {experts!r}, {out!r}, {its}, checkpoint_every=1000, syn_steps=6)
except RunInterrupted as e:
    print("interrupted:", e, file=sys.stderr)
    sys.exit(128 + e.signal)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_resume_is_bitwise_the_same(sig, tmp_path):
    _experts(tmp_path / "experts")
    its, out = 400, tmp_path / "run"
    code = _SCRIPT.format(tests=str(TESTS), experts=str(tmp_path / "experts"), out=str(out), its=its)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    log = out / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    meta = json.loads((out / "checkpoint.json").read_text())
    done = meta["iteration"]
    assert 3 <= done < its, "the signal must have stopped the run part way (checkpoint_every is 1000)"
    assert f"after iteration {done}" in err and "Traceback" not in err
    assert len(log.read_text().splitlines()) == done + 1  # the log holds every finished iteration
    resumed = _distill(
        "mtt", str(tmp_path / "experts"), str(out), done + 3, resume=True, checkpoint_every=1000, syn_steps=6
    )
    whole = _distill("mtt", str(tmp_path / "experts"), None, done + 3, syn_steps=6)
    assert torch.equal(resumed["images"], whole["images"]) and torch.equal(resumed["lr"], whole["lr"])


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    state = importlib.import_module("fastdd.distillation.state")
    _experts(tmp_path / "experts")
    real, calls = state.atomic_save_safetensors, []

    def full_disk(*a, **k):
        calls.append(1)
        if len(calls) > 1:  # the first checkpoint is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(state, "atomic_save_safetensors", full_disk)
    out = tmp_path / "run"
    with pytest.warns(CheckpointWarning) as rec:
        done = _distill("mtt", str(tmp_path / "experts"), str(out), 3)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 2 and all("No space left" in m and "previous checkpoint (iteration 1)" in m for m in msgs)
    assert "checkpoint of iteration 2" in msgs[0] and "checkpoint of iteration 3" in msgs[1]
    monkeypatch.setattr(state, "atomic_save_safetensors", real)
    assert json.loads((out / "checkpoint.json").read_text())["iteration"] == 1
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint.json", "checkpoint_1.safetensors"]
    assert not list(out.glob(".*.tmp"))  # no half-written files left behind
    one = _distill("mtt", str(tmp_path / "experts"), None, 1)
    from fastdd.distillation.state import load_checkpoint

    images = torch.zeros_like(one["images"])
    meta = load_checkpoint(out, {"images": images}, {}, {})
    assert meta["iteration"] == 1 and torch.equal(images, one["images"])
    resumed = _distill("mtt", str(tmp_path / "experts"), str(out), 3, resume=True)  # continues from iteration 1
    assert torch.equal(resumed["images"], done["images"])


def test_failed_index_write_removes_the_new_tensor_file(tmp_path, monkeypatch):
    state = importlib.import_module("fastdd.distillation.state")
    _experts(tmp_path / "experts")
    out = tmp_path / "run"
    _distill("mtt", str(tmp_path / "experts"), str(out), 1)
    real = state.atomic_write_json

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[0]))

    monkeypatch.setattr(state, "atomic_write_json", fail)
    with pytest.warns(CheckpointWarning):
        _distill("mtt", str(tmp_path / "experts"), str(out), 2, resume=True)
    monkeypatch.setattr(state, "atomic_write_json", real)
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint.json", "checkpoint_1.safetensors"]


def test_vanished_run_folder_is_reported_not_recreated(tmp_path, monkeypatch):
    import shutil

    state = importlib.import_module("fastdd.distillation.state")
    _experts(tmp_path / "experts")
    out = tmp_path / "run"
    real, calls = state.atomic_save_safetensors, []

    def vanish(path, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(out)  # e.g. a cleanup job, or an unmounted network disk, while saving
        return real(path, *a, **k)

    monkeypatch.setattr(state, "atomic_save_safetensors", vanish)
    with pytest.warns(CheckpointWarning) as rec:
        res = _distill("mtt", str(tmp_path / "experts"), str(out), 3)
    assert [str(w.message).split(": the run folder")[0][-1] for w in rec] == ["2", "3"]
    assert all("has vanished (it is not re-created)" in str(w.message) for w in rec)
    assert not out.exists() and res["images"].shape == (12, 1, 8, 8)


def _die_or_wait(experts: str) -> dict:
    import fastdd.distributed as fd

    if fd.current().rank == 1:
        os._exit(0)  # this rank vanishes before the run's first collective (exit 0: the spawner waits for rank 0)
    t0 = time.time()
    try:
        _distill("mtt", experts, None, 3)
    except fd.DistributedError as e:
        return {"error": str(e), "seconds": time.time() - t0}
    return {"error": "", "seconds": time.time() - t0}


def test_a_dead_rank_stops_the_others_with_an_error(tmp_path):
    _experts(tmp_path / "experts")
    rank0, rank1 = run_ranks(_die_or_wait, str(tmp_path / "experts"), timeout_s=20)
    assert rank1 is None  # it returned nothing
    assert "rank 0 of 2" in rank0["error"] and "died or stopped answering" in rank0["error"]
    assert rank0["seconds"] < 60  # within the group's timeout (20 s) and then some, not forever


def _sigterm_on_rank1(experts: str, out: str) -> dict:
    """Rank 1 alone gets SIGTERM once rank 0 has logged a few iterations; both must stop together."""
    import threading

    import fastdd.distributed as fd
    from fastdd.errors import RunInterrupted

    if fd.current().rank == 1:

        def watch():
            log = Path(out) / "log.csv"
            while not log.exists() or len(log.read_text().splitlines()) < 4:
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()
    try:
        _distill("mtt", experts, out, 400, checkpoint_every=1000, syn_steps=6)
    except RunInterrupted as e:
        return {"iteration": e.iteration, "signal": e.signal}
    return {"iteration": -1, "signal": 0}


def test_sigterm_to_one_rank_stops_all_at_the_same_iteration_and_resumes_on_one_process(tmp_path):
    _experts(tmp_path / "experts")
    out = tmp_path / "run"
    r0, r1 = run_ranks(_sigterm_on_rank1, str(tmp_path / "experts"), str(out))
    assert r0 == r1 and r0["signal"] == signal.SIGTERM and 3 <= r0["iteration"] < 400
    done = r0["iteration"]
    assert json.loads((out / "checkpoint.json").read_text())["iteration"] == done
    # the gathered checkpoint resumes on one process, and ends where one uninterrupted process ends
    resumed = _distill(
        "mtt", str(tmp_path / "experts"), str(out), done + 2, resume=True, checkpoint_every=1000, syn_steps=6
    )
    whole = _distill("mtt", str(tmp_path / "experts"), None, done + 2, syn_steps=6)
    assert ((resumed["images"] - whole["images"]).norm() / whole["images"].norm()).item() < 1e-5

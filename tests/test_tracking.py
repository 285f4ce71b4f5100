"""Experiment tracking (fastdd.tracking): TensorBoard events and W&B offline records hold log.csv's numbers, a
resumed run continues them without duplicated steps, a missing extra names itself, the CLI's --log, and a run
without loggers computes bitwise what it computed before."""

import csv
import glob
import json
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

import fastdd
from fastdd.cli import main
from fastdd.tracking import Logger, MissingExtraError, Tracker

SMALL = {"width": 8, "depth": 2}
DM = dict(ipc=2, seed=0, show_progress=False, model_kwargs=SMALL, batch_real=8)


def _log_csv(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(folder / "log.csv")))


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _tb_scalars(acc, tag: str) -> dict[int, float]:
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: steps logged more than once: {steps}"
    return {e.step: e.value for e in events}


def _assert_matches_log_csv(rows, logged: dict[str, dict[int, float]], columns) -> None:
    for col in columns:
        want = {int(r["iteration"]): float(r[col]) for r in rows}
        got = logged[f"distill/{col}"]
        assert sorted(got) == sorted(want), col
        for step, value in want.items():  # log.csv keeps 6 significant digits, events float32
            assert got[step] == pytest.approx(value, rel=2e-5, abs=1e-7), (col, step)


def _wait_for_the_next_second(tb_dir: Path) -> None:
    """TensorBoard orders a folder's event files by name, and the name starts with the writer's second; a resumed
    writer made within the same second in the same process could sort first."""
    newest = max(int(p.name.split(".")[3]) for p in tb_dir.glob("events.out.tfevents.*"))
    while int(time.time()) <= newest:
        time.sleep(0.05)


def _wandb_records(path: Path):
    """The protobuf records of a W&B ``.wandb`` file: a 7-byte header, then LevelDB-log records (crc32c 4, length 2,
    type 1: full, first, middle, last) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        if pos + 7 + n > len(data):  # still being written
            return
        parts += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _wandb_finished(path: Path, timeout: float = 30.0) -> list:
    """The records of a finished run's file: W&B's service process may still be writing it when ``finish()``
    has returned, so wait (a while) for its closing ``exit`` record."""
    deadline = time.time() + timeout
    while True:
        records = list(_wandb_records(path))
        if (records and records[-1].WhichOneof("record_type") == "exit") or time.time() > deadline:
            return records
        time.sleep(0.1)


def _wandb_history(path: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for r in _wandb_finished(path):
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            out.setdefault(int(items["_step"]), {}).update(items)
    return out


def _wandb_files(run: Path, run_id: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(run / "wandb" / f"offline-run-*-{run_id}*" / f"run-{run_id}.wandb")))


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-home"))
    (tmp_path / "wandb-home").mkdir()


def test_experts_and_mtt_events_equal_log_csv(tiny_ds, tmp_path):
    """(1) A tiny expert training and MTT run with loggers=["tensorboard"]: the events read back equal log.csv's
    values (loss, learned lr, expert, start epoch, skipped, seconds) at the same iterations, plus the gradient
    norm, images/s, the pictures every checkpoint, the config and the summary; the set is bitwise the one of a
    run without loggers."""
    buf = fastdd.train_experts(
        tiny_ds, "convnet", 1, epochs=2, out=tmp_path / "experts", model_kwargs=SMALL, show_progress=False,
        loggers=["tensorboard"],
    )  # fmt: skip
    acc = _events(tmp_path / "experts" / "tensorboard")
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / "experts" / "log.csv")) if r["train_loss"]]
    assert list(_tb_scalars(acc, "expert/train_loss").values()) == pytest.approx(losses, rel=2e-5)
    assert _tb_scalars(acc, "expert/test_accuracy") == {1: pytest.approx(buf.manifest["test_accuracy"][0])}

    kw = dict(ipc=1, experts=buf, iterations=4, syn_steps=2, expert_epochs=1, max_start_epoch=1, lr_img=10.0)
    kw.update(seed=0, show_progress=False)
    syn = fastdd.distill(tiny_ds, "mtt", out=tmp_path / "run", checkpoint_every=2, loggers=["tensorboard"], **kw)
    plain = fastdd.distill(tiny_ds, "mtt", **kw)
    assert torch.equal(syn.images, plain.images) and torch.equal(syn.lr, plain.lr)

    acc = _events(tmp_path / "run" / "tensorboard")
    tags = acc.Tags()
    logged = {t: _tb_scalars(acc, t) for t in tags["scalars"]}
    rows = _log_csv(tmp_path / "run")
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3]
    _assert_matches_log_csv(rows, logged, ["loss", "syn_lr", "expert", "start_epoch", "skipped", "seconds"])
    norms = logged["distill/grad_norm"]
    assert sorted(norms) == [0, 1, 2, 3] and all(v > 0 and v < float("inf") for v in norms.values())
    assert sorted(logged["distill/images_per_s"]) == [0, 1, 2, 3]
    assert "distill/peak_memory_mib" not in logged  # CUDA only
    assert [e.step for e in acc.Images("distill/images")] == [1, 3]  # every checkpoint (2 iterations)
    assert logged["summary/distill/final_loss"] == {3: pytest.approx(float(rows[-1]["loss"]), rel=2e-5)}
    text = {t for t in tags["tensors"]}
    assert {"config/text_summary", "summary/text_summary"} <= text


def test_wandb_offline_run_holds_the_scalars(tiny_ds, tmp_path, offline_wandb):
    """(2) loggers=["wandb"] under WANDB_MODE=offline: an offline run inside the run folder, its id in
    wandb_id.txt, its history equal to log.csv, the config and summary recorded."""
    run = tmp_path / "run"
    fastdd.distill(tiny_ds, "dm", iterations=3, out=run, loggers="wandb", log_images_every=0, **DM)
    run_id = (run / "wandb_id.txt").read_text().strip()
    (path,) = _wandb_files(run, run_id)
    history = _wandb_history(path)
    rows = _log_csv(run)
    assert sorted(history) == [0, 1, 2]
    _assert_matches_log_csv(rows, {"distill/loss": {s: h["distill/loss"] for s, h in history.items()}}, ["loss"])
    assert all("distill/grad_norm" in h and "distill/images_per_s" in h for h in history.values())
    records = _wandb_finished(path)
    (first,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert first.run_id == run_id
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}  # fmt: skip
    assert config["method"] == "dm" and config["batch_real"] == 8
    summary = {u.key or "/".join(u.nested_key): json.loads(u.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for u in r.summary.update}  # fmt: skip
    assert summary["distill/iterations"] == 3 and summary["distill/final_loss"] == pytest.approx(
        history[2]["distill/loss"]
    )


class _Crash(Logger):
    """A logger that fails at one step: the run stops there, after its checkpoint of an earlier iteration."""

    def __init__(self, at: int):
        self.at = at

    def log_scalars(self, step, values):
        if step == self.at:
            raise RuntimeError(f"crash at {step}")


def test_resume_continues_the_same_runs_without_duplicated_steps(tiny_ds, tmp_path, offline_wandb):
    """(3) A run stopped at iteration 5 (its last checkpoint: 4; steps 4 and 5 already logged), resumed to 6:
    TensorBoard and the CSV logger hold every step once, W&B keeps the run id; the set is bitwise the
    uninterrupted one's."""
    run, names = tmp_path / "run", ["tensorboard", "csv", "wandb"]
    with pytest.raises(RuntimeError, match="crash at 5"):
        fastdd.distill(tiny_ds, "dm", iterations=6, out=run, checkpoint_every=2, loggers=[*names, _Crash(5)], **DM)
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert sorted(_tb_scalars(_events(run / "tensorboard"), "distill/loss")) == [0, 1, 2, 3, 4, 5]
    _wait_for_the_next_second(run / "tensorboard")
    syn = fastdd.distill(tiny_ds, "dm", iterations=6, out=run, checkpoint_every=2, resume=True, loggers=names, **DM)
    assert torch.equal(syn.images, fastdd.distill(tiny_ds, "dm", iterations=6, **DM).images)

    rows = _log_csv(run)
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    acc = _events(run / "tensorboard")
    logged = {t: _tb_scalars(acc, t) for t in acc.Tags()["scalars"]}  # _tb_scalars: each step once
    _assert_matches_log_csv(rows, logged, ["loss", "skipped"])
    assert [e.step for e in acc.Images("distill/images")] == [1, 3, 5]
    csv_rows = [(int(r["step"]), r["name"]) for r in csv.DictReader(open(run / "csv" / "scalars.csv"))]
    assert len(csv_rows) == len(set(csv_rows)) and sorted(s for s, n in csv_rows if n == "distill/loss") == list(
        range(6)
    )

    assert (run / "wandb_id.txt").read_text().strip() == run_id
    files = _wandb_files(run, run_id)
    assert len(files) == 2  # W&B keeps one offline folder per process; `wandb sync` joins them into the one run
    ids = {r.run.run_id for f in files for r in _wandb_finished(f) if r.WhichOneof("record_type") == "run"}
    assert ids == {run_id}
    starts = sorted(min(_wandb_history(f)) for f in files)
    assert starts == [0, 4]  # the resumed process logs from its checkpoint on


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_extra_names_it_before_anything_runs(tiny_ds, tmp_path, monkeypatch, capsys, name):
    """(4) Without the package, the logger's name fails with the extra to install; nothing is written."""
    monkeypatch.setitem(sys.modules, name, None)  # `import tensorboard` / `import wandb` now fails
    with pytest.raises(MissingExtraError, match=rf'pip install "fastdd\[{name}\]"'):
        fastdd.distill(tiny_ds, "dm", iterations=1, out=tmp_path / "run", loggers=[name], **DM)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ImportError):
        Tracker(["csv", name])
    args = ["evaluate", "--dataset", "digits", "--random-ipc", "1", "--out", str(tmp_path / "ev"), "--log", name]
    assert main(args) == 2
    assert f'pip install "fastdd[{name}]"' in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown logger"):
        fastdd.distill(tiny_ds, "dm", iterations=1, loggers=["mlflow"], **DM)
    with pytest.raises(ValueError, match="writes into the run folder"):
        fastdd.distill(tiny_ds, "dm", iterations=1, loggers=["csv"], **DM)  # no out=


def test_cli_log_option(tmp_path, capsys):
    """(5) --log on distill (both spellings: repeated, and several values), experts and evaluate."""
    out = tmp_path / "dm"
    options = json.dumps({"model_kwargs": SMALL, "batch_real": 16})
    base = ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "3", "--options", options]
    assert main([*base, "--out", str(out), "--checkpoint-every", "2", "--log", "tensorboard", "--log", "csv"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    scalars = list(csv.DictReader(open(out / "csv" / "scalars.csv")))
    assert sorted({int(r["step"]) for r in scalars if r["name"] == "distill/loss"}) == [0, 1, 2]
    assert sorted(p.name for p in (out / "csv" / "images").iterdir()) == [
        "distill_images_00000001.png",
        "distill_images_00000002.png",
    ]
    assert json.loads((out / "csv" / "config.json").read_text())["method"] == "dm"

    exp = tmp_path / "experts"
    args = ["experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "1", "--model-kwargs", '{"width": 4}']
    assert main([*args, "--out", str(exp), "--log", "csv", "tensorboard"]) == 0
    rows = list(csv.DictReader(open(exp / "csv" / "scalars.csv")))
    assert {r["name"] for r in rows} >= {"expert/train_loss", "expert/test_accuracy"}
    assert list((exp / "tensorboard").glob("events.out.tfevents.*"))

    ev = tmp_path / "ev"
    args = ["evaluate", "--dataset", "digits", "--random-ipc", "1", "--num-eval", "2", "--epochs", "0"]
    assert main([*args, "--out", str(ev), "--log", "csv"]) == 0
    result = json.loads((ev / "result.json").read_text())
    rows = list(csv.DictReader(open(ev / "csv" / "scalars.csv")))
    assert [(int(r["step"]), float(r["value"])) for r in rows] == list(enumerate(result["accuracies"]))
    assert json.loads((ev / "csv" / "summary.json").read_text())["eval/mean"] == pytest.approx(result["mean"])
    capsys.readouterr()
    assert main([*args, "--log", "csv"]) == 2  # no --out: nowhere to write
    assert "--log writes into the run folder" in capsys.readouterr().err


def test_without_loggers_nothing_changes(tiny_ds, tmp_path):
    """(6) A run without loggers, one with the CSV logger and one with a logger object give bitwise the same set
    and the same log.csv (but its seconds); no tracking files appear without loggers."""

    class Keep(Logger):
        def __init__(self):
            self.rows = {}

        def log_scalars(self, step, values):
            self.rows[step] = dict(values)

    keep = Keep()
    runs = {}
    for name, loggers in (("plain", None), ("csv", ["csv"]), ("object", [keep])):
        runs[name] = fastdd.distill(tiny_ds, "dm", iterations=3, out=tmp_path / name, loggers=loggers, **DM)
    for name in ("csv", "object"):
        assert torch.equal(runs[name].images, runs["plain"].images)
        strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _log_csv(tmp_path / name)]
        assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _log_csv(tmp_path / "plain")]
    plain_files = {p.name for p in (tmp_path / "plain").iterdir()}
    assert "log.csv" in plain_files and not plain_files & {"csv", "tensorboard", "wandb", "wandb_id.txt"}
    assert sorted(keep.rows) == [0, 1, 2] and keep.started  # started by the run, left open for its owner
    assert runs["plain"].meta["config"] == runs["csv"].meta["config"]  # loggers are not settings


def _dm_tracked(out: str) -> dict:
    """On each rank of a gloo group: DM split by class, with a CSV logger and a picture every iteration."""
    from fastdd.data import from_pixels

    g = torch.Generator().manual_seed(0)  # tests/conftest.py's tiny_ds (a fixture cannot reach a spawned rank)
    tx, vx = torch.rand(48, 1, 8, 8, generator=g), torch.rand(16, 1, 8, 8, generator=g)
    ty, vy = torch.arange(4).repeat_interleave(12), torch.arange(4).repeat_interleave(4)
    for x, y in ((tx, ty), (vx, vy)):
        for c in range(4):
            x[y == c, :, (c // 2) * 4 : (c // 2) * 4 + 4, (c % 2) * 4 : (c % 2) * 4 + 4] += 1.0
    ds = from_pixels("tiny", tx, ty, vx, vy, 4)
    syn = fastdd.distill(ds, "dm", iterations=2, out=out, checkpoint_every=1, loggers=["csv"], **DM)
    return {"images": syn.images}


def test_under_torch_distributed_rank_0_logs(tmp_path, tiny_ds):
    """Two gloo ranks: rank 0 alone writes the logger's files, each step once; every rank takes part in
    gathering the pictures (no rank waits for another); no gradient norm (each rank has only its rows)."""
    from dist_helpers import run_ranks

    parts = run_ranks(_dm_tracked, str(tmp_path / "run"), world=2)
    single = fastdd.distill(tiny_ds, "dm", iterations=2, **DM)
    assert all(torch.allclose(p["images"], single.images, rtol=1e-5, atol=1e-6) for p in parts)
    rows = [(int(r["step"]), r["name"]) for r in csv.DictReader(open(tmp_path / "run" / "csv" / "scalars.csv"))]
    assert sorted(s for s, n in rows if n == "distill/loss") == [0, 1] and len(rows) == len(set(rows))
    assert not any(n == "distill/grad_norm" for _, n in rows)
    assert len(list((tmp_path / "run" / "csv" / "images").glob("distill_images_*.png"))) == 2

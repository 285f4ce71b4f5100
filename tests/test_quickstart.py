"""The SelMatch quickstart's pipeline and report, on scikit-learn's digits so that it takes seconds (the
example itself runs on mnist5k; its numbers are in README.md and docs/results.md)."""

from __future__ import annotations

import pytest

import fastdd
import fastdd.quickstart as qs


def test_separation_says_ahead_behind_or_within_the_spread():
    assert qs.separation(0.958, 0.945, 0.006).startswith("SelMatch +1.3 points: ahead")
    assert qs.separation(0.930, 0.945, 0.006).startswith("SelMatch -1.5 points: behind")
    assert "does not separate" in qs.separation(0.948, 0.945, 0.006)
    assert "does not separate" in qs.separation(0.75, 0.5, 0.25)  # exactly the spread is not beyond it


def test_equal_compute_epochs_is_selmatchs_rule():
    assert [qs.equal_compute_epochs(i) for i in (1, 10, 40, 400)] == [1000, 800, 200, 20]


def test_selmatch_example_reports_three_rows_and_a_rerun_reuses_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(qs, "load_dataset", lambda name: fastdd.load_dataset("digits"))
    kw = dict(ipc=2, num_experts=1, expert_epochs=3, iterations=2, eval_epochs=2, num_eval=2, show_progress=False)
    lines: list[str] = []
    first = qs.selmatch_example(tmp_path / "qs", echo=lines.append, **kw)
    report = (tmp_path / "qs" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "IPC" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| random real", "| MTT", "| SelMatch"]
    sm, mtt = first["selmatch"], first["mtt"]
    assert f"{100 * sm['mean']:.1f} ± {100 * sm['std']:.1f}" in rows[2]
    assert f"{100 * mtt['mean']:.1f} ± {100 * mtt['std']:.1f}" in rows[1]
    assert f"{100 * sm['random']['mean']:.1f}" in rows[0]
    assert len(sm["accuracies"]) == len(mtt["accuracies"]) == 2
    for name in ("images.png", "loss.png", "lr.png", "forgetting.npz", "mtt/synthetic", "selmatch/synthetic"):
        assert (tmp_path / "qs" / name).exists(), name
    shards = {p: p.stat().st_mtime_ns for p in (tmp_path / "qs" / "experts").glob("*.safetensors")}
    logs = {m: (tmp_path / "qs" / m / "log.csv").read_text() for m in ("mtt", "selmatch")}

    def no_training(*a, **k):
        raise AssertionError("a rerun must not compute the scores again")

    monkeypatch.setattr(qs, "forgetting_from_experts", no_training)
    lines.clear()
    again = qs.selmatch_example(tmp_path / "qs", echo=lines.append, **kw)
    assert {p: p.stat().st_mtime_ns for p in shards} == shards  # experts kept, not retrained
    assert {m: (tmp_path / "qs" / m / "log.csv").read_text() for m in logs} == logs  # no iteration ran again
    assert again["selmatch"]["accuracies"] == sm["accuracies"]
    assert again["mtt"]["accuracies"] == mtt["accuracies"]


def test_the_cli_refuses_experts_too_short_for_two_expert_epochs(capsys):
    from fastdd.cli import main

    with pytest.raises(SystemExit) as e:
        main(["quickstart", "--example", "selmatch", "--expert-epochs", "2"])
    assert e.value.code == 2
    assert "--expert-epochs" in capsys.readouterr().err


def test_decoupled_example_reports_rded_and_sre2l_beside_relabelled_random_and_a_rerun_reuses_all(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(qs, "load_dataset", lambda name: fastdd.load_dataset("digits"))
    kw = dict(ipc=1, teacher_epochs=2, iterations=3, eval_epochs=2, num_eval=2, show_progress=False)
    lines: list[str] = []
    first = qs.decoupled_example(tmp_path / "qs", echo=lines.append, **kw)
    report = (tmp_path / "qs" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "IPC" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| random real, relabelled", "| SRe2L", "| RDED"]
    rded, sre2l = first["rded"], first["sre2l"]
    rnd = rded["random"]
    assert f"{100 * rnd['mean']:.1f} ± {100 * rnd['std']:.1f}" in rows[0]
    assert (
        f"{100 * sre2l['mean']:.1f} ± {100 * sre2l['std']:.1f} | {100 * (sre2l['mean'] - rnd['mean']):+.1f}" in rows[1]
    )
    assert f"{100 * rded['mean']:.1f} ± {100 * rded['std']:.1f} | {100 * (rded['mean'] - rnd['mean']):+.1f}" in rows[2]
    assert "random" not in sre2l  # one relabelled random subset, beside RDED's runs, for both rows
    assert rded["protocol"]["name"] == "kd" and rded["protocol"]["epochs"] == 2
    assert len(rded["accuracies"]) == len(sre2l["accuracies"]) == len(rnd["accuracies"]) == 2
    assert f"test accuracy {100 * first['teacher_accuracy']:.1f} %" in report
    for name in ("images.png", "teacher/teacher.json", "rded/synthetic", "sre2l/synthetic"):
        assert (tmp_path / "qs" / name).exists(), name
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "qs").rglob("*.safetensors") if "synthetic" not in str(p)}
    logs = {m: (tmp_path / "qs" / m / "log.csv").read_text() for m in ("rded", "sre2l")}

    def no_training(*a, **k):
        raise AssertionError("a rerun must reuse the teacher")

    monkeypatch.setattr("fastdd.teacher.fit", no_training)
    again = qs.decoupled_example(tmp_path / "qs", echo=lines.append, **kw)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # teacher and checkpoints kept, not rewritten
    assert {m: (tmp_path / "qs" / m / "log.csv").read_text() for m in logs} == logs  # no iteration ran again
    assert again["rded"]["accuracies"] == rded["accuracies"] and again["sre2l"]["accuracies"] == sre2l["accuracies"]


def test_the_cli_runs_the_decoupled_example(tmp_path, monkeypatch):
    from fastdd.cli import main

    seen = {}
    monkeypatch.setattr(qs, "decoupled_example", lambda out, **kw: seen.update(out=out, **kw))
    assert main(["quickstart", "--example", "decoupled", "--out", str(tmp_path / "d"), "--teacher-epochs", "3"]) == 0
    assert seen == dict(
        out=str(tmp_path / "d"), ipc=1, teacher_epochs=3, iterations=1000, eval_epochs=300, num_eval=3, seed=0
    )

"""The file layer's guards, at the API: names read from JSON stay inside their folder (``..``, absolute
paths, symbolic links), every file fastdd indexes carries its size and SHA-256 and is checked when read,
older files without the record still load with a notice, and written files follow the umask."""

from __future__ import annotations

import json
import os
import stat
import warnings

import pytest
import torch

from fastdd.distillation.state import load_checkpoint, save_checkpoint
from fastdd.errors import CorruptFileError, UnsafePathError, UnverifiedFileWarning
from fastdd.io import atomic_save_safetensors, atomic_write_json, check_file, file_record, inside, sha256_file
from fastdd.synthetic import SyntheticSet


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "a.safetensors").write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "b.bin").write_bytes(b"y")
    (tmp_path / "outside.txt").write_text("secret")
    return d


def test_inside_accepts_names_in_the_folder(folder):
    assert inside(folder, "a.safetensors", source="m.json", field="file") == folder / "a.safetensors"
    assert inside(folder, "sub/b.bin", source="m.json", field="file") == folder / "sub" / "b.bin"
    assert inside(folder, "not-yet-written.bin", source="m.json", field="file") == folder / "not-yet-written.bin"


@pytest.mark.parametrize("name", ["../outside.txt", "sub/../../outside.txt", "..", "~/x", ""])
def test_inside_refuses_dotdot_and_non_names(folder, name):
    with pytest.raises(UnsafePathError, match=r"m\.json: field 'shards\[0\]\.file'"):
        inside(folder, name, source="m.json", field="shards[0].file")


def test_inside_refuses_an_absolute_path(folder):
    target = str(folder.parent / "outside.txt")
    with pytest.raises(UnsafePathError, match="points outside"):
        inside(folder, target, source="m.json", field="file")


@pytest.mark.parametrize("bad", [None, 3, ["a"], {"a": 1}])
def test_inside_refuses_what_is_not_a_string(folder, bad):
    with pytest.raises(UnsafePathError, match="must be a file name"):
        inside(folder, bad, source="m.json", field="file")


def test_inside_refuses_a_symlink_out_and_accepts_one_within(folder):
    (folder / "out.txt").symlink_to(folder.parent / "outside.txt")
    (folder / "sub_link").symlink_to(folder.parent)  # a folder link: anything under it leaves the folder
    (folder / "in.bin").symlink_to(folder / "sub" / "b.bin")
    for name in ("out.txt", "sub_link/outside.txt"):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            inside(folder, name, source="m.json", field="file")
    assert inside(folder, "in.bin", source="m.json", field="file").read_bytes() == b"y"


def test_file_record_and_check_catch_one_flipped_byte(tmp_path):
    path = tmp_path / "t.safetensors"
    record = atomic_save_safetensors(path, {"x": torch.arange(100, dtype=torch.float32)})
    assert record == {"bytes": path.stat().st_size, "sha256": sha256_file(path)} == file_record(path)
    import hashlib

    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # an independent digest
    check_file(path, record, tmp_path / "index.json")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"t\.safetensors is corrupt: its SHA-256 does not match .*index\.json"):
        check_file(path, record, tmp_path / "index.json")
    path.write_bytes(bytes(data[:-1]))
    with pytest.raises(CorruptFileError, match="truncated"):
        check_file(path, record, tmp_path / "index.json")


def _set() -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(
        torch.randn(4, 1, 5, 5, generator=g),
        torch.tensor([0, 1, 2, 1]),
        torch.tensor(0.01),
        None,
        {"num_classes": 3, "method": "test"},
    )


def test_a_saved_set_records_its_checksum_and_a_flipped_byte_is_caught(tmp_path):
    path = _set().save(tmp_path / "set", grid=False)
    meta = json.loads((path / "synthetic.json").read_text())
    assert meta["files"]["synthetic.safetensors"] == file_record(path / "synthetic.safetensors")
    back = SyntheticSet.load(path)
    assert torch.equal(back.images, _set().images) and "files" not in back.meta
    data = bytearray((path / "synthetic.safetensors").read_bytes())
    data[-1] ^= 0x80
    (path / "synthetic.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="synthetic.safetensors is corrupt"):
        SyntheticSet.load(path)


def test_a_set_saved_before_checksums_loads_with_one_notice(tmp_path):
    path = _set().save(tmp_path / "set", grid=False)
    meta = json.loads((path / "synthetic.json").read_text())
    del meta["files"]
    (path / "synthetic.json").write_text(json.dumps(meta))
    with pytest.warns(UnverifiedFileWarning, match="predates checksums") as record:
        back = SyntheticSet.load(path)
    assert len(record) == 1 and torch.equal(back.labels, _set().labels)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -0.01])
def test_a_learned_lr_that_is_not_a_finite_positive_number_is_refused(lr):
    s = _set()
    with pytest.raises(ValueError, match="learned lr must be finite and > 0"):
        SyntheticSet(s.images, s.labels, torch.tensor(lr), None, s.meta)


def test_labels_out_of_range_are_refused():
    s = _set()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        SyntheticSet(s.images, torch.tensor([0, 1, 3, 1]), None, None, s.meta)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        SyntheticSet(s.images, torch.tensor([0, -1, 2, 1]), None, None, s.meta)


def _checkpoint(folder, it: int, value: float) -> dict:
    x = torch.full((3,), value, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.1, momentum=0.5)
    x.grad = torch.ones(3)
    opt.step()
    save_checkpoint(folder, it, {"x": x}, {"o": opt}, {"g": torch.Generator().manual_seed(it)}, {"k": it})
    return json.loads((folder / "checkpoint.json").read_text())


def test_checkpoints_record_their_checksum_and_a_flipped_byte_is_caught(tmp_path):
    meta = _checkpoint(tmp_path, 5, 1.0)
    f = tmp_path / meta["file"]
    assert meta["record"] == file_record(f)
    x = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.1, momentum=0.5)
    assert load_checkpoint(tmp_path, {"x": x}, {"o": opt}, {"g": torch.Generator()})["iteration"] == 5
    assert torch.allclose(x, torch.full((3,), 0.9))
    data = bytearray(f.read_bytes())
    data[-2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"checkpoint_5\.safetensors is corrupt"):
        load_checkpoint(tmp_path, {"x": x}, {"o": opt}, {"g": torch.Generator()})


def test_a_save_deletes_only_its_own_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (run / "notes.txt").write_text("keep")
    first = _checkpoint(run, 1, 1.0)
    _checkpoint(run, 2, 1.0)
    assert not (run / first["file"]).exists()  # fastdd's own previous file goes
    for crafted in ("../victim.txt", str(victim), "notes.txt"):
        index = json.loads((run / "checkpoint.json").read_text())
        atomic_write_json(run / "checkpoint.json", {**index, "file": crafted})
        _checkpoint(run, 3, 1.0)
        assert victim.read_text() == "keep" and (run / "notes.txt").read_text() == "keep"
    (run / "checkpoint_9.safetensors").symlink_to(victim)  # a link with fastdd's name is not followed either
    index = json.loads((run / "checkpoint.json").read_text())
    atomic_write_json(run / "checkpoint.json", {**index, "file": "checkpoint_9.safetensors"})
    _checkpoint(run, 4, 1.0)
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        atomic_save_safetensors(tmp_path / "b.safetensors", {"x": torch.zeros(2)})
        with open(tmp_path / "plain.txt", "w") as f:  # what any other tool gives a new file
            f.write("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o666 & ~umask
    for name in ("a.json", "b.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


def test_no_temporary_file_is_left_behind(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_old_checkpoint_without_a_record_loads_with_a_notice(tmp_path):
    meta = _checkpoint(tmp_path, 2, 1.0)
    del meta["record"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    x = torch.zeros(3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(tmp_path, {"x": x}, {"o": torch.optim.SGD([x], lr=0.1, momentum=0.5)}, {"g": torch.Generator()})
    assert [w.category for w in caught] == [UnverifiedFileWarning]

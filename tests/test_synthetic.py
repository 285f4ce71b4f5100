"""SyntheticSet save / load in safetensors + JSON."""

import json

import pytest
import torch

import fastdd
from fastdd.synthetic import SyntheticSet


@pytest.mark.parametrize(
    "soft,lr,frozen",
    [(False, None, False), (True, torch.tensor(0.0123), True), (False, torch.tensor([0.1, 0.2, 0.3]), False)],
)
def test_roundtrip(tmp_path, soft, lr, frozen):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 5, 5, generator=g)
    labels = torch.softmax(torch.randn(6, 3, generator=g), 1) if soft else torch.tensor([0, 0, 1, 1, 2, 2])
    mask = torch.tensor([True, False] * 3) if frozen else None
    syn = SyntheticSet(
        images,
        labels,
        lr,
        mask,
        meta={"method": "test", "num_classes": 3, "seed": 4, "mean": [0.5] * 3, "std": [0.25] * 3},
    )
    syn.save(tmp_path / "s")
    assert (tmp_path / "s" / "images.png").stat().st_size > 0
    assert not list((tmp_path / "s").glob("*.tmp*"))
    back = SyntheticSet.load(tmp_path / "s")
    assert torch.equal(back.images, images) and torch.equal(back.labels, labels)
    assert (back.lr is None) == (lr is None) and (lr is None or torch.equal(back.lr, lr))
    assert (back.frozen is None) == (mask is None) and (mask is None or torch.equal(back.frozen, mask))
    assert back.meta["method"] == "test" and back.ipc == 2 and back.num_classes == 3
    assert back.soft == soft


def test_load_errors(tmp_path):
    syn = SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), meta={"num_classes": 2})
    syn.save(tmp_path / "s", grid=False)
    f = tmp_path / "s" / "synthetic.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(fastdd.CorruptFileError, match="synthetic.safetensors"):
        SyntheticSet.load(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="not a saved SyntheticSet"):
        SyntheticSet.load(tmp_path / "missing")
    syn.save(tmp_path / "t", grid=False)
    meta = json.loads((tmp_path / "t" / "synthetic.json").read_text())
    meta["format"] = "something else"
    (tmp_path / "t" / "synthetic.json").write_text(json.dumps(meta))
    with pytest.raises(fastdd.CorruptFileError, match="is not a fastdd.synthetic/1 synthetic set"):
        SyntheticSet.load(tmp_path / "t")


def test_validation():
    with pytest.raises(ValueError, match="labels"):
        SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        SyntheticSet(torch.full((2, 1, 4, 4), float("nan")), torch.tensor([0, 1]))

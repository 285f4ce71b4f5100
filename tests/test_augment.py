"""Tests of fastdd.augment against plain per-sample loop references written here.

The references recompute every family sample by sample with explicit index arithmetic (crop, cutout,
flip), the colour formulas on one sample, and a hand-written float64 bilinear sampler (scale, rotate)
that does not call affine_grid / grid_sample.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from fastdd.augment import (
    DSA,
    FAMILIES,
    FULL_STRATEGY,
    NO_FLIP_STRATEGY,
    PER_SAMPLE,
    CombinedParams,
    CropFlipParams,
    DSAConfig,
    DSAParams,
    apply_combined,
    apply_crop_flip,
    apply_dsa,
    combined_augment,
    crop_flip,
    sample_crop_flip,
    sample_dsa,
    siamese_dsa,
    strategy_for,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# per-sample loop references (float64, one image at a time)


def ref_color(img: torch.Tensor, b: float, s: float, c: float) -> torch.Tensor:
    """img (C, H, W)."""
    y = img + b
    m = y.mean(dim=0, keepdim=True)
    y = (y - m) * s + m
    m = y.mean()
    return (y - m) * c + m


def ref_crop(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    ch, h, w = img.shape
    out = torch.zeros_like(img)
    for r in range(h):
        for q in range(w):
            sr, sq = r + dy, q + dx
            if 0 <= sr < h and 0 <= sq < w:
                out[:, r, q] = img[:, sr, sq]
    return out


def ref_cutout(img: torch.Tensor, cy: int, cx: int, kh: int, kw: int) -> torch.Tensor:
    _, h, w = img.shape
    out = img.clone()
    y0, x0 = cy - kh // 2, cx - kw // 2
    out[:, max(y0, 0) : min(y0 + kh, h), max(x0, 0) : min(x0 + kw, w)] = 0
    return out


def ref_flip(img: torch.Tensor, f: bool) -> torch.Tensor:
    if not f:
        return img.clone()
    _, _, w = img.shape
    out = torch.empty_like(img)
    for q in range(w):
        out[:, :, q] = img[:, :, w - 1 - q]
    return out


def ref_affine(img: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """Bilinear sampling at align_corners=True normalised coordinates, zero outside, by hand."""
    ch, h, w = img.shape
    out = torch.zeros_like(img)
    for r in range(h):
        yn = -1.0 + 2.0 * r / (h - 1)
        for q in range(w):
            xn = -1.0 + 2.0 * q / (w - 1)
            gx = theta[0][0] * xn + theta[0][1] * yn + theta[0][2]
            gy = theta[1][0] * xn + theta[1][1] * yn + theta[1][2]
            ix = (gx + 1.0) / 2.0 * (w - 1)
            iy = (gy + 1.0) / 2.0 * (h - 1)
            x0, y0 = math.floor(ix), math.floor(iy)
            ax, ay = ix - x0, iy - y0
            acc = torch.zeros(ch, dtype=img.dtype)
            for yy, wy in ((y0, 1.0 - ay), (y0 + 1, ay)):
                for xx, wx in ((x0, 1.0 - ax), (x0 + 1, ax)):
                    if 0 <= yy < h and 0 <= xx < w:
                        acc = acc + wy * wx * img[:, yy, xx]
            out[:, r, q] = acc
    return out


def ref_one(img: torch.Tensor, fam: str, t: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    """Family ``fam`` on sample ``i`` with the parameter tensors ``t``."""
    if fam == "color":
        return ref_color(img, float(t["brightness"][i]), float(t["saturation"][i]), float(t["contrast"][i]))
    if fam == "crop":
        return ref_crop(img, int(t["shift"][i, 0]), int(t["shift"][i, 1]))
    if fam == "cutout":
        return ref_cutout(
            img,
            int(t["cutout_centre"][i, 0]),
            int(t["cutout_centre"][i, 1]),
            int(t["cutout_size"][i, 0]),
            int(t["cutout_size"][i, 1]),
        )
    if fam == "flip":
        return ref_flip(img, bool(t["flip"][i]))
    if fam == "scale":
        sx, sy = float(t["scale"][i, 0]), float(t["scale"][i, 1])
        return ref_affine(img, [[sx, 0.0, 0.0], [0.0, sy, 0.0]])
    if fam == "rotate":
        a = float(t["angle"][i])
        return ref_affine(img, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    raise AssertionError(fam)


def ref_apply(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    out = []
    for i in range(x.shape[0]):
        fam = p.families[int(p.tensors["family_index"][i])] if p.family == PER_SAMPLE else p.family
        out.append(ref_one(x[i], fam, p.tensors, i))
    return torch.stack(out)


def assert_matches(got: torch.Tensor, want: torch.Tensor, exact: bool) -> None:
    if exact:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


EXACT = {"crop", "cutout", "flip"}


# ----------------------------------------------------------------------------------------------------
# correctness against the references


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_loop_reference(family: str) -> None:
    x = torch.randn(6, 3, 7, 9, dtype=torch.float64, generator=gen(1))
    p = sample_dsa(6, (7, 9), DSAConfig(), gen(2), family=family)
    assert p.family == family
    assert_matches(apply_dsa(x, p), ref_apply(x, p), family in EXACT)


def test_crop_and_cutout_edge_cases() -> None:
    x = torch.randn(5, 2, 8, 6, dtype=torch.float64, generator=gen(3))
    shift = torch.tensor([[0, 0], [-3, 2], [7, -5], [-8, 0], [2, 6]])  # includes fully-out shifts
    p = DSAParams("crop", {"shift": shift})
    assert_matches(apply_dsa(x, p), ref_apply(x, p), exact=True)
    assert torch.equal(apply_dsa(x, p)[0], x[0])
    assert torch.equal(apply_dsa(x, p)[3], torch.zeros_like(x[3]))
    centre = torch.tensor([[0, 0], [7, 5], [8, 6], [3, 2], [4, 1]])
    size = torch.tensor([[4, 3], [4, 3], [4, 3], [5, 3], [1, 1]])
    p = DSAParams("cutout", {"cutout_centre": centre, "cutout_size": size})
    y = apply_dsa(x, p)
    assert_matches(y, ref_apply(x, p), exact=True)
    assert int((y[4] == 0).sum()) == 2 * 1  # 1x1 hole in each of the 2 channels
    assert int((y[1] == 0).sum()) == 2 * (3 * 2)  # rows [5, 9) and cols [4, 7) clipped to 3 x 2 inside


def test_affine_orientation_conventions() -> None:
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, generator=gen(4))
    quarter = DSAParams("rotate", {"angle": torch.full((2,), math.pi / 2, dtype=torch.float64)})
    torch.testing.assert_close(apply_dsa(x, quarter), torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-12)
    ident = DSAParams("scale", {"scale": torch.ones(2, 2, dtype=torch.float64)})
    torch.testing.assert_close(apply_dsa(x, ident), x, rtol=0, atol=1e-12)
    # sx > 1 samples further out along the width: the output column 0 reads outside -> smaller support
    zoom = DSAParams("scale", {"scale": torch.tensor([[2.0, 1.0]] * 2, dtype=torch.float64)})
    y = apply_dsa(torch.ones(2, 1, 5, 5, dtype=torch.float64), zoom)
    assert torch.equal(y[:, :, :, 0], torch.zeros(2, 1, 5, dtype=torch.float64))
    assert torch.equal(y[:, :, 0, :].count_nonzero(), y[:, :, 4, :].count_nonzero())


def test_per_sample_family_matches_loop_reference() -> None:
    x = torch.randn(40, 3, 6, 5, dtype=torch.float64, generator=gen(5))
    p = sample_dsa(40, (6, 5), DSAConfig(), gen(6), per_sample_family=True)
    assert p.family == PER_SAMPLE and p.families == FAMILIES
    assert set(p.tensors["family_index"].tolist()) == set(range(6))
    assert_matches(apply_dsa(x, p), ref_apply(x, p), exact=False)
    # a strategy without flip never picks it and per-sample indices refer to that strategy
    p2 = sample_dsa(40, (6, 5), DSAConfig(strategy=NO_FLIP_STRATEGY), gen(6), per_sample_family=True)
    assert p2.families == ("color", "crop", "cutout", "scale", "rotate") and "flip" not in p2.tensors
    assert_matches(apply_dsa(x, p2), ref_apply(x, p2), exact=False)


def test_float32_close_to_float64() -> None:
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=gen(7))
    for fam in FAMILIES:
        p = sample_dsa(8, 16, None, gen(8), family=fam)
        torch.testing.assert_close(apply_dsa(x.float(), p).double(), apply_dsa(x, p), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# ranges


def test_sampled_ranges() -> None:
    n, cfg = 20000, DSAConfig()
    p = sample_dsa(n, 32, cfg, gen(10), family="color").tensors
    b, s, c = p["brightness"], p["saturation"], p["contrast"]
    assert b.min() >= -0.5 and b.max() < 0.5 and abs(float(b.mean())) < 0.01
    assert b.min() < -0.49 and b.max() > 0.49
    assert s.min() >= 0.0 and s.max() < 2.0 and abs(float(s.mean()) - 1.0) < 0.02
    assert c.min() >= 0.5 and c.max() < 1.5 and abs(float(c.mean()) - 1.0) < 0.01
    assert s.min() < 0.01 and s.max() > 1.99 and c.min() < 0.51 and c.max() > 1.49  # full ranges covered
    # color draws the three factors independently
    assert abs(float(torch.corrcoef(torch.stack([b, s, c]))[0, 1])) < 0.03

    sh = sample_dsa(n, 32, cfg, gen(11), family="crop").tensors["shift"]
    assert sh.dtype == torch.int64 and sh.shape == (n, 2)
    for a in range(2):
        assert set(sh[:, a].tolist()) == set(range(-4, 5))
    sh = sample_dsa(n, (32, 64), cfg, gen(11), family="crop").tensors["shift"]
    assert set(sh[:, 0].tolist()) == set(range(-4, 5)) and set(sh[:, 1].tolist()) == set(range(-8, 9))

    t = sample_dsa(n, 32, cfg, gen(12), family="cutout").tensors
    assert torch.equal(t["cutout_size"], torch.full((n, 2), 16))
    assert set(t["cutout_centre"][:, 0].tolist()) == set(range(0, 33))  # even side: [0, H + 1)
    t = sample_dsa(n, 30, cfg, gen(12), family="cutout").tensors  # side int(15.5) = 15, odd: [0, H)
    assert torch.equal(t["cutout_size"], torch.full((n, 2), 15))
    assert set(t["cutout_centre"][:, 1].tolist()) == set(range(0, 30))

    f = sample_dsa(n, 32, cfg, gen(13), family="flip").tensors["flip"]
    assert f.dtype == torch.bool and abs(float(f.double().mean()) - 0.5) < 0.02

    sc = sample_dsa(n, 32, cfg, gen(14), family="scale").tensors["scale"]
    assert sc.min() >= 1 / 1.2 and sc.max() < 1.2
    assert sc.min() < 1 / 1.2 + 1e-3 and sc.max() > 1.2 - 1e-3
    assert abs(float(torch.corrcoef(sc.T)[0, 1])) < 0.03  # sx, sy independent

    ang = sample_dsa(n, 32, cfg, gen(15), family="rotate").tensors["angle"]
    lim = 15.0 * math.pi / 180.0
    assert ang.min() >= -lim and ang.max() < lim and ang.abs().max() > lim * 0.999
    assert abs(float(ang.mean())) < 0.01


def test_family_choice_is_uniform() -> None:
    g, counts = gen(16), {f: 0 for f in FAMILIES}
    for _ in range(3000):
        counts[sample_dsa(1, 8, None, g).family] += 1
    assert all(400 < v < 600 for v in counts.values()), counts
    idx = sample_dsa(60000, 8, None, gen(17), per_sample_family=True).tensors["family_index"]
    freq = torch.bincount(idx, minlength=6).double() / 60000
    assert torch.all((freq - 1 / 6).abs() < 0.01), freq


def test_single_family_mode_holds_only_its_tensors() -> None:
    for fam in FAMILIES:
        p = sample_dsa(3, 8, None, gen(18), family=fam)
        assert all(v.shape[0] == 3 for v in p.tensors.values())
        assert "family_index" not in p.tensors
    assert set(sample_dsa(3, 8, None, gen(18), family="color").tensors) == {"brightness", "saturation", "contrast"}


# ----------------------------------------------------------------------------------------------------
# configuration


def test_strategy_validation_and_presets() -> None:
    with pytest.raises(ValueError, match="blur"):
        DSAConfig(strategy="color_blur_crop")
    with pytest.raises(ValueError):
        DSAConfig(strategy="")
    with pytest.raises(ValueError, match="zoom"):
        sample_dsa(2, 8, None, gen(0), family="zoom")
    assert DSAConfig().families == FAMILIES and DSAConfig().strategy == FULL_STRATEGY
    for name in ("mnist", "MNIST5k", "digits", "svhn"):
        assert strategy_for(name) == "color_crop_cutout_scale_rotate"
    for name in ("cifar10", "cifar100", "fashionmnist", "tinyimagenet"):
        assert strategy_for(name) == "color_crop_cutout_flip_scale_rotate"
    cfg = DSAConfig(strategy=strategy_for("mnist"))
    g = gen(19)
    assert all(sample_dsa(1, 8, cfg, g).family != "flip" for _ in range(300))
    c = DSAConfig()
    assert (
        c.prob_flip,
        c.ratio_scale,
        c.ratio_rotate,
        c.ratio_crop_pad,
        c.ratio_cutout,
        c.brightness,
        c.saturation,
        c.contrast,
    ) == (0.5, 1.2, 15.0, 0.125, 0.5, 1.0, 2.0, 0.5)


def test_sample_needs_generator_and_matching_batch() -> None:
    with pytest.raises(ValueError):
        sample_dsa(2, 8, None, None)
    p = sample_dsa(3, 8, None, gen(0), family="crop")
    with pytest.raises(ValueError):
        apply_dsa(torch.zeros(4, 1, 8, 8), p)


# ----------------------------------------------------------------------------------------------------
# determinism, replay, siamese, storage


def test_determinism_and_global_rng_untouched() -> None:
    x = torch.randn(16, 3, 12, 12)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    outs = []
    for seed in (21, 21, 22):
        g = gen(seed)
        ps = [sample_dsa(16, 12, None, g, family=f) for f in FAMILIES]
        ps.append(sample_dsa(16, 12, None, g, per_sample_family=True))
        ys = [apply_dsa(x, p) for p in ps]
        ys.append(DSA()(x, g))
        ys.append(crop_flip(x, g))
        ys.append(combined_augment(x, torch.arange(16) % 2 == 0, g))
        outs.append((ps, ys))
    assert torch.equal(torch.get_rng_state(), state)
    (pa, ya), (pb, yb), (pc, yc) = outs
    for p, q in zip(pa, pb):
        assert p.family == q.family and p.tensors.keys() == q.tensors.keys()
        assert all(torch.equal(p.tensors[k], q.tensors[k]) for k in p.tensors)
    assert all(torch.equal(a, b) for a, b in zip(ya, yb))
    assert all(not torch.equal(a, c) for a, c in zip(ya, yc))


def test_replay_is_identical() -> None:
    x = torch.randn(10, 3, 16, 16)
    dsa = DSA()
    for seed in range(8):
        y, p = dsa(x, gen(seed), return_params=True)
        assert torch.equal(DSA.replay(x, p), y)
        assert torch.equal(apply_dsa(x, p), apply_dsa(x, p))


@pytest.mark.parametrize("family", [*FAMILIES, None])
def test_siamese_expand(family: str | None) -> None:
    x1 = torch.randn(7, 3, 9, 9, dtype=torch.float64, generator=gen(30))
    p1 = sample_dsa(1, 9, None, gen(31), family=family, per_sample_family=family is None)
    pe = p1.expand(7)
    assert pe.n == 7
    y1, y2 = apply_dsa(x1, pe), apply_dsa(x1.clone(), pe)
    assert torch.equal(y1, y2)
    for i in range(7):  # each row equals the one-sample call on that row
        torch.testing.assert_close(y1[i : i + 1], apply_dsa(x1[i : i + 1], p1), rtol=0, atol=1e-12)
    same = x1[:1].expand(7, -1, -1, -1).contiguous()  # identical images -> identical outputs
    ys = apply_dsa(same, pe)
    torch.testing.assert_close(ys, ys[:1].expand_as(ys), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        pe.expand(3)


def test_siamese_dsa_two_batches() -> None:
    a = torch.randn(5, 3, 10, 10, dtype=torch.float64, generator=gen(32))
    b = torch.randn(3, 3, 10, 10, dtype=torch.float64, generator=gen(33))
    for seed in range(12):
        (ya, yb), p1 = siamese_dsa([a, b], None, gen(seed))
        assert p1.n == 1
        want = ref_apply(torch.cat([a, b]), p1.expand(8))
        assert_matches(torch.cat([ya, yb]), want, exact=p1.family in EXACT)
    y, p = DSA()(a, gen(40), siamese=True, return_params=True)
    assert all(torch.equal(v, v[:1].expand_as(v)) for v in p.tensors.values())


def test_params_storage_and_device() -> None:
    x = torch.randn(6, 3, 8, 8)
    for p in [sample_dsa(6, 8, None, gen(41), family=f) for f in FAMILIES] + [
        sample_dsa(6, 8, None, gen(42), per_sample_family=True),
        sample_dsa(1, 8, None, gen(43)).expand(6),
    ]:
        buf = io.BytesIO()
        torch.save(p.state_dict(), buf)
        buf.seek(0)
        q = DSAParams.from_state_dict(torch.load(buf, weights_only=True))
        assert q.family == p.family and q.families == p.families
        assert torch.equal(apply_dsa(x, q), apply_dsa(x, p))
        m = p.to("meta")
        assert all(v.device.type == "meta" for v in m.tensors.values())
        assert all(m.tensors[k].dtype == p.tensors[k].dtype for k in p.tensors)
        assert torch.equal(apply_dsa(x, p.to("cpu")), apply_dsa(x, p))
        sub = p.index(torch.tensor([4, 1]))
        assert torch.equal(apply_dsa(x[[4, 1]], sub), apply_dsa(x, p)[[4, 1]])


# ----------------------------------------------------------------------------------------------------
# gradients


def _fixed_params(family: str, n: int = 2) -> DSAParams:
    if family == "color":
        return DSAParams(
            family,
            {
                "brightness": torch.tensor([0.3, -0.2], dtype=torch.float64),
                "saturation": torch.tensor([1.7, 0.4], dtype=torch.float64),
                "contrast": torch.tensor([0.6, 1.3], dtype=torch.float64),
            },
        )
    if family == "crop":
        return DSAParams(family, {"shift": torch.tensor([[1, -2], [-1, 0]])})
    if family == "cutout":
        return DSAParams(
            family, {"cutout_centre": torch.tensor([[2, 3], [0, 5]]), "cutout_size": torch.tensor([[3, 3], [3, 3]])}
        )
    if family == "flip":
        return DSAParams(family, {"flip": torch.tensor([True, False])})
    if family == "scale":
        return DSAParams(family, {"scale": torch.tensor([[1.13, 0.87], [0.91, 1.17]], dtype=torch.float64)})
    if family == "rotate":
        return DSAParams(family, {"angle": torch.tensor([0.21, -0.17], dtype=torch.float64)})
    raise AssertionError(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_each_family(family: str) -> None:
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=gen(50), requires_grad=True)
    p = _fixed_params(family)
    assert torch.autograd.gradcheck(lambda z: apply_dsa(z, p), (x,))


def test_gradcheck_per_sample_and_combined() -> None:
    x = torch.randn(6, 2, 5, 6, dtype=torch.float64, generator=gen(51), requires_grad=True)
    p = sample_dsa(6, (5, 6), None, gen(52), per_sample_family=True)
    p.tensors["family_index"] = torch.arange(6)  # every family once
    assert torch.autograd.gradcheck(lambda z: apply_dsa(z, p), (x,))
    _, cp = combined_augment(
        x.detach(), torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool), gen(53), return_params=True
    )
    assert torch.autograd.gradcheck(lambda z: apply_combined(z, cp), (x,))


# ----------------------------------------------------------------------------------------------------
# crop + flip and SelMatch's combined augmentation


def ref_crop_flip(img: torch.Tensor, dy: int, dx: int, f: bool, padding: int) -> torch.Tensor:
    """Zero-pad, take the (dy + p, dx + p) window (torchvision RandomCrop), then flip."""
    _, h, w = img.shape
    padded = F.pad(img, (padding, padding, padding, padding))
    win = padded[:, dy + padding : dy + padding + h, dx + padding : dx + padding + w]
    return ref_flip(win, f)


def test_crop_flip_matches_pad_crop_reference() -> None:
    x = torch.randn(20, 3, 10, 12, dtype=torch.float64, generator=gen(60))
    for padding in (0, 2, 4):
        y, p = crop_flip(x, gen(61 + padding), padding=padding, return_params=True)
        assert isinstance(p, CropFlipParams) and p.n == 20
        want = torch.stack(
            [ref_crop_flip(x[i], int(p.shift[i, 0]), int(p.shift[i, 1]), bool(p.flip[i]), padding) for i in range(20)]
        )
        assert torch.equal(y, want)
        assert torch.equal(apply_crop_flip(x, p), y)
    sp = sample_crop_flip(20000, gen(62), padding=4)
    assert set(sp.shift[:, 0].tolist()) == set(range(-4, 5)) and set(sp.shift[:, 1].tolist()) == set(range(-4, 5))
    assert abs(float(sp.flip.double().mean()) - 0.5) < 0.02
    one = sample_crop_flip(1, gen(63)).expand(20)
    ys = apply_crop_flip(x[:1].expand(20, -1, -1, -1), one)
    assert torch.equal(ys, ys[:1].expand_as(ys))


def test_combined_augment_rows() -> None:
    n = 48
    x = torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=gen(70))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:20] = True  # the distilled block first, as SelMatch lays it out
    mask[33] = True
    y, p = combined_augment(x, mask, gen(71), return_params=True)
    assert isinstance(p, CombinedParams) and torch.equal(p.distilled, mask)
    d, s = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    assert torch.equal(y[d], apply_dsa(x[d], p.dsa.index(d)))
    assert torch.equal(y[s], apply_crop_flip(x[s], p.crop_flip.index(s)))
    # loop reference, row by row
    for i in range(n):
        if mask[i]:
            fam = p.dsa.families[int(p.dsa.tensors["family_index"][i])]
            want = ref_one(x[i], fam, p.dsa.tensors, i)
        else:
            want = ref_crop_flip(
                x[i], int(p.crop_flip.shift[i, 0]), int(p.crop_flip.shift[i, 1]), bool(p.crop_flip.flip[i]), 4
            )
        torch.testing.assert_close(y[i], want, rtol=0, atol=1e-12)
    # several families occur among the distilled rows
    assert len(set(p.dsa.tensors["family_index"][mask].tolist())) >= 4
    # replay and storage
    assert torch.equal(apply_combined(x, p), y)
    buf = io.BytesIO()
    torch.save(p.state_dict(), buf)
    buf.seek(0)
    assert torch.equal(apply_combined(x, CombinedParams.from_state_dict(torch.load(buf, weights_only=True))), y)


def test_combined_no_cross_talk() -> None:
    n = 12
    x = torch.randn(n, 2, 8, 8, dtype=torch.float64, generator=gen(80))
    mask = torch.arange(n) < 6
    _, p = combined_augment(x, mask, gen(81), return_params=True)
    base = apply_combined(x, p)
    for i in (0, 3, 7, 11):
        x2 = x.clone()
        x2[i] += torch.randn(2, 8, 8, dtype=torch.float64, generator=gen(82 + i))
        y2 = apply_combined(x2, p)
        others = torch.arange(n) != i
        assert torch.equal(y2[others], base[others])
    # the gradient of one output row reaches only its own input row
    xg = x.clone().requires_grad_(True)
    apply_combined(xg, p)[4].sum().backward()
    assert xg.grad is not None
    assert torch.count_nonzero(xg.grad[torch.arange(n) != 4]) == 0


def test_combined_validates_mask() -> None:
    with pytest.raises(ValueError):
        combined_augment(torch.zeros(4, 1, 8, 8), torch.ones(3, dtype=torch.bool), gen(0))

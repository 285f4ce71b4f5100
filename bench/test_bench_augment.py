"""Group ``augment``: batched augmentation against a straightforward per-sample Python loop.

- DSA (:func:`fastdd.augment.apply_dsa`) per family on a batch of 256 CIFAR-shaped images (3×32×32,
  float32), against :func:`loop_dsa`: every image transformed on its own with the same parameters.
- SelMatch's combined augmentation (:func:`fastdd.augment.apply_combined`: distilled rows get DSA with a
  family per image, the others crop + flip) on 256 images, half of them distilled, against
  :func:`loop_combined`, one image at a time (what the reference does).

The parameters are drawn once per case (:func:`fastdd.augment.sample_dsa` / ``sample_combined``) and
both variants apply the same ones; ``tests/test_bench_suite.py`` checks that the loops give the batched
outputs. ``extra_info``: ``images_per_s`` and, on the batched case, ``speedup_vs_loop`` (the loop case
runs first). About a minute in all (``--bench-size full``); ``tiny``: 16 images of 3×16×16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdd.augment import FAMILIES, PER_SAMPLE, DSAConfig, apply_combined, apply_dsa, sample_combined, sample_dsa

SIZES = {"full": dict(n=256, im=32, rounds=10), "tiny": dict(n=16, im=16, rounds=2)}


# ------------------------------------------------------------------------------------ the loops
def _one_image(img: torch.Tensor, fam: str, t: dict) -> torch.Tensor:
    """One image ``(C, H, W)`` transformed by family ``fam`` with its own parameters ``t`` (CPU scalars)."""
    c, h, w = img.shape
    if fam == "color":
        img = img + t["brightness"].to(img.dtype)
        m = img.mean(dim=0, keepdim=True)
        img = (img - m) * t["saturation"].to(img.dtype) + m
        m = img.mean()
        return (img - m) * t["contrast"].to(img.dtype) + m
    if fam == "crop":
        dy, dx = int(t["shift"][0]), int(t["shift"][1])
        pad = max(abs(dy), abs(dx))
        padded = F.pad(img, (pad, pad, pad, pad))
        return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    if fam == "cutout":
        cy, cx = int(t["cutout_centre"][0]), int(t["cutout_centre"][1])
        kh, kw = int(t["cutout_size"][0]), int(t["cutout_size"][1])
        r0, c0 = cy - kh // 2, cx - kw // 2
        mask = torch.ones(h, w, dtype=img.dtype, device=img.device)
        mask[max(r0, 0) : max(r0 + kh, 0), max(c0, 0) : max(c0 + kw, 0)] = 0
        return img * mask
    if fam == "flip":
        return img.flip(-1) if bool(t["flip"]) else img
    if fam in ("scale", "rotate"):
        if fam == "scale":
            sx, sy = float(t["scale"][0]), float(t["scale"][1])
            theta = torch.tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0]], dtype=torch.float64)
        else:
            a = t["angle"].to(torch.float64)
            cos, sin = float(torch.cos(a)), float(torch.sin(a))
            theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float64)
        theta = theta.to(device=img.device, dtype=img.dtype)[None]
        grid = F.affine_grid(theta, [1, c, h, w], align_corners=True)
        return F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    raise ValueError(f"unknown family {fam!r}")


def loop_dsa(x: torch.Tensor, params) -> torch.Tensor:
    """:func:`fastdd.augment.apply_dsa`, one image at a time (parameters read on the host)."""
    p = params.to("cpu")
    out = []
    for i in range(x.shape[0]):
        t = {k: v[i] for k, v in p.tensors.items()}
        fam = p.families[int(t["family_index"])] if p.family == PER_SAMPLE else p.family
        out.append(_one_image(x[i], fam, t))
    return torch.stack(out)


def loop_combined(x: torch.Tensor, params) -> torch.Tensor:
    """:func:`fastdd.augment.apply_combined`, one image at a time: DSA with the image's own family for
    distilled rows, crop (zero padding) then flip for the others."""
    dsa = params.dsa.to("cpu")
    shift, flip, distilled = params.crop_flip.shift.cpu(), params.crop_flip.flip.cpu(), params.distilled.cpu()
    out = []
    for i in range(x.shape[0]):
        if bool(distilled[i]):
            t = {k: v[i] for k, v in dsa.tensors.items()}
            out.append(_one_image(x[i], dsa.families[int(t["family_index"])], t))
        else:
            img = _one_image(x[i], "crop", {"shift": shift[i]})
            out.append(_one_image(img, "flip", {"flip": flip[i]}))
    return torch.stack(out)


# ------------------------------------------------------------------------------------ the cases
VARIANTS = ("loop", "batched")  # loop first: the batched case reads its time for the speed-up


def _record(run, bench_store, key, variant, n, sec):
    info = run.benchmark.extra_info
    info.update(variant=variant, images=n, images_per_s=n / sec)
    if variant == "loop":
        bench_store[key] = sec
    elif key in bench_store:
        info["speedup_vs_loop"] = bench_store[key] / sec


@pytest.mark.benchmark(group="augment")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_dsa(family, variant, device, run, bench_size, bench_store):
    s = SIZES[bench_size]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["n"], 3, s["im"], s["im"], generator=g).to(device)
    params = sample_dsa(s["n"], s["im"], DSAConfig(), g, family=family).to(device)
    fn = loop_dsa if variant == "loop" else apply_dsa
    fn(x, params)  # warm-up (on CUDA: the kernel's compilation)
    _, sec = run(fn, args=(x, params), rounds=s["rounds"], warmup=1)
    run.benchmark.extra_info["family"] = family
    _record(run, bench_store, ("dsa", device, family), variant, s["n"], sec)


@pytest.mark.benchmark(group="augment")
@pytest.mark.parametrize("variant", VARIANTS)
def test_combined(variant, device, run, bench_size, bench_store):
    s = SIZES[bench_size]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["n"], 3, s["im"], s["im"], generator=g).to(device)
    mask = torch.arange(s["n"]) % 2 == 0
    params = sample_combined(mask, s["im"], g).to(device)
    fn = loop_combined if variant == "loop" else apply_combined
    fn(x, params)
    _, sec = run(fn, args=(x, params), rounds=s["rounds"], warmup=1)
    run.benchmark.extra_info["distilled_fraction"] = 0.5
    _record(run, bench_store, ("combined", device), variant, s["n"], sec)

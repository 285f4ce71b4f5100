"""fastdd.kernels.dsa: the fused Triton DSA kernel (run in the Triton interpreter on CPU tensors)
against the torch implementation fastdd.augment.dsa.apply_dsa: values, gradients, double gradients."""

from __future__ import annotations

import warnings

import pytest
import torch

from fastdd import kernels
from fastdd.augment import dsa as ref
from fastdd.augment.dsa import DSAConfig, DSAParams, sample_dsa
from fastdd.kernels import dsa as kd
from fastdd.kernels import interpreting, use_backend

pytestmark = [
    pytest.mark.skipif(
        not (torch.cuda.is_available() or interpreting()), reason="Triton kernels need CUDA or TRITON_INTERPRET=1"
    ),
    # torch warns about affine_grid on 1-pixel axes (tested on purpose)
    pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid"),
]

SHAPES = [(3, 3, 7, 9), (2, 1, 8, 5)]
MODES = [*ref.FAMILIES, "per_sample", "siamese"]
# the torch implementation (fastdd.augment.dsa.apply_dsa may dispatch to the kernel itself)
torch_dsa = ref.apply_dsa_torch
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _params(mode: str, shape: tuple[int, ...], seed: int, config: DSAConfig | None = None) -> DSAParams:
    g = torch.Generator().manual_seed(seed)
    n, hw = shape[0], shape[2:]
    if mode == "per_sample":
        return sample_dsa(n, hw, config, generator=g, per_sample_family=True)
    if mode == "siamese":
        return sample_dsa(1, hw, config, generator=g).expand(n)
    return sample_dsa(n, hw, config, generator=g, family=mode)


def _per_sample_all_families(shape: tuple[int, ...], seed: int) -> DSAParams:
    """Per-sample parameters over 6 samples whose families are exactly the six families (shuffled)."""
    p = sample_dsa(6, shape[2:], generator=torch.Generator().manual_seed(seed), per_sample_family=True)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed + 1))
    return DSAParams(p.family, {**p.tensors, "family_index": perm}, p.families)


def _triton(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    with use_backend("triton"):
        return kernels.apply_dsa(x, p)


def _maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------------------
# forward values


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_forward_matches_torch(mode, dtype):
    for k, shape in enumerate(SHAPES):
        x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(10 + k))
        p = _params(mode, shape, seed=k)
        out = _triton(x, p)
        assert out.shape == x.shape and out.dtype == dtype
        assert _maxerr(out, torch_dsa(x, p)) <= TOL[dtype], (shape, mode)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_per_sample_with_all_six_families(dtype):
    shape = (6, 2, 7, 6)
    p = _per_sample_all_families(shape, seed=3)
    assert sorted(p.tensors["family_index"].tolist()) == list(range(6))
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(4))
    assert _maxerr(_triton(x, p), torch_dsa(x, p)) <= TOL[dtype]


def test_affine_wide_ranges_and_degenerate_matrices():
    """Large rotations / scales (wide transpose windows, non-square images) and matrices whose
    inverse is singular or wider than the image (the transpose then searches the whole axis)."""
    shape = (4, 2, 6, 9)
    cfg = DSAConfig(ratio_rotate=180.0, ratio_scale=3.0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(*shape, dtype=torch.float64)
    scale = torch.tensor([[0.0, 1.0], [0.1, 2.0], [1e-9, 1e-9], [-1.0, 0.5]], dtype=torch.float64)
    cases = [_params("rotate", shape, 5, cfg), _params("scale", shape, 6, cfg), DSAParams("scale", {"scale": scale})]
    for p in cases:
        out = _triton(x, p)
        want = torch_dsa(x, p)
        assert _maxerr(out, want) <= 1e-10
        (g_k,) = torch.autograd.grad(out, x, gy)
        (g_r,) = torch.autograd.grad(want, x, gy)
        assert _maxerr(g_k, g_r) <= 1e-10


@pytest.mark.parametrize("shape", [(2, 2, 1, 5), (2, 2, 5, 1), (1, 1, 1, 1)])
def test_one_pixel_axes(shape):
    """H or W == 1: affine_grid puts the 1-pixel axis at 0, the kernel does the same."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(*shape, dtype=torch.float64)
    for mode in ("scale", "rotate", "crop", "color", "per_sample"):
        p = _params(mode, shape, seed=7)
        out = _triton(x, p)
        want = torch_dsa(x, p)
        assert _maxerr(out, want) <= 1e-12
        assert _maxerr(torch.autograd.grad(out, x, gy)[0], torch.autograd.grad(want, x, gy)[0]) <= 1e-12


def test_empty_batch_and_checks():
    p0 = sample_dsa(0, (5, 4), generator=torch.Generator().manual_seed(0), family="rotate")
    x0 = torch.zeros(0, 2, 5, 4)
    assert _triton(x0, p0).shape == x0.shape
    p = sample_dsa(2, (5, 4), generator=torch.Generator().manual_seed(0), family="crop")
    with pytest.raises(ValueError, match="cover 2 samples"):
        _triton(torch.zeros(3, 1, 5, 4), p)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        _triton(torch.zeros(2, 5, 4), p)


def test_other_dtypes_run_the_torch_implementation():
    shape = (2, 1, 5, 4)
    p = _params("rotate", shape, seed=1)
    x = torch.randn(*shape).to(torch.bfloat16)
    assert torch.equal(_triton(x, p), torch_dsa(x, p))


def test_table_codes_and_unused_columns():
    p = _per_sample_all_families((6, 1, 5, 5), seed=8)
    x = torch.zeros(6, 1, 5, 5, dtype=torch.float32)
    codes, tab = kd.dsa_table(x, p)
    assert codes.dtype == torch.int32 and tab.dtype == torch.float32 and tab.shape == (6, kd.NCOL)
    fams = [p.families[i] for i in p.tensors["family_index"].tolist()]
    assert codes.tolist() == [kd.FAMILY_CODE[f] for f in fams]
    used = {
        "color": range(0, 3),
        "crop": range(3, 5),
        "cutout": range(5, 9),
        "flip": range(9, 10),
        "scale": range(10, 20),
        "rotate": range(10, 20),
    }
    for i, f in enumerate(fams):
        unused = [j for j in range(kd.NCOL) if j not in used[f]]
        assert (tab[i, unused] == 0).all(), f


def test_default_backend_on_cpu_is_the_torch_function_bitwise():
    shape = (3, 3, 7, 9)
    x = torch.randn(*shape)
    for mode in ("rotate", "color", "per_sample"):
        p = _params(mode, shape, seed=9)
        with use_backend("auto"):
            assert torch.equal(kernels.apply_dsa(x, p), torch_dsa(x, p))
        with use_backend("torch"):
            assert torch.equal(kernels.apply_dsa(x, p), torch_dsa(x, p))


# --------------------------------------------------------------------------------------------------
# backward: the transpose


@pytest.mark.parametrize("mode", MODES)
def test_backward_and_double_backward_match_torch(mode):
    shape = SHAPES[0] if mode != "per_sample" else (6, 2, 7, 6)
    p = _per_sample_all_families(shape, 11) if mode == "per_sample" else _params(mode, shape, seed=11)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    gy = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(*shape, dtype=torch.float64, generator=gen)
    res = []
    for fn in (_triton, torch_dsa):
        (gx,) = torch.autograd.grad(fn(x, p), x, gy, create_graph=True)
        (ggy,) = torch.autograd.grad((gx * v).sum(), gy)  # = A v
        res.append((gx, ggy))
    (gx_k, ggy_k), (gx_r, ggy_r) = res
    assert _maxerr(gx_k, gx_r) <= 1e-10
    assert _maxerr(ggy_k, ggy_r) <= 1e-10


def test_backward_float32():
    shape = SHAPES[1]
    for mode in ("rotate", "color", "crop"):
        p = _params(mode, shape, seed=13)
        x = torch.randn(*shape, requires_grad=True)
        gy = torch.randn(*shape)
        (g_k,) = torch.autograd.grad(_triton(x, p), x, gy)
        (g_r,) = torch.autograd.grad(torch_dsa(x, p), x, gy)
        assert g_k.dtype == torch.float32 and _maxerr(g_k, g_r) <= 1e-5


def test_transpose_identity():
    """<A x, y> = <x, Aᵀ y> with A the linear part (no offset), and A x + b - A x = b only for color."""
    shape = (6, 2, 7, 6)
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    y = torch.randn(*shape, dtype=torch.float64, generator=gen)
    for p in (_per_sample_all_families(shape, 15), _params("rotate", shape, 16), _params("scale", shape, 17)):
        codes, tab = kd.dsa_table(x, p)
        ax = kd.DSALinear.apply(x, codes, tab)
        aty = kd.DSATranspose.apply(y, codes, tab)
        lhs, rhs = (ax * y).sum().item(), (x * aty).sum().item()
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))
        offset = kd.DSAFunction.apply(x, codes, tab) - ax
        expect = torch.where(codes.view(-1, 1, 1, 1) == kd.COLOR, tab[:, 0].view(-1, 1, 1, 1), 0.0)
        assert _maxerr(offset, expect.expand_as(offset)) <= 1e-12


@pytest.mark.parametrize("mode", ["rotate", "color", "crop"])
def test_gradcheck_and_gradgradcheck(mode):
    shape = (2, 2, 4, 5)
    p = _params(mode, shape, seed=18)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    with use_backend("triton"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = lambda t: kernels.apply_dsa(t, p)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


# --------------------------------------------------------------------------------------------------
# compile specs (built for sm_80 / sm_90 by the compile-only test; here only their shape)


def test_compile_specs_cover_every_launch_configuration():
    specs = kd.compile_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    got = {
        (s.signature["x_ptr"], s.constexprs["TRANSPOSE"], s.constexprs["OFFSET"], s.constexprs["BLOCK"], s.num_warps)
        for s in specs
    }
    from fastdd.kernels._common import block_and_warps

    for ty in ("*fp32", "*fp64"):
        for flags in ((False, True), (True, False), (False, False)):
            for hw in (4, 5 * 7, 9 * 13, 16 * 16, 31 * 17, 32 * 32, 40 * 45, 64 * 64):
                assert (ty, *flags, *block_and_warps(hw)) in got
    for s in specs:
        assert list(s.signature) == list(s.fn.arg_names)
        assert s.signature["tab_ptr"] == s.signature["x_ptr"] and s.signature["code_ptr"] == "*i32"

"""DSA augmentation (:func:`fastdd.augment.apply_dsa`, also :func:`fastdd.kernels.apply_dsa`) as one fused
Triton launch per batch, with its backward (the transpose) and the backward's backward.

``apply_dsa_triton(x, params)``, the Triton path the dispatcher picks, has the contract of
:func:`fastdd.augment.dsa.apply_dsa`: x (N, C, H, W),
``params.n == N``, output (N, C, H, W), differentiable w.r.t. x (to any order). On the Triton path
(float32 / float64; other dtypes use the torch implementation) the parameters become a per-sample
table on x's device, built with torch ops only (no host sync):

* ``codes`` (N,) int32: the sample's family, :data:`COLOR`, :data:`CROP`, :data:`CUTOUT`, :data:`FLIP`,
  :data:`AFFINE` (scale and rotate, both a 2x2 matrix) or :data:`IDENTITY` (a per-sample family index
  that names no family: the torch code leaves such a sample unchanged);
* ``tab`` (N, :data:`NCOL`) in x's dtype: brightness b, saturation s, contrast c; shift dy, dx (pixels);
  cutout rows [r0, r1) and columns [c0, c1); flip flag; the affine matrix a00 a01 a10 a11 of
  ``affine_grid`` (normalised coordinates, x = width first); for the transpose the inverse of the
  pixel-space matrix i00 i01 i10 i11 and the half-extents ex, ey (pixels) of the window of output pixels
  that can read a given input pixel. Columns a sample's family does not use are 0.

One kernel, grid ``(N, cdiv(H*W, BLOCK))``, one program per (sample, tile of BLOCK pixels) looping
over channels, branching on the sample's family code; it computes in x's dtype. Every family is affine
in x: ``out = A x + b`` with b nonzero for color only. Flags: ``TRANSPOSE`` applies Aᵀ instead of A,
``OFFSET`` adds b. The transpose is a gather (deterministic, no atomics):

* color: A = c·s·I + c(1-s)/C·(sum over channels) + (1-c)/(C·H·W)·(sum over the sample), symmetric;
* crop: out[h, w] = x[h+dy, w+dx] (0 outside); Aᵀ shifts back by (-dy, -dx);
* cutout, flip: symmetric (a mask, an involutive permutation);
* affine: out[q] = Σ_p tent(s_x(q)-p_x)·tent(s_y(q)-p_y)·x[p] over the in-image integer neighbours p of
  the source point s(q) (``affine_grid`` + bilinear ``grid_sample``, zero padding,
  ``align_corners=True``), tent(t) = max(0, 1-|t|). Aᵀ visits, for each input pixel p, the output pixels
  q in a box around the preimage of p (half-extents from the inverse pixel-space matrix) and sums
  tent·tent·gy[q] with s(q) computed by the same code as the forward, so both are transposes of each
  other up to the rounding of the sums.

Autograd: :class:`DSAFunction` (forward A x + b) → :class:`DSATranspose` (Aᵀ) ↔ :class:`DSALinear` (A x),
each the backward of the other, so gradients of any order stay on the Triton path.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import dsa_torch as _ref
from ._common import KernelSpec, block_and_warps, on_device_of, triton_dtype

__all__ = [
    "apply_dsa_triton",
    "dsa_table",
    "DSAFunction",
    "DSATranspose",
    "DSALinear",
    "compile_specs",
    "FAMILY_CODE",
    "NCOL",
]

# family codes (int32 in ``codes``)
COLOR, CROP, CUTOUT, FLIP, AFFINE, IDENTITY = 0, 1, 2, 3, 4, 5
#: DSA family name -> kernel family code (scale and rotate are both an affine resampling).
FAMILY_CODE: dict[str, int] = {
    "color": COLOR,
    "crop": CROP,
    "cutout": CUTOUT,
    "flip": FLIP,
    "scale": AFFINE,
    "rotate": AFFINE,
}

# columns of the parameter table
_B, _S, _C, _DY, _DX, _R0, _R1, _C0, _C1, _FL, _A00, _A01, _A10, _A11, _I00, _I01, _I10, _I11, _EX, _EY = range(20)
#: Number of columns of the parameter table.
NCOL = 20

# the same indices as compile-time constants for the kernel
T_B, T_S, T_C = tl.constexpr(_B), tl.constexpr(_S), tl.constexpr(_C)
T_DY, T_DX = tl.constexpr(_DY), tl.constexpr(_DX)
T_R0, T_R1, T_C0, T_C1 = tl.constexpr(_R0), tl.constexpr(_R1), tl.constexpr(_C0), tl.constexpr(_C1)
T_FL = tl.constexpr(_FL)
T_A00, T_A01, T_A10, T_A11 = tl.constexpr(_A00), tl.constexpr(_A01), tl.constexpr(_A10), tl.constexpr(_A11)
T_I00, T_I01, T_I10, T_I11 = tl.constexpr(_I00), tl.constexpr(_I01), tl.constexpr(_I10), tl.constexpr(_I11)
T_EX, T_EY = tl.constexpr(_EX), tl.constexpr(_EY)
T_NCOL = tl.constexpr(NCOL)


# Added to the transpose window's half-extents (pixels): covers the rounding of the window centre, so
# that no output pixel with a nonzero weight is missed.
_WINDOW_MARGIN = 1e-3


# --------------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------------


@triton.jit
def _linspace(q, n, dt):
    """``torch.linspace(-1, 1, n)[q]`` as ``affine_grid(align_corners=True)`` builds it (0 when n == 1):
    torch fills the first half from -1 upwards and the second half from +1 downwards."""
    step = 2.0 / tl.maximum(n - 1, 1).to(dt)
    lo = q.to(dt) * step - 1.0
    hi = 1.0 - (n - 1 - q).to(dt) * step
    u = tl.where(q < n // 2, lo, hi)
    return tl.where(n > 1, u, 0.0)


@triton.jit
def _source(qy, qx, a00, a01, a10, a11, H, W):
    """Source point (sy, sx) in pixels of output pixel (qy, qx) under ``affine_grid`` with matrix
    [[a00, a01], [a10, a11]] (x = width first) and ``grid_sample(align_corners=True)``."""
    dt = a00.dtype
    ux = _linspace(qx, W, dt)
    uy = _linspace(qy, H, dt)
    gx = ux * a00 + uy * a01
    gy = ux * a10 + uy * a11
    sx = ((gx + 1.0) * 0.5) * (W - 1).to(dt)
    sy = ((gy + 1.0) * 0.5) * (H - 1).to(dt)
    return sy, sx


@triton.jit
def _tent(t):
    """Bilinear weight of a neighbour at distance t (pixels): max(0, 1 - |t|)."""
    return tl.maximum(1.0 - tl.abs(t), 0.0)


@triton.jit(do_not_specialize=["C", "H", "W"])
def _dsa_kernel(
    x_ptr, out_ptr, code_ptr, tab_ptr, C, H, W, TRANSPOSE: tl.constexpr, OFFSET: tl.constexpr, BLOCK: tl.constexpr
):
    """out[n] = A_n x[n] (+ b_n if OFFSET), or A_nᵀ x[n] if TRANSPOSE, for the tile ``program_id(1)`` of
    BLOCK pixels of sample ``program_id(0)``; x, out (N, C, H, W) contiguous, codes (N,) int32,
    tab (N, NCOL) in x's dtype."""
    n = tl.program_id(0)
    tile = tl.program_id(1)
    dt = x_ptr.dtype.element_ty
    HW = H * W
    base = n.to(tl.int64) * C * HW
    xs = x_ptr + base
    os = out_ptr + base
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    live = offs < HW
    h = offs // W
    w = offs % W
    code = tl.load(code_ptr + n)
    tab = tab_ptr + n.to(tl.int64) * T_NCOL

    if code == 0:  # color (A is symmetric: the transpose is the same formula)
        b = tl.load(tab + T_B)
        s = tl.load(tab + T_S)
        c = tl.load(tab + T_C)
        CHW = C * HW
        part = tl.zeros([BLOCK], dtype=dt)
        for start in range(0, CHW, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            part += tl.load(xs + idx, mask=idx < CHW, other=0.0)
        xm = tl.sum(part, axis=0) / CHW.to(dt)
        xc = tl.zeros([BLOCK], dtype=dt)
        for ch in range(0, C):
            xc += tl.load(xs + ch * HW + offs, mask=live, other=0.0)
        xc = xc / C.to(dt)
        k_x = c * s
        rest = (c * (1.0 - s)) * xc + (1.0 - c) * xm
        if OFFSET:
            rest = rest + b
        for ch in range(0, C):
            v = tl.load(xs + ch * HW + offs, mask=live, other=0.0)
            tl.store(os + ch * HW + offs, k_x * v + rest, mask=live)
    elif code == 1:  # crop: integer shift with zero fill
        dy = tl.load(tab + T_DY).to(tl.int32)
        dx = tl.load(tab + T_DX).to(tl.int32)
        if TRANSPOSE:
            dy = -dy
            dx = -dx
        sh = h + dy
        sw = w + dx
        ok = live & (sh >= 0) & (sh < H) & (sw >= 0) & (sw < W)
        src = sh * W + sw
        for ch in range(0, C):
            v = tl.load(xs + ch * HW + src, mask=ok, other=0.0)
            tl.store(os + ch * HW + offs, v, mask=live)
    elif code == 2:  # cutout: zero a box
        r0 = tl.load(tab + T_R0).to(tl.int32)
        r1 = tl.load(tab + T_R1).to(tl.int32)
        c0 = tl.load(tab + T_C0).to(tl.int32)
        c1 = tl.load(tab + T_C1).to(tl.int32)
        keep = (~((h >= r0) & (h < r1) & (w >= c0) & (w < c1))).to(dt)
        for ch in range(0, C):
            v = tl.load(xs + ch * HW + offs, mask=live, other=0.0)
            tl.store(os + ch * HW + offs, v * keep, mask=live)
    elif code == 3:  # flip the last axis
        fl = tl.load(tab + T_FL)
        src = tl.where(fl != 0.0, h * W + (W - 1 - w), offs)
        for ch in range(0, C):
            v = tl.load(xs + ch * HW + src, mask=live, other=0.0)
            tl.store(os + ch * HW + offs, v, mask=live)
    elif code == 4:  # affine: bilinear resampling (scale, rotate)
        a00 = tl.load(tab + T_A00)
        a01 = tl.load(tab + T_A01)
        a10 = tl.load(tab + T_A10)
        a11 = tl.load(tab + T_A11)
        if TRANSPOSE:
            # out[p] = sum over output pixels q near the preimage of p of weight(q, p) * x[q]
            i00 = tl.load(tab + T_I00)
            i01 = tl.load(tab + T_I01)
            i10 = tl.load(tab + T_I10)
            i11 = tl.load(tab + T_I11)
            ex = tl.load(tab + T_EX)
            ey = tl.load(tab + T_EY)
            cx = (W - 1).to(dt) * 0.5
            cy = (H - 1).to(dt) * 0.5
            pxf = w.to(dt)
            pyf = h.to(dt)
            q0x = i00 * (pxf - cx) + i01 * (pyf - cy) + cx
            q0y = i10 * (pxf - cx) + i11 * (pyf - cy) + cy
            lox = tl.maximum(tl.floor(q0x - ex), 0.0).to(tl.int32)
            loy = tl.maximum(tl.floor(q0y - ey), 0.0).to(tl.int32)
            # trip counts: the box [floor(q0 - e), ceil(q0 + e)] has at most floor(2e) + 3 integers
            nkx = tl.minimum((2.0 * ex).to(tl.int32) + 3, W)
            nky = tl.minimum((2.0 * ey).to(tl.int32) + 3, H)
            for ch in range(0, C):
                acc = tl.zeros([BLOCK], dtype=dt)
                for ky in range(0, nky):
                    qy = loy + ky
                    oky = live & (qy < H)
                    for kx in range(0, nkx):
                        qx = lox + kx
                        ok = oky & (qx < W)
                        sy, sx = _source(qy, qx, a00, a01, a10, a11, H, W)
                        wgt = _tent(sx - pxf) * _tent(sy - pyf)
                        v = tl.load(xs + ch * HW + qy * W + qx, mask=ok, other=0.0)
                        acc += tl.where(ok, wgt * v, 0.0)
                tl.store(os + ch * HW + offs, acc, mask=live)
        else:
            sy, sx = _source(h, w, a00, a01, a10, a11, H, W)
            # clamping keeps the int conversion defined; beyond [-1, dim] every neighbour is outside
            sx = tl.minimum(tl.maximum(sx, -2.0), W.to(dt) + 1.0)
            sy = tl.minimum(tl.maximum(sy, -2.0), H.to(dt) + 1.0)
            x0f = tl.floor(sx)
            y0f = tl.floor(sy)
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            wx0 = _tent(sx - x0f)
            wx1 = _tent(sx - (x0f + 1.0))
            wy0 = _tent(sy - y0f)
            wy1 = _tent(sy - (y0f + 1.0))
            okx0 = (x0 >= 0) & (x0 < W)
            okx1 = (x0 + 1 >= 0) & (x0 + 1 < W)
            oky0 = live & (y0 >= 0) & (y0 < H)
            oky1 = live & (y0 + 1 >= 0) & (y0 + 1 < H)
            m00 = oky0 & okx0
            m01 = oky0 & okx1
            m10 = oky1 & okx0
            m11 = oky1 & okx1
            p00 = y0 * W + x0
            w00 = wx0 * wy0
            w01 = wx1 * wy0
            w10 = wx0 * wy1
            w11 = wx1 * wy1
            for ch in range(0, C):
                plane = xs + ch * HW
                acc = w00 * tl.load(plane + p00, mask=m00, other=0.0)
                acc += w01 * tl.load(plane + p00 + 1, mask=m01, other=0.0)
                acc += w10 * tl.load(plane + p00 + W, mask=m10, other=0.0)
                acc += w11 * tl.load(plane + p00 + W + 1, mask=m11, other=0.0)
                tl.store(os + ch * HW + offs, acc, mask=live)
    else:  # identity
        for ch in range(0, C):
            v = tl.load(xs + ch * HW + offs, mask=live, other=0.0)
            tl.store(os + ch * HW + offs, v, mask=live)


# --------------------------------------------------------------------------------------------------
# parameter table (torch ops on x's device, no host sync)
# --------------------------------------------------------------------------------------------------


def _family_columns(fam: str, t: dict[str, Tensor], dtype: torch.dtype) -> dict[int, Tensor]:
    """The table columns family ``fam`` sets: column -> (N,) float64 (values already rounded to
    ``dtype`` where the torch code rounds them)."""
    f64 = torch.float64
    if fam == "color":
        return {
            _B: t["brightness"].to(dtype).to(f64),
            _S: t["saturation"].to(dtype).to(f64),
            _C: t["contrast"].to(dtype).to(f64),
        }
    if fam == "crop":
        sh = t["shift"].to(f64)
        return {_DY: sh[:, 0], _DX: sh[:, 1]}
    if fam == "cutout":
        start = t["cutout_centre"] - torch.div(t["cutout_size"], 2, rounding_mode="floor")
        stop = start + t["cutout_size"]
        start, stop = start.to(f64), stop.to(f64)
        return {_R0: start[:, 0], _R1: stop[:, 0], _C0: start[:, 1], _C1: stop[:, 1]}
    if fam == "flip":
        return {_FL: t["flip"].to(f64)}
    if fam in ("scale", "rotate"):
        theta = (_ref._scale_theta(t["scale"], dtype) if fam == "scale" else _ref._rotate_theta(t["angle"], dtype)).to(
            f64
        )
        return {_A00: theta[:, 0, 0], _A01: theta[:, 0, 1], _A10: theta[:, 1, 0], _A11: theta[:, 1, 1]}
    raise ValueError(f"unknown DSA family {fam!r}; known families: {', '.join(_ref.FAMILIES)}")


def _window_columns(cols: list[Tensor], h: int, w: int) -> None:
    """Fill the transpose-window columns from the affine ones (in place in ``cols``, float64).

    In pixels, s(q) - c = M (q - c) with c = ((W-1)/2, (H-1)/2) and
    M = [[a00, a01·(W-1)/(H-1)], [a10·(H-1)/(W-1), a11]] (x first). An axis of size 1 has s = q = 0 there;
    its row of M becomes the identity row, which keeps the identity exact. The output pixels reading
    input pixel p lie in the box M⁻¹(p - c) + c ± (row sums of |M⁻¹|) (+ a margin). Where that box is
    not finite or not narrower than the image, the axis is searched whole (the row of M⁻¹ is set to 0,
    the half-extent to the image side)."""
    a00, a01, a10, a11 = cols[_A00], cols[_A01], cols[_A10], cols[_A11]
    one, zero = torch.ones_like(a00), torch.zeros_like(a00)
    if w > 1:
        m00, m01 = a00, a01 * ((w - 1) / (h - 1) if h > 1 else 0.0)
    else:
        m00, m01 = one, zero
    if h > 1:
        m10, m11 = a10 * ((h - 1) / (w - 1) if w > 1 else 0.0), a11
    else:
        m10, m11 = zero, one
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    ex = i00.abs() + i01.abs() + _WINDOW_MARGIN
    ey = i10.abs() + i11.abs() + _WINDOW_MARGIN
    whole_x = ~torch.isfinite(ex) | (ex >= w)
    whole_y = ~torch.isfinite(ey) | (ey >= h)
    cols[_I00] = torch.where(whole_x, zero, i00)
    cols[_I01] = torch.where(whole_x, zero, i01)
    cols[_EX] = torch.where(whole_x, zero + w, ex)
    cols[_I10] = torch.where(whole_y, zero, i10)
    cols[_I11] = torch.where(whole_y, zero, i11)
    cols[_EY] = torch.where(whole_y, zero + h, ey)


def dsa_table(x: Tensor, params: Any) -> tuple[Tensor, Tensor]:
    """The per-sample kernel table of ``params`` for images ``x`` (N, C, H, W): ``codes`` (N,) int32 and
    ``tab`` (N, NCOL) in x's dtype, both on x's device. Torch ops only: no host sync."""
    n, _, h, w = x.shape
    dev, dtype = x.device, x.dtype
    t = {k: (v if v.device == dev else v.to(dev)) for k, v in params.tensors.items()}
    f64 = torch.float64
    zero = torch.zeros(n, dtype=f64, device=dev)
    cols = [zero] * NCOL
    if params.family == _ref.PER_SAMPLE:
        fidx = t["family_index"]
        codes = torch.full((n,), IDENTITY, dtype=torch.int32, device=dev)
        for k, fam in enumerate(params.families):
            sel = fidx == k
            codes = torch.where(sel, FAMILY_CODE[fam], codes)
            for col, val in _family_columns(fam, t, dtype).items():
                cols[col] = torch.where(sel, val, cols[col])
    else:
        codes = torch.full((n,), FAMILY_CODE[params.family], dtype=torch.int32, device=dev)
        for col, val in _family_columns(params.family, t, dtype).items():
            cols[col] = val.expand(n)
    if any(FAMILY_CODE[f] == AFFINE for f in params.active_families()):
        _window_columns(cols, h, w)
        is_affine = codes == AFFINE
        for col in (_I00, _I01, _I10, _I11, _EX, _EY):
            cols[col] = torch.where(is_affine, cols[col], zero)
    tab = torch.stack(cols, dim=1).to(dtype).contiguous()
    return codes.contiguous(), tab


# --------------------------------------------------------------------------------------------------
# launcher and autograd
# --------------------------------------------------------------------------------------------------


def _launch(x: Tensor, codes: Tensor, tab: Tensor, transpose: bool, offset: bool) -> Tensor:
    """Run the kernel on x (N, C, H, W): A x (+ b if ``offset``) or Aᵀ x (``transpose``)."""
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    n, c, h, w = x.shape
    block, warps = block_and_warps(h * w)
    grid = (n, triton.cdiv(h * w, block))
    with on_device_of(x):
        _dsa_kernel[grid](x, out, codes, tab, c, h, w, TRANSPOSE=transpose, OFFSET=offset, BLOCK=block, num_warps=warps)
    return out


class DSAFunction(torch.autograd.Function):
    """``A x + b`` for the table (codes, tab); backward: :class:`DSATranspose`."""

    @staticmethod
    def forward(ctx, x: Tensor, codes: Tensor, tab: Tensor) -> Tensor:
        ctx.save_for_backward(codes, tab)
        return _launch(x, codes, tab, transpose=False, offset=True)

    @staticmethod
    def backward(ctx, gy: Tensor):
        codes, tab = ctx.saved_tensors
        gx = DSATranspose.apply(gy, codes, tab) if ctx.needs_input_grad[0] else None
        return gx, None, None


class DSATranspose(torch.autograd.Function):
    """``Aᵀ g`` (the gradient of :class:`DSAFunction`); backward: :class:`DSALinear`."""

    @staticmethod
    def forward(ctx, g: Tensor, codes: Tensor, tab: Tensor) -> Tensor:
        ctx.save_for_backward(codes, tab)
        return _launch(g, codes, tab, transpose=True, offset=False)

    @staticmethod
    def backward(ctx, gg: Tensor):
        codes, tab = ctx.saved_tensors
        out = DSALinear.apply(gg, codes, tab) if ctx.needs_input_grad[0] else None
        return out, None, None


class DSALinear(torch.autograd.Function):
    """``A v`` (the linear part of :class:`DSAFunction`, no offset); backward: :class:`DSATranspose`."""

    @staticmethod
    def forward(ctx, v: Tensor, codes: Tensor, tab: Tensor) -> Tensor:
        ctx.save_for_backward(codes, tab)
        return _launch(v, codes, tab, transpose=False, offset=False)

    @staticmethod
    def backward(ctx, gy: Tensor):
        codes, tab = ctx.saved_tensors
        out = DSATranspose.apply(gy, codes, tab) if ctx.needs_input_grad[0] else None
        return out, None, None


def apply_dsa_triton(x: Tensor, params: Any) -> Tensor:
    """The Triton path of :func:`fastdd.augment.apply_dsa` (which picks it by backend): x (N, C, H, W),
    ``params.n == N`` (parameters are moved to x's device if needed) -> (N, C, H, W), differentiable
    w.r.t. x to any order. Covers float32 and float64; other dtypes run the torch implementation."""
    if x.dtype not in (torch.float32, torch.float64):
        return _ref.apply_dsa_torch(x, params)
    if x.dim() != 4:
        raise ValueError(f"apply_dsa expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if params.n != x.shape[0]:
        raise ValueError(
            f"DSA parameters cover {params.n} samples but x has {x.shape[0]}; "
            "use params.expand(n) to share one transform across a batch"
        )
    codes, tab = dsa_table(x, params)
    return DSAFunction.apply(x, codes, tab)


# --------------------------------------------------------------------------------------------------
# compile-only specs
# --------------------------------------------------------------------------------------------------


def compile_specs() -> list[KernelSpec]:
    """Every configuration :func:`apply_dsa_triton` can launch: float32 / float64 × (forward with offset,
    transpose, linear part) × each (BLOCK, num_warps) that ``block_and_warps`` picks for images from
    2×2 to 64×64."""
    configs = sorted({block_and_warps(h * w) for h in range(2, 65) for w in range(2, 65)})
    modes = (("fwd", False, True), ("transpose", True, False), ("linear", False, False))
    specs = []
    for dtype in (torch.float32, torch.float64):
        ty = triton_dtype(dtype)
        for label, transpose, offset in modes:
            for block, warps in configs:
                sig = {
                    "x_ptr": f"*{ty}",
                    "out_ptr": f"*{ty}",
                    "code_ptr": "*i32",
                    "tab_ptr": f"*{ty}",
                    "C": "i32",
                    "H": "i32",
                    "W": "i32",
                    "TRANSPOSE": "constexpr",
                    "OFFSET": "constexpr",
                    "BLOCK": "constexpr",
                }
                specs.append(
                    KernelSpec(
                        name=f"dsa_{label}_{ty}_b{block}_w{warps}",
                        fn=_dsa_kernel,
                        signature=sig,
                        constexprs={"TRANSPOSE": transpose, "OFFSET": offset, "BLOCK": block},
                        num_warps=warps,
                    )
                )
    return specs

"""Bytes-moved model of the fused kernels against the unfused torch sequence (docs/kernels.md).

    python bench/bytes_model.py [--ipc 10 50] [--json out.json]

The unfused side is *measured*: the torch composite (``group_norm → relu → avg_pool2d``; DSA's torch ops) runs
under a ``TorchDispatchMode`` that adds up, for every ATen operator that computes (views and metadata ops
excluded), the bytes of its tensor inputs and outputs — what a GPU kernel per operator reads from and writes
to memory when nothing stays in cache between operators. ``torch.autograd.grad(..., create_graph=True)`` and
the double backward go through the same ATen operators on CUDA as here (their derivative formulas are
composite), so the counts carry over. The fused side is the kernels' own traffic, pass by pass, from their
loop structure (``FUSED`` below). Time at a bandwidth ``B``: bytes / B, the memory-bound lower bound.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastdd.augment import FAMILIES, DSAConfig, sample_dsa
from fastdd.augment.dsa import apply_dsa_torch
from fastdd.kernels import norm_act_pool_reference

H100_BW = 3.35e12  # bytes/s, H100 SXM HBM3

_FREE = {
    "view",
    "_unsafe_view",
    "t",
    "transpose",
    "expand",
    "as_strided",
    "detach",
    "alias",
    "reshape",
    "permute",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "unbind",
    "_reshape_alias",
    "lift_fresh",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "zeros_like",
    "ones_like",
    "full_like",
    "zeros",
    "ones",
    "full",
    "scalar_tensor",
    "_to_copy",
    "copy_",
    "clone",
    "fill_",
    "new_zeros",
    "new_ones",
    "_local_scalar_dense",
    "unflatten",
    "flatten",
    "contiguous",
    "is_same_size",
}


@dataclass
class Traffic:
    ops: int = 0
    read: int = 0
    written: int = 0

    @property
    def total(self) -> int:
        return self.read + self.written


class CountBytes(TorchDispatchMode):
    """Adds up input and output bytes of every computing ATen operator run inside it."""

    def __init__(self):
        super().__init__()
        self.t = Traffic()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_") if func.overloadpacket.__name__ not in _FREE else None
        if name is not None and name not in _FREE:
            ins = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            outs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
            self.t.ops += 1
            self.t.read += sum(a.numel() * a.element_size() for a in ins if a.dim() > 0)
            self.t.written += sum(o.numel() * o.element_size() for o in outs if o.dim() > 0)
        return out


def _phases(op, inputs: list[torch.Tensor]) -> dict[str, Traffic]:
    """Traffic of the forward, the create_graph backward, and the double backward of ``<grads, v>``."""
    res = {}
    with CountBytes() as c:
        out = op(*inputs)
    res["forward"] = c.t
    gy = torch.randn_like(out).requires_grad_(True)
    with CountBytes() as c:
        first = torch.autograd.grad(out, inputs, gy, create_graph=True)
    res["backward"] = c.t
    vs = [torch.randn_like(f) for f in first]
    with CountBytes() as c:
        s = sum((f * v).sum() for f, v in zip(first, vs))
        torch.autograd.grad(s, inputs + [gy], allow_unused=True)
    res["double backward"] = c.t
    return res


def block_traffic(b: int, c: int, h: int, w: int) -> dict[str, Traffic]:
    x = torch.randn(b, c, h, w, requires_grad=True)
    wt = torch.ones(c, requires_grad=True)
    bias = torch.zeros(c, requires_grad=True)
    return _phases(norm_act_pool_reference, [x, wt, bias])


def dsa_traffic(b: int, fam: str, size: int = 32) -> dict[str, Traffic]:
    x = torch.randn(b, 3, size, size, requires_grad=True)
    p = sample_dsa(b, (size, size), DSAConfig(), torch.Generator().manual_seed(0), family=fam)
    return _phases(lambda t: apply_dsa_torch(t, p), [x])


def fused_block(b: int, c: int, h: int, w: int, elem: int = 4) -> dict[str, Traffic]:
    """The fused kernels' traffic (kernels/convnet_block.py), every pass counted as a read from memory
    (``S`` input elements, ``P`` pooled, one program per plane):

    forward: a mean pass and a variance pass read x, the output pass reads x again and writes y (P) and
    per-plane mean / rstd. backward: a reduction pass reads x and gy, the output pass reads them again
    and writes gx (S) and per-plane partial dw / db. double backward: a reduction pass reads x, gy and
    hx (the upstream grad of gx); the dx pass reads them again and writes dx (S); the dgy pass reads x
    and hx and writes dgy (P) and per-plane partial dw.
    A 32×32 fp32 plane is 4 KiB, so on a GPU the re-reads of a plane mostly hit L1/L2 and the DRAM
    traffic is nearer one read per tensor; the model keeps the pessimistic count.
    """
    s, p, planes = b * c * h * w, b * c * (h // 2) * (w // 2), b * c
    return {
        "forward": Traffic(1, elem * 3 * s, elem * (p + 2 * planes)),
        "backward": Traffic(1, elem * (2 * s + 2 * p + 2 * planes), elem * (s + 2 * planes)),
        "double backward": Traffic(1, elem * (6 * s + 2 * p + 2 * planes), elem * (s + p + planes)),
    }


def fused_dsa(b: int, fam: str, size: int = 32, elem: int = 4) -> dict[str, Traffic]:
    """The fused DSA kernel: read x once (the 4 bilinear taps of neighbouring outputs hit the same lines) and
    write the output; color reads the sample once more for its mean. The transpose does the same on gy."""
    n = b * 3 * size * size
    reads = 2 * n if fam == "color" else n
    return {
        "forward": Traffic(1, elem * reads, elem * n),
        "backward": Traffic(1, elem * reads, elem * n),
        "double backward": Traffic(1, elem * reads, elem * n),
    }


def convnet_blocks(b: int, width: int = 128, size: int = 32, depth: int = 3):
    dims = []
    for _ in range(depth):
        dims.append((b, width, size, size))
        size //= 2
    return dims


def _add(acc: dict[str, Traffic], phases: dict[str, Traffic], scale: float = 1.0) -> None:
    for k, v in phases.items():
        t = acc.setdefault(k, Traffic())
        t.ops += v.ops * scale
        t.read += v.read * scale
        t.written += v.written * scale


def model(ipc_list: list[int], classes: int = 10) -> dict:
    """Per IPC: {op: (unfused traffic, fused traffic)} per phase, for one unrolled step (batch = ipc·classes)."""
    out = {}
    for ipc in ipc_list:
        b = ipc * classes
        bu, bf, du, df = {}, {}, {}, {}
        for dims in convnet_blocks(b):
            _add(bu, block_traffic(*dims))
            _add(bf, fused_block(*dims))
        for fam in FAMILIES:  # one family per step, drawn uniformly: the mean over families
            _add(du, dsa_traffic(b, fam), 1 / len(FAMILIES))
            _add(df, fused_dsa(b, fam), 1 / len(FAMILIES))
        out[ipc] = {"norm_act_pool (3 blocks)": (bu, bf), "apply_dsa (mean over families)": (du, df)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--bandwidth", type=float, default=H100_BW, help="bytes/s (default: H100 SXM, 3.35 TB/s)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = model(args.ipc)
    print(
        "| IPC (batch) | op | phase | unfused ops | unfused MB | fused launches | fused MB | bytes ratio | "
        f"unfused µs @ {args.bandwidth / 1e12:.2f} TB/s | fused µs |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    dump = {}
    for ipc, rows in res.items():
        for op, (un, fu) in rows.items():
            for phase in ("forward", "backward", "double backward"):
                u, f = un[phase], fu[phase]
                print(
                    f"| {ipc} ({ipc * 10}) | {op} | {phase} | {u.ops:.0f} | {u.total / 1e6:,.1f} | {f.ops:.0f} | "
                    f"{f.total / 1e6:,.1f} | {u.total / f.total:.1f}× | {u.total / args.bandwidth * 1e6:,.0f} | "
                    f"{f.total / args.bandwidth * 1e6:,.0f} |"
                )
                dump[f"{ipc}/{op}/{phase}"] = {"unfused": u.__dict__, "fused": f.__dict__}
            tu = sum(un[p].total for p in un)
            tf = sum(fu[p].total for p in fu)
            print(
                f"| {ipc} ({ipc * 10}) | {op} | **per unrolled step** | | **{tu / 1e6:,.1f}** | | "
                f"**{tf / 1e6:,.1f}** | "
                f"**{tu / tf:.1f}×** | **{tu / args.bandwidth * 1e6:,.0f}** | **{tf / args.bandwidth * 1e6:,.0f}** |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dump, fh, indent=1)


if __name__ == "__main__":
    main()

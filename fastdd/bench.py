"""Memory scaling of the gradient modes: ``fastdd bench memory-scaling``.

Each measurement runs one MTT meta-gradient (``trajectory_matching_grad``) in a fresh subprocess so
that peaks do not mix: on CUDA the peak of ``torch.cuda.max_memory_allocated``; on the CPU the
process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the
call) minus its resident memory at that moment, with ``MALLOC_MMAP_THRESHOLD_`` fixed so that freed
blocks are returned to the system and the resident size follows live tensors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class MemoryPoint:
    mode: str
    steps: int
    batch: int
    peak_mib: float | None   # None: skipped (predicted not to fit)
    seconds: float | None
    device: str
    note: str = ""


_CHILD = r"""
import json, os, sys, time, torch
import fastdd
from fastdd.engine import trajectory_matching_grad
mode, steps, batch, size, ch, width, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
g = torch.Generator().manual_seed(0)
net = fastdd.build_model("convnet", in_channels=ch, num_classes=10, im_size=(size, size), width=width)
theta0 = net.init(g).to(device)
target = (theta0 + 0.01 * torch.randn(net.num_params, generator=g).to(device))
x = torch.randn(batch, ch, size, size, generator=g).to(device)
y = (torch.arange(batch) % 10).to(device)
batches = [torch.arange(batch, device=device) for _ in range(steps)]
lr = torch.tensor(0.01, device=device)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5"); base = status("VmRSS:")
t = time.time()
trajectory_matching_grad(net, x, y, lr, theta0, target, batches, mode=mode)
if device.startswith("cuda"):
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
else:
    peak = status("VmHWM:") - base
print(json.dumps({"peak": peak, "seconds": time.time() - t}))
"""


def measure(mode: str, steps: int, batch: int = 100, im_size: int = 32, channels: int = 3, width: int = 128,
            device: str = "cpu", timeout: float = 1800) -> MemoryPoint:
    """Peak memory (MiB) and time of one meta-gradient with ``steps`` unrolled steps of ``batch`` images."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    cmd = [sys.executable, "-c", _CHILD, mode, str(steps), str(batch), str(im_size), str(channels), str(width), device]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        return MemoryPoint(mode, steps, batch, None, None, device, f"failed: {out.stderr.strip()[-300:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return MemoryPoint(mode, steps, batch, r["peak"] / 2**20, r["seconds"], device)


def memory_scaling(steps: list[int], modes: list[str], batch: int = 100, im_size: int = 32, channels: int = 3,
                   width: int = 128, device: str = "cpu", max_mib: float | None = None,
                   out: str | os.PathLike | None = None, echo=print) -> list[MemoryPoint]:
    """Measure every (mode, steps) pair. Points predicted (linearly from the mode's last two measured
    ones) to exceed ``max_mib`` are skipped. Writes ``memory_scaling.csv`` / ``.json`` / ``.png`` into ``out``."""
    points: list[MemoryPoint] = []
    for mode in modes:
        seen: list[MemoryPoint] = []
        for n in sorted(steps):
            if max_mib is not None and len(seen) >= 2 and seen[-1].peak_mib is not None:
                a, b = seen[-2], seen[-1]
                slope = (b.peak_mib - a.peak_mib) / max(b.steps - a.steps, 1)
                predicted = b.peak_mib + slope * (n - b.steps)
                if predicted > max_mib:
                    p = MemoryPoint(mode, n, batch, None, None, device,
                                    f"skipped: predicted {predicted:.0f} MiB > {max_mib:.0f} MiB")
                    points.append(p)
                    echo(f"{mode:8s} steps={n:3d}: {p.note}")
                    continue
            p = measure(mode, n, batch, im_size, channels, width, device)
            seen.append(p)
            points.append(p)
            echo(f"{mode:8s} steps={n:3d}: " + (f"peak {p.peak_mib:8.1f} MiB, {p.seconds:6.1f} s" if p.peak_mib
                                                  is not None else p.note))
    if out is not None:
        _write(points, Path(out))
    return points


def _write(points: list[MemoryPoint], out: Path) -> None:
    from .io import atomic_write_json, atomic_write_text
    from .plots import save_curves
    out.mkdir(parents=True, exist_ok=True)
    rows = ["mode,steps,batch,peak_mib,seconds,device,note"]
    rows += [f"{p.mode},{p.steps},{p.batch},{'' if p.peak_mib is None else f'{p.peak_mib:.1f}'},"
             f"{'' if p.seconds is None else f'{p.seconds:.1f}'},{p.device},{p.note}" for p in points]
    atomic_write_text(out / "memory_scaling.csv", "\n".join(rows) + "\n")
    atomic_write_json(out / "memory_scaling.json", [asdict(p) for p in points])
    series = {}
    for mode in dict.fromkeys(p.mode for p in points):
        pts = [p for p in points if p.mode == mode and p.peak_mib is not None]
        series[mode] = ([p.steps for p in pts], [p.peak_mib for p in pts])
    save_curves(out / "memory_scaling.png", series, xlabel="unrolled steps", ylabel="peak memory (MiB)",
                title="meta-gradient peak memory vs unrolled steps")

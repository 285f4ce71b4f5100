"""How far TESLA's direct-term gradient is from the exact one (BPTT == adjoint), by inner learning rate.

    python bench/tesla_error.py            # prints a Markdown table (float64, CPU, ~1-2 minutes)

Setup: ConvNet (width 32, depth 3, instance norm) on 100 real mnist5k images (10 per class), start
parameters = a trained expert snapshot is not needed for the comparison: a fresh init θ0 and a
target θ* = θ0 + small noise; N unrolled steps of 50 images with DSA. Relative L2 error and cosine of
∂L/∂X, and the relative error of ∂L/∂α.
"""

from __future__ import annotations

import torch

import fastdd
from fastdd.augment import DSAConfig, StepAugment, strategy_for
from fastdd.engine import trajectory_matching_grad
from fastdd.selection import random_indices


def main(steps: int = 10, lrs=(0.001, 0.01, 0.03, 0.1)) -> None:
    ds = fastdd.load_dataset("mnist5k")
    x = ds.train.images[random_indices(ds, 10, seed=0)].double()
    y = torch.arange(10).repeat_interleave(10)
    net = fastdd.build_model("convnet", in_channels=1, num_classes=10, im_size=(28, 28), width=32)
    g = torch.Generator().manual_seed(0)
    theta0 = net.init(g, dtype=torch.float64)
    target = theta0 + 0.01 * torch.randn(net.num_params, generator=g, dtype=torch.float64)
    gb = torch.Generator().manual_seed(1)
    batches = [c for _ in range(steps) for c in torch.randperm(100, generator=gb).split(50)][:steps]
    print("| inner lr α | steps | rel. error ∂L/∂X | cosine ∂L/∂X | rel. error ∂L/∂α |")
    print("|---|---|---|---|---|")
    for lr in lrs:
        out = {}
        for mode in ("bptt", "tesla"):
            aug = StepAugment(DSAConfig(strategy=strategy_for("mnist5k")), torch.Generator().manual_seed(2))
            out[mode] = trajectory_matching_grad(
                net, x, y, torch.tensor(lr, dtype=torch.float64), theta0, target, batches, aug, mode=mode
            )
        (_, gx, gl), (_, tx, tl) = out["bptt"], out["tesla"]
        err = ((tx - gx).norm() / gx.norm()).item()
        cos = torch.nn.functional.cosine_similarity(tx.flatten(), gx.flatten(), 0).item()
        print(
            f"| {lr} | {steps} | {100 * err:.2f} % | {cos:.5f} | {100 * abs((tl - gl) / gl).item():.2f} % |", flush=True
        )


if __name__ == "__main__":
    main()

"""The ConvNet family of the dataset-condensation literature (DC, DSA, DM, MTT, SelMatch).

Block: Conv3×3 (pad 1; pad 3 on the first layer of 1-channel input, so 28 px behaves as 32 px)
→ norm → activation → pool(2). Then flatten and one linear classifier.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .. import kernels
from .base import ACTIVATIONS, NORMS, FunctionalNet, act_module, declare_norm, norm_module

POOLS = ("avgpool", "maxpool", "none")


class ConvNet(FunctionalNet):
    name = "convnet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
        init: str = "default",
    ):
        im_size = tuple(int(s) for s in im_size)
        super().__init__(
            dict(
                in_channels=in_channels,
                num_classes=num_classes,
                im_size=list(im_size),
                width=width,
                depth=depth,
                norm=norm,
                act=act,
                pool=pool,
            ),
            init,
        )
        if norm not in NORMS:
            raise ValueError(f"convnet norm must be one of {NORMS}, got {norm!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"convnet act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
        if pool not in POOLS:
            raise ValueError(f"convnet pool must be one of {POOLS}, got {pool!r}")
        if not 1 <= depth <= 8:
            raise ValueError(f"convnet depth must be in 1..8, got {depth}")
        if norm == "groupnorm" and width % 4:
            raise ValueError(f"convnet norm='groupnorm' uses 4 groups: width {width} is not divisible by 4")
        self.shapes = []  # (C, H, W) after each conv
        c, (h, w) = in_channels, im_size
        for d in range(depth):
            pad = 3 if (in_channels == 1 and d == 0) else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            self._conv(f"features.{d}.conv", c, width, 3)
            declare_norm(self, norm, f"features.{d}.norm", width, (width, h, w))
            self.shapes.append((width, h, w, pad))
            c = width
            if pool != "none":
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"convnet depth {depth} does not fit {im_size[0]}x{im_size[1]} images: "
                    f"block {d + 1} pools them to nothing; use a smaller depth or larger images"
                )
        self.feature_dim = c * h * w
        self._linear("classifier", self.feature_dim, num_classes)

    @property
    def fused_block(self) -> bool:
        """True for the default block (instance norm, ReLU, average pool): it runs as the op
        :func:`fastdd.kernels.norm_act_pool` (a fused Triton kernel on CUDA, the torch ops on the CPU)."""
        s = self.spec
        return (s["norm"], s["act"], s["pool"]) == ("instancenorm", "relu", "avgpool")

    def _forward(self, x, ctx, features_only):
        norm, act, pool = self.spec["norm"], ACTIVATIONS[self.spec["act"]], self.spec["pool"]
        fused = self.fused_block
        for _, _, _, pad in self.shapes:
            if fused:
                x = ctx.conv(x, padding=pad)
                w, b = ctx.take(2)
                x = kernels.norm_act_pool(x, w, b, eps=1e-5)
                continue
            x = act(ctx.norm(ctx.conv(x, padding=pad), norm))
            if pool == "avgpool":
                x = nn.functional.avg_pool2d(x, 2, 2)
            elif pool == "maxpool":
                x = nn.functional.max_pool2d(x, 2, 2)
        x = x.flatten(1)
        return x if features_only else ctx.linear(x)

    def module(self) -> nn.Module:
        s = self.spec
        features = nn.Sequential()
        c = s["in_channels"]
        for d, (width, h, w, pad) in enumerate(self.shapes):
            block = nn.Sequential()
            block.add_module("conv", nn.Conv2d(c, width, 3, padding=pad))
            block.add_module("norm", norm_module(s["norm"], width, (width, h, w)))
            block.add_module("act", act_module(s["act"]))
            if s["pool"] == "avgpool":
                block.add_module("pool", nn.AvgPool2d(2, 2))
            elif s["pool"] == "maxpool":
                block.add_module("pool", nn.MaxPool2d(2, 2))
            features.add_module(str(d), block)
            c = width
        return nn.Sequential(
            OrderedDict(
                features=features, flatten=nn.Flatten(), classifier=nn.Linear(self.feature_dim, s["num_classes"])
            )
        )

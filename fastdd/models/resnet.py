"""ResNet-18 (BasicBlock [2, 2, 2, 2], widths 64-512, convs without bias), as used for SelMatch's
evaluation. ``stem="cifar"``: 3×3 stride-1 stem; ``stem="tiny"``: stride-2 stem for 64 px images.
Global average pooling before the classifier (equal to the reference's ``avg_pool2d(4)`` at 32 px).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from .base import FunctionalNet, declare_norm, norm_module


class ResNet18(FunctionalNet):
    name = "resnet18"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        norm: str = "batchnorm",
        stem: str | None = None,
        init: str = "default",
    ):
        im_size = tuple(int(s) for s in im_size)
        if stem is None:
            stem = "tiny" if min(im_size) >= 64 else "cifar"
        if stem not in ("cifar", "tiny"):
            raise ValueError(f"resnet18 stem must be 'cifar' or 'tiny', got {stem!r}")
        if norm not in ("batchnorm", "instancenorm"):
            raise ValueError(f"resnet18 norm must be 'batchnorm' or 'instancenorm', got {norm!r}")
        super().__init__(
            dict(in_channels=in_channels, num_classes=num_classes, im_size=list(im_size), norm=norm, stem=stem), init
        )
        self.stem_stride = 2 if stem == "tiny" else 1
        h = (im_size[0] + 2 - 3) // self.stem_stride + 1
        w = (im_size[1] + 2 - 3) // self.stem_stride + 1
        self._conv("conv1", in_channels, 64, 3, bias=False)
        declare_norm(self, norm, "bn1", 64, (64, h, w))
        self.blocks = []  # (cin, cout, stride, has_shortcut)
        cin = 64
        for li, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            for bi in range(2):
                s = stride if bi == 0 else 1
                name = f"layer{li + 1}.{bi}"
                self._conv(f"{name}.conv1", cin, cout, 3, bias=False)
                declare_norm(self, norm, f"{name}.bn1", cout, (cout, 1, 1))
                self._conv(f"{name}.conv2", cout, cout, 3, bias=False)
                declare_norm(self, norm, f"{name}.bn2", cout, (cout, 1, 1))
                sc = s != 1 or cin != cout
                if sc:
                    self._conv(f"{name}.shortcut.0", cin, cout, 1, bias=False)
                    declare_norm(self, norm, f"{name}.shortcut.1", cout, (cout, 1, 1))
                self.blocks.append((cin, cout, s, sc))
                cin = cout
                h, w = (h - 1) // s + 1, (w - 1) // s + 1
        if h < 1 or w < 1:  # pragma: no cover - strided convs never reach 0
            raise ValueError(f"resnet18 does not fit {im_size[0]}x{im_size[1]} images")
        self.feature_dim = 512
        self._linear("classifier", 512, num_classes)

    def _forward(self, x, ctx, features_only):
        norm = self.spec["norm"]
        x = F.relu(ctx.norm(ctx.conv(x, stride=self.stem_stride, padding=1, bias=False), norm))
        for _cin, _cout, s, sc in self.blocks:
            out = F.relu(ctx.norm(ctx.conv(x, stride=s, padding=1, bias=False), norm))
            out = ctx.norm(ctx.conv(out, padding=1, bias=False), norm)
            short = ctx.norm(ctx.conv(x, stride=s, bias=False), norm) if sc else x
            x = F.relu(out + short)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if features_only else ctx.linear(x)

    def module(self) -> nn.Module:
        return _ResNetModule(self)


class _Block(nn.Module):
    def __init__(self, cin, cout, stride, shortcut, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm_module(norm, cout, (cout, 1, 1))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_module(norm, cout, (cout, 1, 1))
        self.shortcut = nn.Sequential()
        if shortcut:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), norm_module(norm, cout, (cout, 1, 1))
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNetModule(nn.Module):
    def __init__(self, net: ResNet18):
        super().__init__()
        s = net.spec
        self.conv1 = nn.Conv2d(s["in_channels"], 64, 3, net.stem_stride, 1, bias=False)
        self.bn1 = norm_module(s["norm"], 64, (64, 1, 1))
        layers = OrderedDict()
        for i, (cin, cout, st, sc) in enumerate(net.blocks):
            layers.setdefault(f"layer{i // 2 + 1}", []).append(_Block(cin, cout, st, sc, s["norm"]))
        for name, blocks in layers.items():
            self.add_module(name, nn.Sequential(*blocks))
        self.classifier = nn.Linear(512, s["num_classes"])

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))

"""Small classic nets: LeNet and AlexCifarNet (Wang et al.'s Dataset Distillation), VGG11, MLP."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from .base import FunctionalNet, declare_norm, norm_module


def _fit(name: str, h: int, w: int, im_size) -> None:
    if h < 1 or w < 1:
        raise ValueError(
            f"{name} does not fit {im_size[0]}x{im_size[1]} images: its layers shrink them to "
            f"{max(h, 0)}x{max(w, 0)}; use another model or larger images"
        )


class LeNet(FunctionalNet):
    """conv5×5→6 (pad 2 at 28 px) → ReLU → maxpool2 → conv5×5→16 → ReLU → maxpool2 → 120 → 84 → K."""

    name = "lenet"

    def __init__(self, in_channels: int, num_classes: int, im_size: tuple[int, int], init: str = "default"):
        im_size = tuple(int(s) for s in im_size)
        super().__init__(dict(in_channels=in_channels, num_classes=num_classes, im_size=list(im_size)), init)
        self.pad = 2 if im_size[0] == 28 else 0
        h, w = im_size
        h, w = (h + 2 * self.pad - 4) // 2, (w + 2 * self.pad - 4) // 2
        h, w = (h - 4) // 2, (w - 4) // 2
        _fit("lenet", h, w, im_size)
        self._conv("conv1", in_channels, 6, 5)
        self._conv("conv2", 6, 16, 5)
        self.feature_dim = 84
        self._linear("fc1", 16 * h * w, 120)
        self._linear("fc2", 120, 84)
        self._linear("fc3", 84, num_classes)
        self._flat = 16 * h * w

    def _forward(self, x, ctx, features_only):
        x = F.max_pool2d(F.relu(ctx.conv(x, padding=self.pad)), 2)
        x = F.max_pool2d(F.relu(ctx.conv(x)), 2)
        x = F.relu(ctx.linear(x.flatten(1)))
        x = F.relu(ctx.linear(x))
        return x if features_only else ctx.linear(x)

    def module(self) -> nn.Module:
        s = self.spec
        return _LeNetModule(s["in_channels"], s["num_classes"], self.pad, self._flat)


class _LeNetModule(nn.Module):
    def __init__(self, cin, k, pad, flat):
        super().__init__()
        self.pad = pad
        self.conv1, self.conv2 = nn.Conv2d(cin, 6, 5, padding=pad), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(flat, 120), nn.Linear(120, 84), nn.Linear(84, k)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


_LRN = dict(size=4, alpha=0.001 / 9.0, beta=0.75, k=1.0)


class AlexCifarNet(FunctionalNet):
    """cuda-convnet's CIFAR net: conv5×5 64 → ReLU → maxpool3/2 → LRN → conv5×5 64 → ReLU → LRN →
    maxpool3/2 → 384 → 192 → K."""

    name = "alexcifarnet"

    def __init__(self, in_channels: int, num_classes: int, im_size: tuple[int, int], init: str = "default"):
        im_size = tuple(int(s) for s in im_size)
        super().__init__(dict(in_channels=in_channels, num_classes=num_classes, im_size=list(im_size)), init)
        h, w = im_size
        for _ in range(2):  # conv5 pad2 keeps size; maxpool(3, 2, 1) → floor((h - 1) / 2) + 1
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        _fit("alexcifarnet", h, w, im_size)
        self._flat = 64 * h * w
        self._conv("features.0", in_channels, 64, 5)
        self._conv("features.4", 64, 64, 5)
        self._linear("classifier.0", self._flat, 384)
        self._linear("classifier.2", 384, 192)
        self._linear("classifier.4", 192, num_classes)
        self.feature_dim = 192

    def _forward(self, x, ctx, features_only):
        x = F.local_response_norm(F.max_pool2d(F.relu(ctx.conv(x, padding=2)), 3, 2, 1), **_LRN)
        x = F.max_pool2d(F.local_response_norm(F.relu(ctx.conv(x, padding=2)), **_LRN), 3, 2, 1)
        x = F.relu(ctx.linear(x.flatten(1)))
        x = F.relu(ctx.linear(x))
        return x if features_only else ctx.linear(x)

    def module(self) -> nn.Module:
        s = self.spec
        feats = nn.Sequential(
            nn.Conv2d(s["in_channels"], 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.LocalResponseNorm(**_LRN),
            nn.Conv2d(64, 64, 5, padding=2),
            nn.ReLU(),
            nn.LocalResponseNorm(**_LRN),
            nn.MaxPool2d(3, 2, 1),
            nn.Flatten(),
        )
        head = nn.Sequential(
            nn.Linear(self._flat, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(), nn.Linear(192, s["num_classes"])
        )
        return nn.Sequential(OrderedDict(features=feats, classifier=head))


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(FunctionalNet):
    """VGG11 as in the condensation literature: conv3×3 → norm (instance by default) → ReLU, maxpool."""

    name = "vgg11"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        norm: str = "instancenorm",
        init: str = "default",
    ):
        im_size = tuple(int(s) for s in im_size)
        super().__init__(dict(in_channels=in_channels, num_classes=num_classes, im_size=list(im_size), norm=norm), init)
        if norm not in ("instancenorm", "batchnorm", "none"):
            raise ValueError(f"vgg11 norm must be 'instancenorm', 'batchnorm' or 'none', got {norm!r}")
        self.layers = []  # ("conv", pad) or ("M",)
        c, (h, w), idx = in_channels, im_size, 0  # idx: position in the module's nn.Sequential
        for i, v in enumerate(VGG11_CFG):
            if v == "M":
                h, w = h // 2, w // 2
                _fit("vgg11", h, w, im_size)
                self.layers.append(("M", 0, 0))
                idx += 1
            else:
                pad = 3 if (in_channels == 1 and i == 0) else 1
                h, w = h + 2 * pad - 2, w + 2 * pad - 2
                self._conv(f"features.{idx}", c, v, 3)
                declare_norm(self, norm, f"features.{idx + 1}", v, (v, h, w))
                self.layers.append(("conv", pad, v))
                c, idx = v, idx + 3
        self.feature_dim = c * h * w
        self._linear("classifier", self.feature_dim, num_classes)

    def _forward(self, x, ctx, features_only):
        for kind, pad, _ in self.layers:
            x = F.max_pool2d(x, 2, 2) if kind == "M" else F.relu(ctx.norm(ctx.conv(x, padding=pad), self.spec["norm"]))
        x = x.flatten(1)
        return x if features_only else ctx.linear(x)

    def module(self) -> nn.Module:
        s, layers, c = self.spec, [], self.spec["in_channels"]
        for kind, pad, v in self.layers:
            if kind == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=pad), norm_module(s["norm"], v, (v, 1, 1)), nn.ReLU()]
                c = v
        return nn.Sequential(
            OrderedDict(
                features=nn.Sequential(*layers),
                flatten=nn.Flatten(),
                classifier=nn.Linear(self.feature_dim, s["num_classes"]),
            )
        )


class MLP(FunctionalNet):
    """Flatten → Linear(C·H·W, width) → ReLU → Linear(width, width) → ReLU → Linear(width, K)."""

    name = "mlp"

    def __init__(
        self, in_channels: int, num_classes: int, im_size: tuple[int, int], width: int = 128, init: str = "default"
    ):
        im_size = tuple(int(s) for s in im_size)
        super().__init__(
            dict(in_channels=in_channels, num_classes=num_classes, im_size=list(im_size), width=width), init
        )
        self._in = in_channels * im_size[0] * im_size[1]
        self._linear("fc_1", self._in, width)
        self._linear("fc_2", width, width)
        self._linear("fc_3", width, num_classes)
        self.feature_dim = width

    def _forward(self, x, ctx, features_only):
        x = F.relu(ctx.linear(x.flatten(1)))
        x = F.relu(ctx.linear(x))
        return x if features_only else ctx.linear(x)

    def module(self) -> nn.Module:
        w, k = self.spec["width"], self.spec["num_classes"]
        return nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc_1=nn.Linear(self._in, w),
                relu_1=nn.ReLU(),
                fc_2=nn.Linear(w, w),
                relu_2=nn.ReLU(),
                fc_3=nn.Linear(w, k),
            )
        )

"""Models as pure functions of a flat parameter vector: ``net(x, theta)``. See :mod:`fastdd.models.base`."""

from __future__ import annotations

from typing import Any

from ..options import check_keywords, parameter_hints
from .base import FunctionalNet, ParamSpec
from .classic import MLP, VGG11, AlexCifarNet, LeNet
from .convnet import ConvNet
from .resnet import ResNet18

# name -> (class, default keyword arguments). Aliases follow the reference code's names: a "bn" suffix
# means batch norm, none means instance norm (GroupNorm(C, C)), as in the reference's get_network.
MODELS: dict[str, tuple[type[FunctionalNet], dict[str, Any]]] = {
    "convnet": (ConvNet, {}),
    "convnetbn": (ConvNet, {"norm": "batchnorm"}),
    "convnetd4": (ConvNet, {"depth": 4}),
    "convnetd4bn": (ConvNet, {"depth": 4, "norm": "batchnorm"}),
    "convnetd5": (ConvNet, {"depth": 5}),
    "lenet": (LeNet, {}),
    "alexcifarnet": (AlexCifarNet, {}),
    "alexnet": (AlexCifarNet, {}),  # the cuda-convnet AlexNet of DD's CIFAR experiments, for 32 px-class inputs
    "resnet18": (ResNet18, {"norm": "instancenorm"}),
    "resnet18bn": (ResNet18, {"norm": "batchnorm"}),
    "vgg11": (VGG11, {}),
    "vgg11bn": (VGG11, {"norm": "batchnorm"}),
    "mlp": (MLP, {}),
}


def build_model(
    name: str, *, in_channels: int, num_classes: int, im_size: tuple[int, int] | list[int], **kwargs: Any
) -> FunctionalNet:
    """Build a functional net by name (case-insensitive; see ``fastdd.models.MODELS``).

    ``kwargs`` are the model's options (ConvNet: ``width``, ``depth``, ``norm``, ``act``, ``pool``;
    all: ``init`` = ``"default"`` | ``"xavier"``). Raises ``ValueError`` naming the problem when the
    name is unknown or the model does not fit the image size, and ``TypeError`` naming the option for an
    option the model does not have or a value of the wrong type.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls, defaults = MODELS[key]
    if len(im_size) != 2:
        raise ValueError(f"im_size must be (height, width), got {im_size!r}")
    check_keywords(kwargs, parameter_hints(cls, exclude=("in_channels", "num_classes", "im_size")), f"model {name!r}")
    return cls(in_channels=in_channels, num_classes=num_classes, im_size=tuple(im_size), **{**defaults, **kwargs})


def model_from_spec(name: str, spec: dict[str, Any], init: str = "default") -> FunctionalNet:
    """Rebuild a net from ``(net.name, net.spec)``, e.g. as stored in an expert manifest."""
    return build_model(name, **spec, init=init)


def model_for(ds, name: str = "convnet", **kwargs: Any) -> FunctionalNet:
    """``build_model`` with the channels, classes and image size taken from a :class:`fastdd.data.Dataset`.

    ``"convnet"`` / ``"convnetbn"`` without an explicit ``depth`` get the literature's depth for the
    resolution (:func:`default_convnet_depth`: D3 up to 32 px, D4 at 64 px, D5 at 128 px).
    """
    if name.lower() in ("convnet", "convnetbn") and "depth" not in kwargs:
        kwargs["depth"] = default_convnet_depth(ds.im_size)
    return build_model(name, in_channels=ds.channels, num_classes=ds.num_classes, im_size=ds.im_size, **kwargs)


def accuracy(net: FunctionalNet, theta, buffers, images, labels, batch: int = 1024) -> float:
    """Fraction of ``images`` that ``net`` (parameters ``theta``) classifies as ``labels``. Batch norm uses
    the running statistics in ``buffers`` when given, batch statistics otherwise."""
    import torch

    correct = 0
    with torch.no_grad():
        for x, y in zip(images.split(batch), labels.split(batch)):
            correct += int((net(x, theta, buffers, train=buffers is None).argmax(1) == y).sum())
    return correct / max(len(labels), 1)


def default_convnet_depth(im_size) -> int:
    """The literature's ConvNet depth by resolution: 3 up to 32 px, 4 at 64 px, 5 at 128 px."""
    s = max(im_size)
    return 3 if s <= 32 else 4 if s <= 64 else 5


__all__ = [
    "FunctionalNet",
    "ParamSpec",
    "ConvNet",
    "LeNet",
    "AlexCifarNet",
    "VGG11",
    "MLP",
    "ResNet18",
    "MODELS",
    "accuracy",
    "build_model",
    "model_from_spec",
    "model_for",
    "default_convnet_depth",
]

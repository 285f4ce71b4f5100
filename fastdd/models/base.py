"""Models as pure functions of one flat parameter vector.

A :class:`FunctionalNet` knows the names, shapes and initialisers of its parameters, in exactly the
order ``nn.Module.parameters()`` yields them for the equivalent ``torch.nn`` module (which
:meth:`FunctionalNet.module` builds). ``net(x, theta)`` slices ``theta`` into views and runs the
forward with ``torch.nn.functional`` ops, so autograd flows into ``theta`` and, through it, into
anything ``theta`` was computed from (the unrolled student steps of the distillation engine).

Batch norm keeps its running statistics in a separate flat *buffer* vector (``net.init_buffers()``):
``net(x, theta)`` without buffers always normalises with batch statistics (what the reference code
does while distilling); ``net(x, theta, buffers, train=True)`` also updates the running statistics
in place; ``net(x, theta, buffers, train=False)`` uses them (evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelMismatchError


@dataclass(frozen=True)
class ParamSpec:
    """One parameter (or buffer) tensor: its ``state_dict`` name, shape and initialiser.

    ``init`` is one of ``"weight"`` (fan-in scaled, see :meth:`FunctionalNet.init`), ``"bias"``,
    ``"ones"``, ``"zeros"``. ``fan_in`` / ``fan_out`` are those of the layer the tensor belongs to.
    """

    name: str
    shape: tuple[int, ...]
    init: str
    fan_in: int = 1
    fan_out: int = 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class FunctionalNet:
    """Base class: subclasses declare parameters in ``__init__`` and implement :meth:`_forward`.

    Attributes:
        name: registry name (``build_model(name, **spec)`` rebuilds the same net).
        spec: the keyword arguments that rebuild it, JSON-serialisable.
        params: parameter specs in ``nn.Module.parameters()`` order.
        buffers: running-statistics specs (batch norm), in ``named_buffers()`` order without
            ``num_batches_tracked``.
        num_params: length of the flat parameter vector.
        feature_dim: size of the penultimate features :meth:`embed` returns.
    """

    name: str = "net"

    def __init__(self, spec: dict[str, Any], init: str = "default"):
        if init not in ("default", "xavier"):
            raise ValueError(f"init must be 'default' (PyTorch's) or 'xavier' (Wang et al.), got {init!r}")
        self.spec = dict(spec)
        self.init_scheme = init
        self.params: list[ParamSpec] = []
        self.buffers: list[ParamSpec] = []
        self.feature_dim = 0

    # ----------------------------------------------------------------- declaration helpers
    def _conv(self, name: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
        fan_in, fan_out = cin * k * k, cout * k * k
        self.params.append(ParamSpec(f"{name}.weight", (cout, cin, k, k), "weight", fan_in, fan_out))
        if bias:
            self.params.append(ParamSpec(f"{name}.bias", (cout,), "bias", fan_in, fan_out))

    def _linear(self, name: str, fin: int, fout: int) -> None:
        self.params.append(ParamSpec(f"{name}.weight", (fout, fin), "weight", fin, fout))
        self.params.append(ParamSpec(f"{name}.bias", (fout,), "bias", fin, fout))

    def _affine(self, name: str, shape: tuple[int, ...]) -> None:
        self.params.append(ParamSpec(f"{name}.weight", shape, "ones"))
        self.params.append(ParamSpec(f"{name}.bias", shape, "zeros"))

    def _running_stats(self, name: str, c: int) -> None:
        self.buffers.append(ParamSpec(f"{name}.running_mean", (c,), "zeros"))
        self.buffers.append(ParamSpec(f"{name}.running_var", (c,), "ones"))

    # ----------------------------------------------------------------- sizes
    @property
    def num_params(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def num_buffers(self) -> int:
        return sum(b.numel for b in self.buffers)

    @property
    def has_batchnorm(self) -> bool:
        return bool(self.buffers)

    # ----------------------------------------------------------------- init
    def init(
        self,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """A fresh flat parameter vector ``(num_params,)``.

        ``init="default"`` reproduces PyTorch's defaults for Conv/Linear (weights and biases
        U(±1/√fan_in), i.e. kaiming-uniform with a=√5), norm weights 1 and biases 0.
        ``init="xavier"`` is Wang et al.'s: Xavier-normal weights (gain 1), zero biases.
        Random numbers are drawn in float64 on the CPU from ``generator`` (``None`` means a fresh
        generator seeded 0, never the global RNG), then cast to ``dtype`` on ``device``.
        """
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        chunks = []
        for p in self.params:
            if p.init == "ones":
                t = torch.ones(p.shape, dtype=torch.float64)
            elif p.init == "zeros":
                t = torch.zeros(p.shape, dtype=torch.float64)
            elif self.init_scheme == "xavier":
                if p.init == "bias":
                    t = torch.zeros(p.shape, dtype=torch.float64)
                else:
                    std = math.sqrt(2.0 / (p.fan_in + p.fan_out))
                    t = torch.randn(p.shape, generator=g, dtype=torch.float64) * std
            else:
                bound = 1.0 / math.sqrt(p.fan_in)
                t = (torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
            chunks.append(t.reshape(-1))
        flat = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64)
        return flat.to(device=device, dtype=dtype)

    def init_buffers(
        self, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Fresh running statistics ``(num_buffers,)``: means 0, variances 1."""
        chunks = [torch.full((b.numel,), 1.0 if b.init == "ones" else 0.0) for b in self.buffers]
        flat = torch.cat(chunks) if chunks else torch.zeros(0)
        return flat.to(device=device, dtype=dtype)

    # ----------------------------------------------------------------- views
    def unflatten(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``theta`` shaped like each parameter, in order."""
        self._check_flat(theta, self.num_params, "theta")
        return [t.view(p.shape) for t, p in zip(theta.split([p.numel for p in self.params]), self.params)]

    def _unflatten_buffers(self, buffers: torch.Tensor | None) -> list[torch.Tensor] | None:
        if buffers is None:
            return None
        self._check_flat(buffers, self.num_buffers, "buffers")
        return [t.view(b.shape) for t, b in zip(buffers.split([b.numel for b in self.buffers]), self.buffers)]

    def _check_flat(self, v: torch.Tensor, n: int, what: str) -> None:
        if v.dim() != 1 or v.numel() != n:
            raise ModelMismatchError(
                f"{what} has shape {tuple(v.shape)} but {self.describe()} needs a flat vector of {n} values"
            )

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.spec.items())
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return f"<{self.describe()}: {self.num_params:,} parameters>"

    # ----------------------------------------------------------------- forward
    def __call__(
        self, x: torch.Tensor, theta: torch.Tensor, buffers: torch.Tensor | None = None, train: bool = True
    ) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``x`` ``(B, C, H, W)`` under parameters ``theta``."""
        return self.forward(x, theta, buffers, train)

    def forward(self, x, theta, buffers=None, train=True, features_only=False, record=None):
        self._check_input(x)
        if self.has_batchnorm and not train and buffers is None:
            raise ValueError(
                f"{self.describe()} uses batch norm: evaluation (train=False) needs its running "
                "statistics; pass buffers=net.init_buffers() and update them with train=True"
            )
        ps = iter(self.unflatten(theta))
        bs = self._unflatten_buffers(buffers)
        ctx = _Ctx(ps, iter(bs) if bs is not None else None, train, record)
        return self._forward(x, ctx, features_only)

    def bn_moments(
        self, x: torch.Tensor, theta: torch.Tensor, buffers: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits ``(B, num_classes)`` of an evaluation-mode forward (running statistics ``buffers``) and, per
        batch-norm layer in order, the batch moments of its *input*: per-channel mean ``(C,)`` and biased
        variance ``(C,)`` over the batch and spatial axes. Differentiable in ``x`` (SRe2L's statistics loss)."""
        if not self.has_batchnorm:
            raise ValueError(f"{self.describe()} has no batch norm: it has no batch-norm statistics to match")
        record: list[tuple[torch.Tensor, torch.Tensor]] = []
        logits = self.forward(x, theta, buffers, train=False, record=record)
        return logits, record

    def bn_running_stats(self, buffers: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch-norm layer in order, ``(running_mean, running_var)`` ``(C,)`` views of ``buffers``."""
        bs = self._unflatten_buffers(buffers)
        assert bs is not None
        return list(zip(bs[0::2], bs[1::2]))

    def embed(
        self, x: torch.Tensor, theta: torch.Tensor, buffers: torch.Tensor | None = None, train: bool = True
    ) -> torch.Tensor:
        """Penultimate features ``(B, feature_dim)`` (the input of the last linear layer)."""
        return self.forward(x, theta, buffers, train, features_only=True)

    def _check_input(self, x: torch.Tensor) -> None:
        c, h, w = self.spec["in_channels"], *self.spec["im_size"]
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"{self.describe()} expects images of shape (B, {c}, {h}, {w}), got {tuple(x.shape)}")

    def _forward(self, x: torch.Tensor, ctx: _Ctx, features_only: bool) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # ----------------------------------------------------------------- nn.Module bridge
    def module(self) -> nn.Module:
        """The equivalent ``torch.nn`` module (PyTorch layers; same parameter order and shapes)."""
        raise NotImplementedError  # pragma: no cover

    def flat_from_module(self, module: nn.Module) -> torch.Tensor:
        """Concatenate ``module.parameters()`` into a flat vector, checking names and shapes."""
        named = list(module.named_parameters())
        if len(named) != len(self.params):
            raise ModelMismatchError(
                f"module has {len(named)} parameter tensors, {self.describe()} has {len(self.params)}"
            )
        for (n, t), p in zip(named, self.params):
            if tuple(t.shape) != p.shape:
                raise ModelMismatchError(
                    f"parameter {n} has shape {tuple(t.shape)}, {self.describe()} expects {p.name} {p.shape}"
                )
        return torch.cat([t.detach().reshape(-1) for _, t in named])

    def load_into_module(
        self, module: nn.Module, theta: torch.Tensor, buffers: torch.Tensor | None = None
    ) -> nn.Module:
        """Copy a flat vector (and optionally running statistics) into ``module`` in place."""
        with torch.no_grad():
            for t, v in zip(module.parameters(), self.unflatten(theta)):
                t.copy_(v)
            if buffers is not None:
                mod_bufs = [b for n, b in module.named_buffers() if not n.endswith("num_batches_tracked")]
                for t, v in zip(mod_bufs, self._unflatten_buffers(buffers)):
                    t.copy_(v)
        return module


class _Ctx:
    """Hands out parameter views in declaration order during one forward pass."""

    def __init__(
        self,
        params: Iterator[torch.Tensor],
        buffers: Iterator[torch.Tensor] | None,
        train: bool,
        record: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        self.params, self.buffers, self.train, self.record = params, buffers, train, record

    def take(self, n: int = 1) -> list[torch.Tensor]:
        return [next(self.params) for _ in range(n)]

    # layers ---------------------------------------------------------------------------------
    def conv(self, x, stride=1, padding=0, bias=True):
        w = next(self.params)
        b = next(self.params) if bias else None
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    def linear(self, x):
        w, b = self.take(2)
        return F.linear(x, w, b)

    def norm(self, x, kind: str, groups: int = 4):
        if kind == "none":
            return x
        if kind == "instancenorm":
            w, b = self.take(2)
            return F.group_norm(x, x.shape[1], w, b, eps=1e-5)
        if kind == "groupnorm":
            w, b = self.take(2)
            return F.group_norm(x, groups, w, b, eps=1e-5)
        if kind == "layernorm":
            w, b = self.take(2)
            return F.layer_norm(x, tuple(x.shape[1:]), w, b, eps=1e-5)
        if kind == "batchnorm":
            w, b = self.take(2)
            if self.record is not None:  # the input's batch moments (bn_moments)
                dims = [0, *range(2, x.dim())]
                self.record.append((x.mean(dims), x.var(dims, unbiased=False)))
            if self.buffers is None:
                return F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
            rm, rv = next(self.buffers), next(self.buffers)
            return F.batch_norm(x, rm, rv, w, b, training=self.train, momentum=0.1, eps=1e-5)
        raise ValueError(f"unknown norm {kind!r}")  # pragma: no cover


ACTIVATIONS = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "leakyrelu": lambda x: F.leaky_relu(x, 0.01),
    "swish": lambda x: x * torch.sigmoid(x),
}
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")


def act_module(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "leakyrelu": nn.LeakyReLU(0.01), "swish": nn.SiLU()}[kind]


def norm_module(kind: str, c: int, shape: tuple[int, int, int], groups: int = 4) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(c, c, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(groups, c, affine=True)
    if kind == "layernorm":
        return nn.LayerNorm(list(shape), elementwise_affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(c)
    return nn.Identity()


def declare_norm(net: FunctionalNet, kind: str, name: str, c: int, shape: tuple[int, int, int]) -> None:
    """Declare the parameters (and buffers) of a norm layer in the order nn.Module registers them."""
    if kind in ("instancenorm", "groupnorm", "batchnorm"):
        net._affine(name, (c,))
        if kind == "batchnorm":
            net._running_stats(name, c)
    elif kind == "layernorm":
        net._affine(name, shape)

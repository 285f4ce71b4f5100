"""The method registry: every distillation method is registered once, by name, with its config dataclass,
its :class:`~fastdd.distillation.loop.Policy` class, its defaults and what it needs and supports. ``fastdd.distill``,
the command line's ``--method`` choices, the presets' validation and ``fastdd distill --help`` all read it,
and one runner (:func:`run_method`) serves every method.

Add a method with :func:`register_method` (a decorator on the policy class, or a call), from any package:
a third-party package makes it available to ``fastdd distill --method NAME`` by declaring an entry point in
the group ``fastdd.methods`` whose object is a function that registers (or a :class:`MethodSpec`). See
docs/extending.md.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from ..data import Dataset
from ..distributed import current
from ..engine import ENGINE_FIELDS, EngineConfig, deterministic_algorithms
from ..experts import ExpertBuffer
from ..options import check_dataclass_options
from ..synthetic import SyntheticSet
from .loop import KeepBest, Policy, run_loop

ENTRY_POINT_GROUP = "fastdd.methods"


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        name: what ``method=`` and ``--method`` take.
        config: its settings, a dataclass (inherit :class:`~fastdd.engine.EngineConfig` to unroll student
            training with the engine's options); ``--options`` / keyword options are its fields.
        policy: the :class:`~fastdd.distillation.loop.Policy` subclass; built with ``policy.from_setup(setup)``.
        defaults: what this method changes from ``config``'s defaults (a preset or the caller may override).
        needs_experts: it matches expert trajectories (``experts=`` is required).
        soft_labels: its sets can carry soft labels (evaluate them with the ``soft`` protocol).
        distributed: how it runs under torch.distributed: ``None`` (refused), ``"rows"`` (the set split by
            rows) or ``"classes"`` (split by class).
        selection: it can keep the best set on a validation split (``select_every``).
        description: one line for ``--help`` and docs.
        needs_ipc: ``ipc=`` is required (``dd`` derives its size from its own options when it is not given).
        needs_teacher: it distils against a trained network (``teacher=``: a :class:`~fastdd.teacher.Teacher` or
            its folder, from :func:`fastdd.train_teacher`).
        takes_iterations: ``iterations=`` means something for it; ``False`` for a method whose policy fixes its
            own count (:attr:`Policy.num_iterations`, e.g. ``rded``: one per class), which refuses the keyword.
    """

    name: str
    config: type
    policy: type[Policy]
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_experts: bool = False
    soft_labels: bool = False
    distributed: str | None = None
    selection: bool = True
    description: str = ""
    needs_ipc: bool = True
    needs_teacher: bool = False
    takes_iterations: bool = True

    @property
    def engine(self) -> bool:
        """Whether the method unrolls student training (its config carries the engine's options)."""
        return issubclass(self.config, EngineConfig)


@dataclass
class Setup:
    """What a policy is built from (``Policy.from_setup(setup)``).

    ``config`` is the method's config dataclass with the defaults, the preset's and the caller's options
    applied (and, for an engine method, the engine's options); ``ipc`` images per class (``None`` for a
    method that defines its own size); ``experts`` an :class:`~fastdd.experts.ExpertBuffer` or ``None``;
    ``scores`` difficulty scores or ``None``; ``resident_experts`` whether to keep the experts on the device
    (``None``: on CUDA); ``teacher`` a :class:`~fastdd.teacher.Teacher` (checked against ``ds``, on its device)
    or ``None``."""

    ds: Dataset
    ipc: int | None
    config: Any
    seed: int
    method: str
    iterations: int
    experts: ExpertBuffer | None = None
    scores: Any = None
    resident_experts: bool | None = None
    teacher: Any = None


@dataclass
class SelectConfig:
    """Keep the best set instead of the last: every ``every`` iterations (and after the last) score it on the
    validation split with ``evaluate(syn, ds, protocol, split="val", num_eval=1, **options)``."""

    every: int
    protocol: str = "mtt"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """How a run is carried out, for every method alike.

    Attributes:
        out: run folder (``log.csv``, atomic checkpoints, ``config.yaml``); ``None``: nothing written.
        resume: continue the checkpoint in ``out`` (refused when it was made with other settings or seed).
        checkpoint_every: iterations between checkpoints (and one after the last).
        show_progress: a progress bar on stderr.
        device: where the run happens (the data set is moved there); ``None``: the data set's device.
        seed: every random stream of the run derives from it.
        select: keep the best set on a validation split (:class:`SelectConfig`), or ``None``: the last set.
        resident_experts: keep the expert trajectories in device memory (``None``: on CUDA).
        loggers: experiment tracking (docs/tracking.md): logger names (``"tensorboard"``, ``"wandb"``,
            ``"csv"``, writing into ``out``) or :class:`fastdd.tracking.Logger` objects; never recorded in the
            run's settings or checkpoints, so a resume may add or drop them.
        log_images_every: iterations between the pictures of the set sent to the loggers (``None``:
            ``checkpoint_every``; 0: none).
    """

    out: str | os.PathLike | None = None
    resume: bool = False
    checkpoint_every: int = 100
    show_progress: bool = True
    device: Any = None
    seed: int = 0
    select: SelectConfig | None = None
    resident_experts: bool | None = None
    loggers: Any = None
    log_images_every: int | None = None


#: The ``fastdd.distill`` keywords that are :class:`RunConfig` fields (and the selection's, spelled as before).
RUN_KEYWORDS = {f.name for f in fields(RunConfig)} - {"select"} | {"select_every", "select_protocol", "select_options"}

_REGISTRY: dict[str, MethodSpec] = {}
_plugins_loaded = False


def register_method(
    name: str,
    *,
    config: type,
    policy: type[Policy] | None = None,
    defaults: dict[str, Any] | None = None,
    needs_experts: bool = False,
    soft_labels: bool = False,
    distributed: str | None = None,
    selection: bool = True,
    description: str = "",
    needs_ipc: bool = True,
    needs_teacher: bool = False,
    takes_iterations: bool = True,
    replace: bool = False,
):
    """Register a distillation method under ``name``.

    As a decorator on the policy class (``@register_method("mine", config=MyConfig)``) it returns the class;
    called with ``policy=`` it registers at once and returns the :class:`MethodSpec`. ``defaults`` are
    checked against ``config``'s fields now. A name already taken is an error unless ``replace=True``.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ValueError(f"a method name must be a word such as 'mtt' or 'my-method', got {name!r}")
    if not (isinstance(config, type) and is_dataclass(config)):
        raise TypeError(f"register_method({name!r}): config must be a dataclass, got {config!r}")
    if distributed not in (None, "rows", "classes"):
        raise ValueError(
            f"register_method({name!r}): distributed must be None, 'rows' or 'classes', got {distributed!r}"
        )
    defaults = dict(defaults or {})
    check_dataclass_options(config, defaults, f"register_method({name!r}) defaults")

    def register(cls: type[Policy]) -> MethodSpec:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"register_method({name!r}): the policy must be a fastdd Policy subclass, got {cls!r}")
        if name in _REGISTRY and not replace:
            raise ValueError(
                f"a method named {name!r} is already registered ({_REGISTRY[name].policy.__qualname__}); "
                "pass replace=True to replace it"
            )
        spec = MethodSpec(
            name,
            config,
            cls,
            defaults,
            needs_experts,
            soft_labels,
            distributed,
            selection,
            description,
            needs_ipc,
            needs_teacher,
            takes_iterations,
        )
        _REGISTRY[name] = spec
        return spec

    if policy is not None:
        return register(policy)

    def decorator(cls: type[Policy]) -> type[Policy]:
        register(cls)
        return cls

    return decorator


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests and interactive work)."""
    _REGISTRY.pop(name, None)


def _load_plugins() -> None:
    """Register the methods of installed packages (entry points in :data:`ENTRY_POINT_GROUP`), once. A plugin
    that fails to load is skipped with a warning naming it, so one broken package cannot break fastdd."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()  # importing the plugin's module may register its methods already (decorators)
            if isinstance(obj, type) and issubclass(obj, Policy):
                if not any(s.policy is obj for s in _REGISTRY.values()):
                    raise TypeError(f"{ep.value} is a Policy that no register_method call registered")
            elif isinstance(obj, MethodSpec):
                if obj.name not in _REGISTRY:
                    _REGISTRY[obj.name] = obj
            elif callable(obj):
                obj()
            else:
                raise TypeError(
                    f"{ep.value} is neither a registered Policy, a MethodSpec nor a function that registers"
                )
        except Exception as e:  # noqa: BLE001 - any failure of someone else's package
            warnings.warn(
                f"fastdd method plugin {ep.name!r} ({ep.value}) could not be loaded: {type(e).__name__}: {e}",
                RuntimeWarning,
                stacklevel=2,
            )


def methods() -> list[str]:
    """The names of the registered methods (fastdd's own, then those of installed plugins)."""
    _load_plugins()
    return list(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered as ``name``; ``ValueError`` listing the names when there is none."""
    _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_config(
    spec: MethodSpec,
    options: dict[str, Any],
    engine: EngineConfig | None = None,
    explicit: set[str] | frozenset[str] = frozenset(),
) -> Any:
    """``spec.config`` with ``spec.defaults``, then ``options`` (checked against its fields and types), then,
    for an engine method, the ``engine`` options named in ``explicit`` (those the caller gave), in that order.
    A method that unrolls nothing refuses engine options other than ``deterministic``."""
    engine = engine or EngineConfig()
    opts = {**spec.defaults, **options}
    if spec.engine:
        opts.update({k: getattr(engine, k) for k in explicit})
    else:
        bad = sorted(k for k in explicit if k != "deterministic" and getattr(engine, k) != getattr(EngineConfig, k))
        if bad:
            raise TypeError(f"{spec.name} unrolls no student training: {', '.join(bad)} do not apply")
    check_dataclass_options(spec.config, opts, spec.name)
    return spec.config(**opts)


def run_method(
    spec: MethodSpec,
    setup: Setup,
    run: RunConfig,
    deterministic: bool = False,
    keep_best: KeepBest | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> SyntheticSet:
    """The one runner: build the policy from ``setup``, run it on the distillation loop with ``run``'s folder,
    checkpoints and progress (under :func:`~fastdd.engine.deterministic_algorithms` when ``deterministic``),
    and return its set (the best one with ``keep_best``)."""
    with deterministic_algorithms(deterministic):
        policy = spec.policy.from_setup(setup)
        if current() is not None and spec.distributed is None and policy.shard is None:
            raise ValueError(f"{spec.name} runs on one process; launch it without torchrun")
        per = policy.steps_per_iteration
        iterations = setup.iterations if policy.num_iterations is None else policy.num_iterations
        desc = setup.method if setup.ipc is None else f"{setup.method} ipc={setup.ipc}"
        done = run_loop(
            policy,
            iterations * per,
            out=run.out,
            resume=run.resume,
            checkpoint_every=run.checkpoint_every * per,
            show_progress=run.show_progress,
            desc=desc,
            selection=keep_best,
            per=per,
            loggers=run.loggers,
            log_images_every=None if run.log_images_every is None else run.log_images_every * per,
        )
    extra = {**(extra_meta or {}), **(keep_best.meta(done, per) if keep_best is not None else {})}
    return policy.result(iterations, done.skipped, extra)


def engine_from_keywords(options: dict[str, Any], engine: EngineConfig | None) -> tuple[EngineConfig, set[str]]:
    """Pop the engine options from ``options`` (keywords of ``fastdd.distill``, a preset's options) onto
    ``engine``'s values; returns the engine config and the names the caller set (given as keywords, or
    changed from their defaults in ``engine``)."""
    base = asdict(engine) if engine is not None else {}
    explicit = set(engine.changed()) if engine is not None else set()
    given = {k: options.pop(k) for k in ENGINE_FIELDS if k in options}
    check_dataclass_options(EngineConfig, given, "engine")
    base.update(given)
    cfg = EngineConfig(**base)
    cfg.validate_engine()
    return cfg, explicit | set(given)


__all__ = [
    "MethodSpec",
    "Setup",
    "RunConfig",
    "SelectConfig",
    "register_method",
    "unregister_method",
    "methods",
    "get_method",
    "make_config",
    "run_method",
    "engine_from_keywords",
    "ENTRY_POINT_GROUP",
    "RUN_KEYWORDS",
]

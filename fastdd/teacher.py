"""A teacher: one network trained on the real data, for the decoupled methods (SRe2L, RDED) and the ``kd``
protocol (Yin et al. 2023; Sun et al. 2024).

:func:`train_teacher` trains it through :func:`fastdd.train.fit` (SGD, cosine, augmentation) and, with
``out``, saves it as a folder::

    teacher.json            format, model and spec, data set (name, classes, class names, image shape,
                            normalisation, ZCA), the recipe, test accuracy, and the tensor file's size + SHA-256
    teacher.safetensors     "theta" (P,) float32 and, for batch norm, "buffers" (running statistics)

:meth:`Teacher.load` reads it back (checked; nothing unpickled). :meth:`Teacher.from_experts` takes an expert's
last snapshot instead (networks without batch norm: expert files keep no running statistics).

While it trains, :func:`train_teacher` keeps a checkpoint in the folder every ``checkpoint_every`` epochs::

    teacher.partial.json                  format, the settings a resumed run must match, the epochs done, the
                                          optimiser's and scheduler's state, and the tensor file's size + SHA-256
    teacher.partial-<epoch>.safetensors   parameters, running statistics, momentum, generator states

A run that dies resumes from it bitwise (the next tensor file is written before the index names it, so a run
killed at any moment leaves a consistent pair); both go when the teacher is saved.

The class order is pinned: a teacher records its data set's class names and :meth:`Teacher.check` refuses a
data set whose classes differ (RDED's known failure is a teacher whose class indices do not match the data).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .augment import DSA, DSAConfig, crop_flip, strategy_for
from .data import Dataset
from .errors import CorruptFileError, ModelMismatchError
from .experts import ExpertBuffer
from .io import atomic_save_safetensors, atomic_write_json, check_file, check_out_folder, json_field, read_json_object
from .models import FunctionalNet, accuracy, model_for, model_from_spec
from .options import check_dataclass_options, check_positive
from .rng import generator
from .runs import progress
from .train import SGD, FitState, fit
from .version import __version__

FORMAT = "fastdd.teacher/1"
TENSORS, INDEX = "teacher.safetensors", "teacher.json"  # fixed names, never read from JSON
PARTIAL_FORMAT = "fastdd.teacher-checkpoint/1"
PARTIAL_INDEX = "teacher.partial.json"
AUGMENTS = ("dsa", "crop_flip", "none")


@dataclass
class TeacherConfig:
    """How :func:`train_teacher` trains (SGD with momentum, cosine annealing to 0 over ``epochs``).

    ``model`` defaults to the batch-norm ConvNet (depth by resolution): SRe2L matches a teacher's batch-norm
    statistics, and RDED's ConvNet observers are batch-norm ConvNets. ``augment``: ``"dsa"`` (the data set's DSA
    strategy), ``"crop_flip"`` (pad 4; flips only where DSA's strategy flips) or ``"none"``."""

    model: str = "convnetbn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"width": 32}
    epochs: int = 20
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: str = "dsa"

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"teacher {name} must be an integer >= 1, got {v!r}")
        check_positive(self, "lr")
        check_positive(self, "momentum", "weight_decay", allow_zero=True)
        if self.augment not in AUGMENTS:
            raise ValueError(f"teacher augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")


class Teacher:
    """A trained network: ``net`` (:class:`~fastdd.models.FunctionalNet`), flat parameters ``theta`` ``(P,)``,
    batch-norm running statistics ``buffers`` (``None`` without batch norm) and ``meta`` (data set, model,
    recipe, accuracy). Always used in evaluation mode (running statistics)."""

    def __init__(self, net: FunctionalNet, theta: torch.Tensor, buffers: torch.Tensor | None, meta: dict[str, Any]):
        net._check_flat(theta, net.num_params, "teacher theta")
        if net.has_batchnorm:
            if buffers is None:
                raise ModelMismatchError(f"{net.describe()} uses batch norm: the teacher needs its running statistics")
            net._check_flat(buffers, net.num_buffers, "teacher buffers")
        elif buffers is not None and buffers.numel():
            raise ModelMismatchError(f"{net.describe()} has no batch norm, yet running statistics were given")
        self.net, self.meta = net, dict(meta)
        self.theta = theta.detach()
        self.buffers = buffers.detach() if buffers is not None and net.has_batchnorm else None

    @property
    def device(self) -> torch.device:
        return self.theta.device

    @property
    def has_batchnorm(self) -> bool:
        return self.net.has_batchnorm

    @property
    def num_classes(self) -> int:
        return int(self.net.spec["num_classes"])

    def to(self, device: torch.device | str) -> Teacher:
        bufs = None if self.buffers is None else self.buffers.to(device)
        return Teacher(self.net, self.theta.to(device), bufs, self.meta)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` in evaluation mode, differentiable in ``x`` (not in the teacher's parameters)."""
        return self.net(x, self.theta, self.buffers, train=self.buffers is None)

    def logits(self, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Logits ``(B, K)`` (the teacher's dtype) of ``x`` ``(B, C, H, W)``, without gradients, ``batch`` images per
        forward (so a large set never needs one huge activation), on ``x``'s device."""
        with torch.no_grad():
            outs = [self(chunk.to(self.device)) for chunk in x.split(batch)]
        return torch.cat(outs).to(x.device) if outs else x.new_zeros(0, self.num_classes)

    def bn_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch-norm layer in order, its running ``(mean, var)`` ``(C,)``; ``ValueError`` without batch norm."""
        if self.buffers is None:
            raise ValueError(
                f"the teacher {self.net.describe()} has no batch norm: it has no running statistics to match "
                "(train one with a batch-norm model, e.g. train_teacher(ds, 'convnetbn'))"
            )
        return self.net.bn_running_stats(self.buffers)

    def bn_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Evaluation-mode logits of ``x`` and each batch-norm layer's input moments (per-channel mean, biased
        variance), differentiable in ``x`` (:meth:`FunctionalNet.bn_moments`)."""
        self.bn_statistics()  # the error without batch norm
        assert self.buffers is not None
        return self.net.bn_moments(x, self.theta, self.buffers)

    def check(self, ds: Dataset, what: str = "teacher") -> None:
        """``ValueError`` naming what differs unless ``ds`` is the data the teacher was trained for: data set
        name, ZCA, classes and their names (the class order), image shape."""
        m = self.meta
        have = {
            "dataset": ds.name,
            "zca": ds.zca is not None,
            "num_classes": ds.num_classes,
            "class_names": list(ds.class_names),
            "image_shape": [ds.channels, *ds.im_size],
        }
        for key, value in have.items():
            if key in m and m[key] != value:
                raise ValueError(
                    f"the {what} was trained for {key}={m[key]!r:.80}, the data set has {value!r:.80}: "
                    "train the teacher on this data set (the class order must match)"
                )

    def accuracy(self, ds: Dataset) -> float:
        """Top-1 accuracy on ``ds.test`` (evaluation mode)."""
        bufs = _to(self.buffers, ds.device)
        return accuracy(self.net, self.theta.to(ds.device), bufs, ds.test.images, ds.test.labels)

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``teacher.safetensors`` and ``teacher.json`` (with the tensor file's size and SHA-256) into
        folder ``path``, each atomically."""
        path = Path(path)
        check_out_folder(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"theta": self.theta}
        if self.buffers is not None:
            tensors["buffers"] = self.buffers
        record = atomic_save_safetensors(path / TENSORS, tensors, metadata={"format": FORMAT})
        index = {
            **self.meta,
            "format": FORMAT,
            "fastdd_version": __version__,
            "model": self.net.name,
            "model_spec": self.net.spec,
            "init": self.net.init_scheme,
            "files": {TENSORS: record},
        }
        atomic_write_json(path / INDEX, index)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Teacher:
        """A teacher saved by :meth:`save`: ``teacher.json`` checked, the tensor file checked against its size and
        SHA-256, the model rebuilt and the tensors' sizes checked (:class:`CorruptFileError` naming the file)."""
        path = Path(path)
        jfile, tfile = path / INDEX, path / TENSORS
        if not jfile.is_file():
            raise FileNotFoundError(f"{jfile} not found: {path} is not a teacher folder (make one with train_teacher)")
        meta = read_json_object(jfile, "teacher")
        if meta.get("format") != FORMAT:
            raise CorruptFileError(f"{jfile} is not a {FORMAT} teacher (format {meta.get('format')!r})")
        files = json_field(meta, "files", dict, jfile)
        if set(files) != {TENSORS}:
            raise CorruptFileError(f"{jfile}: 'files' must record {TENSORS} only, got {sorted(files)}")
        check_file(tfile, files[TENSORS], jfile, "teacher file")
        name = json_field(meta, "model", str, jfile)
        spec = json_field(meta, "model_spec", dict, jfile)
        try:
            net = model_from_spec(name, spec, meta.get("init", "default"))
        except (TypeError, ValueError) as e:
            raise CorruptFileError(
                f"{jfile}: 'model' / 'model_spec' do not describe a network fastdd builds: {e}"
            ) from e
        try:
            t = load_file(str(tfile))
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"{tfile} is truncated or corrupt: {e}") from e
        if "theta" not in t:
            raise CorruptFileError(f"{tfile} holds no 'theta' tensor: not a {FORMAT} teacher")
        for key in ("format", "fastdd_version", "model", "model_spec", "init", "files"):
            meta.pop(key, None)
        try:
            teacher = cls(net, t["theta"], t.get("buffers"), meta)
        except ModelMismatchError as e:
            raise CorruptFileError(f"{tfile}: {e}") from e
        return teacher.to(device)

    @classmethod
    def from_experts(cls, experts: ExpertBuffer | str | os.PathLike, expert: int | None = None) -> Teacher:
        """Expert ``expert``'s last snapshot (default: the first expert) as a teacher. Expert files keep no
        batch-norm running statistics, so the experts' network must be one without batch norm."""
        buf = experts if isinstance(experts, ExpertBuffer) else ExpertBuffer(experts)
        net = buf.model()
        if net.has_batchnorm:
            raise ValueError(
                f"the experts' network {net.describe()} uses batch norm, and expert files keep no running "
                "statistics: train a teacher with fastdd.train_teacher instead"
            )
        i = buf.ids[0] if expert is None else expert
        if i not in buf.ids:
            raise ValueError(f"expert {i} is not in {buf.path} (it holds {buf.ids[0]}..{buf.ids[-1]})")
        theta = buf.snapshots(i, [buf.num_epochs])[0]
        m = buf.manifest
        meta = {"dataset": m["dataset"], "source": "experts", "experts": str(buf.path), "expert": i}
        for key in ("zca", "num_classes", "class_names"):
            if key in m:
                meta[key] = m[key]
        return cls(net, theta.float(), None, meta)

    def __repr__(self) -> str:
        acc = self.meta.get("accuracy")
        return f"<Teacher {self.net.describe()} for {self.meta.get('dataset')}" + (
            f", test accuracy {100 * acc:.2f} %>" if isinstance(acc, float) else ">"
        )


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def teacher_config(config: TeacherConfig | None = None, **options: Any) -> TeacherConfig:
    """``config`` (or the defaults) with ``options`` (fields of :class:`TeacherConfig`, checked) applied."""
    base = asdict(config) if config is not None else {}
    check_dataclass_options(TeacherConfig, options, "train_teacher")
    cfg = TeacherConfig(**{**base, **options})
    cfg.validate()
    return cfg


def train_teacher(
    ds: Dataset,
    model: str | None = None,
    *,
    config: TeacherConfig | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    resume: bool = True,
    checkpoint_every: int = 1,
    show_progress: bool = True,
    **options: Any,
) -> Teacher:
    """Train a teacher on ``ds``'s train split (:class:`TeacherConfig`; ``model`` and ``options`` override its
    fields, e.g. ``epochs=30``) with :func:`fastdd.train.fit`, test it, and save it to ``out`` when given.

    Every random draw (initialisation, batch order, augmentation) derives from ``seed``. The teacher records
    its data set's name, classes and class names (the class order the methods and the ``kd`` protocol rely
    on), the recipe and its final test accuracy (``teacher.meta["accuracy"]``).

    With ``out``, a checkpoint is kept there every ``checkpoint_every`` epochs (module docstring). ``resume``
    (the default): a run into a folder that holds a checkpoint continues it, bitwise the uninterrupted run, and
    one that holds a finished teacher returns it without training; either must have been made with the same
    data set, recipe and seed (``ValueError`` naming what differs). ``resume=False`` refuses a folder that holds
    either."""
    if model is not None:
        options["model"] = model
    cfg = teacher_config(config, **options)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1 (epochs), got {checkpoint_every!r}")
    dev = ds.device
    net = model_for(ds, cfg.model, **cfg.model_kwargs)
    settings = _settings(ds, cfg, seed)
    # what a checkpoint must match: the settings and the network, as its JSON records it (tuples as lists)
    run_settings = {**settings, "model_spec": json.loads(json.dumps(net.spec))}
    theta0 = net.init(generator(seed, "teacher.init"), device=dev)
    buffers = net.init_buffers(device=dev) if net.has_batchnorm else None
    g_batches = generator(seed, "teacher.batches")
    g_aug = generator(seed, "teacher.augment")
    start: FitState | None = None
    folder = None if out is None else Path(out)
    if folder is not None:
        check_out_folder(folder)
        done = _finished_teacher(folder, settings, resume)
        if done is not None:
            return done.to(dev)
        start = _load_checkpoint(folder, run_settings, resume, buffers, g_batches, g_aug, dev)
    dsa_cfg = DSAConfig(strategy=strategy_for(ds.name))
    augment = None
    if cfg.augment == "dsa":
        dsa = DSA(dsa_cfg)
        augment = lambda x, idx: dsa(x, g_aug)  # noqa: E731
    elif cfg.augment == "crop_flip":
        p_flip = dsa_cfg.prob_flip if "flip" in dsa_cfg.families else 0.0
        augment = lambda x, idx: crop_flip(x, g_aug, prob_flip=p_flip)  # noqa: E731
    sgd = SGD(cfg.lr, cfg.momentum, cfg.weight_decay, schedule="cosine", cosine_epochs=cfg.epochs)
    bar = progress(total=cfg.epochs, desc=f"teacher {net.name}", disable=not show_progress)
    bar.update(0 if start is None else start.epoch)

    def on_epoch(ep: int, loss: torch.Tensor, theta: torch.Tensor) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.4f}")

    def on_state(state: FitState) -> None:
        if folder is not None and (state.epoch % checkpoint_every == 0 or state.epoch == cfg.epochs):
            _write_checkpoint(folder, run_settings, state, buffers, g_batches, g_aug)

    theta = fit(
        net,
        theta0,
        ds.train.images,
        ds.train.labels,
        cfg.epochs,
        sgd,
        g_batches,
        batch_size=cfg.batch_size,
        buffers=buffers,
        augment=augment,
        on_epoch=on_epoch,
        start=start,
        on_state=on_state,
    )
    bar.close()
    meta = {
        **settings,
        "num_classes": ds.num_classes,
        "image_shape": [ds.channels, *ds.im_size],
        "mean": list(ds.mean),
        "std": list(ds.std),
        "source": "train_teacher",
    }
    teacher = Teacher(net, theta, buffers, meta)
    teacher.meta["accuracy"] = teacher.accuracy(ds)
    if folder is not None:
        teacher.save(folder)
        _remove_checkpoint(folder)
    return teacher


# ---------------------------------------------------------------------------------------------- resuming
def _settings(ds: Dataset, cfg: TeacherConfig, seed: int) -> dict[str, Any]:
    """What a resumed or reused teacher must have been trained with, as its JSON files record them."""
    settings = {
        "dataset": ds.name,
        "zca": ds.zca is not None,
        "class_names": list(ds.class_names),
        "seed": seed,
        "recipe": asdict(cfg),
    }
    return json.loads(json.dumps(settings))


def _differ(found: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The names of ``settings`` (recipe fields by name) that ``found`` records otherwise."""
    out = [k for k in settings if k != "recipe" and found.get(k) != settings[k]]
    recipe = found.get("recipe")
    recipe = recipe if isinstance(recipe, dict) else {}
    return out + [k for k, v in settings["recipe"].items() if recipe.get(k) != v]


def _finished_teacher(folder: Path, settings: dict[str, Any], resume: bool) -> Teacher | None:
    """The teacher already saved in ``folder`` when ``resume`` and made with ``settings``; ``None`` when there is
    none. ``ValueError`` when there is one and ``resume`` is off, or it was made otherwise."""
    if not (folder / INDEX).exists():
        return None
    if not resume:
        raise ValueError(f"{folder} already holds a teacher; pass resume=True to reuse it or use another folder")
    t = Teacher.load(folder)
    differ = _differ(t.meta, settings)
    if differ:
        raise ValueError(
            f"{folder} holds a teacher trained with other settings ({', '.join(differ)} differ); use another folder"
        )
    return t


def _load_checkpoint(
    folder: Path,
    settings: dict[str, Any],
    resume: bool,
    buffers: torch.Tensor | None,
    g_batches: torch.Generator,
    g_aug: torch.Generator,
    device: torch.device,
) -> FitState | None:
    """The checkpoint in ``folder`` as the :class:`FitState` to continue from (on ``device``), with the running
    statistics and both generators put back where it left them (in place); ``None`` when there is none. Its index
    is checked against ``settings`` (with ``model_spec``), its tensor file against the recorded size and SHA-256."""
    jfile = folder / PARTIAL_INDEX
    if not jfile.exists():
        return None
    if not resume:
        raise ValueError(
            f"{folder} holds an unfinished teacher ({PARTIAL_INDEX}); pass resume=True to continue it or use "
            "another folder"
        )
    index = read_json_object(jfile, "teacher checkpoint")
    if index.get("format") != PARTIAL_FORMAT:
        raise CorruptFileError(f"{jfile} is not a {PARTIAL_FORMAT} file (format {index.get('format')!r})")
    differ = _differ(index, settings)
    if differ:
        raise ValueError(
            f"{jfile} continues a teacher trained with other settings ({', '.join(differ)} differ); use another "
            "folder or the same settings"
        )
    epoch = json_field(index, "epoch", int, jfile)
    if not 1 <= epoch <= settings["recipe"]["epochs"]:
        raise CorruptFileError(f"{jfile}: 'epoch' must be in 1..{settings['recipe']['epochs']}, got {epoch}")
    optimizer = json_field(index, "optimizer", dict, jfile)
    scheduler = json_field(index, "scheduler", dict, jfile, optional=True)
    _check_optimizer_record(optimizer, scheduler, epoch, settings["recipe"], jfile)
    files = json_field(index, "files", dict, jfile)
    name = _checkpoint_name(epoch)
    if set(files) != {name}:
        raise CorruptFileError(f"{jfile}: 'files' must record {name} only, got {sorted(files)}")
    tfile = folder / name
    check_file(tfile, files[name], jfile, "teacher checkpoint")
    try:
        saved = load_file(str(tfile))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(f"{tfile} is truncated or corrupt: {e}") from e
    try:
        if buffers is not None:
            buffers.copy_(saved["buffers"].view_as(buffers))
        g_batches.set_state(saved["gen.batches"])
        g_aug.set_state(saved["gen.augment"])
        theta = saved["theta"].to(device)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CorruptFileError(f"{tfile}: its tensors do not fit this teacher ({type(e).__name__}: {e})") from e
    state: dict[int, dict[str, Any]] = {}  # the SGD state_dict's tensors, saved as "optimizer.<param>.<key>"
    for key, t in saved.items():
        if key.startswith("optimizer."):
            _, param, entry = key.split(".", 2)
            state.setdefault(int(param), {})[entry] = t.to(device)
    return FitState(epoch, theta, {"state": state, "param_groups": optimizer["param_groups"]}, scheduler)


def _check_optimizer_record(
    optimizer: dict[str, Any], scheduler: dict[str, Any] | None, epoch: int, recipe: dict[str, Any], jfile: Path
) -> None:
    """:class:`CorruptFileError` naming ``jfile`` unless its optimiser record is one SGD group over the one flat
    parameter vector with the recipe's momentum and weight decay and a finite lr, and its scheduler record a cosine
    schedule ``epoch`` steps in (what :func:`_write_checkpoint` writes)."""
    groups = optimizer.get("param_groups")
    group = groups[0] if isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict) else None
    lr = None if group is None else group.get("lr")
    if (
        group is None
        or group.get("params") != [0]
        or isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (math.isfinite(lr) and lr >= 0)
        or group.get("momentum") != recipe["momentum"]
        or group.get("weight_decay") != recipe["weight_decay"]
    ):
        raise CorruptFileError(
            f"{jfile}: 'optimizer' must record one SGD group over parameter 0 with a finite lr >= 0 and the recipe's "
            f"momentum and weight decay, got {groups!r:.200}"
        )
    if scheduler is None or scheduler.get("last_epoch") != epoch or scheduler.get("T_max") != recipe["epochs"]:
        raise CorruptFileError(
            f"{jfile}: 'scheduler' must record the cosine schedule over {recipe['epochs']} epochs, {epoch} steps in, "
            f"got {scheduler!r:.200}"
        )


def _checkpoint_name(epoch: int) -> str:
    """The checkpoint's tensor file after ``epoch`` epochs (a name made here, never read from JSON)."""
    return f"teacher.partial-{epoch:06d}.safetensors"


def _write_checkpoint(
    folder: Path,
    settings: dict[str, Any],
    state: FitState,
    buffers: torch.Tensor | None,
    g_batches: torch.Generator,
    g_aug: torch.Generator,
) -> None:
    """Save ``state`` (and the running statistics and generators) as the folder's checkpoint (``settings``: the
    run's, with its ``model_spec``): the new tensor file first, then the index that names it (atomically), then
    the old tensor file goes."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"theta": state.theta, "gen.batches": g_batches.get_state(), "gen.augment": g_aug.get_state()}
    if buffers is not None:
        tensors["buffers"] = buffers
    opt_state = state.optimizer["state"]
    for param, entries in opt_state.items():
        for name, v in entries.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"optimizer state {param}.{name} is not a tensor: {v!r}")
            tensors[f"optimizer.{param}.{name}"] = v
    name = _checkpoint_name(state.epoch)
    record = atomic_save_safetensors(folder / name, tensors, metadata={"format": PARTIAL_FORMAT})
    index = {
        "format": PARTIAL_FORMAT,
        "fastdd_version": __version__,
        **settings,
        "epoch": state.epoch,
        "optimizer": {"param_groups": state.optimizer["param_groups"]},
        "scheduler": state.scheduler,
        "files": {name: record},
    }
    atomic_write_json(folder / PARTIAL_INDEX, index)
    for old in folder.glob("teacher.partial-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint once the teacher is saved (the index first: a stray tensor file is never read)."""
    (folder / PARTIAL_INDEX).unlink(missing_ok=True)
    for old in folder.glob("teacher.partial-*.safetensors"):
        old.unlink(missing_ok=True)


def load_teacher(teacher: Teacher | str | os.PathLike, ds: Dataset | None = None, what: str = "teacher") -> Teacher:
    """``teacher`` itself or the one saved in that folder, on ``ds``'s device and checked against ``ds``."""
    t = teacher if isinstance(teacher, Teacher) else Teacher.load(teacher)
    if not isinstance(t, Teacher):
        raise TypeError(f"{what} must be a Teacher or its folder, got {teacher!r:.60}")
    if ds is not None:
        t.check(ds, what)
        t = t.to(ds.device)
    return t


__all__ = ["Teacher", "TeacherConfig", "train_teacher", "teacher_config", "load_teacher", "FORMAT", "AUGMENTS"]

"""Expert trajectories: networks trained on the real data, snapshotted at init and after every epoch.

On disk (a folder)::

    manifest.json                  model spec, data set, training settings, shards, checksums
    experts_0000.safetensors       tensors "expert_<i>" of shape (epochs + 1, num_params), float32
    experts_0001.safetensors       ...

Each shard holds ``shard_size`` experts and is written atomically; the manifest is rewritten
(atomically) after every shard, so an interrupted run keeps its finished shards and resumes from them.
Under torch.distributed (``torchrun ... fastdd experts``) every rank trains a disjoint share of each
file's experts, rank 0 gathers them and writes the same files one process writes.
Nothing is unpickled on load. ``import_reference_buffer`` converts the reference code's
``replay_buffer_*.pt`` files (loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open

from .augment import DSA, DSAConfig, strategy_for
from .data import Dataset
from .distributed import Dist, barrier, current, gather_objects
from .errors import CorruptFileError, ExpertWarning, ModelMismatchError
from .io import (
    atomic_save_safetensors,
    atomic_write_json,
    check_file,
    check_out_folder,
    inside,
    json_field,
    read_json_object,
)
from .models import FunctionalNet, accuracy, model_for, model_from_spec
from .options import check_dataclass_options, check_keywords, check_positive
from .rng import derive_seed, generator
from .runs import CSVLog, RunDir, progress
from .tracking import Logger, Tracker
from .train import SAM, SGD, fit

FORMAT = "fastdd.experts/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Curriculum:
    """PAD's difficulty schedule for expert training (Li et al. 2024, §3.2; the phases of its code's
    ``buffer_CL.py``, with the real per-class counts): which examples each epoch trains on.

    Per class ``c`` with its ``n_c`` training examples sorted easy → hard by the difficulty scores given to
    :func:`train_experts`, in epoch ``e`` (0-based, as :func:`fastdd.train.fit` counts):

    - ``e <= add_end_epoch``: the easiest ``⌈p·n_c⌉`` with ``p = min(1, init_ratio + (1 − init_ratio)·e /
      add_end_epoch)`` (``p = 1`` when ``add_end_epoch`` is 0);
    - after that, all ``n_c`` until ``remove_epochs[0]``;
    - ``e > remove_epochs[k]`` (the largest such ``k``): all but the easiest ``⌊remove_ratios[k]·n_c⌋``.

    ``⌈·⌉`` and ``⌊·⌋`` forgive float round-off of 1e-9 (``0.3·10`` counts as 3). PAD's README (CIFAR-10):
    ``Curriculum(0.75, 20, (40, 60), (0.1, 0.2))``, the defaults; ``remove_epochs=()`` never removes.
    """

    init_ratio: float = 0.75
    add_end_epoch: int = 20
    remove_epochs: tuple[int, ...] = (40, 60)
    remove_ratios: tuple[float, ...] = (0.1, 0.2)

    def __post_init__(self) -> None:
        check_dataclass_options(Curriculum, {f.name: getattr(self, f.name) for f in fields(self)}, "Curriculum")
        object.__setattr__(self, "remove_epochs", tuple(self.remove_epochs))
        object.__setattr__(self, "remove_ratios", tuple(self.remove_ratios))
        if not 0 < self.init_ratio <= 1:
            raise ValueError(f"Curriculum init_ratio must be in (0, 1], got {self.init_ratio!r}")
        if self.add_end_epoch < 0:
            raise ValueError(f"Curriculum add_end_epoch must be >= 0, got {self.add_end_epoch!r}")
        rm, ratios = self.remove_epochs, self.remove_ratios
        if len(rm) != len(ratios):
            raise ValueError(f"Curriculum remove_epochs {list(rm)} and remove_ratios {list(ratios)} differ in length")
        if any(b <= a for a, b in zip(rm, rm[1:])) or (rm and rm[0] < self.add_end_epoch):
            raise ValueError(
                f"Curriculum remove_epochs {list(rm)} must increase, from add_end_epoch {self.add_end_epoch} on"
            )
        if not all(0 <= r < 1 for r in ratios):
            raise ValueError(f"Curriculum remove_ratios must be in [0, 1), got {list(ratios)}")

    @classmethod
    def of(cls, value: Curriculum | Mapping[str, Any]) -> Curriculum:
        """``value`` itself, or the curriculum a mapping of its fields describes (missing fields: defaults)."""
        if isinstance(value, Curriculum):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a curriculum must be a Curriculum or a dict of its fields, got {value!r:.60}")
        check_keywords(value, {f.name: Any for f in fields(cls)}, "Curriculum")
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (lists, every field): what :class:`ExpertConfig` and the manifest hold."""
        return {
            "init_ratio": float(self.init_ratio),
            "add_end_epoch": int(self.add_end_epoch),
            "remove_epochs": [int(e) for e in self.remove_epochs],
            "remove_ratios": [float(r) for r in self.remove_ratios],
        }

    def window(self, n: int, epoch: int) -> tuple[int, int]:
        """``(start, stop)``: epoch ``epoch`` trains on ranks ``start:stop`` of a class of ``n`` sorted easy → hard."""
        aee, ir = self.add_end_epoch, self.init_ratio
        if epoch <= aee:
            p = 1.0 if aee == 0 else min(1.0, ir + (1 - ir) * epoch / aee)
            return 0, min(n, math.ceil(p * n - 1e-9))
        drop = 0.0
        for e, r in zip(self.remove_epochs, self.remove_ratios):
            if epoch > e:
                drop = r
        return min(n - 1, math.floor(drop * n + 1e-9)) if n else 0, n

    def subset(self, order: Sequence[torch.Tensor], epoch: int) -> torch.Tensor:
        """The sorted training indices of epoch ``epoch``: :meth:`window` of each class's ``order`` (its indices
        sorted easy → hard, :func:`curriculum_order`)."""
        parts = []
        for o in order:
            a, b = self.window(len(o), epoch)
            parts.append(o[a:b])
        return torch.cat(parts).sort().values


@dataclass
class ExpertConfig:
    """How experts are trained (SGD on the real train split). Defaults follow MTT's buffer.py.

    The one set of training settings of :func:`train_experts` (``config=``, or the same names as keywords)
    and of ``fastdd experts``; recorded as ``"train"`` in the manifest, so a resumed run must match it.

    Attributes:
        lr: SGD learning rate (> 0).
        momentum: SGD momentum (>= 0).
        weight_decay: L2 weight decay (>= 0).
        batch_size: images per SGD step (>= 1).
        decay: multiply the learning rate by 0.1 once, at epoch ``epochs // 2 + 1``.
        augment: ``None`` or ``"dsa"`` (MTT trains its experts with DSA).
        sam_rho: sharpness-aware minimisation's radius ρ (>= 0; FTD's flat experts: 0.01); 0 (the default)
            trains with plain SGD, bit for bit as before these fields existed. Each step then costs two
            forward/backward passes (:class:`fastdd.train.SAM`, :func:`fastdd.train.sam_direction`).
        sam_alpha: GSAM's α (>= 0): the share of the gradient's component orthogonal to the perturbed
            gradient taken out of the step; 0 is plain SAM (FTD's code: 0.4).
        sam_adaptive: ASAM's parameter-scaled perturbation ``ρ·θ²⊙g/‖|θ|⊙g‖`` instead of SAM's
            ``ρ·g/‖g‖`` (FTD's code: on).
        curriculum: PAD's difficulty schedule (:class:`Curriculum`, or a dict of its fields; held as the dict
            of :meth:`Curriculum.as_dict`): each epoch trains on a per-class window of the examples sorted
            by the difficulty ``scores=`` given to :func:`train_experts`. ``None`` (the default): every
            example every epoch, bit for bit as before the field existed.

    A manifest written before the ``sam_*`` or ``curriculum`` fields existed counts as having their defaults
    (a resumed run continues it).
    """

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    decay: bool = False
    augment: str | None = None
    sam_rho: float = 0.0
    sam_alpha: float = 0.0
    sam_adaptive: bool = False
    curriculum: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.curriculum, (Curriculum, Mapping)):  # one spelling: Curriculum.as_dict()
            self.curriculum = Curriculum.of(self.curriculum).as_dict()

    def validate(self) -> None:
        """``ValueError`` naming the field whose value is out of range, ``TypeError`` naming one of another type."""
        _check_count("batch_size", self.batch_size)
        check_positive(self, "lr")
        check_positive(self, "momentum", "weight_decay", "sam_rho", "sam_alpha", allow_zero=True)
        if self.augment not in (None, "none", "dsa"):
            raise ValueError(f"augment must be None or 'dsa', got {self.augment!r}")
        check_dataclass_options(ExpertConfig, asdict(self), "ExpertConfig")


TRAIN_FIELDS = tuple(f.name for f in fields(ExpertConfig))


def expert_config(config: ExpertConfig | None = None, **options: Any) -> ExpertConfig:
    """The training settings :func:`train_experts` uses: ``config`` (default :class:`ExpertConfig`) with the
    keyword ``options`` (names of its fields) set on it, checked (:meth:`ExpertConfig.validate`).

    Raises ``TypeError`` naming a keyword that is no field of :class:`ExpertConfig`, ``ValueError`` naming a
    field that ``config`` sets (to other than its default) and a keyword sets to another value."""
    check_keywords(options, dict.fromkeys(TRAIN_FIELDS, Any), "train_experts: ExpertConfig")
    if config is None:
        cfg = ExpertConfig(**options)
    elif not isinstance(config, ExpertConfig):
        raise TypeError(f"train_experts: config must be an ExpertConfig, got {type(config).__name__}")
    else:
        default = ExpertConfig()
        clash = [k for k, v in options.items() if getattr(default, k) != getattr(config, k) != v]
        if clash:
            raise ValueError(
                "train_experts: "
                + ", ".join(
                    f"{k}={options[k]!r} (keyword) differs from config.{k}={getattr(config, k)!r}" for k in clash
                )
                + "; give each setting once: in config= or as a keyword"
            )
        cfg = replace(config, **options)
    cfg.validate()
    return cfg


def _check_count(name: str, value: Any) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def curriculum_order(scores: Any, labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Per class ``c < num_classes``, its training indices (int64, CPU) sorted easy → hard by ``scores``: a
    :class:`fastdd.scores.Scores` (``values`` ``(N,)``, ``hardest`` ``"low"`` / ``"high"``); ties keep index order.
    """
    values, hardest = _difficulty_values(scores, len(labels))
    labels = labels.cpu()
    order = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        order.append(idx[torch.sort(values[idx], descending=hardest == "low", stable=True).indices])
    return order


def difficulty_record(scores: Any, n: int) -> dict[str, Any]:
    """What the manifest keeps of a curriculum's ``scores`` (not the values): kind, source, convention, length and
    the SHA-256 of the values as little-endian float64."""
    values, hardest = _difficulty_values(scores, n)
    digest = hashlib.sha256(values.double().contiguous().numpy().astype("<f8").tobytes()).hexdigest()
    source = getattr(scores, "source", None)
    return {
        "kind": str(getattr(scores, "kind", "scores")),
        "source": None if source is None else os.fspath(source),
        "hardest": hardest,
        "n": n,
        "sha256": digest,
    }


def _difficulty_values(scores: Any, n: int) -> tuple[torch.Tensor, str]:
    """``(values (n,) on the CPU, hardest)`` of a :class:`fastdd.scores.Scores` (read by its attributes: this
    layer does not import :mod:`fastdd.scores`); ``TypeError`` / ``ValueError`` naming what is wrong."""
    values, hardest = getattr(scores, "values", None), getattr(scores, "hardest", None)
    if not isinstance(values, torch.Tensor) or hardest not in ("low", "high"):
        raise TypeError(
            "train_experts: scores must be a fastdd.scores.Scores (fastdd.el2n_scores(ds), "
            "fastdd.load_scores(path, ds), or fastdd.scores.as_scores(values, hardest='high' | 'low') for a "
            "plain (N,) tensor), "
            f"got {scores!r:.60}"
        )
    values = values.detach().cpu()
    if values.shape != (n,) or not torch.isfinite(values.double()).all():
        raise ValueError(
            f"train_experts: scores must be {n} finite values (the train split), got {tuple(values.shape)} "
        )
    return values, hardest


def train_one(
    net: FunctionalNet,
    ds: Dataset,
    epochs: int,
    cfg: ExpertConfig,
    seed: int,
    on_epoch=None,
    order: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, float]:
    """Train one expert with :func:`fastdd.train.fit`; returns ``(trajectory (epochs + 1, P) float32 on
    CPU, final test accuracy)``. ``on_epoch(epoch, loss)`` is called after every epoch. With
    ``cfg.sam_rho > 0`` every step is sharpness-aware (:class:`~fastdd.train.SAM`), on the same DSA draw for
    both of its passes. With ``cfg.curriculum`` each epoch trains on :meth:`Curriculum.subset` of ``order``
    (:func:`curriculum_order`, required then)."""

    dev = ds.device
    theta0 = net.init(generator(seed, "init"), device=dev)
    buffers = net.init_buffers(device=dev) if net.has_batchnorm else None
    augment = None
    if cfg.augment == "dsa":
        dsa, g_aug = DSA(DSAConfig(strategy=strategy_for(ds.name))), generator(seed, "augment")
        augment = lambda x, idx: dsa(x, g_aug)  # noqa: E731
    elif cfg.augment not in (None, "none"):
        raise ValueError(f"expert augment must be None or 'dsa', got {cfg.augment!r}")
    sgd = SGD(
        cfg.lr,
        cfg.momentum,
        cfg.weight_decay,
        schedule="step" if cfg.decay else "constant",
        decay_epoch=epochs // 2 + 1 if cfg.decay else None,
    )
    snaps = [theta0.detach().cpu().clone()]

    def snapshot(ep: int, loss: torch.Tensor, theta: torch.Tensor) -> None:
        snaps.append(theta.cpu().clone())
        if on_epoch is not None:
            on_epoch(ep, float(loss))

    theta = fit(
        net,
        theta0,
        ds.train.images,
        ds.train.labels,
        epochs,
        sgd,
        generator(seed, "batches"),
        batch_size=cfg.batch_size,
        buffers=buffers,
        augment=augment,
        on_epoch=snapshot,
        sam=SAM(cfg.sam_rho, cfg.sam_alpha, cfg.sam_adaptive) if cfg.sam_rho > 0 else None,
        epoch_subset=_epoch_subset(cfg, order),
    )
    acc = accuracy(net, theta, buffers, ds.test.images, ds.test.labels)
    return torch.stack(snaps), acc


def _epoch_subset(cfg: ExpertConfig, order: Sequence[torch.Tensor] | None) -> Callable[[int], torch.Tensor] | None:
    """``epoch -> indices`` of ``cfg.curriculum`` over ``order`` for :func:`fastdd.train.fit`; ``None`` without one."""
    if cfg.curriculum is None:
        return None
    if order is None:
        raise ValueError("an expert curriculum needs the examples' difficulty order (train_experts(..., scores=))")
    cur = Curriculum.of(cfg.curriculum)
    return lambda ep: cur.subset(order, ep)


def train_experts(
    ds: Dataset,
    model: str | FunctionalNet = "convnet",
    num_experts: int = 10,
    epochs: int = 20,
    out: str | os.PathLike | None = "runs/experts",
    seed: int = 0,
    *,
    config: ExpertConfig | None = None,
    shard_size: int = 10,
    model_kwargs: dict[str, Any] | None = None,
    resume: bool = True,
    show_progress: bool = True,
    run_config: dict[str, Any] | None = None,
    scores: Any = None,
    loggers: str | Logger | Sequence[str | Logger] | None = None,
    **options: Any,
) -> ExpertBuffer:
    """Train ``num_experts`` networks on ``ds.train`` and save their trajectories under ``out``.

    Args:
        model: a registry name (``"convnet"``, ...) or a built :class:`FunctionalNet`.
        epochs: snapshots are taken at init and after every epoch (``epochs + 1`` per expert).
        out: the folder (``None``: a new temporary one; not under torch.distributed).
        seed: expert ``i`` is initialised and shuffled from streams derived from ``(seed, i)``.
        config: the training settings (:class:`ExpertConfig`: SGD ``lr``, ``momentum``, ``weight_decay``,
            ``batch_size``, ``decay`` and ``augment``, MTT's defaults; ``sam_rho``, ``sam_alpha`` and
            ``sam_adaptive`` for FTD's sharpness-aware experts, off by default; ``curriculum`` for PAD's
            difficulty-scheduled experts, off by default).
        shard_size: experts per file.
        model_kwargs: passed to the model registry when ``model`` is a name.
        resume: keep shards already in ``out`` from a run with the same settings.
        show_progress: a progress bar (on rank 0).
        run_config: if given, written to ``out/config.yaml`` (after the folder is checked).
        scores: the difficulty of every training example, which a ``curriculum`` needs (and nothing else
            takes): a :class:`fastdd.scores.Scores` such as ``fastdd.el2n_scores(ds)`` (PAD's choice). They are
            data, not settings: the manifest records their kind, source, convention and SHA-256 under
            ``"difficulty"`` (:func:`difficulty_record`), and a resumed run must bring the same.
        loggers: experiment tracking (docs/tracking.md): names (``"tensorboard"``, ``"wandb"``, ``"csv"``,
            writing into ``out``) or :class:`fastdd.tracking.Logger` objects. Each saved expert's per-epoch
            train loss (``expert/train_loss``, step ``expert × epochs + epoch``) and final test accuracy
            (``expert/test_accuracy``), then a summary; a resumed run continues at its first expert to train.
            Not part of the manifest's settings.
        **options: any field of :class:`ExpertConfig` as a keyword (``lr=0.01``, ``augment="dsa"``, ...), set
            on ``config``; one that ``config`` sets to another value is a ``ValueError`` (see
            :func:`expert_config`).

    Returns the :class:`ExpertBuffer` over ``out``.
    """
    cfg = expert_config(config, **options)
    for name, value in (("num_experts", num_experts), ("epochs", epochs), ("shard_size", shard_size)):
        _check_count(name, value)
    tracker = Tracker(loggers)  # unknown names and missing extras fail here, before anything is written
    order, record = _difficulty(cfg, scores, ds)
    net = model_for(ds, model, **(model_kwargs or {})) if isinstance(model, str) else model
    job = _Job(ds, net, cfg, epochs, seed, _out_folder(out), order)
    header = _header(net, ds.name, ds.zca is not None, epochs, seed, shard_size, asdict(cfg))
    if record is not None:  # only with a curriculum: the header of every other run is as it was
        header["difficulty"] = record
    manifest = _resume_manifest(job.out, header, num_experts, resume)
    job.out.mkdir(parents=True, exist_ok=True)
    d = current()  # under torch.distributed each rank trains its share of every file's experts
    main = d is None or d.is_main
    if run_config is not None and main:  # once the folder is known usable
        RunDir(job.out, run_config)
    done = sum(len(s["experts"]) for s in manifest["shards"])
    manifest["num_experts"] = max(num_experts, done)
    with tracker:
        if main and tracker:  # a resumed run continues at its first expert to train
            tracker.start(job.out, done * epochs)
            tracker.log_config(
                {
                    "model": net.name,
                    "dataset": ds.name,
                    "num_experts": num_experts,
                    "epochs": epochs,
                    "seed": seed,
                    **asdict(cfg),
                }
            )
        _train_shards(job, manifest, list(range(done, num_experts)), shard_size, show_progress, tracker)
        if main and not manifest["complete"]:  # num_experts already reached by resumed shards
            manifest["complete"] = True
            atomic_write_json(job.out / MANIFEST, manifest)
        if main and tracker:
            accs = manifest["test_accuracy"]
            mean = sum(accs) / max(len(accs), 1)
            tracker.log_summary(
                {
                    "expert/num_experts": len(accs),
                    "expert/test_accuracy_mean": mean,
                    "expert/test_accuracy_std": math.sqrt(sum((a - mean) ** 2 for a in accs) / max(len(accs), 1)),
                }
            )
    if d is not None:
        barrier(d)
    return ExpertBuffer(job.out)


@dataclass
class _Job:
    """What every expert of one :func:`train_experts` call shares."""

    ds: Dataset
    net: FunctionalNet
    cfg: ExpertConfig
    epochs: int
    seed: int
    out: Path
    order: list[torch.Tensor] | None = None  # a curriculum's per-class easy → hard order (curriculum_order)


def _difficulty(cfg: ExpertConfig, scores: Any, ds: Dataset) -> tuple[list[torch.Tensor] | None, dict | None]:
    """``(per-class order, manifest record)`` of ``scores`` for ``cfg.curriculum``; ``(None, None)`` without one.
    ``ValueError`` for a curriculum without scores, or scores without a curriculum."""
    if cfg.curriculum is None:
        if scores is not None:
            raise ValueError("train_experts: scores= are read by a curriculum only; set curriculum= (or drop scores=)")
        return None, None
    if scores is None:
        raise ValueError(
            "train_experts: a curriculum needs difficulty scores= (a fastdd.scores.Scores, e.g. fastdd.el2n_scores(ds))"
        )
    return curriculum_order(scores, ds.train.labels, ds.num_classes), difficulty_record(scores, len(ds.train))


class _Trained(NamedTuple):
    """One trained expert, as a rank sends it to rank 0."""

    trajectory: torch.Tensor  # (epochs + 1, num_params) float32 on CPU
    test_accuracy: float  # in [0, 1], after the last epoch
    losses: list[float]  # mean train loss of every epoch


def _out_folder(out: str | os.PathLike | None) -> Path:
    """``out`` as a checked folder path (nothing created); ``None``: a new temporary folder."""
    if out is None:
        if current() is not None:
            raise ValueError("train_experts under torch.distributed needs out= (a folder every rank can read)")
        import tempfile

        out = tempfile.mkdtemp(prefix="fastdd-experts-")
    out = Path(out)
    check_out_folder(out)
    return out


def _header(
    net: FunctionalNet,
    dataset: str,
    zca: bool | None,
    epochs: int | None,
    seed: int | None,
    shard_size: int,
    train: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's settings: what a resumed run must match (``None`` where an imported buffer cannot say)."""
    return {
        "format": FORMAT,
        "model": net.name,
        "model_spec": net.spec,
        "init": net.init_scheme,
        "num_params": net.num_params,
        "dataset": dataset,
        "zca": zca,
        "epochs": epochs,
        "seed": seed,
        "shard_size": shard_size,
        "train": train,
    }


def _resume_manifest(out: Path, header: dict[str, Any], num_experts: int, resume: bool) -> dict[str, Any]:
    """The manifest to continue: a new one, or, with ``resume``, the one in ``out`` with its (checked) shards
    when its settings equal ``header``."""
    manifest = {**header, "num_experts": num_experts, "shards": [], "test_accuracy": [], "complete": False}
    mpath = out / MANIFEST
    if not mpath.exists():
        return manifest
    if not resume:
        raise ValueError(f"{out} already holds experts; pass resume=True to continue them or use another folder")
    old = read_manifest(out)
    old["train"] = train_with_defaults(old.get("train"))
    differ = sorted(k for k in header if old.get(k) != header[k])
    if differ:
        raise ValueError(
            f"{out} holds experts trained with other settings ({', '.join(differ)} differ); resume "
            "with the same settings or use another folder"
        )
    for shard in old["shards"]:  # the shards kept must be intact
        check_file(out / shard["file"], shard, mpath, "expert shard")
    manifest["shards"], manifest["test_accuracy"] = old["shards"], old.get("test_accuracy", [])
    return manifest


def train_with_defaults(train: Any) -> Any:
    """A manifest's ``"train"`` settings with the :class:`ExpertConfig` fields it predates (added later, e.g.
    ``sam_rho``, ``curriculum``) at their defaults, so that a folder written before they existed resumes; anything else
    (``None``, an imported buffer's record) is returned as it is."""
    if not isinstance(train, dict) or "imported_from" in train:
        return train
    return {**asdict(ExpertConfig()), **train}


def _train_shards(
    job: _Job,
    manifest: dict[str, Any],
    todo: list[int],
    shard_size: int,
    show_progress: bool,
    tracker: Tracker | None = None,
) -> None:
    """Train the experts ``todo`` and write them, ``shard_size`` per file, each file followed by the manifest
    (rank 0 writes, and logs each file's experts to ``tracker`` once they are saved; under torch.distributed
    every rank trains its share of each file's experts)."""
    d = current()
    main = d is None or d.is_main
    mine = len(todo) if d is None else len(todo[d.rank :: d.world])
    desc = f"experts ({job.net.name}, {job.ds.name})"
    bar = progress(total=mine * job.epochs, desc=desc, disable=not (show_progress and main))
    log = CSVLog(job.out / "log.csv", ["expert", "epoch", "train_loss", "test_accuracy"]) if main else None
    # one output file per chunk: shard_size experts (the last may be short), as an uninterrupted run writes them
    for j in range(0, len(todo), shard_size):
        chunk = todo[j : j + shard_size]
        trained = _train_share(job, chunk if d is None else chunk[d.rank :: d.world], bar)
        if d is not None:  # rank 0 writes the file: only it receives the trajectories
            trained = _gather_trained(trained, d)
        if log is not None:  # rank 0
            _write_shard(job, manifest, chunk, trained, log)
            if tracker:
                _track_shard(job, chunk, trained, tracker)
        if d is not None:
            barrier(d)
    bar.close()
    if log is not None:
        log.close()


def _train_share(job: _Job, ids: list[int], bar) -> dict[int, _Trained]:
    """Train the experts ``ids`` (this rank's share of one file's), advancing ``bar`` every epoch."""
    trained: dict[int, _Trained] = {}
    for i in ids:
        losses: list[float] = []

        def on_epoch(ep: int, loss: float, i: int = i, losses: list[float] = losses) -> None:
            bar.update(1)
            bar.set_postfix(expert=i, loss=f"{loss:.3f}")
            losses.append(loss)

        seed = _expert_seed(job.seed, i)
        traj, acc = train_one(job.net, job.ds, job.epochs, job.cfg, seed=seed, on_epoch=on_epoch, order=job.order)
        warn_identical(traj, f"expert {i} ({job.out})", stacklevel=5)  # attributed to train_experts' caller
        trained[i] = _Trained(traj, acc, losses)
    return trained


def _gather_trained(trained: dict[int, _Trained], d: Dist) -> dict[int, _Trained]:
    """Every rank's experts on rank 0 (the one that writes the file); the other ranks keep none."""
    parts = gather_objects(trained, d)
    return {i: v for part in parts for i, v in part.items()} if parts is not None else {}


def _write_shard(
    job: _Job, manifest: dict[str, Any], chunk: list[int], trained: dict[int, _Trained], log: CSVLog
) -> None:
    """Log the experts ``chunk``, write them to the next shard and rewrite the manifest (both atomically)."""
    for i in chunk:
        for ep, loss in enumerate(trained[i].losses):
            log.log(expert=i, epoch=ep + 1, train_loss=loss, test_accuracy="")
        log.log(expert=i, epoch=job.epochs, train_loss="", test_accuracy=trained[i].test_accuracy)
    trajs = {i: trained[i].trajectory for i in chunk}
    manifest["shards"].append(_save_shard(job.out, len(manifest["shards"]), chunk, trajs))
    manifest["test_accuracy"].extend(trained[i].test_accuracy for i in chunk)
    manifest["complete"] = sum(len(s["experts"]) for s in manifest["shards"]) >= manifest["num_experts"]
    atomic_write_json(job.out / MANIFEST, manifest)


def _track_shard(job: _Job, chunk: list[int], trained: dict[int, _Trained], tracker: Tracker) -> None:
    """The saved experts ``chunk`` for the loggers: per epoch the mean train loss at step ``i × epochs + epoch``
    (0-based), and the final test accuracy at the expert's last step."""
    for i in chunk:
        losses = trained[i].losses
        for ep, loss in enumerate(losses):
            values = {"expert/train_loss": loss, "expert/index": i, "expert/epoch": ep + 1}
            if ep == len(losses) - 1:
                values["expert/test_accuracy"] = trained[i].test_accuracy
            tracker.log_scalars(i * job.epochs + ep, values)


def _save_shard(out: Path, k: int, ids: list[int], trajs: Mapping[int, torch.Tensor]) -> dict[str, Any]:
    """Write shard ``k`` of ``out`` (tensors ``expert_<i>`` for ``i`` in ``ids``) atomically; returns its
    manifest entry (file, experts, bytes, sha256)."""
    fname = f"experts_{k:04d}.safetensors"
    record = atomic_save_safetensors(out / fname, {f"expert_{i}": trajs[i] for i in ids}, metadata={"format": FORMAT})
    return {"file": fname, "experts": list(ids), **record}


def _expert_seed(seed: int, i: int) -> int:

    return derive_seed(seed, "expert", i)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of an expert folder with its fields checked: :class:`CorruptFileError` naming the
    file and the key for a missing key or a wrong JSON type, :class:`~fastdd.errors.UnsafePathError` for a shard
    name that leaves the folder. Reads only the manifest."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    m = read_json_object(mpath, "expert folder")
    if m.get("format") != FORMAT:
        raise CorruptFileError(f"{mpath} is not a {FORMAT} manifest (format {m.get('format')!r})")
    json_field(m, "model", str, mpath)
    json_field(m, "model_spec", dict, mpath)
    json_field(m, "init", str, mpath, optional=True)
    json_field(m, "dataset", str, mpath)
    json_field(m, "zca", bool, mpath, optional=True)
    for key in ("num_params", "epochs"):
        if json_field(m, key, int, mpath) < (1 if key == "num_params" else 0):
            raise CorruptFileError(f"{mpath}: {key!r} must be >= {1 if key == 'num_params' else 0}, got {m[key]}")
    json_field(m, "test_accuracy", list, mpath, optional=True)
    seen: set[int] = set()
    for i, shard in enumerate(json_field(m, "shards", list, mpath)):
        where = f"shards[{i}]."
        if not isinstance(shard, dict):
            raise CorruptFileError(f"{mpath}: 'shards[{i}]' must be a JSON object, got {shard!r:.60}")
        inside(folder, json_field(shard, "file", str, mpath, where=where), source=mpath, field=f"{where}file")
        json_field(shard, "bytes", int, mpath, where=where)
        json_field(shard, "sha256", str, mpath, where=where)
        ids = json_field(shard, "experts", list, mpath, where=where)
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in ids) or seen & set(ids):
            raise CorruptFileError(
                f"{mpath}: '{where}experts' must list new expert ids (integers >= 0), got {ids!r:.60}"
            )
        seen |= set(ids)
    return m


def identical_snapshots(traj: torch.Tensor) -> list[int]:
    """Epochs ``e >= 1`` whose snapshot equals that of epoch ``e - 1`` exactly: a network that did not move (or
    a file that holds one tensor in every snapshot: the reference code's ``.cpu()`` on a CPU returns the live
    tensor, so its buffers made on a CPU hold the final weights everywhere)."""
    if len(traj) < 2:
        return []
    same = (traj[1:] == traj[:-1]).all(dim=1)
    return (torch.nonzero(same).flatten() + 1).tolist()


def warn_identical(traj: torch.Tensor, what: str, stacklevel: int = 3) -> None:
    """An :class:`~fastdd.errors.ExpertWarning` naming ``what`` and the epochs when :func:`identical_snapshots`
    finds any, attributed ``stacklevel`` frames up (3: the caller of this function's caller)."""
    eps = identical_snapshots(traj)
    if not eps:
        return
    pairs = ", ".join(f"{e - 1}-{e}" for e in eps[:6]) + (" ..." if len(eps) > 6 else "")
    every = " (every snapshot is the same)" if len(eps) == len(traj) - 1 else ""
    warnings.warn(
        f"{what}: consecutive snapshots are identical at epochs {pairs}{every}; trajectory matching "
        "cannot learn from an expert that does not move (a buffer saved on a CPU by the reference code "
        "holds the final weights in every snapshot: re-save it with .clone())",
        ExpertWarning,
        stacklevel=stacklevel,
    )


class ExpertBuffer:
    """Read access to a folder of expert trajectories.

    ``buf[i]`` is expert ``i``'s trajectory ``(epochs + 1, num_params)``; :meth:`snapshots` reads
    only the requested epochs. Shards are checked against the manifest (size always; SHA-256 the
    first time a shard is opened, unless ``verify=False``).

    :meth:`to` gives a *resident* buffer: the same experts, served from memory on a device (each
    trajectory read from its file once, then kept), so that ``buf[i]`` and :meth:`snapshots` return
    tensors already there (no file read, no host→device copy per call).
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(
                f"{mpath} not found: {self.path} is not an expert folder "
                "(make one with `fastdd experts` or fastdd.train_experts)"
            )
        self.manifest = read_manifest(self.path)
        self.verify = verify
        self._verified: set[str] = set()
        self._where: dict[int, str] = {}
        self._shard: dict[str, dict[str, Any]] = {}
        for s in self.manifest["shards"]:
            f = self.path / s["file"]
            if not f.is_file():
                raise CorruptFileError(f"expert shard {f} listed in {mpath} is missing")
            if f.stat().st_size != s["bytes"]:
                raise CorruptFileError(
                    f"expert shard {f} is truncated or corrupt: {f.stat().st_size} bytes, "
                    f"the manifest says {s['bytes']}"
                )
            self._shard[s["file"]] = s
            for e in s["experts"]:
                self._where[e] = s["file"]
        self.ids = sorted(self._where)
        if not self.ids:
            raise CorruptFileError(f"{mpath} lists no experts: the expert folder is empty or damaged")
        self.device: torch.device | None = None  # None: read from the files on every call
        self._resident: dict[int, torch.Tensor] = {}

    def to(self, device: torch.device | str) -> ExpertBuffer:
        """A buffer over the same folder whose trajectories live on ``device``: each is read (and
        checked) once, on first use, moved there and kept; ``buf[i]`` and :meth:`snapshots` then return
        tensors on ``device`` (``buf[i]`` is the kept tensor itself: clone it before changing it in
        place). Memory: up to ``len(buf) × (epochs + 1) × num_params`` floats on ``device``.
        :meth:`stream` still reads the files."""
        device = torch.device(device)
        if self.device == device:
            return self
        import copy

        other = copy.copy(self)
        other.device = device
        other._resident = {}
        return other

    # ---------------------------------------------------------------- metadata
    @property
    def num_epochs(self) -> int:
        return int(self.manifest["epochs"])

    @property
    def num_params(self) -> int:
        return int(self.manifest["num_params"])

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    def model(self) -> FunctionalNet:
        """The network the experts were trained with (:class:`CorruptFileError` when the manifest's model does
        not build, or has another number of parameters than the manifest says)."""
        m, mpath = self.manifest, self.path / MANIFEST
        try:
            net = model_from_spec(m["model"], m["model_spec"], m.get("init", "default"))
        except (TypeError, ValueError) as e:
            raise CorruptFileError(
                f"{mpath}: 'model' / 'model_spec' do not describe a network fastdd builds: {e}"
            ) from e
        if net.num_params != self.num_params:
            raise CorruptFileError(
                f"{mpath}: {net.describe()} has {net.num_params} parameters, the manifest says "
                f"num_params {self.num_params}"
            )
        return net

    def verify_all(self) -> None:
        """Check every shard's SHA-256 now (each once per buffer), so that a corrupt file is found before a run
        writes anything rather than in its middle."""
        for file in self._shard:
            self._check_sha(file)

    def check_model(self, net: FunctionalNet) -> None:
        """Raise :class:`ModelMismatchError` unless ``net`` has the experts' architecture."""
        m = self.manifest
        if net.name != m["model"] or net.spec != m["model_spec"]:
            raise ModelMismatchError(
                f"experts in {self.path} were trained with {m['model']}({m['model_spec']}), "
                f"but the student is {net.describe()}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        m = self.manifest
        where = f", resident on {self.device}" if self.device is not None else ""
        return (
            f"<ExpertBuffer {self.path}: {len(self)} experts × {self.num_epochs + 1} snapshots of "
            f"{m['model']} on {m['dataset']}{where}>"
        )

    # ---------------------------------------------------------------- reading
    def _check_sha(self, file: str) -> None:
        if self.verify and file not in self._verified:
            check_file(self.path / file, self._shard[file], self.path / MANIFEST, "expert shard")
            self._verified.add(file)

    def _open(self, file: str):
        f = self.path / file
        self._check_sha(file)
        try:
            return safe_open(str(f), framework="pt")
        except (SafetensorError, OSError) as e:
            raise CorruptFileError(f"expert shard {f} is truncated or corrupt: {e}") from e

    def _key(self, i: int) -> tuple[str, str]:
        if i not in self._where:
            raise IndexError(
                f"expert {i} is not in {self.path} (it holds {len(self)}: ids {self.ids[0]}..{self.ids[-1]})"
            )
        return self._where[i], f"expert_{i}"

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.device is not None:
            return self._load_resident(i)
        return self._read(i)

    def _read(self, i: int) -> torch.Tensor:
        file, key = self._key(i)
        with self._open(file) as f:
            t = f.get_tensor(key)
        self._check(t, file)
        return t

    def _load_resident(self, i: int) -> torch.Tensor:
        t = self._resident.get(i)
        if t is None:
            t = self._read(i).to(self.device)
            self._resident[i] = t
        return t

    def snapshots(self, i: int, epochs: Sequence[int]) -> torch.Tensor:
        """``(len(epochs), num_params)``: expert ``i``'s parameters after the given epochs (0 = init)."""
        for e in epochs:
            if not 0 <= e <= self.num_epochs:
                raise IndexError(f"epoch {e} is outside 0..{self.num_epochs} for the experts in {self.path}")
        if self.device is not None:  # rows of the kept trajectory: stacking views is a device-side copy
            traj = self._load_resident(i)
            return torch.stack([traj[e] for e in epochs])
        file, key = self._key(i)
        with self._open(file) as f:
            sl = f.get_slice(key)
            t = torch.stack([sl[e : e + 1].reshape(-1) for e in epochs])
        return t

    def _check(self, t: torch.Tensor, file: str) -> None:
        if t.shape != (self.num_epochs + 1, self.num_params):
            raise CorruptFileError(
                f"{self.path / file}: a trajectory has shape {tuple(t.shape)}, expected "
                f"({self.num_epochs + 1}, {self.num_params})"
            )

    def load_all(self) -> torch.Tensor:
        """All trajectories in memory: ``(num_experts, epochs + 1, num_params)``."""
        return torch.stack([self[i] for i in self.ids])

    def stream(self, gen: torch.Generator) -> Iterator[tuple[int, torch.Tensor]]:
        """Endless ``(id, trajectory)`` pairs: shards in shuffled order, experts shuffled within each
        shard (one shard in memory at a time), reshuffled every pass."""
        shards = self.manifest["shards"]
        while True:
            for si in torch.randperm(len(shards), generator=gen).tolist():
                s = shards[si]
                with self._open(s["file"]) as f:
                    trajs = {e: f.get_tensor(f"expert_{e}") for e in s["experts"]}
                for j in torch.randperm(len(s["experts"]), generator=gen).tolist():
                    e = s["experts"][j]
                    self._check(trajs[e], s["file"])
                    yield e, trajs[e]


def import_reference_buffer(
    files: Sequence[str | os.PathLike],
    net: FunctionalNet,
    out: str | os.PathLike,
    dataset: str = "unknown",
    shard_size: int = 10,
) -> ExpertBuffer:
    """Convert the reference code's ``replay_buffer_*.pt`` files into an expert folder.

    Files are taken in natural order (``replay_buffer_2`` before ``replay_buffer_10``). Each file is a list of
    experts, each a list of epochs, each a list of parameter tensors in
    ``nn.Module.parameters()`` order. Files are read with ``torch.load(weights_only=True)`` (no code
    is unpickled). Raises :class:`ModelMismatchError` when the tensors do not match ``net``'s parameters.
    """
    if not files:
        raise ValueError("import_reference_buffer needs at least one replay_buffer_*.pt file")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    files = _natural_order(files)
    trajs: list[torch.Tensor] = []
    epochs = None
    for fpath in files:
        for ei, expert in enumerate(_load_reference_file(fpath)):
            snaps = _reference_snapshots(fpath, ei, expert, net)
            if epochs is None:
                epochs = len(snaps) - 1
            elif len(snaps) - 1 != epochs:
                raise CorruptFileError(f"{fpath}: expert {ei} has {len(snaps)} snapshots, earlier experts {epochs + 1}")
            traj = torch.stack(snaps)
            if not torch.isfinite(traj).all():
                raise CorruptFileError(f"{fpath}: expert {ei} holds NaN or inf parameters")
            warn_identical(traj, f"{fpath}: expert {ei}")
            trajs.append(traj)
    out = Path(out)
    check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    train = {"imported_from": [os.fspath(f) for f in files]}
    manifest = {
        **_header(net, dataset, None, epochs, None, shard_size, train),
        "num_experts": len(trajs),
        "shards": [],
        "test_accuracy": [],
        "complete": True,
    }
    by_id = dict(enumerate(trajs))
    for k in range(0, len(trajs), shard_size):
        ids = list(range(k, min(k + shard_size, len(trajs))))
        manifest["shards"].append(_save_shard(out, k // shard_size, ids, by_id))
    atomic_write_json(out / "manifest.json", manifest)
    return ExpertBuffer(out)


def _natural_order(files: Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """``files`` sorted with the digit runs of their paths compared as numbers (``_2`` before ``_10``)."""
    import re

    return sorted(files, key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.fspath(f))])


def _load_reference_file(fpath: str | os.PathLike) -> list[list[Any]]:
    """The experts of one ``replay_buffer_*.pt`` (a non-empty list of lists of epochs), read with
    ``torch.load(weights_only=True)``; :class:`CorruptFileError` naming the file otherwise."""
    try:
        data = torch.load(fpath, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling errors, truncated zip, ...
        raise CorruptFileError(f"{fpath} is not a readable replay buffer (torch.load weights_only): {e}") from e
    if not isinstance(data, list) or not all(isinstance(x, list) for x in data):
        raise CorruptFileError(f"{fpath}: expected a list of experts, each a list of epochs")
    if not data:
        raise CorruptFileError(f"{fpath} holds an empty list: no experts to import")
    return data


def _reference_snapshots(
    fpath: str | os.PathLike, ei: int, expert: list[Any], net: FunctionalNet
) -> list[torch.Tensor]:
    """Expert ``ei`` of file ``fpath`` (a list of epochs, each a list of parameter tensors in
    ``nn.Module.parameters()`` order) as flat float32 vectors ``(num_params,)``, one per epoch;
    :class:`ModelMismatchError` when an epoch's tensors do not have ``net``'s shapes."""
    shapes = [p.shape for p in net.params]
    snaps = []
    if not expert:
        raise CorruptFileError(f"{fpath}: expert {ei} has no snapshots")
    for ep, params in enumerate(expert):
        if not isinstance(params, (list, tuple)) or not all(torch.is_tensor(t) for t in params):
            raise CorruptFileError(f"{fpath}: expert {ei} epoch {ep} must be a list of parameter tensors")
        if len(params) != len(shapes) or any(tuple(t.shape) != s for t, s in zip(params, shapes)):
            got = [tuple(t.shape) for t in params][:4]
            raise ModelMismatchError(
                f"{fpath}: expert {ei} epoch {ep} has {len(params)} tensors {got}..., which does not match "
                f"{net.describe()} ({len(shapes)} tensors {shapes[:4]}...)"
            )
        snaps.append(torch.cat([t.detach().float().reshape(-1) for t in params]))
    return snaps

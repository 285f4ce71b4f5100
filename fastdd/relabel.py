"""A teacher's soft labels: region relabelling (FKD / SRe2L), the store that keeps them, and the ``kd`` protocol's
training (SRe2L, Yin et al. 2023; RDED, Sun et al. 2024).

The decoupled methods train their student by knowledge distillation: every epoch each image is augmented afresh
(:class:`KDAugment`: optional ShufflePatches, one RandomResizedCrop + flip per image, then CutMix or Mixup on the
batch) and the teacher labels exactly that augmented batch. The loss is :func:`kd_loss`, the KL divergence
(``batchmean``) between ``log_softmax(student / T)`` and ``softmax(teacher / T)``, optionally × T².

Two label modes, one plan. The augmentation of epoch ``e`` is drawn from ``generator(seed, "kd.order", e)`` (the
batch order) and ``generator(seed, "kd.augment", e)`` (crops, flips, patch shuffles, mixes):

- ``online``: the teacher labels each augmented batch while the student trains (RDED);
- ``stored``: :func:`relabel` labels the same batches beforehand and keeps, per epoch, the crop boxes, flips,
  patch permutations, mix permutations, λ and boxes, and the teacher's raw logits in fp16 (a
  :class:`RelabelStore`; on disk one safetensors file per epoch plus ``relabel.json``). Training replays the
  stored batches exactly (FKD).

Both modes round the teacher's logits to ``label_dtype`` (fp16) before the temperature, so with the same seed
they train bitwise the same student. The temperature is applied only at training time.

:func:`train_kd` is the training loop (AdamW on the flat parameter vector, the decoupled weight decay masked off
biases and norm parameters, a per-epoch cosine or RDED's half-cosine schedule); :func:`kd_train_on` trains one
network of a resolved :class:`KDProtocol` and tests it, as :func:`fastdd.evaluate` does for ``protocol="kd"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from typing import Protocol as Interface

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from .augment import (
    CutMixParams,
    DSAConfig,
    MixupParams,
    ResizedCrops,
    ShufflePatchesParams,
    apply_cutmix,
    apply_mixup,
    apply_resized_crops,
    apply_shuffle_patches,
    sample_cutmix,
    sample_mixup,
    sample_resized_crops,
    sample_shuffle_patches,
    strategy_for,
)
from .data import Dataset, minibatches
from .errors import CorruptFileError
from .io import (
    atomic_save_safetensors,
    atomic_write_json,
    check_file,
    check_out_folder,
    inside,
    json_field,
    read_json_object,
)
from .models import FunctionalNet, accuracy, model_for
from .options import check_dataclass_options
from .rng import derive_seed, generator
from .runs import progress
from .synthetic import SyntheticSet
from .teacher import Teacher
from .version import __version__

FORMAT = "fastdd.relabel/1"
INDEX = "relabel.json"  # the store's index: a fixed name, never read from JSON
PARTIAL = "relabel.partial.json"  # the epochs written so far, while relabelling (a rerun continues them)
MIXES = ("cutmix", "mixup", "none")
SCHEDULES = ("cosine", "half_cosine", "constant")
LABEL_MODES = ("online", "stored")
LABEL_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MIX_ALPHA = {"cutmix": 1.0, "mixup": 0.8, "none": 1.0}  # SRe2L / RDED: CutMix β = 1, Mixup α = 0.8


# ---------------------------------------------------------------------------------------------------- losses
def soft_labels(teacher_logits: Tensor, temperature: float) -> Tensor:
    """``softmax(teacher_logits / T)`` ``(B, K)`` float32: the targets the student is trained towards."""
    return F.softmax(teacher_logits.float() / temperature, dim=1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, t_squared: bool = False) -> Tensor:
    """``KL(softmax(t/T) ‖ softmax(s/T))`` averaged over the batch (``reduction="batchmean"``): ``Σ p_t (log p_t −
    log p_s) / B``; × T² with ``t_squared`` (SRe2L's Tiny-ImageNet recipe; FKD and RDED leave it out)."""
    t = teacher_logits.to(student_logits.dtype)
    loss = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean"
    )
    return loss * (temperature * temperature) if t_squared else loss


# ---------------------------------------------------------------------------------------------------- augmentation
@dataclass(eq=False)
class BatchPlan:
    """One batch's augmentation: image indices ``idx`` ``(b,)``, then per image the optional patch shuffle and its
    crop + flip (resized back to the image size), then the batch's mix (CutMix, Mixup or none)."""

    idx: Tensor
    crops: ResizedCrops
    shuffle: ShufflePatchesParams | None = None
    mix: CutMixParams | MixupParams | None = None

    def apply(self, images: Tensor) -> Tensor:
        """The augmented batch ``(b, C, H, W)`` from ``images`` ``(N, C, H, W)`` (on ``images``' device)."""
        x = images[self.idx.to(images.device)]
        if self.shuffle is not None:
            x = apply_shuffle_patches(x, self.shuffle)
        x = apply_resized_crops(x, self.crops, x.shape[2:])
        if isinstance(self.mix, CutMixParams):
            x = apply_cutmix(x, self.mix)
        elif isinstance(self.mix, MixupParams):
            x = apply_mixup(x, self.mix)
        return x


@dataclass(frozen=True)
class KDAugment:
    """The region augmentation: ShufflePatches(``shuffle_factor``) first (1: none), then RandomResizedCrop to the
    image size (area share in ``scale``, aspect ratio in ``ratio``) and a horizontal flip with probability
    ``prob_flip``, per image; then ``mix`` (``"cutmix"`` with β = ``mix_alpha``, ``"mixup"`` with α =
    ``mix_alpha``, or ``"none"``) on the batch."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    prob_flip: float = 0.5
    shuffle_factor: int = 1
    mix: str = "cutmix"
    mix_alpha: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.prob_flip <= 1:
            raise ValueError(f"prob_flip must lie in [0, 1], got {self.prob_flip}")
        f = self.shuffle_factor
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise ValueError(f"shuffle_factor must be an integer >= 1, got {f!r}")
        if self.mix not in MIXES:
            raise ValueError(f"mix must be one of {', '.join(MIXES)}, got {self.mix!r}")
        if not (math.isfinite(self.mix_alpha) and self.mix_alpha > 0):
            raise ValueError(f"mix_alpha must be a finite number > 0, got {self.mix_alpha!r}")

    def plan(self, n: int, im_hw: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[BatchPlan]:
        """Epoch ``epoch``'s batches over ``n`` images: a permutation in chunks of ``batch_size`` (a last chunk of
        one image joins the one before) and each chunk's augmentation, drawn from the epoch's two generators."""
        hw = (int(im_hw[0]), int(im_hw[1]))
        if self.shuffle_factor > 1 and (hw[0] % self.shuffle_factor or hw[1] % self.shuffle_factor):
            raise ValueError(
                f"shuffle_factor {self.shuffle_factor} needs an image size divisible by it, got {hw[0]}x{hw[1]}"
            )
        g_order, g_aug = generator(seed, "kd.order", epoch), generator(seed, "kd.augment", epoch)
        plans = []
        for idx in minibatches(n, batch_size, g_order, min_last=2):
            b = len(idx)
            shuffle = sample_shuffle_patches(b, self.shuffle_factor, g_aug) if self.shuffle_factor > 1 else None
            crops = sample_resized_crops(b, hw, g_aug, self.scale, self.ratio, self.prob_flip)
            mix: CutMixParams | MixupParams | None = None
            if self.mix == "cutmix":
                mix = sample_cutmix(b, hw, g_aug, self.mix_alpha)
            elif self.mix == "mixup":
                mix = sample_mixup(b, g_aug, self.mix_alpha)
            plans.append(BatchPlan(idx, crops, shuffle, mix))
        return plans


# ---------------------------------------------------------------------------------------------------- label sources
class LabelSource(Interface):
    """What :func:`train_kd` trains on: per epoch, the augmented batches and the teacher's logits for them."""

    def batches(self, epoch: int, images: Tensor) -> Iterator[tuple[Tensor, Tensor]]: ...


class OnlineLabels:
    """The ``online`` mode: epoch ``e``'s plan drawn from ``seed``, each augmented batch labelled by the teacher as
    it comes (``teacher_batch`` images per forward), its logits rounded to ``dtype``."""

    def __init__(
        self,
        teacher: Teacher,
        augment: KDAugment,
        batch_size: int,
        seed: int,
        dtype: str = "float16",
        teacher_batch: int = 512,
    ):
        self.teacher, self.augment, self.batch_size, self.seed = teacher, augment, batch_size, seed
        self.dtype, self.teacher_batch = _label_dtype(dtype), teacher_batch

    def batches(self, epoch: int, images: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        for plan in self.augment.plan(len(images), images.shape[2:], self.batch_size, self.seed, epoch):
            x = plan.apply(images)
            yield x, self.teacher.logits(x, self.teacher_batch).to(self.dtype)


def _label_dtype(name: str) -> torch.dtype:
    if name not in LABEL_DTYPES:
        raise ValueError(f"label dtype must be one of {', '.join(LABEL_DTYPES)}, got {name!r}")
    return LABEL_DTYPES[name]


def tensor_sha256(*tensors: Tensor | None) -> str:
    """SHA-256 of the tensors' raw bytes (CPU, contiguous), in order: the identity of images or of a teacher."""
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            for chunk in t.detach().contiguous().reshape(-1).split(1 << 22):  # a few MB on the host at a time
                h.update(chunk.cpu().view(torch.uint8).numpy())
    return h.hexdigest()


def teacher_identity(teacher: Teacher) -> dict[str, Any]:
    """What a store records of the teacher that labelled it: model, data set, accuracy, SHA-256 of its tensors."""
    return {
        "model": teacher.net.name,
        "model_spec": teacher.net.spec,
        "dataset": teacher.meta.get("dataset"),
        "accuracy": teacher.meta.get("accuracy"),
        "sha256": tensor_sha256(teacher.theta, teacher.buffers),
    }


def _pack_epoch(plans: list[BatchPlan], logits: list[Tensor], augment: KDAugment) -> dict[str, Tensor]:
    """One epoch's plan and logits as flat tensors (batch ``b`` is rows ``bounds[b]:bounds[b+1]``)."""
    sizes = [len(p.idx) for p in plans]
    t: dict[str, Tensor] = {
        "order": torch.cat([p.idx.cpu() for p in plans]),
        "bounds": torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0),
        "crops": torch.cat([p.crops.as_tensor() for p in plans]),
        "logits": torch.cat([lg.cpu() for lg in logits]),
    }
    if augment.shuffle_factor > 1:
        t["shuffle"] = torch.cat([p.shuffle.perm.cpu() for p in plans if p.shuffle is not None])
    if augment.mix != "none":
        mixes = [p.mix for p in plans if p.mix is not None]
        t["mix_perm"] = torch.cat([m.perm.cpu() for m in mixes])
        t["mix_lam"] = torch.stack([m.lam.reshape(()).cpu() for m in mixes])
        if augment.mix == "cutmix":
            t["mix_box"] = torch.stack([m.box.cpu() for m in mixes if isinstance(m, CutMixParams)])
    return t


def _is_perm(p: Tensor, n: int) -> bool:
    return p.dim() == 1 and len(p) == n and torch.equal(p.sort().values, torch.arange(n))


def _unpack_epoch(
    t: dict[str, Tensor], augment: KDAugment, n: int, im_hw: Sequence[int], k: int, source: Any
) -> list[tuple[BatchPlan, Tensor]]:
    """The batches of one stored epoch, every tensor checked (:class:`CorruptFileError` naming ``source``)."""

    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"{source}: {what}; the relabel store is damaged or was not written by fastdd")

    need = ["order", "bounds", "crops", "logits"]
    need += ["shuffle"] if augment.shuffle_factor > 1 else []
    need += ["mix_perm", "mix_lam"] if augment.mix != "none" else []
    need += ["mix_box"] if augment.mix == "cutmix" else []
    missing = [key for key in need if key not in t]
    if missing:
        raise bad(f"missing tensors {', '.join(missing)}")
    order, bounds, crops, logits = (t[key] for key in ("order", "bounds", "crops", "logits"))
    if order.dtype != torch.int64 or not _is_perm(order, n):
        raise bad(f"'order' must be a permutation of the {n} images")
    nb = len(bounds) - 1
    if (
        bounds.dtype != torch.int64
        or bounds.dim() != 1
        or nb < 1
        or int(bounds[0]) != 0
        or int(bounds[-1]) != n
        or bool((bounds.diff() < 1).any())
    ):
        raise bad("'bounds' must rise from 0 to the number of images in steps >= 1")
    if tuple(crops.shape) != (n, 5) or tuple(logits.shape) != (n, k):
        raise bad(f"'crops' must be ({n}, 5) and 'logits' ({n}, {k})")
    boxes = ResizedCrops.from_tensor(crops)
    try:
        boxes.check((int(im_hw[0]), int(im_hw[1])))
    except ValueError as e:
        raise bad(str(e)) from e
    f2 = augment.shuffle_factor**2
    if "shuffle" in need and tuple(t["shuffle"].shape) != (n, f2):
        raise bad(f"'shuffle' must be ({n}, {f2})")
    if augment.mix != "none":
        lam = t["mix_lam"]
        if tuple(lam.shape) != (nb,) or not bool(((lam >= 0) & (lam <= 1)).all()):
            raise bad(f"'mix_lam' must hold {nb} values in [0, 1]")
        if augment.mix == "cutmix" and tuple(t["mix_box"].shape) != (nb, 4):
            raise bad(f"'mix_box' must be ({nb}, 4)")
    out = []
    for b in range(nb):
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        shuffle = None
        if "shuffle" in need:
            perm = t["shuffle"][lo:hi].long()
            if not all(_is_perm(row, f2) for row in perm):
                raise bad(f"'shuffle' rows {lo}..{hi - 1} must be permutations of {f2} cells")
            shuffle = ShufflePatchesParams(augment.shuffle_factor, perm)
        mix: CutMixParams | MixupParams | None = None
        if augment.mix != "none":
            mperm = t["mix_perm"][lo:hi].long()
            if not _is_perm(mperm, hi - lo):
                raise bad(f"'mix_perm' of batch {b} must be a permutation of its {hi - lo} rows")
            lam = t["mix_lam"][b].double().reshape(())
            if augment.mix == "cutmix":
                box = t["mix_box"][b].long()
                top, left, bh, bw = (int(v) for v in box)
                if min(top, left, bh, bw) < 0 or top + bh > int(im_hw[0]) or left + bw > int(im_hw[1]):
                    raise bad(f"'mix_box' of batch {b} falls outside the image")
                mix = CutMixParams(mperm, box, lam)
            else:
                mix = MixupParams(mperm, lam)
        out.append((BatchPlan(order[lo:hi], boxes.index(slice(lo, hi)), shuffle, mix), logits[lo:hi]))
    return out


class RelabelStore:
    """Region soft labels made by :func:`relabel`: per epoch the augmentation plan and the teacher's logits.

    Held in memory (``relabel(..., out=None)``) or in a folder (``relabel(..., out=DIR)``, read back with
    :meth:`load`)::

        relabel.json                 format, settings, the images' shape and SHA-256, the teacher's identity,
                                     sizes, and per epoch file its size + SHA-256
        epoch_00000.safetensors ...  one per epoch: order, bounds, crops, shuffle, mix_perm, mix_lam, mix_box, logits

    Every epoch file is checked against its size and SHA-256 when it is read (:class:`CorruptFileError` naming the
    file), and every file name in the index must stay inside the folder (:func:`fastdd.io.inside`).

    Attributes: ``index`` (the JSON-able description), ``folder`` (``None`` in memory), ``augment``
    (:class:`KDAugment`), ``epochs``, ``batch_size``, ``seed``, ``dtype``, ``num_images``, ``num_classes``,
    ``label_bytes`` (the logits), ``store_bytes`` (all it keeps), ``image_bytes`` (the images it labels, float32).
    """

    def __init__(
        self, index: dict[str, Any], folder: Path | None = None, tensors: list[dict[str, Tensor]] | None = None
    ):
        self.index, self.folder, self._mem = index, folder, tensors
        s = index["settings"]
        self.augment = KDAugment(
            tuple(s["scale"]), tuple(s["ratio"]), s["prob_flip"], s["shuffle_factor"], s["mix"], s["mix_alpha"]
        )
        self.epochs, self.batch_size, self.seed = int(s["epochs"]), int(s["batch_size"]), int(s["seed"])
        self.dtype, self.teacher_batch = str(s["dtype"]), int(s["teacher_batch"])
        self.image_shape = tuple(index["images"]["shape"])
        self.num_images, self.num_classes = int(self.image_shape[0]), int(index["num_classes"])
        self.label_bytes, self.store_bytes = int(index["label_bytes"]), int(index["store_bytes"])
        self.image_bytes = int(index["images"]["bytes"])

    # ------------------------------------------------------------------ reading
    def _source(self, e: int) -> Any:
        return self.folder / self.index["files"][e]["file"] if self.folder is not None else f"relabel store epoch {e}"

    def epoch_tensors(self, e: int) -> dict[str, Tensor]:
        """Epoch ``e``'s raw tensors (from the file, checked against its size and SHA-256 first)."""
        if not 0 <= e < self.epochs:
            raise IndexError(f"the relabel store holds epochs 0..{self.epochs - 1}, not {e}")
        if self._mem is not None:
            return self._mem[e]
        assert self.folder is not None
        rec = self.index["files"][e]
        path = inside(self.folder, rec["file"], source=self.folder / INDEX, field=f"files[{e}].file")
        check_file(path, rec, self.folder / INDEX, "relabel file")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CorruptFileError(f"{path} is truncated or corrupt: {err}") from err

    def epoch(self, e: int) -> list[tuple[BatchPlan, Tensor]]:
        """Epoch ``e``'s batches: ``(plan, logits)`` with the teacher's stored logits ``(b, K)`` (``dtype``)."""
        h, w = self.image_shape[2:]
        return _unpack_epoch(
            self.epoch_tensors(e), self.augment, self.num_images, (h, w), self.num_classes, self._source(e)
        )

    def batches(self, epoch: int, images: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """The ``stored`` mode's :class:`LabelSource`: epoch ``epoch``'s stored batches replayed on ``images``."""
        for plan, logits in self.epoch(epoch):
            yield plan.apply(images), logits.to(images.device)

    def soft_labels(self, e: int, temperature: float) -> Tensor:
        """Epoch ``e``'s targets ``softmax(logits / T)`` ``(N, K)``, rows in the epoch's (stored) order."""
        return soft_labels(torch.cat([lg for _, lg in self.epoch(e)]), temperature)

    def verify(self) -> None:
        """Read and check every epoch (size, SHA-256 and contents)."""
        for e in range(self.epochs):
            self.epoch(e)

    # ------------------------------------------------------------------ checks
    def check(
        self, images: Tensor, teacher: Teacher | None = None, *, augment: KDAugment | None = None, **settings: Any
    ) -> None:
        """``ValueError`` naming what differs unless the store labels exactly ``images`` with ``teacher``, with the
        augmentation ``augment`` and the given ``settings`` (``batch_size=``, ``dtype=``, ``epochs=``: at least that
        many epochs stored)."""
        if tuple(images.shape) != self.image_shape or tensor_sha256(images.float()) != self.index["images"]["sha256"]:
            raise ValueError(
                f"the relabel store was made for other images ({list(self.image_shape)}, SHA-256 "
                f"{self.index['images']['sha256'][:12]}…): relabel this set"
            )
        if teacher is not None and teacher_identity(teacher)["sha256"] != self.index["teacher"]["sha256"]:
            raise ValueError(
                f"the relabel store was labelled by another teacher ({self.index['teacher']['model']}, SHA-256 "
                f"{self.index['teacher']['sha256'][:12]}…) than the one given: relabel with this teacher"
            )
        wanted = dict(settings)
        if augment is not None:
            wanted.update(asdict(augment))
        for key, want in wanted.items():
            have = getattr(self, key) if key in ("batch_size", "dtype", "epochs") else getattr(self.augment, key)
            if key == "epochs":
                if want > have:
                    raise ValueError(f"the relabel store holds {have} epochs; training for {want} needs that many")
            elif _plain(have) != _plain(want):
                raise ValueError(
                    f"the relabel store was made with {key}={have!r}, the protocol asks for {key}={want!r}: "
                    "training must replay the labelled batches (pass the store's settings, or relabel)"
                )

    def describe(self) -> str:
        ratio = self.store_bytes / max(self.image_bytes, 1)
        return (
            f"{self.epochs} epochs of region labels for {self.num_images} images: {format_bytes(self.store_bytes)} "
            f"(logits {format_bytes(self.label_bytes)}) against {format_bytes(self.image_bytes)} of images "
            f"({ratio:.0f}×)"
        )

    def __repr__(self) -> str:
        where = f" in {self.folder}" if self.folder is not None else " in memory"
        return f"<RelabelStore{where}: {self.describe()}>"

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, folder: str | os.PathLike) -> RelabelStore:
        """A store written by ``relabel(..., out=folder)``: the index checked (format, fields, file names inside the
        folder, each file present with its recorded size); the SHA-256 is checked as each epoch is read."""
        folder = Path(folder)
        jfile = folder / INDEX
        if not jfile.is_file():
            raise FileNotFoundError(f"{jfile} not found: {folder} is not a relabel store (make one with relabel)")
        idx = read_json_object(jfile, "relabel store")
        if idx.get("format") != FORMAT:
            raise CorruptFileError(f"{jfile} is not a {FORMAT} store (format {idx.get('format')!r})")
        s = json_field(idx, "settings", dict, jfile)
        for key, kind in (
            ("epochs", int),
            ("batch_size", int),
            ("seed", int),
            ("scale", list),
            ("ratio", list),
            ("prob_flip", (int, float)),
            ("shuffle_factor", int),
            ("mix", str),
            ("mix_alpha", (int, float)),
            ("dtype", str),
            ("teacher_batch", int),
        ):
            json_field(s, key, kind, jfile, where="settings.")
        images = json_field(idx, "images", dict, jfile)
        shape = json_field(images, "shape", list, jfile, where="images.")
        json_field(images, "sha256", str, jfile, where="images.")
        json_field(images, "bytes", int, jfile, where="images.")
        json_field(idx, "teacher", dict, jfile)
        json_field(idx["teacher"], "sha256", str, jfile, where="teacher.")
        for key in ("num_classes", "label_bytes", "store_bytes"):
            json_field(idx, key, int, jfile)
        files = json_field(idx, "files", list, jfile)
        if len(shape) != 4 or not all(isinstance(v, int) and v >= 1 for v in shape):
            raise CorruptFileError(f"{jfile}: 'images.shape' must be four integers >= 1, got {shape!r}")
        if len(files) != s["epochs"] or s["epochs"] < 1:
            raise CorruptFileError(f"{jfile}: 'files' must name one file per epoch ({s['epochs']}), got {len(files)}")
        if s["dtype"] not in LABEL_DTYPES:
            raise CorruptFileError(f"{jfile}: 'settings.dtype' must be one of {', '.join(LABEL_DTYPES)}")
        for e, rec in enumerate(files):
            if not isinstance(rec, dict):
                raise CorruptFileError(f"{jfile}: files[{e}] must be an object, got {rec!r:.60}")
            path = inside(folder, rec.get("file"), source=jfile, field=f"files[{e}].file")
            if not path.is_file():
                raise CorruptFileError(f"relabel file {path} named in {jfile} is missing")
            if not isinstance(rec.get("bytes"), int) or path.stat().st_size != rec["bytes"]:
                raise CorruptFileError(f"relabel file {path} is truncated or corrupt: its size differs from {jfile}")
        try:
            return cls(idx, folder=folder)
        except (TypeError, ValueError) as e:
            raise CorruptFileError(f"{jfile}: the settings do not describe a relabelling: {e}") from e


def _plain(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


def format_bytes(n: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _finished_epochs(folder: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """The epoch records an interrupted :func:`relabel` into ``folder`` left (``relabel.partial.json``), each file
    checked against its size and SHA-256; ``[]`` when there is none. ``ValueError`` when that run had other
    settings, images or teacher."""
    part = folder / PARTIAL
    if not part.is_file():
        return []
    prev = read_json_object(part, "relabel store")
    if {key: prev.get(key) for key in header} != header:
        raise ValueError(
            f"{part}: an interrupted relabelling with other settings, images or teacher is in {folder}; "
            "rerun it with those, or choose another folder"
        )
    files = json_field(prev, "files", list, part)
    for i, rec in enumerate(files):
        if not isinstance(rec, dict) or rec.get("file") != f"epoch_{i:05d}.safetensors":
            raise CorruptFileError(f"{part}: files[{i}] must name epoch_{i:05d}.safetensors, got {rec!r:.80}")
        f = inside(folder, rec["file"], source=part, field=f"files[{i}].file")
        check_file(f, {"bytes": rec.get("bytes"), "sha256": rec.get("sha256")}, part, "relabel epoch")
    return files


def relabel(
    images: Tensor,
    teacher: Teacher,
    out: str | os.PathLike | None = None,
    *,
    epochs: int = 300,
    batch_size: int = 100,
    seed: int = 0,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    prob_flip: float = 0.5,
    mix: str = "cutmix",
    mix_alpha: float | None = None,
    shuffle_factor: int = 1,
    dtype: str = "float16",
    teacher_batch: int = 512,
    show_progress: bool = False,
) -> RelabelStore:
    """Label ``epochs`` augmented passes over ``images`` ``(N, C, H, W)`` with ``teacher`` (FKD / SRe2L relabelling).

    Epoch ``e`` is :meth:`KDAugment.plan` with ``seed``: a permutation in batches of ``batch_size``; per image
    ShufflePatches(``shuffle_factor``) when > 1, one RandomResizedCrop (``scale``, ``ratio``) back to the image
    size and a flip with probability ``prob_flip``; then the batch's ``mix`` (``"cutmix"``: β = ``mix_alpha``,
    default 1; ``"mixup"``: α = ``mix_alpha``, default 0.8; ``"none"``). The teacher's raw logits of each augmented
    batch (``teacher_batch`` images per forward, evaluation mode) are kept in ``dtype`` (fp16); the temperature
    comes only at training time.

    With ``out``, each epoch is written to ``out/epoch_EEEEE.safetensors`` as soon as it is labelled (atomically;
    never more than one epoch in memory) and ``out/relabel.json`` last; without, the store is kept in memory. A call
    that dies part way leaves ``relabel.partial.json``: the same call into the same folder checks the epochs written
    (size, SHA-256) and continues after them, to the files an uninterrupted call writes.
    Returns the :class:`RelabelStore` (its ``store_bytes`` / ``label_bytes`` beside ``image_bytes``)."""
    alpha = MIX_ALPHA.get(mix, 1.0) if mix_alpha is None else mix_alpha
    aug = KDAugment(scale, ratio, prob_flip, shuffle_factor, mix, alpha)
    dt = _label_dtype(dtype)
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("teacher_batch", teacher_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"relabel: {name} must be an integer >= 1, got {v!r}")
    if images.dim() != 4 or len(images) < 1:
        raise ValueError(f"relabel needs images (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    teacher.net._check_input(images[:1])
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        **{key: list(v) if isinstance(v, tuple) else v for key, v in asdict(aug).items()},
        "dtype": dtype,
        "teacher_batch": teacher_batch,
    }
    k = teacher.num_classes
    header: dict[str, Any] = {
        "format": FORMAT,
        "settings": settings,
        "images": {"shape": list(images.shape), "sha256": tensor_sha256(images.float()), "bytes": images.numel() * 4},
        "num_classes": k,
        "teacher": teacher_identity(teacher),
    }
    header = json.loads(json.dumps(header))  # the form it has once read back
    folder, done = None, []
    if out is not None:
        check_out_folder(out)
        folder = Path(out)
        if (folder / INDEX).exists():
            raise FileExistsError(f"{folder} already holds a relabel store ({INDEX}): choose another folder")
        done = _finished_epochs(folder, header)
        folder.mkdir(parents=True, exist_ok=True)
    x_all = images.detach().to(teacher.device)
    n, hw = len(images), images.shape[2:]
    mem: list[dict[str, Tensor]] = []
    files: list[dict[str, Any]] = []
    store_bytes = 0
    bar = progress(total=epochs, desc="relabel", disable=not show_progress)
    for e in range(epochs):
        if e < len(done):  # labelled by an interrupted call with the same settings (checked): kept
            files.append(done[e])
            store_bytes += done[e]["bytes"]
            bar.update(1)
            continue
        plans = aug.plan(n, hw, batch_size, seed, e)
        logits = [teacher.logits(p.apply(x_all), teacher_batch).to(dt).cpu() for p in plans]
        tensors = _pack_epoch(plans, logits, aug)
        if folder is not None:
            name = f"epoch_{e:05d}.safetensors"
            rec = atomic_save_safetensors(folder / name, tensors, metadata={"format": FORMAT, "epoch": str(e)})
            files.append({"file": name, **rec})
            store_bytes += rec["bytes"]
            atomic_write_json(folder / PARTIAL, {**header, "files": files})  # what a rerun may keep
        else:
            mem.append(tensors)
            store_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        bar.update(1)
    bar.close()
    index: dict[str, Any] = {
        **header,
        "fastdd_version": __version__,
        "label_bytes": epochs * n * k * dt.itemsize,
        "store_bytes": store_bytes,
        "files": files,
    }
    if folder is not None:
        atomic_write_json(folder / INDEX, index)
        (folder / PARTIAL).unlink(missing_ok=True)
        return RelabelStore(index, folder=folder)
    return RelabelStore(index, tensors=mem)


# ---------------------------------------------------------------------------------------------------- optimiser
def decay_mask(net: FunctionalNet, device: torch.device | str | None = None) -> Tensor:
    """``(P,)`` bool over the flat parameter vector: True where weight decay applies, i.e. on the convolution and
    linear weights (specs with ``init == "weight"``); biases and norm weights/biases get none."""
    parts = [torch.full((p.numel,), p.init == "weight", dtype=torch.bool) for p in net.params]
    m = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
    return m.to(device) if device is not None else m


@dataclass(frozen=True)
class AdamW:
    """AdamW (Loshchilov & Hutter) with the decoupled decay ``θ ← θ(1 − lr·wd)`` before the Adam step, on the
    entries a mask allows, and a per-epoch schedule: ``"cosine"`` (``lr·½(1 + cos(π·e/E))``, to 0),
    ``"half_cosine"`` (RDED's ``lr·½(1 + cos(π·e/(2E)))``, ending at 0.5×) or ``"constant"``."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (self.lr >= 0 and self.eps > 0 and self.weight_decay >= 0):
            raise ValueError(f"AdamW needs lr >= 0, eps > 0, weight_decay >= 0, got {self}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"AdamW betas must be two numbers in [0, 1), got {self.betas}")

    def lr_at(self, epoch: int, epochs: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based) of ``epochs``."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        if self.schedule == "half_cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / (2 * epochs)))
        return self.lr


class MaskedAdamW:
    """:class:`torch.optim.AdamW` on one flat parameter ``theta`` with the decoupled decay applied only where
    ``decay`` ``(P,)`` is True: the same arithmetic as ``torch.optim.AdamW`` with two parameter groups (decay
    ``weight_decay`` and 0)."""

    def __init__(self, theta: torch.nn.Parameter, decay: Tensor, cfg: AdamW):
        if decay.shape != theta.shape or decay.dtype != torch.bool:
            raise ValueError(f"decay must be a bool mask of shape {tuple(theta.shape)}, got {tuple(decay.shape)}")
        self.theta, self.decay, self.weight_decay = theta, decay, cfg.weight_decay
        self.opt = torch.optim.AdamW([theta], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.weight_decay and self.theta.grad is not None:
            with torch.no_grad():
                self.theta.copy_(torch.where(self.decay, self.theta * (1 - self.lr * self.weight_decay), self.theta))
        self.opt.step()


def train_kd(
    net: FunctionalNet,
    theta: Tensor,
    images: Tensor,
    labels: LabelSource,
    epochs: int,
    optim: AdamW,
    *,
    buffers: Tensor | None = None,
    temperature: float = 20.0,
    t_squared: bool = False,
    on_epoch: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Train ``net`` from ``theta`` ``(P,)`` by knowledge distillation for ``epochs`` epochs; return the final
    parameters (a new detached tensor).

    Each epoch takes ``labels.batches(epoch, images)`` (augmented batches and the teacher's logits: an
    :class:`OnlineLabels` or a :class:`RelabelStore`), minimises :func:`kd_loss` at ``temperature`` with
    :class:`MaskedAdamW` (decay off biases and norm parameters, :func:`decay_mask`) at ``optim.lr_at(epoch,
    epochs)``. ``buffers``: batch-norm running statistics, updated in place. ``on_epoch(epoch, last loss,
    theta)`` after each epoch."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    theta = torch.nn.Parameter(theta.detach().clone())
    opt = MaskedAdamW(theta, decay_mask(net, theta.device), optim)
    for e in range(epochs):
        opt.set_lr(optim.lr_at(e, epochs))
        loss = theta.new_zeros(())
        for x, t in labels.batches(e, images):
            loss = kd_loss(net(x, theta, buffers, train=True), t, temperature, t_squared)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(e, loss.detach(), theta.detach())
    return theta.detach()


# ---------------------------------------------------------------------------------------------------- the protocol
@dataclass(frozen=True)
class KDProtocol:
    """The ``kd`` evaluation protocol (SRe2L's and RDED's): a fresh student trained on a set's images with a
    teacher's region soft labels, tested at the final epoch.

    ``None`` fields are resolved per set by :func:`resolve_kd` (RDED's rules):

    - ``model`` / ``model_kwargs``: the student; ``None`` → the teacher's architecture (as RDED does).
    - ``epochs`` E (300): exactly E epochs; ``batch_size`` ``None`` → :func:`kd_batch_size`.
    - AdamW: ``lr`` 1e-3, ``betas`` (0.9, 0.999), ``eps``, ``weight_decay`` 0.01 (not on biases and norm
      parameters); ``schedule`` ``"cosine"`` (to 0), ``"half_cosine"`` (RDED's, ends at 0.5×) or ``"constant"``.
    - ``temperature`` T = 20; ``t_squared`` False (the loss × T² when True).
    - Augmentation: ``scale`` ``None`` → ``(1/factor, 1)`` with ``factor = syn.meta.get("factor", 1)``, ``ratio``,
      ``flip`` ``None`` → where the data set's DSA strategy flips (never for digits), ``shuffle_factor`` ``None`` →
      the factor, ``mix`` ``"cutmix"`` / ``"mixup"`` / ``"none"``, ``mix_alpha`` ``None`` → 1 (CutMix) or 0.8 (Mixup).
    - ``label_mode``: ``"online"`` (the teacher labels each augmented batch) or ``"stored"`` (a
      :class:`RelabelStore`, the caller's or made per run); ``label_dtype``: the logits' precision in both modes;
      ``teacher_batch``: images per teacher forward.
    """

    name: str = "kd"
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 300
    batch_size: int | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: str = "cosine"
    temperature: float = 20.0
    t_squared: bool = False
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool | None = None
    shuffle_factor: int | None = None
    mix: str = "cutmix"
    mix_alpha: float | None = None
    label_mode: str = "online"
    label_dtype: str = "float16"
    teacher_batch: int = 512

    def __post_init__(self) -> None:
        for key in ("betas", "scale", "ratio"):
            v = getattr(self, key)
            if v is not None:
                object.__setattr__(self, key, tuple(float(x) for x in v))

    def validate(self) -> None:
        """``ValueError`` naming the setting when one is out of range."""
        for key, low in (("epochs", 0), ("batch_size", 1), ("teacher_batch", 1), ("shuffle_factor", 1)):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"protocol {self.name!r}: {key} must be an integer >= {low}, got {v!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"protocol {self.name!r}: temperature must be a finite number > 0, got {self.temperature}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"protocol {self.name!r}: label_mode must be one of {', '.join(LABEL_MODES)}")
        _label_dtype(self.label_dtype)
        self.optim()
        KDAugment(  # the augmentation's own checks, with placeholders for what is resolved per set
            self.scale if self.scale is not None else (0.5, 1.0),
            self.ratio,
            0.5,
            self.shuffle_factor if self.shuffle_factor is not None else 1,
            self.mix,
            self.mix_alpha if self.mix_alpha is not None else MIX_ALPHA.get(self.mix, 1.0),
        )

    def optim(self) -> AdamW:
        return AdamW(self.lr, self.betas, self.eps, self.weight_decay, self.schedule)

    def augment(self) -> KDAugment:
        """The :class:`KDAugment` of a resolved protocol (:func:`resolve_kd`)."""
        if self.scale is None or self.flip is None or self.shuffle_factor is None or self.mix_alpha is None:
            raise ValueError("the kd protocol is not resolved for a set yet (resolve_kd)")
        prob_flip = 0.5 if self.flip else 0.0
        return KDAugment(self.scale, self.ratio, prob_flip, self.shuffle_factor, self.mix, self.mix_alpha)

    def relabel_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`relabel` that make a store this (resolved) protocol can replay."""
        aug = self.augment()
        return dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            scale=aug.scale,
            ratio=aug.ratio,
            prob_flip=aug.prob_flip,
            mix=aug.mix,
            mix_alpha=aug.mix_alpha,
            shuffle_factor=aug.shuffle_factor,
            dtype=self.label_dtype,
            teacher_batch=self.teacher_batch,
        )


KD: KDProtocol = KDProtocol()  # the preset (PROTOCOLS["kd"])


def kd_protocol(protocol: KDProtocol | None = None, **overrides: Any) -> KDProtocol:
    """``protocol`` (default :data:`KD`) with ``overrides`` (fields of :class:`KDProtocol`, checked; ``None`` values
    ignored) applied and validated."""
    base = protocol if protocol is not None else KD
    overrides = {k: v for k, v in overrides.items() if v is not None}
    check_dataclass_options(KDProtocol, overrides, f"protocol {base.name!r}")
    p = replace(base, **overrides)
    p.validate()
    return p


def kd_batch_size(ipc: int, num_classes: int, num_images: int) -> int:
    """RDED's batch rule: 10 below IPC 10, 50 below IPC 50, else 100; doubled for 100 classes or more; at most the
    set's size."""
    base = 10 if ipc < 10 else 50 if ipc < 50 else 100
    if num_classes >= 100:
        base *= 2
    return max(1, min(base, num_images))


def set_factor(syn: SyntheticSet) -> int:
    """The set's multi-formation factor (``syn.meta["factor"]``, RDED's patches per side; 1 when absent)."""
    f = syn.meta.get("factor", 1)
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise ValueError(f"the set's meta['factor'] must be an integer >= 1, got {f!r}")
    return f


def resolve_kd(p: KDProtocol, syn: SyntheticSet, ds: Dataset, teacher: Teacher) -> KDProtocol:
    """``p`` with every ``None`` field made concrete for ``syn`` on ``ds`` with ``teacher`` (:class:`KDProtocol`)."""
    p.validate()
    changes: dict[str, Any] = {}
    if p.model is None:
        spec = {k: v for k, v in teacher.net.spec.items() if k not in ("in_channels", "num_classes", "im_size")}
        if teacher.net.init_scheme != "default":
            spec["init"] = teacher.net.init_scheme
        changes.update(model=teacher.net.name, model_kwargs=spec)
    if p.batch_size is None:
        changes["batch_size"] = kd_batch_size(syn.ipc, ds.num_classes, len(syn))
    factor = set_factor(syn)
    if p.scale is None:
        changes["scale"] = (1.0 / factor, 1.0)
    if p.shuffle_factor is None:
        changes["shuffle_factor"] = factor
    if p.flip is None:
        changes["flip"] = "flip" in DSAConfig(strategy=strategy_for(ds.name)).families
    if p.mix_alpha is None:
        changes["mix_alpha"] = MIX_ALPHA[p.mix]
    q = replace(p, **changes)
    q.validate()
    q.augment()  # the shuffle factor must divide the image size
    f = q.shuffle_factor or 1
    if ds.im_size[0] % f or ds.im_size[1] % f:
        raise ValueError(
            f"shuffle_factor {f} needs an image size divisible by it; {ds.name} has {ds.im_size[0]}x{ds.im_size[1]}"
        )
    return q


def relabel_set(
    syn: SyntheticSet,
    ds: Dataset,
    teacher: Teacher,
    out: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    protocol: KDProtocol | None = None,
    show_progress: bool = False,
    **overrides: Any,
) -> RelabelStore:
    """:func:`relabel` ``syn.images`` with the settings of the ``kd`` protocol resolved for ``syn`` (``overrides``:
    :class:`KDProtocol` fields), so that ``evaluate(syn, ds, "kd", teacher=..., store=...)`` with the same
    overrides replays it."""
    teacher.check(ds)
    q = resolve_kd(kd_protocol(protocol, **overrides), syn, ds, teacher.to(ds.device))
    return relabel(
        syn.images.to(ds.device),
        teacher.to(ds.device),
        out,
        seed=seed,
        show_progress=show_progress,
        **q.relabel_options(),
    )


def kd_train_on(
    images: Tensor,
    ds: Dataset,
    p: KDProtocol,
    teacher: Teacher,
    seed: int,
    *,
    store: RelabelStore | None = None,
    show_progress: bool = False,
    desc: str = "",
    test_images: Tensor | None = None,
    test_labels: Tensor | None = None,
) -> float:
    """Train one student of the resolved protocol ``p`` on ``images`` with ``teacher``'s labels and return its
    final-epoch accuracy on ``ds.test`` (or ``test_images`` / ``test_labels``).

    From ``seed``: the student's initialisation (``"kd.init"``) and the plan seed ``derive_seed(seed, "kd.plan")``
    of the online labels or of the store made for this run (``label_mode="stored"`` without ``store``, written to
    a temporary folder and removed afterwards). A given ``store`` is replayed as it is (checked against the images,
    the teacher and ``p``)."""
    dev = ds.device
    images = images.to(dev)
    net = model_for(ds, p.model or teacher.net.name, **p.model_kwargs)
    theta0 = net.init(generator(seed, "kd.init"), device=dev)
    buffers = net.init_buffers(device=dev) if net.has_batchnorm else None
    plan_seed = derive_seed(seed, "kd.plan")
    bar = progress(total=p.epochs, desc=desc, disable=not show_progress)

    def run(labels: LabelSource) -> Tensor:
        return train_kd(
            net,
            theta0,
            images,
            labels,
            p.epochs,
            p.optim(),
            buffers=buffers,
            temperature=p.temperature,
            t_squared=p.t_squared,
            on_epoch=lambda *_: bar.update(1),
        )

    assert p.batch_size is not None
    if store is not None:
        store.check(images, teacher, augment=p.augment(), batch_size=p.batch_size, dtype=p.label_dtype, epochs=p.epochs)
        theta = run(store)
    elif p.label_mode == "stored":
        with tempfile.TemporaryDirectory(prefix="fastdd-relabel-") as tmp:
            made = relabel(images, teacher, Path(tmp) / "store", seed=plan_seed, **p.relabel_options())
            theta = run(made)
    else:
        theta = run(OnlineLabels(teacher, p.augment(), p.batch_size, plan_seed, p.label_dtype, p.teacher_batch))
    bar.close()
    return accuracy(
        net,
        theta,
        buffers,
        test_images if test_images is not None else ds.test.images,
        test_labels if test_labels is not None else ds.test.labels,
    )


def kd_storage(p: KDProtocol, syn: SyntheticSet, num_classes: int) -> dict[str, int]:
    """``label_bytes``: the teacher's logits a store of protocol ``p`` keeps for ``syn`` (E·M·K in
    ``label_dtype``), beside ``image_bytes``: the set's images (float32)."""
    return {
        "label_bytes": p.epochs * len(syn) * num_classes * _label_dtype(p.label_dtype).itemsize,
        "image_bytes": syn.images.numel() * 4,
    }


__all__ = [
    "FORMAT",
    "KD",
    "AdamW",
    "BatchPlan",
    "KDAugment",
    "KDProtocol",
    "LabelSource",
    "MaskedAdamW",
    "OnlineLabels",
    "RelabelStore",
    "decay_mask",
    "format_bytes",
    "kd_batch_size",
    "kd_loss",
    "kd_protocol",
    "kd_storage",
    "kd_train_on",
    "relabel",
    "relabel_set",
    "resolve_kd",
    "soft_labels",
    "teacher_identity",
    "tensor_sha256",
    "train_kd",
]

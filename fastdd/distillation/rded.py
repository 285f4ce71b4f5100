"""RDED (Sun, Shi, Yu, Lin; CVPR 2024, "On the Diversity and Realism of Distilled Dataset"), a policy on the
distillation loop. No image is optimised: per class, real crops are scored by a trained network (the teacher,
RDED's "observer") and the most confident ones are stitched into the set.

Per class ``c`` (one loop iteration):

1. ``m = min(mipc, n_c)`` real images of the class are drawn without replacement (``mipc`` capped at the
   class size; ``meta["mipc_used"]`` records the count per class).
2. From each, ``num_crop`` random **square** crops (torchvision's ``RandomResizedCrop`` rule, ratio (1, 1),
   area share ``crop_scale``, no flip; :func:`~fastdd.augment.crops.sample_resized_crops`) are cut and resized
   bilinearly to a cell, ``(H/f, W/f)`` for ``factor`` f (:func:`~fastdd.augment.crops.apply_resized_crops`).
3. Realism: each crop's cross-entropy under the teacher in evaluation mode for class ``c``. How the cell is put
   before the teacher (``score_input``): ``"pad"`` (default, as RDED's selector does it) places the cell at the
   centre of an ``(H, W)`` canvas of zeros, zeros in the data set's training space (the normalised pixels, or the
   whitened ones with ZCA: the mean image there); ``"resize"`` upsamples the cell to ``(H, W)`` bilinearly
   instead. With factor 1 the two are the same (the cell is the full size). Per image, the crop with the lowest
   cross-entropy is kept (the first on a tie).
4. The ``m`` kept crops are ranked by cross-entropy, ascending (a stable sort), and the best
   ``n = ipc·f²`` are the class's patches ``p_0 … p_{n−1}``.
5. Stitch: image ``i`` (``0 ≤ i < ipc``) of the class holds patches ``i, ipc + i, 2·ipc + i, …`` in its f×f
   grid's cells, row-major (:func:`~fastdd.distillation.ncfm.mosaic`): slot (0, 0) of every image holds the
   ``ipc`` most confident patches. Each cell is exactly the crop resized to the cell size, so factor 1 is
   "select the ``ipc`` most confident crops".

Every draw of class ``c`` (the image permutation, then the crop boxes) comes from the stream
``generator(seed, method, "class", c)``: the set depends on neither where a run was resumed nor how many
processes made it. The teacher's batches (``teacher_batch`` crops per forward) are cut the same way too.

On the loop: :attr:`RDEDPolicy.num_iterations` is the number of classes (``iterations=`` is refused), nothing
takes a gradient step (``grads=()``), the logged loss is the mean cross-entropy of the class's selected patches
(``log.csv`` column ``class``; ``""`` on an idle step). Checkpoints keep only which real image and box each
patch came from and its cross-entropy (a few numbers per image); the images are cut from the data again for
the result, so a resumed run returns bitwise the uninterrupted run's set.

Under torch.distributed the classes are split into contiguous blocks over the ranks; at every iteration each
rank scores the next class of its block still to do, or idles when it has none (the loop's per-iteration
read-back is collective, so every rank runs all ``K`` iterations; the work is done in the first
``⌈K/world⌉``). Which classes are done is read from the checkpoint, so a run resumes on any number of
processes.

The set: ``K·ipc`` images (class-major) with hard labels; ``meta``: ``factor`` (the ``kd`` protocol's
ShufflePatches and crop scale read it), ``num_crop``, ``mipc`` and ``mipc_used``, ``score_input``, the teacher
(model, accuracy, data set), ``class_ce`` (per class, the mean cross-entropy of its patches), and per image
and cell: ``patch_source`` (the index into ``ds.train``), ``patch_boxes`` (``[top, left, height, width]`` in
that image's pixels) and ``patch_ce``.

Not reproduced: RDED's cells for sizes that ``factor`` does not divide (refused here), its JPEG saving, and
its evaluation (online region soft labels: the ``kd`` protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..augment.crops import ResizedCrops, apply_resized_crops, sample_resized_crops
from ..data import Dataset
from ..distributed import Shard, current, split_rows
from ..errors import RunFailedError
from ..rng import generator
from ..synthetic import SyntheticSet
from ..teacher import Teacher, load_teacher
from .loop import Policy, Step
from .ncfm import mosaic
from .registry import Setup, register_method

SCORE_INPUTS = ("pad", "resize")


@dataclass
class RDEDConfig:
    """RDED's settings. Defaults: its CIFAR and Tiny ImageNet scripts (``factor`` 1; the ImageNet-scale scripts'
    2 is for presets), ``num_crop`` 5, ``mipc`` 300 (capped at each class's size)."""

    factor: int = 1  # each image is an f×f grid of patches (1: one crop per image)
    num_crop: int = 5  # random square crops per real image; the best one is kept
    mipc: int = 300  # real images drawn per class (capped at the class size)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # the crops' share of the image area (RandomResizedCrop's scale)
    teacher_batch: int = 256  # crops per teacher forward (bounds memory; the result does not depend on it)
    score_input: str = "pad"  # "pad": the cell zero-padded (centred) to full size | "resize": upsampled to it

    def validate(self) -> None:
        """``ValueError`` naming the first setting out of range."""
        for name in ("factor", "num_crop", "mipc", "teacher_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        s = self.crop_scale
        if (
            not isinstance(s, (tuple, list))
            or len(s) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s)
            or not 0 < s[0] <= s[1] <= 1
        ):
            raise ValueError(f"crop_scale must be two numbers with 0 < min <= max <= 1, got {s!r}")
        if self.score_input not in SCORE_INPUTS:
            raise ValueError(f"score_input must be one of {', '.join(SCORE_INPUTS)}, got {self.score_input!r}")


def teacher_input(cells: Tensor, im_hw: tuple[int, int], how: str) -> Tensor:
    """What the teacher scores for ``cells`` ``(B, C, h, w)`` in an ``im_hw`` model: ``"pad"`` puts each cell at
    the centre (top ``(H − h) // 2``, left ``(W − w) // 2``) of a zero canvas; ``"resize"`` upsamples it
    bilinearly (``align_corners=False``). A cell of the full size is returned as it is."""
    h, w = cells.shape[-2:]
    big_h, big_w = im_hw
    if (h, w) == (big_h, big_w):
        return cells
    if how == "resize":
        return F.interpolate(cells, size=(big_h, big_w), mode="bilinear", align_corners=False)
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return F.pad(cells, (left, big_w - w - left, top, big_h - h - top))


@dataclass
class ClassChoice:
    """One class's selection: per patch ``p_0 … p_{n−1}`` (most confident first) its real image (indices into
    ``ds.train``), box (``(n, 4)``: top, left, height, width) and cross-entropy; ``candidates`` the real images
    drawn (``m``) and ``all_finite`` whether the teacher's cross-entropy was finite on every crop."""

    source: Tensor
    boxes: Tensor
    ce: Tensor
    candidates: int
    all_finite: Tensor


def choose_patches(ds: Dataset, c: int, n: int, teacher: Teacher, cfg: RDEDConfig, g: torch.Generator) -> ClassChoice:
    """Steps 1–4 of the module's description for class ``c``: the ``n`` most confident crops, one per real image
    at most, drawn from ``g`` (first the image permutation, then all ``m·num_crop`` boxes, image-major)."""
    h, w = ds.im_size
    cell = (h // cfg.factor, w // cfg.factor)
    members = ds.class_indices[c].cpu()
    m = min(cfg.mipc, len(members))
    images = members[torch.randperm(len(members), generator=g)[:m]]
    k = cfg.num_crop
    scale = (float(cfg.crop_scale[0]), float(cfg.crop_scale[1]))
    crops = sample_resized_crops(m * k, (h, w), g, scale, (1.0, 1.0), prob_flip=0.0)
    owner = images.repeat_interleave(k)  # candidate j = image j // k, crop j % k
    dev = ds.device
    ce_parts = []
    with torch.no_grad():
        for lo in range(0, m * k, cfg.teacher_batch):
            sl = slice(lo, min(lo + cfg.teacher_batch, m * k))
            real = ds.train.images[owner[sl].to(dev)]
            x = teacher_input(apply_resized_crops(real, crops.index(sl), cell), (h, w), cfg.score_input)
            logits = teacher(x.to(teacher.device)).float().to(dev)
            y = torch.full((len(logits),), c, dtype=torch.long, device=dev)
            ce_parts.append(F.cross_entropy(logits, y, reduction="none"))
    ce = torch.cat(ce_parts).view(m, k)
    best_crop = torch.sort(ce, dim=1, stable=True).indices[:, 0]  # the first of equal ones
    best_ce = ce.gather(1, best_crop[:, None])[:, 0]
    order = torch.sort(best_ce, stable=True).indices[:n]
    chosen = (order * k + best_crop[order]).cpu()  # candidate indices of the patches, most confident first
    box = torch.stack([crops.top, crops.left, crops.height, crops.width], 1)[chosen]
    return ClassChoice(owner[chosen].to(dev), box.to(dev), best_ce[order], m, torch.isfinite(ce).all())


def stitch_order(t: Tensor, ipc: int, factor: int) -> Tensor:
    """A class's per-patch rows ``(n, …)`` (most confident first, ``n = ipc·f²``) → per image and cell
    ``(ipc, f², …)``: image ``i``'s cell ``s`` (row-major) is patch ``s·ipc + i``."""
    f2 = factor * factor
    return t.reshape(f2, ipc, *t.shape[1:]).transpose(0, 1)


def stitch(ds: Dataset, source: Tensor, boxes: Tensor, factor: int, chunk: int = 1024) -> Tensor:
    """Images ``(N, C, H, W)`` from per image and cell ``source`` ``(N, f²)`` (indices into ``ds.train``) and
    ``boxes`` ``(N, f², 4)``: each cell is its box of that real image resized bilinearly to ``(H/f, W/f)``, the
    cells laid out row-major (:func:`~fastdd.distillation.ncfm.mosaic`). A negative source (a class not done
    yet) gives a zero cell."""
    h, w = ds.im_size
    cell = (h // factor, w // factor)
    src, bx = source.reshape(-1).cpu(), boxes.reshape(-1, 4).cpu()
    cells = ds.train.images.new_zeros((len(src), ds.channels, *cell))
    for lo in range(0, len(src), chunk):
        sl = slice(lo, lo + chunk)
        s, b = src[sl], bx[sl]
        keep = torch.nonzero(s >= 0).flatten()
        if len(keep) == 0:
            continue
        crops = ResizedCrops(b[keep, 0], b[keep, 1], b[keep, 2], b[keep, 3], torch.zeros(len(keep), dtype=torch.bool))
        part = apply_resized_crops(ds.train.images[s[keep].to(ds.device)], crops, cell)
        cells[(keep + lo).to(ds.device)] = part
    return mosaic(cells, factor)


class RDEDPolicy(Policy):
    """RDED on the loop: one iteration scores and selects one class (this rank's next one under
    torch.distributed). Its tensors (checkpointed, ``K·ipc`` rows, class-major, one per image): ``source``
    ``(K·ipc, f²)`` int64 (−1 until the class is done), ``boxes`` ``(K·ipc, f², 4)`` int64, ``ce``
    ``(K·ipc, f²)`` float32."""

    log_fields = ("class",)

    def __init__(self, ds: Dataset, ipc: int, cfg: RDEDConfig, seed: int, method: str, teacher: Teacher):
        cfg.validate()
        self.ds, self.config, self.seed, self.method = ds, cfg, seed, method
        self._seed: int = seed  # as an int for the per-class streams
        self.teacher = self._check(ds, ipc, cfg, teacher)
        self.net = self.teacher.net
        self.ipc, self.f2 = ipc, cfg.factor * cfg.factor
        k = ds.num_classes
        self.num_iterations = k
        self.mipc_used = [min(cfg.mipc, n) for n in ds.class_counts()]
        rows, dev = k * ipc, ds.device
        source = torch.full((rows, self.f2), -1, dtype=torch.long, device=dev)
        boxes = torch.zeros((rows, self.f2, 4), dtype=torch.long, device=dev)
        ce = torch.zeros((rows, self.f2), dtype=torch.float32, device=dev)
        self.classes = range(k)  # this process's block of classes
        d = current()
        if d is not None:
            bounds = split_rows(k, d.world, "classes")
            names = ("source", "boxes", "ce")
            self.shard = Shard(d, rows, names, [(lo * ipc, hi * ipc) for lo, hi in bounds])
            self.classes = range(*bounds[d.rank])
            source, boxes, ce = (self.shard.rows(t) for t in (source, boxes, ce))
        self.tensors = {"source": source, "boxes": boxes, "ce": ce}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.generators: dict[str, torch.Generator] = {}  # every class derives its own stream
        self.start_it = 0
        self.work: list[int] = list(self.classes)
        self.pending: int | None = None  # the class of the step not yet applied

    @staticmethod
    def _check(ds: Dataset, ipc: int, cfg: RDEDConfig, teacher: Any) -> Teacher:
        """The teacher on ``ds``'s device, after checking it was trained for ``ds`` (class order too), the image
        size divides by ``factor`` and every class supplies the ``ipc·f²`` real images its patches come from."""
        if teacher is None:
            raise ValueError(
                "rded scores real crops with a trained network: pass teacher= (a Teacher or its folder); "
                "make one with fastdd.train_teacher or `fastdd teacher`"
            )
        teacher = load_teacher(teacher, ds, "rded teacher")
        if teacher.num_classes != ds.num_classes:
            raise ValueError(
                f"the rded teacher has {teacher.num_classes} classes, the data set {ds.name} {ds.num_classes}"
            )
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
        if any(s % cfg.factor for s in ds.im_size):
            raise ValueError(f"factor {cfg.factor} must divide the image size {tuple(ds.im_size)}")
        n = ipc * cfg.factor * cfg.factor
        if n > cfg.mipc:
            raise ValueError(
                f"rded: ipc·factor² = {ipc}·{cfg.factor}² = {n} patches per class, more than mipc = {cfg.mipc} "
                "real images drawn per class (each gives one patch at most): raise mipc or lower ipc or factor"
            )
        counts = ds.class_counts()
        if n > min(counts):
            c = counts.index(min(counts))
            raise ValueError(
                f"rded: ipc·factor² = {n} patches per class, one real image each, but class {c} "
                f"'{ds.class_names[c]}' of {ds.name}'s train split has {counts[c]} images"
            )
        return teacher

    @classmethod
    def from_setup(cls, setup: Setup) -> RDEDPolicy:
        assert setup.ipc is not None  # the runner requires it
        return cls(setup.ds, setup.ipc, setup.config, setup.seed, setup.method, setup.teacher)

    def _local(self, c: int) -> slice:
        """Class ``c``'s rows in this process's tensors."""
        lo = (c - self.classes.start) * self.ipc
        return slice(lo, lo + self.ipc)

    def resume(self, iteration: int, extra: dict[str, Any]) -> None:
        self.start_it = iteration

    def begin(self) -> None:
        """This process's classes still to do (all on a fresh start; read from the checkpoint on a resume), in
        order: iteration ``start + j`` does the ``j``-th."""
        source = self.tensors["source"]
        self.work = [c for c in self.classes if bool((source[self._local(c)] < 0).any())]
        left = self.ds.num_classes - self.start_it
        if len(self.work) > left:  # cannot happen for a checkpoint this policy wrote
            raise RunFailedError(
                f"{self.method}: {len(self.work)} classes are left to this process and only {left} iterations"
            )

    def step(self, it: int) -> Step:
        j = it - self.start_it
        if j >= len(self.work):  # idle: this rank's classes are done (torch.distributed), or nothing was left
            self.pending = None
            return Step(torch.zeros((), device=self.ds.device), (), {"class": ""})
        c = self.work[j]
        cfg, n = self.config, self.ipc * self.f2
        g = generator(self._seed, self.method, "class", c)
        choice = choose_patches(self.ds, c, n, self.teacher, cfg, g)
        loss = torch.where(choice.all_finite, choice.ce.mean(), torch.full_like(choice.ce[0], math.nan))
        self.pending = c
        payload = tuple(stitch_order(t, self.ipc, cfg.factor) for t in (choice.source, choice.boxes, choice.ce))
        return Step(loss.detach(), (), {"class": c}, (c, payload))

    def apply(self, step: Step) -> None:
        if step.payload is None:
            return
        c, (source, boxes, ce) = step.payload
        rows = self._local(c)
        with torch.no_grad():
            self.tensors["source"][rows] = source
            self.tensors["boxes"][rows] = boxes
            self.tensors["ce"][rows] = ce
        self.pending = None

    def end_iteration(self, it: int) -> None:
        if self.pending is not None:  # a class's step was skipped: its cross-entropy was not finite somewhere
            raise RunFailedError(
                f"{self.method}: at iteration {it} the teacher's cross-entropy on some crops was not finite (on "
                f"class {self.pending} or, under torch.distributed, on another rank's class): check the teacher "
                "(a NaN or infinite logit); the run stops, its last checkpoint is kept"
            )

    def postfix(self, loss: float, values: dict[str, Any]) -> dict[str, str]:
        return {"class": str(values.get("class", "")), "ce": f"{loss:.4f}"}

    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> SyntheticSet:
        """The set: ``K·ipc`` stitched images (class-major), hard labels, and the metadata of the module's
        description. Rows of a class not done yet (a picture of a run in progress) are zero images."""
        source, boxes, ce = (self.whole(self.tensors[k].detach()) for k in ("source", "boxes", "ce"))
        with torch.no_grad():
            images = stitch(self.ds, source, boxes, self.config.factor)
        k = self.ds.num_classes
        labels = torch.arange(k, device=images.device).repeat_interleave(self.ipc)
        done = (source >= 0).all(1).view(k, self.ipc).all(1).tolist()
        per_class = ce.double().view(k, -1).mean(1).tolist()
        t = self.teacher.meta
        meta = self.run_meta(
            iterations,
            skipped,
            self.ipc,
            factor=self.config.factor,
            num_crop=self.config.num_crop,
            mipc=self.config.mipc,
            mipc_used=self.mipc_used,
            score_input=self.config.score_input,
            teacher={
                "model": self.teacher.net.name,
                "model_spec": self.teacher.net.spec,
                "accuracy": t.get("accuracy"),
                "dataset": t.get("dataset"),
                "source": t.get("source"),
            },
            class_ce=[v if ok else None for v, ok in zip(per_class, done)],
            patch_source=source.tolist(),
            patch_boxes=boxes.tolist(),
            patch_ce=ce.tolist(),
            **(extra_meta or {}),
        )
        return SyntheticSet(images, labels, None, None, meta)


register_method(
    "rded",
    config=RDEDConfig,
    policy=RDEDPolicy,
    needs_teacher=True,
    takes_iterations=False,
    distributed="classes",
    selection=False,
    description="stitch the real crops a teacher is most confident about, per class (Sun et al. 2024)",
)


__all__ = [
    "RDEDConfig",
    "RDEDPolicy",
    "ClassChoice",
    "choose_patches",
    "stitch",
    "stitch_order",
    "teacher_input",
    "SCORE_INPUTS",
]

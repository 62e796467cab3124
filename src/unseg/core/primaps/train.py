"""PriMaPs-EM training: initialise the prototypes, then epochs of E-step / M-step / EMA teacher, checkpointed.

Reads, per batch of train images: the teacher's clean base features, the student's features (the same cached ones,
or a photometrically augmented copy computed online), and the stored PriMaPs label maps. Never reads train labels.
Every epoch ends with a checkpoint; a run started again with the same fingerprint resumes after the newest one
(random draws are seeded per epoch, so a resumed run repeats exactly what an uninterrupted one does).
The batches of an epoch are drawn first; their features and label maps are then read ahead by the sources' and the
masks' loader processes (`unseg.core.loader`), in that order, so the draws do not depend on the number of workers.
On CUDA the student's forward and the M-step loss run under bf16 autocast (the CPU path is plain float32).

[0] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unseg.core.loader import iter_reads, to_device
from unseg.core.primaps.checkpoint import load_latest, save_checkpoint
from unseg.core.primaps.em import IGNORE, e_step, ema_decay, ema_update, is_teacher_step, m_step_loss, upsampled_logits
from unseg.core.primaps.prototypes import CosineWarmup, Prototypes, principal_init
from unseg.core.primaps.sources import FeatureSource
from unseg.core.store import ShardStore

logger = logging.getLogger(__name__)

INITS = ("pca", "centroids")
Monitor = Callable[[Prototypes], dict[str, float]]


@dataclass(frozen=True)
class EMConfig:
    """Parameters of PriMaPs-EM (`primaps.em`; paper values in brackets).

    Attributes:
        num_prototypes: K.
        epochs: EM epochs over the train split [50].
        batch_size: images per step [32].
        lr: Adam learning rate of the student [5e-3].
        warmup_epochs: cosine k-means warm-up epochs after a "pca" init [2]; not run after a "centroids" init.
        warmup_lr: Adam learning rate of the warm-up [5e-3].
        init: "pca" (top-K principal directions of a feature sample) or "centroids" (given cluster centres).
        init_sample: feature vectors sampled for the principal directions [features of ~3000 images].
        ema_every: optimisation steps between teacher updates [10].
        ema_max_decay: the teacher decay's ceiling [0.98].
        focal_gamma: exponent of the focal class weights [2].
        seed: seeds every draw (sample, shuffling, augmentation).
    """

    num_prototypes: int
    epochs: int = 50
    batch_size: int = 32
    lr: float = 5e-3
    warmup_epochs: int = 2
    warmup_lr: float = 5e-3
    init: str = "pca"
    init_sample: int = 100_000
    ema_every: int = 10
    ema_max_decay: float = 0.98
    focal_gamma: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"primaps init {self.init!r}; valid: {', '.join(INITS)}")
        if self.num_prototypes < 1:
            raise ValueError(f"primaps.em.num_prototypes must be >= 1, got {self.num_prototypes}")
        for name in ("epochs", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"primaps.em.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "ema_every", "init_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"primaps.em.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_max_decay < 1.0:
            raise ValueError(f"primaps.em.ema_max_decay must lie in [0, 1), got {self.ema_max_decay}")
        if self.lr <= 0 or self.warmup_lr <= 0:
            raise ValueError(f"primaps.em learning rates must be > 0, got {self.lr}, {self.warmup_lr}")


@dataclass
class EMData:
    """The train split as PriMaPs-EM sees it (all sources hold the same ids in the same order).

    Attributes:
        teacher: clean base features (what the prototypes score).
        student: the student's base features: `teacher` itself (cached mode) or an augmenting online source.
        masks: PriMaPs label maps (field `mask`, 255 = none) at the label resolution.
        sample: (N, C) base feature vectors for the "pca" initialisation (may be empty for "centroids").
    """

    teacher: FeatureSource
    student: FeatureSource
    masks: ShardStore
    sample: np.ndarray

    def __post_init__(self) -> None:
        for name, ids in (("student features", self.student.ids), ("masks", self.masks.ids)):
            if ids != self.teacher.ids:
                raise ValueError(f"primaps: the {name} do not hold the same train images as the base features")


@dataclass
class EMResult:
    """The trained prototypes and the run's record.

    Attributes:
        history: one entry per EM epoch (epoch 0 = the initialisation): metric name -> value.
        warmup: the cosine k-means loss of each warm-up epoch.
        skipped: ids of the train images without any PriMaP (no pseudo-label; left out of the EM).
    """

    teacher: Prototypes
    student: Prototypes
    history: list[dict[str, float]]
    warmup: list[float]
    steps: int
    teacher_updates: int
    skipped: list[str] = field(default_factory=list)


def _generator(seed: int, *key: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, *key]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _batches(positions: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(len(positions), generator=generator).tolist()
    shuffled = [positions[i] for i in order]
    return [shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size)]


def labelled_positions(masks: ShardStore) -> tuple[list[int], list[str]]:
    """Positions of the images with at least one PriMaP, and the ids of those without."""
    keep, skipped, position = [], [], 0
    for index in range(masks.num_shards):
        maps = np.asarray(masks.shard(index, ["mask"])["mask"])
        has_mask = (maps != IGNORE).reshape(len(maps), -1).any(1)
        for offset, ok in enumerate(has_mask.tolist()):
            if ok:
                keep.append(position + offset)
            else:
                skipped.append(masks.ids[position + offset])
        position += len(maps)
    return keep, skipped


def initial_directions(data: EMData, config: EMConfig, centroids: np.ndarray | None, device: torch.device,
                       positions: Sequence[int]) -> tuple[torch.Tensor, list[float]]:
    """The prototypes' starting directions: principal directions + cosine k-means warm-up, or given centroids.

    Returns:
        (K, C) directions on `device` and the warm-up loss of each warm-up epoch.

    Raises:
        ValueError: centroids missing or of the wrong shape, or a bad K (see principal_init).
    """
    if config.init == "centroids":
        if centroids is None:
            raise ValueError("primaps init 'centroids' needs the cluster centres of the base method")
        if centroids.ndim != 2 or centroids.shape[0] != config.num_prototypes:
            raise ValueError(f"primaps: {config.num_prototypes} prototypes, but the given centroids have shape "
                             f"{centroids.shape}")
        return torch.from_numpy(np.asarray(centroids, np.float32)).to(device), []
    probe = CosineWarmup(principal_init(data.sample, config.num_prototypes).to(device), config.warmup_lr)
    losses = []
    for epoch in range(config.warmup_epochs):
        total = []
        for features in data.teacher.stream(_batches(positions, config.batch_size, _generator(config.seed, 1, epoch))):
            total.append(probe.step(features))
        losses.append(float(np.mean(total)) if total else float("nan"))
        logger.info("PriMaPs-EM warm-up epoch %d/%d: cosine k-means loss %.4f", epoch + 1, config.warmup_epochs,
                    losses[-1])
    return probe.directions(), losses


def fit_em(data: EMData, config: EMConfig, device: torch.device, checkpoints: Path | None = None,
           centroids: np.ndarray | None = None, monitor: Monitor | None = None, num_workers: int = 0) -> EMResult:
    """Fits PriMaPs-EM prototypes (see the module docstring).

    Args:
        data: train features and PriMaPs.
        config: see EMConfig.
        device: where the prototypes and the batches live.
        checkpoints: the run's checkpoint folder (key it by a fingerprint of all inputs); None: no checkpoints.
        centroids: (K, C) for init "centroids".
        monitor: called with the teacher after the initialisation and after every epoch; its metrics join the
            history (validation scores for monitoring only: they select nothing).
        num_workers: processes reading the label maps ahead (the sources have their own).

    Returns:
        The final teacher (the model) and student, and the per-epoch history.

    Raises:
        ValueError: no train image has a PriMaP, or a bad initialisation (see initial_directions).
    """
    positions, skipped = labelled_positions(data.masks)
    if skipped:
        logger.warning("PriMaPs-EM: %d of %d train images have no mask proposal and are left out: %s", len(skipped),
                       len(data.masks), ", ".join(skipped[:10]))
    if not positions:
        raise ValueError("PriMaPs-EM: no train image has a mask proposal; check primaps.proposals")
    state = load_latest(checkpoints) if checkpoints is not None else None
    if state is None:
        directions, warmup = initial_directions(data, config, centroids, device, range(len(data.teacher.ids)))
        student = Prototypes(directions).to(device)
        teacher = copy.deepcopy(student).requires_grad_(False)
        optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
        step = updates = start = 0
        history: list[dict[str, float]] = [monitor(teacher) if monitor else {}]
        if checkpoints is not None:
            save_checkpoint(checkpoints, 0, _state(0, student, teacher, optimizer, step, updates, history, warmup))
    else:
        start, step, updates, history = state["epoch"], state["step"], state["teacher_updates"], state["history"]
        warmup = state["warmup"]
        student = _restore(state["student"], device)
        teacher = _restore(state["teacher"], device).requires_grad_(False)
        optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
        optimizer.load_state_dict(state["optimizer"])
        logger.info("PriMaPs-EM: resuming after epoch %d of %d from %s", start, config.epochs, checkpoints)

    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        generator = _generator(config.seed, 0, epoch)
        sums = {"loss": 0.0, "pseudo_label_coverage": 0.0, "teacher_student_agreement": 0.0}
        batches = _batches(positions, config.batch_size, generator)
        cleans = data.teacher.stream(batches)
        students = None if data.student is data.teacher else data.student.stream(batches, generator)
        maps = iter_reads(data.masks, ["mask"], batches, num_workers, pin_memory=device.type == "cuda")
        for clean, read in zip(cleans, maps, strict=True):
            label_maps = to_device(read["mask"], device)
            pseudo, teacher_pred = e_step(teacher, clean, label_maps)
            features = clean if students is None else next(students)  # its augmentation draws: here, as before
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = upsampled_logits(student, features, tuple(label_maps.shape[-2:]))
                loss = m_step_loss(logits, pseudo, config.focal_gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if is_teacher_step(step, config.ema_every):
                ema_update(teacher, student, ema_decay(updates, config.ema_max_decay))
                updates += 1
            sums["loss"] += float(loss.detach())
            sums["pseudo_label_coverage"] += float((pseudo != IGNORE).float().mean())
            sums["teacher_student_agreement"] += float((logits.detach().max(1).indices == teacher_pred).float().mean())
        record = {name: value / len(batches) for name, value in sums.items()}
        record.update(monitor(teacher) if monitor else {})
        history.append(record)
        logger.info("PriMaPs-EM epoch %d/%d (%.1fs): %s", epoch, config.epochs, time.perf_counter() - began,
                    ", ".join(f"{k} {v:.4f}" for k, v in record.items()))
        if checkpoints is not None:
            save_checkpoint(checkpoints, epoch, _state(epoch, student, teacher, optimizer, step, updates, history,
                                                       warmup))
    return EMResult(teacher, student, history, warmup, step, updates, skipped)


def _state(epoch: int, student: Prototypes, teacher: Prototypes, optimizer: torch.optim.Optimizer, step: int,
           updates: int, history: list[dict[str, float]], warmup: list[float]) -> dict[str, Any]:
    return {"epoch": epoch, "step": step, "teacher_updates": updates, "history": history, "warmup": warmup,
            "student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict()}


def _restore(weights: dict[str, torch.Tensor], device: torch.device) -> Prototypes:
    """Prototypes from a checkpoint's raw parameters (not re-normalised, so Adam's moments still fit them)."""
    model = Prototypes(weights["direction"], weights["gain"])
    return model.to(device)

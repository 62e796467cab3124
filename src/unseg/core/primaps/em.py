"""The moving-average stochastic EM of PriMaPs-EM, one batch at a time: E-step, M-step loss, EMA teacher.

- E-step: the teacher scores the clean features, the scores are upsampled (bilinear) to the label resolution, argmax;
  every PriMaP takes the mode of the teacher's argmax inside it; pixels outside any PriMaP are ignored (255).
- M-step: the student scores its features (a photometrically augmented copy when the backbone runs online); loss =
  cross-entropy against the pseudo-labels with class weights w_c = (1 - mean over the batch of softmax p_c)^gamma,
  detached (gamma = 2), ignore 255.
- Teacher: every `every` optimisation steps (from step `every` on), theta_M <- d theta_M + (1 - d) theta_R with, for
  teacher update k = 0, 1, 2, ...: d = 0 (a copy) for k < 2, else d = min(max_decay, 1 - 1/k).

[0] https://arxiv.org/abs/2404.16818
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unseg.core.primaps.prototypes import Prototypes

IGNORE = 255


def ema_decay(update: int, max_decay: float = 0.98) -> float:
    """Decay of teacher update k: 0 for k = 0 and 1 (copies), then min(max_decay, 1 - 1/k): 0.5, 0.667, 0.75, ...

    Raises:
        ValueError: k < 0.
    """
    if update < 0:
        raise ValueError(f"teacher update index must be >= 0, got {update}")
    if update < 2:
        return 0.0
    return min(max_decay, 1.0 - 1.0 / update)


def is_teacher_step(step: int, every: int) -> bool:
    """Whether optimisation step `step` (1-based count of steps taken) is followed by a teacher update."""
    return step >= every and step % every == 0


@torch.no_grad()
def ema_update(teacher: Prototypes, student: Prototypes, decay: float) -> None:
    """theta_M <- decay * theta_M + (1 - decay) * theta_R, for the directions and the gains."""
    for mean, current in zip(teacher.parameters(), student.parameters(), strict=True):
        mean.mul_(decay).add_(current.detach(), alpha=1.0 - decay)


def focal_weights(probs: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Class weights w_c = (1 - mean over the batch of p_c)^gamma, detached.

    Args:
        probs: (B, K, H, W) softmax probabilities.
        gamma: the focusing exponent (paper: 2).

    Returns:
        (K,) weights.
    """
    return (1.0 - probs.detach().mean(dim=(0, 2, 3))).pow(gamma)


def mask_mode_labels(pred: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pseudo-labels: every mask takes the most frequent predicted class inside it; outside masks 255.

    Args:
        pred: int64 (B, H, W) predicted classes in [0, num_classes).
        masks: (B, H, W) mask ids in [0, 255), 255 = no mask (any integer dtype).
        num_classes: K.

    Returns:
        int64 (B, H, W). Ties go to the smallest class id.
    """
    batch = pred.shape[0]
    ids = masks.long()
    valid = ids != IGNORE
    slots = batch * IGNORE  # one slot per (image, mask id); invalid pixels go to an extra bin past the end
    slot = torch.arange(batch, device=pred.device).view(batch, 1, 1) * IGNORE + ids.clamp_max(IGNORE - 1)
    key = torch.where(valid, slot * num_classes + pred, slots * num_classes)
    counts = torch.bincount(key.flatten(), minlength=slots * num_classes + 1)[:-1]
    mode = counts.view(slots, num_classes).max(dim=1).indices  # max, not argmax: much faster on CPU; first wins
    return torch.where(valid, mode[slot], IGNORE)


def upsampled_logits(model: Prototypes, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Prototype logits (B, K, h, w) upsampled bilinearly to (B, K, *size)."""
    logits = model(features)
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    # channels-last: the upsampling and the softmax over K that follows run faster on a CPU
    logits = logits.contiguous(memory_format=torch.channels_last)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def e_step(teacher: Prototypes, features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels of a batch from the teacher.

    Args:
        teacher: the EMA prototypes.
        features: (B, C, h, w) clean features.
        masks: (B, H, W) PriMaP ids (255 = none) at the label resolution.

    Returns:
        pseudo-labels int64 (B, H, W) (255 outside masks) and the teacher's argmax int64 (B, H, W).
    """
    pred = upsampled_logits(teacher, features, tuple(masks.shape[-2:])).max(dim=1).indices
    return mask_mode_labels(pred, masks, teacher.num_prototypes), pred


def m_step_loss(logits: torch.Tensor, pseudo: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal-weighted cross-entropy of the student against the pseudo-labels.

    Args:
        logits: (B, K, H, W) student logits at the label resolution.
        pseudo: int64 (B, H, W), 255 = ignore.
        gamma: see focal_weights.

    Returns:
        Scalar loss (0 with a zero gradient when no pixel is labelled).
    """
    if not bool((pseudo != IGNORE).any()):
        return logits.sum() * 0.0
    log_probs = logits.log_softmax(dim=1)
    weights = focal_weights(log_probs.detach().exp(), gamma)
    return F.nll_loss(log_probs, pseudo, weight=weights, ignore_index=IGNORE)

"""PriMaPs-EM step maths: the EMA schedule, the focal class weights, the mode assignment, the M-step loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseg.core.primaps.em import (
    e_step,
    ema_decay,
    ema_update,
    focal_weights,
    is_teacher_step,
    m_step_loss,
    mask_mode_labels,
)
from unseg.core.primaps.prototypes import Prototypes, principal_init


def test_ema_schedule_first_decays() -> None:
    decays = [ema_decay(k) for k in range(6)]
    assert decays == pytest.approx([0.0, 0.0, 0.5, 2 / 3, 0.75, 0.8])
    assert ema_decay(49) == pytest.approx(1 - 1 / 49)
    assert ema_decay(50) == pytest.approx(0.98)
    assert ema_decay(51) == ema_decay(10_000) == 0.98
    assert ema_decay(10, max_decay=0.5) == 0.5
    with pytest.raises(ValueError):
        ema_decay(-1)


def test_teacher_updates_every_ten_steps_from_step_ten() -> None:
    assert [s for s in range(0, 41) if is_teacher_step(s, 10)] == [10, 20, 30, 40]


def test_ema_update_copies_then_averages() -> None:
    teacher, student = Prototypes(torch.zeros(2, 3)), Prototypes(torch.ones(2, 3), torch.full((2,), 3.0))
    ema_update(teacher, student, 0.0)
    torch.testing.assert_close(teacher.direction, student.direction)
    torch.testing.assert_close(teacher.gain, student.gain)
    teacher = Prototypes(torch.zeros(2, 3), torch.ones(2))
    ema_update(teacher, student, 0.75)
    torch.testing.assert_close(teacher.direction, torch.full((2, 3), 0.25))
    torch.testing.assert_close(teacher.gain, torch.full((2,), 1.5))


def test_focal_weights_by_hand() -> None:
    probs = torch.tensor([[[[0.8, 0.6]], [[0.2, 0.4]]]], requires_grad=True)  # (1, 2, 1, 2)
    weights = focal_weights(probs, gamma=2.0)
    torch.testing.assert_close(weights, torch.tensor([0.3**2, 0.7**2]))
    assert not weights.requires_grad
    torch.testing.assert_close(focal_weights(probs.detach(), gamma=1.0), torch.tensor([0.3, 0.7]))


def test_m_step_loss_is_the_focal_weighted_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    pseudo = torch.randint(0, 3, (2, 4, 4), generator=gen)
    pseudo[0, 0] = 255
    weights = (1 - logits.detach().softmax(1).mean((0, 2, 3))) ** 2
    expected = F.cross_entropy(logits, pseudo, weight=weights, ignore_index=255)
    loss = m_step_loss(logits, pseudo)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_m_step_loss_without_labelled_pixels_is_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = m_step_loss(logits, torch.full((1, 2, 2), 255))
    assert float(loss) == 0.0
    loss.backward()
    assert float(logits.grad.abs().sum()) == 0.0


def test_mode_assignment_by_hand() -> None:
    pred = torch.tensor([[[0, 1, 1, 2],
                          [2, 2, 2, 0]],
                         [[1, 1, 0, 0],
                          [3, 3, 3, 3]]])
    masks = torch.tensor([[[0, 0, 0, 1],
                           [1, 1, 255, 255]],
                          [[0, 0, 0, 0],
                           [0, 7, 7, 255]]], dtype=torch.uint8)
    out = mask_mode_labels(pred, masks, num_classes=4)
    expected = torch.tensor([[[1, 1, 1, 2],      # mask 0: {0, 1, 1} -> 1; mask 1: {2, 2, 2} -> 2
                              [2, 2, 255, 255]],
                             [[0, 0, 0, 0],      # mask 0: {1, 1, 0, 0, 3} -> tie 0/1 -> 0 (smallest id)
                              [0, 3, 3, 255]]])  # mask 7: {3, 3} -> 3; images never mix
    torch.testing.assert_close(out, expected)


def test_e_step_upsamples_the_teacher_and_takes_the_mode() -> None:
    teacher = Prototypes(torch.eye(2))
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0, :, 0] = 1.0  # left column: class 0
    features[0, 1, :, 1] = 1.0  # right column: class 1
    masks = torch.zeros(1, 4, 4, dtype=torch.uint8)
    masks[0, :, 3] = 255
    pseudo, pred = e_step(teacher, features, masks)
    assert pred.shape == (1, 4, 4) and pred[0, 0].tolist() == [0, 0, 1, 1]
    assert pseudo[0, :, :3].unique().tolist() in ([0], [1]) and (pseudo[0, :, 3] == 255).all()


def test_prototypes_score_raw_features_with_gain() -> None:
    proto = Prototypes(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([2.0, 1.0]))
    features = torch.tensor([4.0, 5.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(proto(features).flatten(), torch.tensor([8.0, 5.0]))
    again = Prototypes.from_state(proto.state())
    torch.testing.assert_close(again(features), proto(features))


def test_principal_init_directions_and_sign_rule() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) * np.array([5.0, 2.0, 0.1])
    x[0] = [-40.0, 0.0, 0.0]  # the largest |cos| with the first axis is negative before the sign rule
    directions = principal_init(x, 2).numpy()
    np.testing.assert_allclose(np.abs(directions), [[1, 0, 0], [0, 1, 0]], atol=0.05)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ directions.T
    assert (cos[np.abs(cos).argmax(0), [0, 1]] > 0).all()


@pytest.mark.parametrize("k, count, channels, match", [(5, 4, 8, "only 4 feature vectors"),
                                                         (9, 100, 8, "only 8 channels"), (0, 10, 8, ">= 1")])
def test_principal_init_rejects_bad_k(k: int, count: int, channels: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        principal_init(np.ones((count, channels)), k)

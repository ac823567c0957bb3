"""losses.py: SAM's focal+dice+IoU loss, padded-instance masking, min-over-3 selection, mask distillation."""

from __future__ import annotations

import pytest
import torch

from supersam_hf.losses import LOSS_TYPES, mask_distillation_loss, sam_loss


def random_labels(batch: int = 2, prompts: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, prompts, size, size)
    for b in range(batch):
        for p in range(prompts):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(3, size // 2, (2,), generator=g).tolist()
            labels[b, p, y : y + h, x : x + w] = 1
    return labels


def perfect_logits(labels: torch.Tensor, num_masks: int = 1) -> torch.Tensor:
    return ((labels * 2 - 1) * 30.0)[:, :, None].repeat(1, 1, num_masks, 1, 1)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_perfect_prediction_is_near_zero(loss_type):
    labels = random_labels()
    out = sam_loss(perfect_logits(labels), torch.ones(2, 3, 1), labels, loss_type=loss_type)
    expected_keys = {"focal_dice": {"focal", "dice"}, "dice": {"dice"}, "dice_bce": {"bce", "dice"}}[loss_type]
    assert set(out) == {"loss", "iou", *expected_keys}
    for key in expected_keys:
        assert out[key].item() < 1e-3
    assert out["iou"].item() < 1e-8 and out["loss"].item() < 1e-2
    # A wrong prediction is clearly worse.
    wrong = sam_loss(-perfect_logits(labels), torch.ones(2, 3, 1), labels, loss_type=loss_type)
    assert wrong["loss"].item() > 0.5


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_sgd_on_free_logits_decreases_loss(loss_type):
    labels = random_labels(seed=1)
    logits = torch.zeros(2, 3, 3, 16, 16, requires_grad=True)
    scores = torch.full((2, 3, 3), 0.5, requires_grad=True)
    # Losses are means over pixels, so a per-pixel step of ~1 needs lr ≈ pixels × instances for the logits.
    optimizer = torch.optim.SGD([{"params": [logits], "lr": 3000.0}, {"params": [scores], "lr": 0.5}])
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = sam_loss(logits, scores, labels, loss_type=loss_type)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_padded_instances_are_ignored():
    labels = random_labels(prompts=4, seed=2)
    instance_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 16, 16, generator=g)
    scores = torch.rand(2, 4, 3, generator=g)
    reference = sam_loss(logits, scores, labels, instance_mask)
    changed_logits, changed_scores, changed_labels = logits.clone(), scores.clone(), labels.clone()
    changed_logits[~instance_mask] = float("nan")  # even NaN in padded slots cannot leak in
    changed_scores[~instance_mask] = 7.0
    changed_labels[~instance_mask] = 1.0
    changed = sam_loss(changed_logits, changed_scores, changed_labels, instance_mask)
    for key in reference:
        assert torch.equal(reference[key], changed[key]), key
    # Average over real instances = the loss of the real instances alone.
    alone = sam_loss(logits[0:1, :3], scores[0:1, :3], labels[0:1, :3])
    first_only = torch.tensor([[True, True, True, False], [False, False, False, False]])
    torch.testing.assert_close(sam_loss(logits, scores, labels, first_only)["loss"], alone["loss"])
    # No real instance at all: a zero that still back-propagates.
    logits.requires_grad_(True)
    empty = sam_loss(logits, scores, labels, torch.zeros(2, 4, dtype=torch.bool))
    empty["loss"].backward()
    assert empty["loss"].item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_min_over_three_selects_best_mask():
    labels = random_labels(seed=3)
    g = torch.Generator().manual_seed(1)
    perfect = perfect_logits(labels)[:, :, 0]
    logits = torch.stack([torch.randn(2, 3, 16, 16, generator=g) * 3, perfect, -perfect], dim=2)
    logits.requires_grad_(True)
    out = sam_loss(logits, torch.ones(2, 3, 3), labels, iou_weight=0.0, return_mask_index=True)
    assert out["mask_index"].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert out["focal"].item() < 1e-3 and out["dice"].item() < 1e-3
    out["loss"].backward()
    assert logits.grad[:, :, 0].abs().sum() == 0 and logits.grad[:, :, 2].abs().sum() == 0
    # The IoU head is trained on all three masks: actual IoUs are (random, 1, 0).
    iou_only = sam_loss(logits.detach(), torch.tensor([1.0, 1.0, 0.0]).expand(2, 3, 3), labels)
    assert iou_only["iou"].item() > 0  # mask 0's IoU is not 1
    exact = sam_loss(logits.detach()[:, :, 1:], torch.tensor([1.0, 0.0]).expand(2, 3, 2), labels)
    assert exact["iou"].item() < 1e-8


def test_loss_errors():
    labels = random_labels()
    with pytest.raises(ValueError, match="focal_dice.*dice.*dice_bce"):
        sam_loss(perfect_logits(labels), torch.ones(2, 3, 1), labels, loss_type="lovasz")
    with pytest.raises(ValueError, match="labels must be"):
        sam_loss(perfect_logits(labels), torch.ones(2, 3, 1), labels[..., :8, :8])
    with pytest.raises(ValueError, match="pred_masks"):
        sam_loss(perfect_logits(labels)[:, :, 0], torch.ones(2, 3, 1), labels)


def test_mask_distillation():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 3, 16, 16, generator=g) * 4
    instance_mask = torch.tensor([[True, True, False], [True, False, False]])
    assert mask_distillation_loss(teacher.clone(), teacher, instance_mask).item() == 0.0
    student = torch.randn(2, 3, 3, 16, 16, generator=g, requires_grad=True)
    teacher_param = teacher.clone().requires_grad_(True)
    loss = mask_distillation_loss(student, teacher_param, instance_mask)
    assert loss.item() > 0.1
    loss.backward()
    assert teacher_param.grad is None  # the teacher's targets are detached
    assert student.grad[~instance_mask].abs().sum() == 0 and student.grad[instance_mask].abs().sum() > 0
    # Padded slots do not count.
    moved = student.detach().clone()
    moved[~instance_mask] = 100.0
    assert torch.equal(mask_distillation_loss(moved, teacher, instance_mask), loss.detach())
    # With mask_index only the selected mask is distilled; single-mask (B, P, h, w) logits work too.
    picked = student.detach().clone()
    picked[:, :, 1] = teacher[:, :, 1]
    index = torch.ones(2, 3, dtype=torch.long)
    assert mask_distillation_loss(picked, teacher, instance_mask, mask_index=index).item() == 0.0
    assert mask_distillation_loss(picked, teacher, instance_mask).item() > 0
    assert mask_distillation_loss(teacher[:, :, 0], teacher[:, :, 0]).item() == 0.0
    # SGD moves the student onto the teacher.
    free = torch.zeros(2, 3, 1, 16, 16, requires_grad=True)
    optimizer = torch.optim.SGD([free], lr=1000.0)
    start = mask_distillation_loss(free, teacher[:, :, :1]).item()
    for _ in range(20):
        optimizer.zero_grad()
        mask_distillation_loss(free, teacher[:, :, :1]).backward()
        optimizer.step()
    assert mask_distillation_loss(free, teacher[:, :, :1]).item() < 0.2 * start

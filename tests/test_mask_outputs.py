"""Both of SAM's calling conventions train: the single-mask output (multimask_output=False) read from the training
forward is exactly the model's, SAM's loss supervises it for unambiguous prompts, and a short box-prompt training
improves the mIoU of both `multimask_output=False` and the best of three."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from helpers import prompt_inputs, tiny_processor, tiny_sam, tiny_supernet

from supersam_hf.data import SamCollator, SamSegmentationData, make_synthetic_shapes, model_inputs
from supersam_hf.evaluation import evaluate_model
from supersam_hf.losses import sam_loss
from supersam_hf.training.mask_outputs import capture_single_output, single_output, unambiguous_prompts
from supersam_hf.training.sandwich import sandwich_backward

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("kind", ["boxes", "points"])
@pytest.mark.parametrize("make", [tiny_sam, tiny_supernet])
def test_single_output_is_what_multimask_output_false_returns(make, kind):
    model = make(num_layers=2)
    inputs = prompt_inputs(kind)
    expected = model(**inputs, multimask_output=False)
    with capture_single_output(model.mask_decoder) as captured:
        outputs = model(**inputs, multimask_output=True)
    masks, scores = single_output(model.mask_decoder, captured)
    torch.testing.assert_close(masks, expected.pred_masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(scores, expected.iou_scores, rtol=0, atol=0)
    torch.testing.assert_close(outputs.pred_masks, model(**inputs, multimask_output=True).pred_masks)  # unchanged
    # The hooks are gone after the block, and the rebuilt mask is differentiable down to token 0.
    assert not any(m._forward_hooks for m in model.mask_decoder.modules())
    masks.sum().backward()
    assert model.mask_decoder.mask_tokens.weight.grad[0].abs().sum() > 0


def test_single_output_without_a_forward_is_refused():
    with pytest.raises(RuntimeError, match="capture_single_output"):
        single_output(tiny_sam(num_layers=1).mask_decoder, {})


def test_unambiguous_prompts_follow_sam():
    assert unambiguous_prompts(prompt_inputs("boxes"))
    two_points = prompt_inputs("points")  # (B, P, 2 points, 2)
    assert unambiguous_prompts(two_points)
    one_point = {**two_points, "input_points": two_points["input_points"][:, :, :1],
                 "input_labels": two_points["input_labels"][:, :, :1]}
    assert not unambiguous_prompts(one_point)


def test_sam_loss_adds_the_single_output_in_full():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(2, 3, 16, 16, generator=g) > 0.5).float()
    multi, scores = torch.randn(2, 3, 3, 16, 16, generator=g), torch.rand(2, 3, 3, generator=g)
    single, single_scores = torch.randn(2, 3, 1, 16, 16, generator=g), torch.rand(2, 3, 1, generator=g)
    instance_mask = torch.tensor([[True, True, False], [True, False, False]])
    base = sam_loss(multi, scores, labels, instance_mask, loss_type="dice_bce", iou_weight=0.0)
    both = sam_loss(multi, scores, labels, instance_mask, loss_type="dice_bce", iou_weight=0.0, single_masks=single,
                    single_iou_scores=single_scores)
    alone = sam_loss(single, single_scores, labels, instance_mask, loss_type="dice_bce", iou_weight=0.0)
    torch.testing.assert_close(both["loss"], base["loss"] + alone["loss"])  # no selection: the single mask's loss
    torch.testing.assert_close(both["single"], alone["loss"])
    # Its IoU score joins the MSE: 4 outputs per real instance.
    with_iou = sam_loss(multi, scores, labels, instance_mask, loss_type="dice_bce", single_masks=single,
                        single_iou_scores=single_scores)
    assert with_iou["iou"] != base["iou"]
    single[~instance_mask] = float("nan")  # padded slots never leak in
    assert torch.isfinite(sam_loss(multi, scores, labels, instance_mask, single_masks=single,
                                   single_iou_scores=single_scores)["loss"])
    with pytest.raises(ValueError, match="together"):
        sam_loss(multi, scores, labels, single_masks=single)
    with pytest.raises(ValueError, match="one mask per prompt"):
        sam_loss(multi, scores, labels, single_masks=multi, single_iou_scores=scores)


def test_box_training_improves_both_calling_conventions():
    """The issue's measurement: box-prompt training used to leave multimask_output=False untrained (0.05 -> 0.06)."""
    torch.manual_seed(0)
    supernet = tiny_supernet(num_layers=2)
    processor = tiny_processor(64)
    images = make_synthetic_shapes(4, image_size=64, seed=0, max_shapes=3)
    data = SamSegmentationData(images, processor, prompt="box", seed=0)
    batch = SamCollator(prompt="box")([data[i] for i in range(len(data))])
    inputs = model_inputs(batch)

    def miou(selection: str) -> float:
        return evaluate_model(supernet, images, processor, prompt="box", mask_selection=selection,
                              show_progress=False)["miou"]

    before = {selection: miou(selection) for selection in ("single_output", "single")}
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(supernet.parameters(), lr=3e-3)
    supernet.train()
    try:
        for _ in range(50):
            sandwich_backward(accelerator, supernet, inputs, batch["labels"], batch["instance_mask"],
                              [("largest", supernet.search_space.largest())], loss_type="dice_bce")
            optimizer.step()
            optimizer.zero_grad()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    supernet.eval()
    after = {selection: miou(selection) for selection in ("single_output", "single")}
    assert before["single_output"] < 0.2 and after["single_output"] > before["single_output"] + 0.2, (before, after)
    assert after["single"] > before["single"] + 0.2, (before, after)


def test_the_iou_loss_weight_scales_only_the_iou_heads_gradient():
    """--iou_loss_weight reaches the loss: the IoU head's gradient (which only the IoU MSE reaches) is 0 at weight 0
    and doubles at weight 2."""
    torch.manual_seed(0)
    supernet = tiny_supernet(num_layers=2)
    images = make_synthetic_shapes(2, image_size=64, seed=0, max_shapes=2)
    batch = SamCollator(prompt="box")([SamSegmentationData(images, tiny_processor(64), prompt="box", seed=0)[i]
                                       for i in range(2)])
    head = supernet.mask_decoder.iou_prediction_head.proj_out.weight
    grads = {}
    try:
        for weight in (0.0, 1.0, 2.0):
            supernet.zero_grad()
            sandwich_backward(Accelerator(cpu=True), supernet, model_inputs(batch), batch["labels"],
                              batch["instance_mask"], [("largest", supernet.search_space.largest())],
                              loss_type="dice_bce", iou_weight=weight)
            grads[weight] = head.grad.clone()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert torch.count_nonzero(grads[0.0]) == 0 and torch.count_nonzero(grads[1.0]) > 0
    torch.testing.assert_close(grads[2.0], 2 * grads[1.0])


def test_evaluate_scores_the_single_output_on_request(tmp_path):
    """`supersam evaluate --mask_selection single_output` scores what multimask_output=False returns."""
    import json

    from supersam_hf.cli import main

    sam = tiny_sam(num_layers=1)
    sam.save_pretrained(tmp_path / "sam")
    tiny_processor(64).save_pretrained(tmp_path / "sam")
    images = make_synthetic_shapes(2, image_size=64, seed=0, max_shapes=2)
    images.save_to_disk(str(tmp_path / "data"))
    results = {}
    for selection in ("single", "single_output"):
        out = tmp_path / selection
        assert main(["evaluate", "--model_name_or_path", str(tmp_path / "sam"), "--dataset_name", str(tmp_path / "data"),
                     "--prompt_type", "box", "--mask_selection", selection, "--output_dir", str(out)]) == 0
        results[selection] = json.loads((out / "eval_results.json").read_text())
    assert results["single_output"]["mask_selection"] == "single_output"
    direct = evaluate_model(sam, images, tiny_processor(64), prompt="box", mask_selection="single_output",
                            show_progress=False)
    assert results["single_output"]["miou"] == pytest.approx(direct["miou"], abs=1e-12)
    assert results["single_output"]["miou"] != results["single"]["miou"]  # another output of the decoder

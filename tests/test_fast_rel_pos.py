"""`use_fast_sam_rel_pos`: transformers' own `SamModel` with SAM's relative-position bias written in one pass gives
bitwise the same outputs (eager and SDPA attention, windowed and global layers), without the copies; the setting is
process-wide or scoped to a `with` block, and nothing changes on import."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamVisionAttention

import supersam_hf
from supersam_hf.fast_rel_pos import _TRANSFORMERS_REL_POS, decomposed_rel_pos, fast_sam_rel_pos_enabled
from helpers import prompt_inputs, tiny_sam


@pytest.fixture(autouse=True)
def transformers_own_rel_pos_after_each_test():
    yield
    supersam_hf.use_fast_sam_rel_pos(False)


def test_nothing_changes_on_import():
    assert not fast_sam_rel_pos_enabled() and SamVisionAttention.get_decomposed_rel_pos is _TRANSFORMERS_REL_POS


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_outputs_are_bitwise_those_of_transformers_own_bias(attention):
    weights = tiny_sam(num_layers=4, image_size=64, window_size=2, global_attn_indexes=[1, 3])
    sam = SamModel._from_config(weights.config, attn_implementation=attention).eval()
    sam.load_state_dict(weights.state_dict())
    inputs = prompt_inputs("boxes", batch=2, image_size=64, seed=1)
    with torch.no_grad():
        own = sam(**inputs)
        with supersam_hf.use_fast_sam_rel_pos():
            assert fast_sam_rel_pos_enabled()
            fast = sam(**inputs)
    assert not fast_sam_rel_pos_enabled()  # the block's end puts transformers' own back
    for name in ("iou_scores", "pred_masks"):
        assert torch.equal(own[name], fast[name]), name
    assert (own.pred_masks.std() > 0.01).item()  # not a vacuous comparison


def test_the_bias_is_contiguous_and_equal_and_the_reshape_is_a_view():
    attention = tiny_sam(num_layers=2, image_size=64).vision_encoder.layers[0].attn
    query = torch.randn(6, 4 * 4, attention.qkv.in_features // attention.num_attention_heads)
    tables = attention.rel_pos_h, attention.rel_pos_w
    own = _TRANSFORMERS_REL_POS(attention, query, *tables, (4, 4), (4, 4))
    fast = decomposed_rel_pos(attention, query, *tables, (4, 4), (4, 4))
    assert torch.equal(own, fast) and fast.is_contiguous()
    assert fast.reshape(6, 16, 16).data_ptr() == fast.data_ptr()  # SDPA's mask shape without a copy


def test_the_setting_holds_until_changed_and_a_block_restores_the_previous_one():
    supersam_hf.use_fast_sam_rel_pos()
    assert fast_sam_rel_pos_enabled()
    with supersam_hf.use_fast_sam_rel_pos(False):
        assert not fast_sam_rel_pos_enabled()
    assert fast_sam_rel_pos_enabled()
    supersam_hf.use_fast_sam_rel_pos(False)
    assert SamVisionAttention.get_decomposed_rel_pos is _TRANSFORMERS_REL_POS

"""The exported image encoder's attention (`onnx_export.attention`): SAM's relative-position bias folded into the
attention product on the layers the rule picks, windowed layers without work on the padding; the same maths as
transformers' SAM, in PyTorch and in ONNX Runtime, with the model's own forwards back afterwards."""

import pytest
import torch
from transformers import SamModel

from supersam_hf import build_sam_config
from supersam_hf.onnx_export.attention import FOLD_MAX_EXTRA_DIMS, export_attention


@pytest.fixture(scope="module")
def sam():
    """A tiny SAM whose windowed layers pad their grid (8 tokens in windows of 3) and whose relative-position tables
    are random (transformers initialises them to zero, which would make the bias vanish)."""
    torch.manual_seed(0)
    model = SamModel(build_sam_config(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                      num_attention_heads=2, window_size=3, output_channels=16)).eval()
    with torch.no_grad():
        for layer in model.vision_encoder.layers:
            layer.attn.rel_pos_h.normal_(0, 0.5)
            layer.attn.rel_pos_w.normal_(0, 0.5)
    return model


def _encode(model, pixels):
    with torch.no_grad():
        return model.vision_encoder(pixels).last_hidden_state


def test_folded_attention_equals_transformers_attention(sam):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reference = _encode(sam, pixels)
    with export_attention(sam) as folded:
        assert folded == [0, 1, 2]  # windows of 3 and the global grid of 8: 6 and 16 extra dims
        out = _encode(sam, pixels)
    assert torch.allclose(out, reference, atol=1e-5, rtol=0) and not torch.equal(out, reference)
    assert all("forward" not in vars(layer) and "forward" not in vars(layer.attn) for layer in sam.vision_encoder.layers)
    assert torch.equal(_encode(sam, pixels), reference)


def test_unfolded_windowed_layers_and_a_sam_without_relative_positions_keep_the_maths(sam):
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    reference = _encode(sam, pixels)
    with export_attention(sam, max_extra_dims=0) as folded:  # every layer rewritten, the bias added to the logits
        assert folded == []
        assert all("forward" in vars(layer) for layer in sam.vision_encoder.layers[:2])
        assert "forward" in vars(sam.vision_encoder.layers[2].attn)  # the global layer
        assert torch.allclose(_encode(sam, pixels), reference, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    plain = SamModel(build_sam_config(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, window_size=3, output_channels=16)).eval()
    plain.vision_encoder.config.use_rel_pos = False
    for layer in plain.vision_encoder.layers:
        layer.attn.use_rel_pos = False
    reference = _encode(plain, pixels)
    with export_attention(plain) as folded:
        assert folded == []
        assert torch.allclose(_encode(plain, pixels), reference, atol=1e-5, rtol=0)


def test_the_rule_leaves_large_grids_unfolded_and_restores_after_an_error(sam):
    with export_attention(sam, max_extra_dims=6) as folded:  # only the windowed layers (3 + 3)
        assert folded == [0, 1]
    with pytest.raises(RuntimeError, match="inside"), export_attention(sam):
        raise RuntimeError("inside")
    assert all("forward" not in vars(layer) and "forward" not in vars(layer.attn) for layer in sam.vision_encoder.layers)
    # ViT-B at patch 16: global layers folded at 512 px (32 + 32 tokens), added to the logits at 768 px (48 + 48) and above
    assert 2 * (512 // 16) <= FOLD_MAX_EXTRA_DIMS < 2 * (768 // 16)


def test_onnx_runtime_runs_the_folded_encoder_like_pytorch(sam, tmp_path):
    pytest.importorskip("onnxruntime")
    from supersam_hf.onnx_export import export_vision_encoder, ort_session

    path = export_vision_encoder(sam, tmp_path / "vision_encoder.onnx")
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    embeddings = ort_session(path, threads=1).run(None, {"pixel_values": pixels.numpy()})[0]
    assert torch.allclose(torch.from_numpy(embeddings), _encode(sam, pixels), atol=1e-5, rtol=0)
    assert all("forward" not in vars(layer) and "forward" not in vars(layer.attn) for layer in sam.vision_encoder.layers)

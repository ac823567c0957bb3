"""Analytic multiply–accumulate (MAC) count of a vanilla `transformers.SamModel` forward, from its config alone.

The count mirrors, op by op, what `torch.utils.flop_counter.FlopCounterMode` sees on the real forward
(`FLOPs / 2 = MACs`): matrix products (`mm`, `addmm`, `bmm`, so `nn.Linear`, `@`/`matmul` and `einsum`, which
lowers to `bmm`), convolutions (including transposed ones) and fused attention (`scaled_dot_product_attention`,
counted as its two products `QK^T` and `AV`). Everything FlopCounterMode does not count is not counted here
either: bias additions, elementwise ops (residual adds, activations, positional-embedding adds, scaling),
softmax, layer norms, interpolation of the relative-position tables, padding and window (un)partitioning.

Note: on CPU, SDPA dispatches to `aten._scaled_dot_product_flash_attention_for_cpu`, which FlopCounterMode has no
formula for (it counts 0 there). This module always counts attention's `QK^T` and `AV`, i.e. it matches
FlopCounterMode on the eager implementation, and on SDPA once that CPU op is given the standard SDPA formula
(`custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop}`).

Structure, so that subnet costs are sums over kept layers:

    image encoder = patch embedding + Σ_kept encoder_layer_macs(layer, width) + neck

where each kept layer keeps its own attention kind (windowed, or global over the whole token grid). Every encoder
function takes an optional `hidden_size`, the embedding width of a subnet (whole heads of the config's head size;
default: the config's `hidden_size`), so a width subnet's cost is the same sum at that width.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import SamConfig
from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamVisionConfig

__all__ = [
    "attention_macs",
    "count_sam_macs",
    "encoder_macs",
    "encoder_layer_macs",
    "patch_embed_macs",
    "neck_macs",
    "prompt_encoder_macs",
    "mask_decoder_macs",
    "mlp_macs",
    "subnet_macs",
    "subnet_params",
]


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _token_grid(vision_config: SamVisionConfig) -> tuple[int, int]:
    """Height and width of the encoder's token grid (the patch-embedding conv's output)."""
    (image_h, image_w), (patch_h, patch_w) = _pair(vision_config.image_size), _pair(vision_config.patch_size)
    return image_h // patch_h, image_w // patch_w


def _linear(tokens: int, in_features: int, out_features: int) -> int:
    return tokens * in_features * out_features


def _feed_forward(tokens: int, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> int:
    """`SamFeedForward`: proj_in, (num_layers - 2) hidden layers, proj_out."""
    return tokens * (input_dim * hidden_dim + (num_layers - 2) * hidden_dim * hidden_dim + hidden_dim * output_dim)


# --------------------------------------------------------------------------------------------------- image encoder


def _width(vision_config: SamVisionConfig, hidden_size: int | None) -> int:
    return vision_config.hidden_size if hidden_size is None else int(hidden_size)


def patch_embed_macs(vision_config: SamVisionConfig, hidden_size: int | None = None) -> int:
    """The patch-embedding convolution (kernel = stride = patch size) to `hidden_size` channels."""
    grid_h, grid_w = _token_grid(vision_config)
    patch_h, patch_w = _pair(vision_config.patch_size)
    return grid_h * grid_w * _width(vision_config, hidden_size) * vision_config.num_channels * patch_h * patch_w


def neck_macs(vision_config: SamVisionConfig, hidden_size: int | None = None) -> int:
    """The neck: a 1x1 conv from `hidden_size` to `output_channels`, then a 3x3 conv (padding 1) at
    `output_channels`."""
    grid_h, grid_w = _token_grid(vision_config)
    out = vision_config.output_channels
    return grid_h * grid_w * out * (_width(vision_config, hidden_size) + 9 * out)


def attention_macs(vision_config: SamVisionConfig, window_size: int, hidden_size: int | None = None) -> int:
    """One `SamVisionAttention` call (qkv, attention products, relative positions, proj) over the grid, at
    embedding width `hidden_size` (heads of the config's head size; products summed over heads scale with it).

    `window_size > 0`: the grid is padded to a multiple of the window and attention runs per window, so qkv/proj
    also run on the padding tokens. `window_size == 0`: global attention over the whole grid.
    """
    hidden = _width(vision_config, hidden_size)
    grid_h, grid_w = _token_grid(vision_config)
    if window_size > 0:
        win_h = win_w = window_size
        num_windows = -(-grid_h // window_size) * -(-grid_w // window_size)
    else:
        win_h, win_w, num_windows = grid_h, grid_w, 1
    window_tokens = win_h * win_w
    tokens = num_windows * window_tokens  # padded

    macs = _linear(tokens, hidden, 3 * hidden)  # qkv
    # QK^T and AV: per window and head, (N x hd) @ (hd x N) and (N x N) @ (N x hd); summed over heads -> hidden.
    macs += 2 * num_windows * window_tokens * window_tokens * hidden
    if vision_config.use_rel_pos:
        # get_decomposed_rel_pos: einsum("bhwc,hkc->bhwk") and einsum("bhwc,wkc->bhwk") with b = windows * heads,
        # c = head_dim, k = key height / width; the table lookup (interpolate + gather) is not a product.
        macs += num_windows * window_tokens * (win_h + win_w) * hidden
    macs += _linear(tokens, hidden, hidden)  # proj
    return macs


def mlp_macs(vision_config: SamVisionConfig, mlp_width: int | None = None, hidden_size: int | None = None) -> int:
    """One encoder MLP (`lin1` + `lin2`) of hidden width `mlp_width` over the unpadded token grid."""
    grid_h, grid_w = _token_grid(vision_config)
    width = vision_config.mlp_dim if mlp_width is None else int(mlp_width)
    return 2 * _linear(grid_h * grid_w, _width(vision_config, hidden_size), width)


def encoder_layer_macs(
    vision_config: SamVisionConfig,
    layer_index: int,
    mlp_width: int | None = None,
    global_attn: bool | None = None,
    hidden_size: int | None = None,
) -> int:
    """MACs of one `SamVisionLayer` whose MLP hidden width is `mlp_width` (default: `vision_config.mlp_dim`), at
    embedding width `hidden_size` (default: `vision_config.hidden_size`).

    The attention kind is global if `global_attn` says so, else (when `global_attn` is None) if `layer_index` is in
    `vision_config.global_attn_indexes`; otherwise windowed with `vision_config.window_size` (0 also means global).
    """
    if mlp_width is None:
        mlp_width = vision_config.mlp_dim
    if global_attn is None:
        global_attn = layer_index in vision_config.global_attn_indexes
    window_size = 0 if global_attn else vision_config.window_size
    return attention_macs(vision_config, window_size, hidden_size) + mlp_macs(vision_config, mlp_width, hidden_size)


def encoder_macs(
    vision_config: SamVisionConfig,
    layer_widths: Sequence[int | None],
    global_flags: Sequence[bool] | None = None,
    hidden_size: int | None = None,
) -> int:
    """Image-encoder MACs: patch embedding + Σ kept layers + neck, at embedding width `hidden_size` (default:
    the config's).

    `layer_widths[i]` is layer i's MLP width, or None for a dropped layer. Layer i's attention kind comes from
    `global_flags[i]` if given, else from `vision_config.global_attn_indexes`.
    """
    if global_flags is not None and len(global_flags) != len(layer_widths):
        raise ValueError(f"global_flags has {len(global_flags)} entries, layer_widths {len(layer_widths)}")
    total = patch_embed_macs(vision_config, hidden_size) + neck_macs(vision_config, hidden_size)
    for i, width in enumerate(layer_widths):
        if width is None:
            continue
        flag = None if global_flags is None else bool(global_flags[i])
        total += encoder_layer_macs(vision_config, i, int(width), global_attn=flag, hidden_size=hidden_size)
    return total


# ------------------------------------------------------------------------------------------------- prompt encoder


def _prompt_layout(num_prompts: int, points_per_prompt: int, use_boxes: bool) -> tuple[int, int]:
    """(point batch size, sparse prompt tokens per prompt) exactly as `SamPromptEncoder` builds them."""
    sparse = 0
    if points_per_prompt > 0:
        sparse += points_per_prompt + (0 if use_boxes else 1)  # a pad point is appended when there are no boxes
    if use_boxes:
        sparse += 2  # two corners per box
    point_batch = num_prompts if sparse > 0 else 1
    return point_batch, sparse


def prompt_encoder_macs(
    config: SamConfig, num_prompts: int = 1, points_per_prompt: int = 1, use_boxes: bool = False
) -> int:
    """Random-Fourier positional encodings: of the prompt points / box corners, and of the image-wide grid.

    Each is `coords @ positional_embedding` with a (2 x num_pos_feats) matrix. The image-wide grid encoding is
    computed by `SamModel.get_image_wide_positional_embeddings` (module `shared_image_embedding`, the weight the
    prompt encoder shares) on every forward; it is counted here. Mask prompts (`input_masks`) are not modelled.
    """
    num_pos_feats = config.vision_config.num_pos_feats
    size = config.prompt_encoder_config.image_embedding_size
    point_batch, sparse = _prompt_layout(num_prompts, points_per_prompt, use_boxes)
    macs = size * size * 2 * num_pos_feats
    if sparse > 0:
        macs += point_batch * sparse * 2 * num_pos_feats
    return macs


# --------------------------------------------------------------------------------------------------- mask decoder


def _sam_attention_macs(
    decoder_config: SamMaskDecoderConfig, batch: int, query_tokens: int, key_tokens: int, downsample_rate: int
) -> int:
    """`SamAttention`: q/k/v projections to `hidden // downsample_rate`, QK^T, AV, out projection."""
    hidden = decoder_config.hidden_size
    internal = hidden // downsample_rate
    macs = _linear(batch * query_tokens, hidden, internal)  # q
    macs += 2 * _linear(batch * key_tokens, hidden, internal)  # k, v
    macs += 2 * batch * query_tokens * key_tokens * internal  # QK^T, AV (summed over heads)
    macs += _linear(batch * query_tokens, internal, hidden)  # out
    return macs


def mask_decoder_macs(
    config: SamConfig,
    num_prompts: int = 1,
    points_per_prompt: int = 1,
    use_boxes: bool = False,
    multimask_output: bool = True,
) -> int:
    """Two-way transformer, output upscaling, hypernetwork MLPs, mask product and IoU head for one image.

    Every prompt (point batch entry) runs the whole decoder on its own copy of the image embedding. All
    `num_multimask_outputs + 1` masks are computed and only then sliced, so `multimask_output` does not change the
    count (kept for signature symmetry with `SamModel.forward`).
    """
    del multimask_output  # selection happens after all masks are computed
    dec = config.mask_decoder_config
    hidden = dec.hidden_size
    rate = dec.attention_downsample_rate
    grid_h, grid_w = _token_grid(config.vision_config)
    image_tokens = grid_h * grid_w
    num_mask_tokens = dec.num_multimask_outputs + 1
    point_batch, sparse = _prompt_layout(num_prompts, points_per_prompt, use_boxes)
    tokens = 1 + num_mask_tokens + sparse

    macs = 0
    for _ in range(dec.num_hidden_layers):
        macs += _sam_attention_macs(dec, point_batch, tokens, tokens, 1)  # token self-attention
        macs += _sam_attention_macs(dec, point_batch, tokens, image_tokens, rate)  # token -> image
        macs += 2 * _linear(point_batch * tokens, hidden, dec.mlp_dim)  # MLP lin1 + lin2
        macs += _sam_attention_macs(dec, point_batch, image_tokens, tokens, rate)  # image -> token
    macs += _sam_attention_macs(dec, point_batch, tokens, image_tokens, rate)  # final token -> image

    # Output upscaling: two stride-2, kernel-2 transposed convs (C -> C/4 at the grid, C/4 -> C/8 at 2x grid).
    macs += point_batch * image_tokens * 4 * hidden * (hidden // 4)
    macs += point_batch * 4 * image_tokens * 4 * (hidden // 4) * (hidden // 8)
    # One 3-layer hypernetwork MLP per mask token, then masks = hyper_in @ upscaled embedding (at 4x grid).
    macs += num_mask_tokens * _feed_forward(point_batch, hidden, hidden, hidden // 8, 3)
    macs += point_batch * num_mask_tokens * (hidden // 8) * 16 * image_tokens
    # IoU prediction head on the IoU token.
    macs += _feed_forward(point_batch, hidden, dec.iou_head_hidden_dim, num_mask_tokens, dec.iou_head_depth)
    return macs


# -------------------------------------------------------------------------------------------------------- total


def count_sam_macs(
    config: SamConfig,
    num_prompts: int = 1,
    points_per_prompt: int = 1,
    use_boxes: bool = False,
    multimask_output: bool = True,
    per_part: bool = False,
) -> int | dict[str, int]:
    """MACs of one image's `SamModel` forward (`pixel_values` + prompts), computed from `config` alone.

    `num_prompts` prompts (the point batch), each with `points_per_prompt` points (a pad point is appended when
    there are no boxes) and, if `use_boxes`, one box. With `per_part`, a dict with keys "image_encoder",
    "prompt_encoder", "mask_decoder" and "total".
    """
    vision = config.vision_config
    image_encoder = encoder_macs(vision, [vision.mlp_dim] * vision.num_hidden_layers)
    prompt_encoder = prompt_encoder_macs(config, num_prompts, points_per_prompt, use_boxes)
    mask_decoder = mask_decoder_macs(config, num_prompts, points_per_prompt, use_boxes, multimask_output)
    total = image_encoder + prompt_encoder + mask_decoder
    if per_part:
        return {
            "image_encoder": image_encoder,
            "prompt_encoder": prompt_encoder,
            "mask_decoder": mask_decoder,
            "total": total,
        }
    return total


# ------------------------------------------------------------------------------------------ subnets, from the rules


def subnet_macs(sam_config: SamConfig, num_prompts: int = 1) -> int:
    """MACs of one image (with `num_prompts` point prompts) through a subnet's exported checkpoint, whose config
    `elastic.export_sam_config` composed from the rules: each rule's share (embedding: patch embedding, neck and
    each kept layer's attention; MLP: each kept layer's MLP at the exported width; depth: which layers, each at its
    attention kind) plus the prompt encoder and the mask decoder."""
    from .elastic import DEPTH, EMBEDDING, MLP

    vision = sam_config.vision_config
    encoder = EMBEDDING.stem_macs(vision)
    for global_attn in DEPTH.layers(vision):
        encoder += EMBEDDING.layer_macs(vision, global_attn) + MLP.layer_macs(vision)
    return encoder + prompt_encoder_macs(sam_config, num_prompts) + mask_decoder_macs(sam_config, num_prompts)


def subnet_params(sam_config: SamConfig, fixed_params: int) -> int:
    """Parameters of a subnet's exported checkpoint: the rules' shares of the image encoder (embedding: patch
    embedding, `pos_embed`, neck, each kept layer's LayerNorms, attention and position tables; MLP: each kept
    layer's MLP) plus `fixed_params`, the parameters no elastic kind changes (prompt encoder, mask decoder)."""
    from .elastic import DEPTH, EMBEDDING, MLP

    vision = sam_config.vision_config
    encoder = EMBEDDING.stem_params(vision)
    for global_attn in DEPTH.layers(vision):
        encoder += EMBEDDING.layer_params(vision, global_attn) + MLP.layer_params(vision)
    return encoder + fixed_params

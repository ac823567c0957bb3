# Copyright 2026 The supersam_hf Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""`SuperSamConfig`: a `SamConfig` that also carries the supernet's search space (saved in config.json)."""

from __future__ import annotations

from transformers import SamConfig
from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

from .errors import SupersamError
from .search_space import (
    check_image_size_choices,
    check_search_space,
    default_hidden_size_choices,
    default_image_size_choices,
)

# MLP width: fractions of `mlp_dim` (down to 12.5 %).
DEFAULT_WIDTH_RATIOS = (0.125, 0.25, 0.5, 0.75, 1.0)
# Embedding width: fractions of the attention heads (rounded to whole heads; head size unchanged; down to 25 %).
DEFAULT_HEAD_RATIOS = (0.25, 0.5, 0.75, 1.0)
# Input resolution: fractions of the image size (rounded to whole patches), e.g. 512 / 768 / 1024 px.
DEFAULT_RESOLUTION_RATIOS = (0.5, 0.75, 1.0)


class SuperSamConfig(SamConfig):
    r"""
    Configuration of a [`SuperSamModel`]: every field of [`SamConfig`] plus the search space.

    elastic_layers (`list[int]`, *optional*):
        Encoder layer indices that a subnet may drop. Defaults to every layer but the first.
    layer_drop_probs (`list[float]`, *optional*):
        Probability, in [0, 1), that a sampled subnet drops each elastic layer (aligned with `elastic_layers`).
        Defaults to 0.25 for each; `prioritize` replaces it with probabilities measured from data.
    mlp_dim_choices (`list[list[int]]`, *optional*):
        Allowed MLP hidden widths per encoder layer. Defaults to 12.5/25/50/75/100 % of `vision_config.mlp_dim`.
    min_layers (`int`, *optional*):
        No subnet keeps fewer encoder layers. Defaults to half the layers.
    hidden_size_choices (`list[int]`, *optional*):
        Allowed embedding widths of the encoder (uniform across layers), multiples of the head size
        `vision_config.hidden_size / vision_config.num_attention_heads`, the full width included. Defaults to
        25/50/75/100 % of the heads, rounded to whole heads.
    image_size_choices (`list[int]`, *optional*):
        Allowed input resolutions (square, in pixels, multiples of `vision_config.patch_size`), the full
        `vision_config.image_size` included. A subnet at a smaller resolution resizes its input (antialiased) and
        exports as a standard SAM at that size. Defaults to 50/75/100 % of the image size.
    prioritized (`bool`, *optional*, defaults to `False`):
        Whether MLP neurons, embedding channels and heads were importance-ordered and drop probabilities measured
        (see `prioritize`).
    base_model (`str`, *optional*):
        The SAM checkpoint (Hub id or path) the supernet was converted from; exported model cards cite it.
    """

    model_type = "supersam"

    elastic_layers: list[int] | None = None
    layer_drop_probs: list[float] | None = None
    mlp_dim_choices: list[list[int]] | None = None
    min_layers: int | None = None
    hidden_size_choices: list[int] | None = None
    image_size_choices: list[int] | None = None
    prioritized: bool = False
    base_model: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        num_layers = self.vision_config.num_hidden_layers
        mlp_dim = self.vision_config.mlp_dim
        if self.elastic_layers is None:
            self.elastic_layers = list(range(1, num_layers))
        self.elastic_layers = [int(i) for i in self.elastic_layers]
        if self.layer_drop_probs is None:
            self.layer_drop_probs = [0.25] * len(self.elastic_layers)
        self.layer_drop_probs = [float(p) for p in self.layer_drop_probs]
        if self.mlp_dim_choices is None:
            widths = sorted({max(1, round(r * mlp_dim)) for r in DEFAULT_WIDTH_RATIOS})
            self.mlp_dim_choices = [list(widths) for _ in range(num_layers)]
        self.mlp_dim_choices = [sorted(int(d) for d in c) for c in self.mlp_dim_choices]
        if self.min_layers is None:
            self.min_layers = max(1, num_layers // 2)
        hidden_size, num_heads = self.vision_config.hidden_size, self.vision_config.num_attention_heads
        if self.hidden_size_choices is None:  # also for configs saved before the width dimension existed
            self.hidden_size_choices = default_hidden_size_choices(hidden_size, num_heads, DEFAULT_HEAD_RATIOS)
        self.hidden_size_choices = sorted(int(h) for h in self.hidden_size_choices)
        check_search_space(
            num_layers, mlp_dim, self.elastic_layers, self.layer_drop_probs, self.mlp_dim_choices, self.min_layers,
            hidden_size, num_heads, self.hidden_size_choices,
        )
        image_size, patch_size = self.vision_config.image_size, self.vision_config.patch_size
        if self.image_size_choices is None:  # also for configs saved before the resolution dimension existed
            self.image_size_choices = default_image_size_choices(image_size, patch_size, DEFAULT_RESOLUTION_RATIOS)
        self.image_size_choices = sorted(int(s) for s in self.image_size_choices)
        check_image_size_choices(image_size, self.image_size_choices, patch_size)

    @classmethod
    def from_sam_config(cls, sam_config: SamConfig, **search_space) -> "SuperSamConfig":
        """Wrap a plain `SamConfig` (same sub-configs) and add a search space (defaults unless given)."""
        data = sam_config.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            data.pop(key, None)
        data.update(search_space)
        return cls(**data)

    def to_sam_config(self, prompt_encoder_overrides: dict | None = None, **vision_overrides) -> SamConfig:
        """The plain `SamConfig` of this model, without the search space; `vision_overrides` edit the encoder,
        `prompt_encoder_overrides` the prompt encoder."""
        data = self.to_dict()
        for key in ("model_type", "architectures", "transformers_version", *SUPERNET_ONLY_FIELDS):
            data.pop(key, None)
        data["vision_config"] = {**data["vision_config"], **vision_overrides}
        data["prompt_encoder_config"] = {**data["prompt_encoder_config"], **(prompt_encoder_overrides or {})}
        data["prompt_encoder_config"].pop("image_embedding_size", None)  # derived from image_size / patch_size
        return SamConfig(**data)


SUPERNET_ONLY_FIELDS = (
    "elastic_layers", "layer_drop_probs", "mlp_dim_choices", "min_layers", "hidden_size_choices", "image_size_choices",
    "prioritized", "base_model",
)


def build_sam_config(
    image_size: int = 128,
    patch_size: int = 16,
    hidden_size: int = 64,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    mlp_ratio: float = 4.0,
    window_size: int = 4,
    global_attn_indexes: tuple[int, ...] | None = None,
    output_channels: int = 32,
    decoder_hidden_size: int | None = None,
    decoder_mlp_dim: int | None = None,
    decoder_heads: int = 4,
    position_scale: float = 1.0,
) -> SamConfig:
    """A self-consistent `SamConfig` of a chosen size (image size agrees across encoder, prompt encoder, decoder).

    Used to build the tiny models of the tests and the small stand-in base of the demo, since no pretrained SAM
    can be downloaded offline. Defaults: every third layer global, like SAM's ViT-B (2, 5, 8, 11). `position_scale`:
    the standard deviation of the random Fourier features that encode prompt and image positions (SAM's is 1).
    """
    if global_attn_indexes is None:
        global_attn_indexes = tuple(i for i in range(num_hidden_layers) if i % 3 == 2)
    decoder_hidden_size = decoder_hidden_size or output_channels
    vision = SamVisionConfig(
        hidden_size=hidden_size,
        output_channels=output_channels,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
        patch_size=patch_size,
        mlp_dim=int(hidden_size * mlp_ratio),
        window_size=window_size,
        global_attn_indexes=list(global_attn_indexes),
        num_pos_feats=output_channels // 2,
        # SAM's vision default (1e-10) assumes pretrained weights get loaded; a model trained from scratch needs ViT's.
        initializer_range=0.02,
    )
    prompt = SamPromptEncoderConfig(hidden_size=output_channels, image_size=image_size, patch_size=patch_size)
    decoder = SamMaskDecoderConfig(
        hidden_size=decoder_hidden_size,
        mlp_dim=decoder_mlp_dim or 4 * decoder_hidden_size,
        num_attention_heads=decoder_heads,
        iou_head_hidden_dim=decoder_hidden_size,
    )
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict())
    # The random Fourier features that encode prompt and image positions: the original SAM draws them from N(0, 1)
    # (PositionEmbeddingRandom(scale=1)); transformers initialises them with std hidden_size // 2, which is harmless
    # when a checkpoint overwrites them but too high-frequency for a model trained from scratch to learn prompts.
    if not position_scale > 0:
        raise SupersamError(f"position_scale must be > 0, got {position_scale}.")
    config.vision_config.scale = float(position_scale)
    return config

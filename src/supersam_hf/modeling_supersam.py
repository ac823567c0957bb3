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
"""`SuperSamModel`: a `SamModel` whose image encoder is a weight-sharing supernetwork.

Elastic depth: any encoder layer listed in `config.elastic_layers` can be skipped. Elastic MLP width: each encoder MLP
runs on a prefix slice of its (importance-ordered) hidden neurons. Elastic embedding width: the whole encoder runs
on the leading `hidden_size` channels (whole attention heads, the leading heads). The elastic modules subclass
transformers' own SAM blocks and keep their parameter names, so SAM checkpoints load unchanged. Activating a subnet
only sets attributes on the modules; its forward uses views of the shared weights: no copies, and gradients reach
only the used slices. `extract_subnet` turns a subnet into an ordinary `transformers.SamModel` with its own weights.

Only the patch embedding is told the embedding width; every module after it reads the width from its input's
channels (the last dimension), so a narrow subnet's tensors flow through the same code as the full model's.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, SamConfig, SamModel
from transformers.models.sam.modeling_sam import (
    SamMLPBlock,
    SamPatchEmbeddings,
    SamVisionAttention,
    SamVisionEncoder,
    SamVisionEncoderOutput,
    SamVisionLayer,
    SamVisionNeck,
    SamVisionSdpaAttention,
)
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .errors import ModelFileError
from .configuration_supersam import SuperSamConfig
from .costs import count_sam_macs
from .search_space import SearchSpace, SubnetConfig, SubnetPlan


def linear_blocks(module: nn.Module, hidden_states: torch.Tensor, starts: tuple[int, ...], size: int) -> list[torch.Tensor]:
    """Outputs `[start : start + size]` (for each start) of a linear layer whose input holds only its first
    `hidden_states.shape[-1]` features (the others read as zero).

    A plain `nn.Linear` computes them from views of its weight: no copies, and gradients reach only the slices. A
    wrapped layer (e.g. a PEFT LoRA layer, whose adapter must take part) runs whole on the zero-padded input,
    which gives the same numbers.
    """
    h = hidden_states.shape[-1]
    if isinstance(module, nn.Linear):
        bias = module.bias
        return [
            F.linear(hidden_states, module.weight[s : s + size, :h], None if bias is None else bias[s : s + size])
            for s in starts
        ]
    output = module(F.pad(hidden_states, (0, module.in_features - h)))
    return [output[..., s : s + size] for s in starts]


class ElasticSamPatchEmbeddings(SamPatchEmbeddings):
    """SAM's patch embedding that can write only the first `active_hidden_size` channels (None = all)."""

    def __init__(self, config):
        super().__init__(config)
        self.active_hidden_size: int | None = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.active_hidden_size
        conv = self.projection
        if h is None or h == conv.out_channels:
            return super().forward(pixel_values)
        if pixel_values.shape[1] != self.num_channels or tuple(pixel_values.shape[2:]) != tuple(self.image_size):
            return super().forward(pixel_values)  # the parent raises its own clear error
        bias = conv.bias[:h] if conv.bias is not None else None
        embeddings = F.conv2d(pixel_values, conv.weight[:h], bias, stride=conv.stride, padding=conv.padding)
        return embeddings.permute(0, 2, 3, 1)


class ElasticLayerNorm(nn.LayerNorm):
    """A LayerNorm over the leading channels its input has: weight/bias views [:h], statistics over those h
    channels only (AutoFormer's choice for elastic embedding widths)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = hidden_states.shape[-1]
        if h == self.normalized_shape[-1]:
            return super().forward(hidden_states)
        weight = self.weight[:h] if self.weight is not None else None
        bias = self.bias[:h] if self.bias is not None else None
        return F.layer_norm(hidden_states, (h,), weight, bias, self.eps)


class ElasticSamMLPBlock(SamMLPBlock):
    """SAM's encoder MLP on the first `active_dim` hidden neurons (None = all) and on its input's channels."""

    def __init__(self, config):
        super().__init__(config)
        self.active_dim: int | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        d = self.active_dim if self.active_dim is not None else self.lin1.out_features
        h = hidden_states.shape[-1]
        if d == self.lin1.out_features and h == self.lin1.in_features:
            return super().forward(hidden_states)
        # Prefix slices are views: the subnet shares (and trains) exactly these rows/columns.
        (hidden_states,) = linear_blocks(self.lin1, hidden_states, (0,), d)
        hidden_states = self.act(hidden_states)
        (hidden_states,) = linear_blocks(self.lin2, hidden_states, (0,), h)
        return hidden_states


class _ElasticAttentionMixin:
    """Runs SAM's vision attention on the leading `h / head_dim` heads when its input has only `h` channels.

    `qkv.weight` is laid out q | k | v, each block `hidden_size` rows of `num_attention_heads` head blocks; a narrow
    subnet uses, in each of the three blocks, the first `heads * head_dim` rows and the first `h` columns (three
    views, three products), and `proj.weight[:h, :heads * head_dim]`. The relative-position tables are indexed by
    head size, so they are used whole.
    """

    def forward(self, hidden_states: torch.Tensor, output_attentions=None):
        full = self.qkv.in_features
        h = hidden_states.shape[-1]
        if h == full:
            return super().forward(hidden_states, output_attentions)
        batch_size, height, width, _ = hidden_states.shape
        head_dim = full // self.num_attention_heads
        heads, inner = h // head_dim, (h // head_dim) * head_dim
        query, key, value = (
            block.reshape(batch_size, height * width, heads, head_dim).transpose(1, 2)
            for block in linear_blocks(self.qkv, hidden_states, (0, full, 2 * full), inner)
        )  # each (batch, heads, tokens, head_dim)
        attn_bias = None
        if self.use_rel_pos:
            flat_query = query.reshape(batch_size * heads, height * width, head_dim)
            rel = self.get_decomposed_rel_pos(flat_query, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
            attn_bias = rel.reshape(batch_size, heads, height * width, height * width)
        if isinstance(self, SamVisionSdpaAttention):
            attn_output = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias)
            attn_weights = None
        else:
            attn_weights = (query * self.scale) @ key.transpose(-2, -1)
            if attn_bias is not None:
                attn_weights = attn_weights + attn_bias
            attn_weights = F.softmax(attn_weights, dtype=torch.float32, dim=-1).to(query.dtype)
            attn_probs = F.dropout(attn_weights, p=self.dropout, training=self.training)
            attn_output = attn_probs @ value
            # SAM's eager attention returns weights as (batch * heads, tokens, tokens).
            attn_weights = attn_weights.reshape(batch_size * heads, height * width, height * width)
        attn_output = attn_output.reshape(batch_size, heads, height, width, head_dim).permute(0, 2, 3, 1, 4)
        attn_output = attn_output.reshape(batch_size, height, width, inner)
        (attn_output,) = linear_blocks(self.proj, attn_output, (0,), h)
        return attn_output, attn_weights


class ElasticSamVisionAttention(_ElasticAttentionMixin, SamVisionAttention):
    """SAM's eager vision attention with elastic heads."""


class ElasticSamVisionSdpaAttention(_ElasticAttentionMixin, SamVisionSdpaAttention):
    """SAM's SDPA vision attention with elastic heads."""


ELASTIC_ATTENTION_CLASSES = {
    SamVisionAttention: ElasticSamVisionAttention,
    SamVisionSdpaAttention: ElasticSamVisionSdpaAttention,
}


class ElasticSamVisionLayer(SamVisionLayer):
    """SAM's encoder layer with elastic MLP width and embedding width; `active` False marks a dropped layer
    (the encoder skips it; called directly it passes its input through)."""

    def __init__(self, config, window_size):
        super().__init__(config, window_size)
        self.layer_norm1 = ElasticLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = ELASTIC_ATTENTION_CLASSES[type(self.attn)](config, window_size)
        self.layer_norm2 = ElasticLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ElasticSamMLPBlock(config)
        self.active = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return hidden_states
        return super().forward(hidden_states)


class ElasticSamVisionNeck(SamVisionNeck):
    """SAM's neck reading only the channels its input has (`conv1.weight[:, :h]`)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = hidden_states.shape[-1]
        if h == self.conv1.in_channels:
            return super().forward(hidden_states)
        hidden_states = hidden_states.permute(0, 3, 1, 2)
        hidden_states = F.conv2d(hidden_states, self.conv1.weight[:, :h], self.conv1.bias)
        hidden_states = self.layer_norm1(hidden_states)
        hidden_states = self.conv2(hidden_states)
        return self.layer_norm2(hidden_states)


class ElasticSamVisionEncoder(SamVisionEncoder):
    """SAM's image encoder built from elastic blocks. Dropped layers are not run at all, so `output_hidden_states`
    and `output_attentions` list exactly the layers that ran (as the extracted model's do)."""

    def post_init(self):
        # Swap in elastic blocks before transformers initialises weights; parameter names stay SAM's.
        config = self.config
        if not isinstance(self.patch_embed, ElasticSamPatchEmbeddings):
            self.patch_embed = ElasticSamPatchEmbeddings(config)
            self.neck = ElasticSamVisionNeck(config)
            self.layers = nn.ModuleList(ElasticSamVisionLayer(config, layer.window_size) for layer in self.layers)
        super().post_init()

    def forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> SamVisionEncoderOutput:
        selection = kwargs.get("output_hidden_states")
        if selection is not None and not isinstance(selection, bool):
            # Indices select among the hidden states of the layers that run (negative ones count from the last of
            # them), as in the extracted model; transformers would resolve them against all configured layers.
            count = sum(layer.active for layer in self.layers) + 1
            indices = [selection] if isinstance(selection, int) else list(selection)
            kwargs["output_hidden_states"] = [i % count for i in indices if -count <= i < count]
        return self._forward(pixel_values, **kwargs)

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def _forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> SamVisionEncoderOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        hidden_states = self.patch_embed(pixel_values)
        if self.pos_embed is not None:
            hidden_states = hidden_states + self.pos_embed[..., : hidden_states.shape[-1]]
        for layer in self.layers:
            if layer.active:
                hidden_states = layer(hidden_states)
        return SamVisionEncoderOutput(last_hidden_state=self.neck(hidden_states))


class SuperSamModel(SamModel):
    """A SAM model with an elastic image encoder; the search space lives in `config` (a `SuperSamConfig`).

    `from_pretrained` accepts a plain SAM checkpoint (converted on load, weights unchanged) or a saved supernet.
    """

    config_class = SuperSamConfig
    config: SuperSamConfig

    def __init__(self, config: SuperSamConfig):
        if not isinstance(config, SuperSamConfig):
            if isinstance(config, SamConfig):
                config = SuperSamConfig.from_sam_config(config)
            else:
                raise ModelFileError(f"SuperSamModel needs a SuperSamConfig or SamConfig, got {type(config).__name__}.")
        super().__init__(config)
        self.active_subnet: SubnetConfig | None = None

    def post_init(self):
        # Swap in the elastic encoder before transformers initialises weights, so state-dict keys stay SAM's.
        if not isinstance(self.vision_encoder, ElasticSamVisionEncoder):
            self.vision_encoder = ElasticSamVisionEncoder(self.config.vision_config)
        super().post_init()

    # -- loading ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load a supernet, or convert a plain SAM checkpoint (model_type "sam") into one with the default space."""
        if config is None:
            hub_keys = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
            hub_kwargs = {k: kwargs[k] for k in hub_keys if k in kwargs}
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            config = supersam_config_from_dict(config_dict, source=str(pretrained_model_name_or_path))
            if config_dict.get("model_type") == "sam":
                config.base_model = str(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def from_sam(cls, sam: SamModel, **search_space) -> "SuperSamModel":
        """Convert an in-memory `SamModel` (weights copied, same dtype/device); `search_space` sets config fields."""
        search_space.setdefault("base_model", sam.config._name_or_path or None)
        config = SuperSamConfig.from_sam_config(sam.config, **search_space)
        config._attn_implementation = sam.config._attn_implementation
        model = cls(config)
        model.load_state_dict(sam.state_dict())
        param = next(sam.parameters())
        return model.to(device=param.device, dtype=param.dtype).train(sam.training)

    # -- subnet activation ------------------------------------------------------------------------------------
    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_config(self.config)

    def set_subnet(self, cfg: SubnetConfig) -> None:
        """Make every forward run exactly the subnet `cfg` (until `reset_subnet`)."""
        plan = self.search_space.layer_plan(cfg)
        encoder = self.vision_encoder
        for layer, width in zip(encoder.layers, plan):
            layer.active = width is not None
            layer.mlp.active_dim = width
        encoder.patch_embed.active_hidden_size = plan.hidden_size
        self.active_subnet = cfg

    def reset_subnet(self) -> None:
        """Back to the full model (every layer, full widths)."""
        for layer in self.vision_encoder.layers:
            layer.active = True
            layer.mlp.active_dim = None
        self.vision_encoder.patch_embed.active_hidden_size = None
        self.active_subnet = None

    @contextlib.contextmanager
    def subnet(self, cfg: SubnetConfig | None) -> Iterator["SuperSamModel"]:
        """Context manager: run `cfg` inside the block (None = full model), then restore the previous subnet."""
        previous = self.active_subnet
        self.reset_subnet() if cfg is None else self.set_subnet(cfg)
        try:
            yield self
        finally:
            self.reset_subnet() if previous is None else self.set_subnet(previous)

    # -- export and cost --------------------------------------------------------------------------------------
    def export_config(self, cfg: SubnetConfig | None = None) -> SamConfig:
        """The `SamConfig` of the checkpoint `extract_subnet(cfg)` writes (see `export_sam_config`)."""
        cfg = cfg or self.search_space.largest()
        return export_sam_config(self.config, self.search_space.layer_plan(cfg))

    def count_parameters(self, cfg: SubnetConfig | None = None) -> int:
        """Parameters of the checkpoint that export writes for `cfg` (default: the largest subnet)."""
        with torch.device("meta"):
            skeleton = SamModel(self.export_config(cfg))
        return sum(p.numel() for p in skeleton.parameters())

    def count_macs(self, cfg: SubnetConfig | None = None, num_prompts: int = 1) -> int:
        """Multiply-accumulates of one image through the exported checkpoint of `cfg` (encoder + prompt encoder +
        decoder with `num_prompts` point prompts), at the config's image size. Zero-padded MLP neurons count,
        since the exported model computes them."""
        return count_sam_macs(self.export_config(cfg), num_prompts=num_prompts)

    def extract_subnet(self, cfg: SubnetConfig | None = None) -> SamModel:
        """A vanilla `SamModel` with its own copy of the subnet's weights (same dtype and device), whose outputs
        equal this model's under `cfg`."""
        cfg = cfg or self.search_space.largest()
        plan = self.search_space.layer_plan(cfg)
        sam_config = export_sam_config(self.config, plan)
        new_index = {i: j for j, i in enumerate(plan.kept_layers)}

        state: dict[str, torch.Tensor] = {}
        prefix = "vision_encoder.layers."
        for key, tensor in self.state_dict().items():
            if key.startswith(prefix):
                layer_str, rest = key[len(prefix) :].split(".", 1)
                i = int(layer_str)
                if plan[i] is not None:
                    state[f"{prefix}{new_index[i]}.{rest}"] = slice_layer_tensor(rest, tensor.detach(), plan, plan[i])
            else:
                state[key] = slice_encoder_tensor(key, tensor.detach(), plan)

        param = next(self.parameters())
        sam = SamModel(sam_config).to(device=param.device, dtype=param.dtype)
        sam.load_state_dict(state, strict=True)
        return sam.train(self.training)


def export_sam_config(config: SuperSamConfig, plan: SubnetPlan) -> SamConfig:
    """The `SamConfig` of a subnet's exported checkpoint: kept layers (attention kinds kept, `global_attn_indexes`
    remapped), `mlp_dim` = the widest kept MLP width (narrower layers are zero-padded), `hidden_size` = the kept
    embedding width and `num_attention_heads` = the kept heads (head size unchanged)."""
    global_layers = set(config.vision_config.global_attn_indexes)
    kept = plan.kept_layers
    overrides = dict(
        num_hidden_layers=len(kept),
        global_attn_indexes=[j for j, i in enumerate(kept) if i in global_layers],
        mlp_dim=max(w for w in plan if w is not None),
    )
    if plan.hidden_size is not None:
        overrides.update(hidden_size=plan.hidden_size, num_attention_heads=plan.num_heads)
    sam_config = config.to_sam_config(**overrides)
    sam_config._attn_implementation = config._attn_implementation
    return sam_config


def _keep_qkv(tensor: torch.Tensor, inner: int | None) -> torch.Tensor:
    """The q, k and v blocks' first `inner` rows of a fused qkv weight (3 * hidden, ...) or bias (3 * hidden,)."""
    blocks = tensor.reshape(3, tensor.shape[0] // 3, *tensor.shape[1:])[:, :inner]
    return blocks.reshape(3 * blocks.shape[1], *tensor.shape[1:])


def slice_layer_tensor(name: str, tensor: torch.Tensor, plan: SubnetPlan, keep: int) -> torch.Tensor:
    """Copy of one encoder-layer tensor for export: the kept embedding channels and heads, and MLP hidden units
    [:keep] zero-padded up to the widest kept layer's width."""
    h = plan.hidden_size  # None: the full width ([:None] keeps everything)
    width = max(w for w in plan if w is not None)
    if name.startswith(("layer_norm1.", "layer_norm2.")) or name in ("attn.proj.bias", "mlp.lin2.bias"):
        return tensor[:h].clone()
    if name == "attn.qkv.weight":
        return _keep_qkv(tensor[:, :h], h).clone()
    if name == "attn.qkv.bias":
        return _keep_qkv(tensor, h).clone()
    if name == "attn.proj.weight":
        return tensor[:h, :h].clone()
    if name == "mlp.lin1.weight":
        out = tensor.new_zeros(width, h)
        out[:keep] = tensor[:keep, :h]
        return out
    if name == "mlp.lin1.bias":
        out = tensor.new_zeros(width)
        out[:keep] = tensor[:keep]
        return out
    if name == "mlp.lin2.weight":
        out = tensor.new_zeros(h, width)
        out[:, :keep] = tensor[:h, :keep]
        return out
    return tensor.clone()  # relative-position tables: indexed by head size, used whole


def slice_encoder_tensor(key: str, tensor: torch.Tensor, plan: SubnetPlan) -> torch.Tensor:
    """Copy of one tensor outside the encoder layers for export: the patch embedding's output channels,
    `pos_embed`'s channels and the neck's input channels are cut to the kept embedding width."""
    h = plan.hidden_size
    if h is None:
        return tensor.clone()
    if key in ("vision_encoder.patch_embed.projection.weight", "vision_encoder.patch_embed.projection.bias"):
        return tensor[:h].clone()
    if key == "vision_encoder.pos_embed":
        return tensor[..., :h].clone()
    if key == "vision_encoder.neck.conv1.weight":
        return tensor[:, :h].clone()
    return tensor.clone()


def supersam_config_from_dict(config_dict: dict, source: str = "the checkpoint") -> SuperSamConfig:
    """A `SuperSamConfig` from a config.json dict of a SAM ("sam") or supernet ("supersam") checkpoint."""
    model_type = config_dict.get("model_type")
    data = {k: v for k, v in config_dict.items() if k not in ("model_type", "transformers_version", "architectures")}
    if model_type == "supersam":
        return SuperSamConfig(**data)
    if model_type == "sam":
        return SuperSamConfig.from_sam_config(SamConfig(**data))
    raise ModelFileError(
        f"{source} is not a SAM checkpoint: its config.json has model_type={model_type!r}; SuperSamModel converts "
        "checkpoints with model_type 'sam' (e.g. facebook/sam-vit-base) or loads saved supernets ('supersam')."
    )

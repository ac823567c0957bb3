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
on the leading `hidden_size` channels (whole attention heads, the leading heads). Elastic input resolution: the
encoder sees its input resized to the subnet's `image_size`, prompts follow. Each kind is one rule in
`elastic/` (its modules, forward view, exported tensors, permutation and cost); this file assembles them. The
elastic modules subclass transformers' own SAM blocks and keep their parameter names, so SAM checkpoints load
unchanged. Activating a subnet only sets attributes on the modules; its forward uses views of the shared weights:
no copies, and gradients reach only the used slices. `extract_subnet` turns a subnet into an ordinary
`transformers.SamModel` with its own weights.
"""

import contextlib
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedConfig, SamConfig, SamModel
from transformers.models.sam.modeling_sam import SamVisionEncoder, SamVisionEncoderOutput
from transformers.processing_utils import Unpack
from transformers.utils.generic import TransformersKwargs, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from . import elastic
from .errors import ModelFileError
from .configuration_supersam import SuperSamConfig
from .costs import subnet_macs, subnet_params
from .elastic.depth import ElasticSamVisionLayer
from .elastic.embedding import ElasticSamPatchEmbeddings, ElasticSamVisionNeck, pos_embed_view
from .elastic.resolution import RESOLUTION
from .search_space import SearchSpace, SubnetConfig

export_sam_config = elastic.export_sam_config


class ElasticSamVisionEncoder(SamVisionEncoder):
    """SAM's image encoder built from elastic blocks. Dropped layers are not run at all, so `output_hidden_states`
    and `output_attentions` list exactly the layers that ran (as the extracted model's do)."""

    active_image_size: int | None = None  # the resolution rule's (None: the configured size)

    def post_init(self):
        # Swap in elastic blocks before transformers initialises weights; parameter names stay SAM's.
        config = self.config
        if not isinstance(self.patch_embed, ElasticSamPatchEmbeddings):
            self.patch_embed = ElasticSamPatchEmbeddings(config)
            self.neck = ElasticSamVisionNeck(config)
            self.layers = nn.ModuleList(ElasticSamVisionLayer(config, layer.window_size) for layer in self.layers)
        super().post_init()

    def forward(
        self, pixel_values: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> SamVisionEncoderOutput:
        selection = kwargs.get("output_hidden_states")
        if selection is not None and not isinstance(selection, bool):
            # Indices select among the hidden states of the layers that run (negative ones count from the last of
            # them), as in the extracted model; transformers would resolve them against all configured layers.
            count = sum(layer.active for layer in self.layers) + 1
            indices = [selection] if isinstance(selection, int) else list(selection)
            kwargs["output_hidden_states"] = [i % count for i in indices if -count <= i < count]
        if pixel_values is not None:
            pixel_values = RESOLUTION.pixels(self, pixel_values)
        return self._forward(pixel_values, **kwargs)

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def _forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> SamVisionEncoderOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        hidden_states = self.patch_embed(pixel_values)
        if self.pos_embed is not None:
            hidden_states = hidden_states + self._active_pos_embed(hidden_states)
        for layer in self.layers:
            if layer.active:
                hidden_states = layer(hidden_states)
        return SamVisionEncoderOutput(last_hidden_state=self.neck(hidden_states))

    def _active_pos_embed(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`pos_embed` at the width and token grid of `hidden_states`. Outside autograd the resampled table (an
        antialiased bicubic resize: a large share of a small subnet's forward on CPU) is kept while the parameter
        is the same tensor, unchanged (same storage, dtype and version counter: any in-place update moves it; only
        writes through `.data` would not), for the many images of evaluation and search."""
        table = pos_embed_view(self.pos_embed, hidden_states)
        if torch.is_grad_enabled() and table.requires_grad:
            return RESOLUTION.pos_embed(table, hidden_states)
        param = self.pos_embed
        key = (id(param), param._version, param.data_ptr(), param.dtype, param.device, table.shape, hidden_states.shape[1:3])
        cached = getattr(self, "_pos_embed_cache", None)
        if cached is None or cached[0] != key or cached[1] is not param:
            cached = self._pos_embed_cache = (key, param, RESOLUTION.pos_embed(table, hidden_states))
        return cached[2]


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

    # -- forward (the resolution rule's prompt frame) ------------------------------------------------------------
    def get_image_wide_positional_embeddings(self):
        """SAM's image-wide positional encoding at the active token grid (the prompt encoder's)."""
        size = self.prompt_encoder.image_embedding_size[0]
        if size == self.config.prompt_encoder_config.image_embedding_size:
            return super().get_image_wide_positional_embeddings()
        weight = self.shared_image_embedding.positional_embedding
        grid = torch.ones((size, size), device=weight.device, dtype=weight.dtype)
        coords = torch.stack([(grid.cumsum(dim=1) - 0.5) / size, (grid.cumsum(dim=0) - 0.5) / size], dim=-1)
        return self.shared_image_embedding(coords).permute(2, 0, 1).unsqueeze(0)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.LongTensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.LongTensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        multimask_output: bool = True,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """`SamModel.forward` (same signature); under a subnet of smaller input resolution, prompts given in the
        frame of `pixel_values` (of the full size when `image_embeddings` are given) are rescaled with the image,
        and `pred_masks` come at that subnet's low resolution (4x its token grid), as its exported checkpoint's do."""
        scale = RESOLUTION.prompt_scale(self, pixel_values)
        input_points, input_boxes, input_masks = RESOLUTION.prompts(self, scale, input_points, input_boxes, input_masks)
        return super().forward(pixel_values=pixel_values, input_points=input_points, input_labels=input_labels,
                               input_boxes=input_boxes, input_masks=input_masks, image_embeddings=image_embeddings,
                               multimask_output=multimask_output, attention_similarity=attention_similarity,
                               target_embedding=target_embedding, **kwargs)

    # -- subnet activation ------------------------------------------------------------------------------------
    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_config(self.config)

    def set_subnet(self, cfg: SubnetConfig) -> None:
        """Make every forward run exactly the subnet `cfg` (until `reset_subnet`)."""
        elastic.activate(self, self.search_space.layer_plan(cfg))
        self.active_subnet = cfg

    def reset_subnet(self) -> None:
        """Back to the full model (every layer, full widths)."""
        elastic.activate(self, None)
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
        fixed = sum(p.numel() for name, p in self.named_parameters() if not name.startswith("vision_encoder."))
        return subnet_params(self.export_config(cfg), fixed)

    def count_macs(self, cfg: SubnetConfig | None = None, num_prompts: int = 1) -> int:
        """Multiply-accumulates of one image through the exported checkpoint of `cfg` (encoder + prompt encoder +
        decoder with `num_prompts` point prompts), at the subnet's input resolution. Zero-padded MLP neurons count,
        since the exported model computes them."""
        return subnet_macs(self.export_config(cfg), num_prompts=num_prompts)

    def extract_subnet(self, cfg: SubnetConfig | None = None) -> SamModel:
        """A vanilla `SamModel` with its own copy of the subnet's weights (same dtype and device), whose outputs
        equal this model's under `cfg`."""
        cfg = cfg or self.search_space.largest()
        plan = self.search_space.layer_plan(cfg)
        sam_config = export_sam_config(self.config, plan)
        state = elastic.export_state({k: v.detach() for k, v in self.state_dict().items()}, self.config, plan)
        param = next(self.parameters())
        sam = SamModel(sam_config).to(device=param.device, dtype=param.dtype)
        sam.load_state_dict(state, strict=True)
        return sam.train(self.training)


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

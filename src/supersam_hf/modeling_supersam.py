"""`SuperSamModel`: a `SamModel` whose image encoder is a weight-sharing supernetwork.

Elastic depth: any encoder layer listed in `config.elastic_layers` can be skipped. Elastic width: each encoder MLP
runs on a prefix slice of its (importance-ordered) hidden neurons. Activating a subnet only flips attributes on the
modules, so its forward uses views of the shared weights: no copies, and gradients reach only the used slices.
`extract_subnet` turns a subnet into an ordinary `transformers.SamModel` with its own weights.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import PreTrainedConfig, SamConfig, SamModel
from transformers.models.sam.modeling_sam import SamMLPBlock, SamVisionLayer

from .configuration_supersam import SuperSamConfig
from .costs import count_sam_macs
from .search_space import SearchSpace, SubnetConfig


class ElasticSamMLPBlock(SamMLPBlock):
    """SAM's encoder MLP that can run on the first `active_dim` hidden neurons only (None = all)."""

    def __init__(self, config):
        super().__init__(config)
        self.active_dim: int | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        d = self.active_dim
        if d is None or d == self.lin1.out_features:
            return super().forward(hidden_states)
        # Prefix slices are views: the subnet shares (and trains) exactly these rows/columns.
        hidden_states = F.linear(hidden_states, self.lin1.weight[:d], self.lin1.bias[:d])
        hidden_states = self.act(hidden_states)
        return F.linear(hidden_states, self.lin2.weight[:, :d], self.lin2.bias)


class ElasticSamVisionLayer(SamVisionLayer):
    """SAM's encoder layer that passes its input through unchanged when `active` is False (a dropped layer)."""

    def __init__(self, config, window_size):
        super().__init__(config, window_size)
        self.mlp = ElasticSamMLPBlock(config)
        self.active = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return hidden_states
        return super().forward(hidden_states)


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
                raise ValueError(f"SuperSamModel needs a SuperSamConfig or SamConfig, got {type(config).__name__}.")
        super().__init__(config)
        self.active_subnet: SubnetConfig | None = None

    def post_init(self):
        # Swap in elastic encoder layers before transformers initialises weights, so state-dict keys stay SAM's.
        vision_config = self.config.vision_config
        layers = self.vision_encoder.layers
        for i, layer in enumerate(layers):
            if not isinstance(layer, ElasticSamVisionLayer):
                layers[i] = ElasticSamVisionLayer(vision_config, window_size=layer.window_size)
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
        for layer, width in zip(self.vision_encoder.layers, plan):
            layer.active = width is not None
            layer.mlp.active_dim = width
        self.active_subnet = cfg

    def reset_subnet(self) -> None:
        """Back to the full model (every layer, full width)."""
        for layer in self.vision_encoder.layers:
            layer.active = True
            layer.mlp.active_dim = None
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
        """The `SamConfig` of the checkpoint `extract_subnet(cfg)` writes: kept layers (attention kinds kept,
        `global_attn_indexes` remapped) and `mlp_dim` = the widest kept width (narrower layers are zero-padded)."""
        cfg = cfg or self.search_space.largest()
        plan = self.search_space.layer_plan(cfg)
        global_layers = set(self.config.vision_config.global_attn_indexes)
        kept = [i for i, w in enumerate(plan) if w is not None]
        sam_config = self.config.to_sam_config(
            num_hidden_layers=len(kept),
            global_attn_indexes=[j for j, i in enumerate(kept) if i in global_layers],
            mlp_dim=max(w for w in plan if w is not None),
        )
        sam_config._attn_implementation = self.config._attn_implementation
        return sam_config

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
        sam_config = self.export_config(cfg)
        width = sam_config.vision_config.mlp_dim
        new_index = {i: j for j, i in enumerate(i for i, w in enumerate(plan) if w is not None)}

        state: dict[str, torch.Tensor] = {}
        prefix = "vision_encoder.layers."
        for key, tensor in self.state_dict().items():
            if not key.startswith(prefix):
                state[key] = tensor.detach().clone()
                continue
            layer_str, rest = key[len(prefix) :].split(".", 1)
            i = int(layer_str)
            if plan[i] is None:
                continue
            state[f"{prefix}{new_index[i]}.{rest}"] = _slice_mlp_tensor(rest, tensor.detach(), plan[i], width)

        param = next(self.parameters())
        sam = SamModel(sam_config).to(device=param.device, dtype=param.dtype)
        sam.load_state_dict(state, strict=True)
        return sam.train(self.training)


def _slice_mlp_tensor(name: str, tensor: torch.Tensor, keep: int, width: int) -> torch.Tensor:
    """Copy of one encoder-layer tensor for export: MLP hidden units [:keep], zero-padded up to `width`."""
    if name == "mlp.lin1.weight":
        out = tensor.new_zeros(width, tensor.shape[1])
        out[:keep] = tensor[:keep]
    elif name == "mlp.lin1.bias":
        out = tensor.new_zeros(width)
        out[:keep] = tensor[:keep]
    elif name == "mlp.lin2.weight":
        out = tensor.new_zeros(tensor.shape[0], width)
        out[:, :keep] = tensor[:, :keep]
    else:
        out = tensor.clone()
    return out


def supersam_config_from_dict(config_dict: dict, source: str = "the checkpoint") -> SuperSamConfig:
    """A `SuperSamConfig` from a config.json dict of a SAM ("sam") or supernet ("supersam") checkpoint."""
    model_type = config_dict.get("model_type")
    data = {k: v for k, v in config_dict.items() if k not in ("model_type", "transformers_version", "architectures")}
    if model_type == "supersam":
        return SuperSamConfig(**data)
    if model_type == "sam":
        return SuperSamConfig.from_sam_config(SamConfig(**data))
    raise ValueError(
        f"{source} is not a SAM checkpoint: its config.json has model_type={model_type!r}; SuperSamModel converts "
        "checkpoints with model_type 'sam' (e.g. facebook/sam-vit-base) or loads saved supernets ('supersam')."
    )

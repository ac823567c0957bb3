"""What trains: the frozen and trainable parts, LoRA through PEFT, the optimizer, activation checkpointing."""

from __future__ import annotations

import torch

from ..errors import SupersamError
from ..modeling_supersam import SuperSamModel
from .arguments import LORA_TARGETS, PART_PREFIXES, SupernetTrainingArguments


def configure_trainable(model: SuperSamModel, args: SupernetTrainingArguments) -> torch.nn.Module:
    """Freeze what does not train; with LoRA wrap the model in PEFT (adapters on the trainable parts' attention).

    Returns the module to train: `model` itself, or a `peft.PeftModel` around it (which freezes every base weight;
    a listed prompt encoder, which has no attention projection, is then trained fully).
    """
    parts = args.trainable_parts()
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for part in parts for prefix in PART_PREFIXES[part]))
    if not args.uses_lora():
        return model
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = "|".join(f"(?:{LORA_TARGETS[p]})" for p in parts if p in LORA_TARGETS)
    fields = args.lora_config_fields() or {"r": args.lora_r, "lora_alpha": args.lora_alpha,
                                           "lora_dropout": args.lora_dropout, "bias": "none"}
    try:
        config = LoraConfig(**{"target_modules": f"(?:{targets})", **fields})
        peft_model = get_peft_model(model, config)
    except (TypeError, ValueError) as error:  # a field of the wrong type or value, targets matching nothing
        source = f"--lora_config {args.lora_config}" if args.lora_config else "the LoRA flags"
        raise SupersamError(f"{source}: peft refuses this LoraConfig ({' '.join(str(error).split())[:300]}).") from None
    sliced = [name for name, module in peft_model.named_modules()
              if isinstance(module, BaseTunerLayer) and ".mlp.lin" in name and "vision_encoder" in name]
    if sliced:
        raise SupersamError(f"LoRA targets {sliced[0]}: the encoder MLPs are sliced for elastic width and cannot "
                            "carry adapters; leave lin1/lin2 of vision_encoder out of target_modules.")
    if "prompt_encoder" in parts:
        for name, param in model.named_parameters():
            if name.startswith(PART_PREFIXES["prompt_encoder"]):
                param.requires_grad_(True)
    return peft_model


def build_optimizer(model: torch.nn.Module, args: SupernetTrainingArguments) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (biases, norm scales), as in transformers' Trainer."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise SupersamError(f"Nothing to train: trainable={args.trainable!r} selects no parameter.")
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.learning_rate)


def set_activation_checkpointing(model: SuperSamModel, enable: bool) -> None:
    """Turn gradient (activation) checkpointing of the encoder layers on or off, non-reentrant
    (`activation_checkpointing_enable` in recent transformers, `gradient_checkpointing_enable` before)."""
    if enable:
        method = getattr(model, "activation_checkpointing_enable", None)
        if method is not None:
            method(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


__all__ = ["build_optimizer", "configure_trainable", "set_activation_checkpointing"]

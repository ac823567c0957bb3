"""Sandwich-rule supernet training: arguments, one step of the rule, checkpoints, and the accelerate loop."""

from .arguments import LORA_TARGETS, TRAINABLE_PARTS, SupernetTrainingArguments
from .checkpoints import find_latest_checkpoint, resolve_checkpoint
from .sandwich import (
    NonFiniteLossError,
    SandwichCollator,
    SeededEpochSampler,
    sandwich_backward,
    sandwich_subnets,
    stable_seed,
)
from .trainer import build_datasets, configure_trainable, train_supernet

__all__ = [
    "LORA_TARGETS",
    "NonFiniteLossError",
    "SandwichCollator",
    "SeededEpochSampler",
    "SupernetTrainingArguments",
    "TRAINABLE_PARTS",
    "build_datasets",
    "configure_trainable",
    "find_latest_checkpoint",
    "resolve_checkpoint",
    "sandwich_backward",
    "sandwich_subnets",
    "stable_seed",
    "train_supernet",
]

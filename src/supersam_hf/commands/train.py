"""`supersam train`: sandwich-rule training of a supernet (`SupernetTrainingArguments` carries the shared flags)."""

from __future__ import annotations

from ..modeling_supersam import SuperSamModel
from ..training import SupernetTrainingArguments, train_supernet

ARGUMENTS = (SupernetTrainingArguments,)


def run(args: SupernetTrainingArguments) -> SuperSamModel:
    """Train (loading model, processor and data through `supersam_hf.loading`) and say where the result is."""
    supernet = train_supernet(args)
    print(f"supersam train: {args.model_name_or_path} -> {args.output_dir} ({supernet.count_parameters():,} parameters)")
    return supernet

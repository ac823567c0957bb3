"""`supersam export`: one subnet of a supernet → a standard SAM checkpoint folder + model card (optionally pushed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..arguments import ModelArguments, OutputArguments
from ..export import SUBNET_FILE, export_subnet
from ..loading import load_processor, load_supernet, recorded_base_model
from ..search.results import select_subnet, subnet_metrics
from .common import prepare_output


@dataclass(kw_only=True)
class ExportArguments:
    """Which subnet `supersam export` writes and what its card says (model and output flags are the shared ones)."""

    subnet: str = field(
        metadata={"help": "Which subnet: 'best' (best_subnet.json of the search), 'pareto:N' (the N-th Pareto-front "
                  "subnet), a JSON file (e.g. a subnet.json) or inline JSON with kept_layers and mlp_dims."}
    )
    search_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Search output folder (pareto.json, best_subnet.json, search_results.json); default: the "
                  "folder of a --subnet JSON file, else the model folder."},
    )
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Hub id of the base SAM for the card (default: recorded in the supernet)."}
    )
    license: Optional[str] = field(default=None, metadata={"help": "License for the card (default: the base model's)."})
    datasets: Optional[list[str]] = field(
        default=None, metadata={"help": "Hub ids of the training datasets, for the card's metadata."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to the Hub."})
    repo_id: Optional[str] = field(
        default=None, metadata={"help": "Hub repo to push to, 'namespace/name' (default: the --output_dir folder name)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    commit_message: Optional[str] = field(default=None, metadata={"help": "Commit message of the upload."})


ARGUMENTS = (ModelArguments, OutputArguments, ExportArguments)


def _search_dir(model_args: ModelArguments, args: ExportArguments) -> str | None:
    if args.search_dir:
        return args.search_dir
    spec = args.subnet.strip()
    if spec.endswith(".json") and Path(spec).is_file():
        return str(Path(spec).parent)
    return model_args.model_name_or_path if Path(model_args.model_name_or_path).is_dir() else None


def run(model_args: ModelArguments, output_args: OutputArguments, args: ExportArguments) -> Path:
    """Pick the subnet from the search output, export it (with its search metrics on the card), maybe push it."""
    # Before any work: writable, not the supernet folder (nor inside / around it), empty unless --overwrite_output_dir.
    prepare_output(output_args, model_args.model_name_or_path)
    search_dir = _search_dir(model_args, args)
    subnet = select_subnet(args.subnet, search_dir)
    metrics = subnet_metrics(search_dir, subnet)
    supernet = load_supernet(model_args.model_name_or_path, revision=model_args.revision, token=model_args.token,
                             device="cpu")
    processor = load_processor(model_args.model_name_or_path, model_args.processor_name_or_path,
                               recorded_base_model(supernet), revision=model_args.revision, token=model_args.token)
    output = export_subnet(
        supernet, subnet, output_args.output_dir, processor=processor, metrics=metrics,
        base_model=args.base_model or recorded_base_model(supernet), license=args.license, datasets=args.datasets,
        overwrite=output_args.overwrite_output_dir, push_to_hub=args.push_to_hub, repo_id=args.repo_id,
        private=args.private, token=model_args.token, commit_message=args.commit_message,
    )
    record = json.loads((output / SUBNET_FILE).read_text(encoding="utf-8"))
    miou = f", mIoU {metrics['miou']:.4f}" if isinstance((metrics or {}).get("miou"), float) else ""
    print(
        f"supersam export: subnet {subnet.name} ({record['params']:,} parameters, "
        f"{record['params'] / record['base_params']:.1%} of the base{miou}) -> {output}"
    )
    return output

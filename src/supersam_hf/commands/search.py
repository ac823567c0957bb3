"""`supersam search`: the best subnets of a trained supernet under budgets (OpenTuner), written to --output_dir."""

from __future__ import annotations

from pathlib import Path

from ..arguments import DataArguments, ModelArguments, OutputArguments, SearchArguments
from ..checks import check_positive
from ..data import SamSegmentationData
from ..distributed import process_state
from ..loading import load_processor, load_supernet, recorded_base_model
from ..search import RESULTS_FILE, SearchResult, search_subnets
from ..outputs import remove_tool_outputs
from ..search.driver import check_search_output
from .common import data_kwargs, load_data, prepare_output, refuse_streaming


ARGUMENTS = (ModelArguments, DataArguments, OutputArguments, SearchArguments)


def format_search(result: SearchResult) -> str:
    ref, best = result.reference, (result.best.entry if result.best else None)
    lines = [
        f"scored {result.num_evaluated} subnets ({result.num_new_evaluations} new), {result.num_proposals} proposals, "
        f"{result.num_rejected} rejected by the budget",
        f"reference (largest) {ref['name']}: mIoU {ref['miou']:.4f}, {ref['params']:,} params"
        + ("" if ref["feasible"] else " (over budget)"),
        (f"best feasible       {best['name']}: mIoU {best['miou']:.4f}, {best['params']:,} params "
         f"({best['size_reduction']:.1%} smaller)" + (f", {best['latency_ms']:.2f} ms" if best.get("latency_ms") else ""))
        if best else "best feasible       none",
        "Pareto front (params ↑):",
    ]
    for k, e in enumerate(result.pareto):
        lines.append(f"  pareto:{k:<3} {e['params']:>14,}  mIoU {e['miou']:.4f}  {e['name']}")
    lines += [f"{name}: {path}" for name, path in result.paths.items() if path]
    return "\n".join(lines)


def run(model_args: ModelArguments, data_args: DataArguments, output_args: OutputArguments,
        args: SearchArguments) -> SearchResult:
    """Load supernet, processor and data, search, print a summary.

    Under `accelerate launch` every process runs the same search, each scoring its share of the images of every
    subnet (statistics gathered: the same scores as one process); only the main process writes and prints."""
    inputs = (model_args.model_name_or_path, data_args.dataset_name)
    previous = Path(output_args.output_dir) / RESULTS_FILE
    if previous.is_file() and not (args.resume or output_args.overwrite_output_dir):
        raise FileExistsError(f"{previous.parent} already holds a search ({RESULTS_FILE}); pass --resume to continue "
                              "it, --overwrite_output_dir to start afresh, or choose another --output_dir.")
    # Before any work: writable, not an input, empty unless --overwrite_output_dir or --resume.
    output = prepare_output(output_args, *inputs, overwrite=output_args.overwrite_output_dir or args.resume)
    # A search replaces its files (a resume included): refused, before any work, where this tool did not write them
    # or they changed since; an earlier search is replaced only with --overwrite_output_dir (or continued: --resume).
    check_search_output(output, resume=args.resume or output_args.overwrite_output_dir)
    check_positive("batch_size", args.batch_size)
    check_positive("budget", args.budget)
    state = process_state("search")
    if args.device is None and state.num_processes > 1:
        args.device = str(state.device)
    if data_args.max_eval_images is not None:  # named as the flag, before the library names it max_images
        check_positive("max_eval_images", data_args.max_eval_images)
    supernet = load_supernet(model_args.model_name_or_path, require_supernet=True, revision=model_args.revision,
                             token=model_args.token, device=args.device)
    processor = load_processor(model_args.model_name_or_path, model_args.processor_name_or_path,
                               recorded_base_model(supernet), revision=model_args.revision, token=model_args.token)
    split = data_args.eval_split_name
    refuse_streaming(data_args, "search")
    dataset = load_data(data_args, split, split_flag="--eval_split_name")
    data = SamSegmentationData(dataset, processor, prompt=args.prompt_type, seed=args.eval_seed, return_full_masks=True,
                               **data_kwargs(data_args))
    if output_args.overwrite_output_dir and not args.resume and output.is_dir() and state.is_main_process:
        remove_tool_outputs(output)  # only what this tool wrote there, unchanged since; the rest stays (named)
    state.wait_for_everyone()
    result = search_subnets(supernet, data, processor, args, data_args, output_dir=output, state=state,
                            show_progress=state.is_local_main_process)
    if not state.is_main_process:
        state.wait_for_everyone()
        return result
    print(f"supersam search: {model_args.model_name_or_path} on {data_args.dataset_name}" + (f" [{split}]" if split else ""))
    print(format_search(result))
    state.wait_for_everyone()
    return result

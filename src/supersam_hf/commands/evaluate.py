"""`supersam evaluate`: mIoU of a model (SAM, supernet or export) or of one subnet; writes eval_results.json.

With box prompts the results also hold `box_reference_miou`: the mIoU of "the box itself as the mask" on the same
objects, through the same metric, the trivial reference a box-prompt figure should be read against."""

from __future__ import annotations

from pathlib import Path

from ..errors import SupersamError
from ..arguments import DataArguments, EvaluateArguments, ModelArguments, OutputArguments
from ..checks import check_positive
from ..data import SamSegmentationData, SamStreamingData
from ..distributed import process_state
from ..errors import UnsupportedSetupError
from ..evaluation import MASK_SELECTIONS, PROMPTS, evaluate_model, resolve_subnet
from ..loading import load_processor, load_sam_model, recorded_base_model
from ..outputs import atomic_output_dir
from ..results import EVALUATION_FILE, EvaluationResult
from .common import data_kwargs, load_data, prepare_output

RESULTS_FILE = EVALUATION_FILE  # what EvaluationResult.save writes


ARGUMENTS = (ModelArguments, DataArguments, OutputArguments, EvaluateArguments)


def format_results(result: EvaluationResult) -> str:
    """A small two-column text table of an `evaluate_model` result."""
    rows = [
        ("mIoU", f"{result.miou:.4f}"),
        ("per-image mIoU", f"{result.per_image_miou:.4f}"),
        ("mean Dice", f"{result.mean_dice:.4f}"),
        ("objects / images", f"{result.num_objects} / {result.num_images}"),
        ("prompt", result.prompt),
        ("mask selection", result.mask_selection),
        ("resolution", result.resolution),
        ("seed", str(result.seed)),
        ("subnet", result.subnet or "(whole model)"),
        ("instances scored", "all" if result.max_instances_per_image is None else
         f"at most {result.max_instances_per_image} per image ({result.num_instances_left_out} left out)"),
        *([("runtime", result.runtime)] if result.runtime else []),
        ("parameters", f"{result.params:,}" if result.params is not None else "?"),
    ]
    if result.box_reference_miou is not None:
        rows.insert(1, ("box-as-mask mIoU", f"{result.box_reference_miou:.4f}  (reference: the box prompt itself)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _onnx_model(model_args: ModelArguments, args: EvaluateArguments, subnet):
    """`OnnxSamModel` of a local export folder (`supersam export --onnx`)."""
    from ..onnx_export import OnnxSamModel, require_onnx

    require_onnx()
    if subnet is not None:
        raise SupersamError("--onnx evaluates an exported model's ONNX files; --subnet selects a subnet of a supernet. "
                         "Export the subnet with `supersam export --onnx` and evaluate that folder.")
    if not Path(model_args.model_name_or_path).is_dir():
        raise FileNotFoundError(f"--onnx needs --model_name_or_path to be an export folder holding onnx/; "
                                f"{model_args.model_name_or_path!r} is not a folder.")
    if args.device not in (None, "cpu"):
        raise SupersamError(f"--onnx runs on ONNX Runtime's CPU provider; --device {args.device} is not supported.")
    return OnnxSamModel(model_args.model_name_or_path, int8=args.onnx_int8)


def run(model_args: ModelArguments, data_args: DataArguments, output_args: OutputArguments,
        args: EvaluateArguments) -> EvaluationResult:
    """Load model, processor and data, evaluate, print a table and write `<output_dir>/eval_results.json`.

    Under `accelerate launch` the images are split across the processes and the statistics gathered (the result
    equals the one-process run); only the main process writes and prints."""
    if args.mask_selection not in MASK_SELECTIONS:
        raise SupersamError(f"--mask_selection must be one of {MASK_SELECTIONS}, got {args.mask_selection!r}.")
    if args.prompt_type not in PROMPTS:
        raise SupersamError(f"--prompt_type must be one of {PROMPTS}, got {args.prompt_type!r}.")
    inputs = (model_args.model_name_or_path, data_args.dataset_name, args.search_dir)
    output = prepare_output(output_args, *inputs)  # before any work: writable, not an input, empty or --overwrite
    check_positive("batch_size", args.batch_size)
    if args.max_instances_per_image is not None:
        check_positive("max_instances_per_image", args.max_instances_per_image)
    if data_args.max_eval_images is not None:  # named as the flag, before the library names it max_images
        check_positive("max_eval_images", data_args.max_eval_images)
    subnet = resolve_subnet(args.subnet, args.search_dir)  # before loading: --onnx refuses a subnet
    state = process_state("evaluate")
    if (args.onnx or args.onnx_int8) and state.num_processes > 1:
        raise UnsupportedSetupError("--onnx evaluates through ONNX Runtime in one process; run it without "
                                    "`accelerate launch`.")
    if args.device is None and state.num_processes > 1:
        args.device = str(state.device)  # each process on its own device (cuda:<local rank>, or cpu)
    if args.onnx or args.onnx_int8:
        model, base_model = _onnx_model(model_args, args, subnet), None
    else:
        model = load_sam_model(model_args.model_name_or_path, revision=model_args.revision, token=model_args.token,
                               device=args.device)
        base_model = recorded_base_model(model)
    processor = load_processor(model_args.model_name_or_path, model_args.processor_name_or_path,
                               base_model, revision=model_args.revision, token=model_args.token)
    split = data_args.eval_split_name
    dataset = load_data(data_args, split, split_flag="--eval_split_name")
    wrapper = SamStreamingData if data_args.streaming else SamSegmentationData  # a stream is read once, in order
    data = wrapper(dataset, processor, prompt=args.prompt_type, seed=args.seed, return_full_masks=True,
                   max_instances_per_image=args.max_instances_per_image, **data_kwargs(data_args))
    result = evaluate_model(
        model, data, processor, args, data_args, subnet=subnet,  # the subnet read once, above
        box_reference=args.prompt_type == "box",  # what copying the box prompt scores, in the same pass
        state=state, show_progress=state.is_local_main_process,
    )
    if args.onnx or args.onnx_int8:
        result.runtime = f"onnxruntime ({'INT8' if args.onnx_int8 else 'fp32'} encoder)"
    if not state.is_main_process:
        state.wait_for_everyone()  # the main process writes the one result folder
        return result
    with atomic_output_dir(output, overwrite=output_args.overwrite_output_dir, inputs=[i for i in inputs if i],
                           tool="supersam evaluate") as staging:
        result.save(staging)
    print(f"supersam evaluate: {model_args.model_name_or_path} on {data_args.dataset_name}" + (f" [{split}]" if split else ""))
    print(format_results(result))
    print(f"wrote {output / RESULTS_FILE}")
    state.wait_for_everyone()
    return result

"""`supersam convert`: a SAM checkpoint (Hub id, cache or folder) → a prioritized supernet, its processor and report."""

from __future__ import annotations

from ..arguments import ConvertArguments, DataArguments, ModelArguments, OutputArguments
from ..data import streamed_rows
from ..distributed import process_state
from ..loading import load_processor, load_supernet, recorded_base_model
from ..prioritization import PrioritizationReport, prioritize
from ..checks import check_positive
from ..outputs import atomic_output_dir
from .common import load_data, prepare_output


ARGUMENTS = (ModelArguments, DataArguments, OutputArguments, ConvertArguments)


def run(model_args: ModelArguments, data_args: DataArguments, output_args: OutputArguments,
        args: ConvertArguments) -> PrioritizationReport:
    """Load the SAM checkpoint as a supernet, prioritize it on the dataset, save supernet + processor + report."""
    inputs = (model_args.model_name_or_path, data_args.dataset_name, model_args.processor_name_or_path)
    output = prepare_output(output_args, *inputs)  # before any work: writable, not an input, empty or --overwrite
    check_positive("num_calibration_images", args.num_calibration_images)
    check_positive("calibration_batch_size", args.calibration_batch_size)
    state = process_state("convert")  # under accelerate launch: calibration images split, statistics gathered
    if args.device is None and state.num_processes > 1:
        args.device = str(state.device)
    dataset = load_data(data_args, data_args.train_split_name, split_flag="--train_split_name")
    if data_args.streaming:  # read only the calibration rows: a seeded shuffle buffer over the stream, then N rows
        if data_args.max_train_images is not None:
            dataset = dataset.take(data_args.max_train_images)
        dataset = streamed_rows(dataset.shuffle(seed=args.seed, buffer_size=data_args.shuffle_buffer_size),
                                args.num_calibration_images)
    elif data_args.max_train_images is not None:
        dataset = dataset.select(range(min(len(dataset), data_args.max_train_images)))
    model = load_supernet(model_args.model_name_or_path, revision=model_args.revision, token=model_args.token,
                          device=args.device)
    processor = load_processor(model_args.model_name_or_path, model_args.processor_name_or_path,
                               recorded_base_model(model), revision=model_args.revision, token=model_args.token)
    report = prioritize(model, dataset, processor, args, data_args, state=state,
                        show_progress=state.is_local_main_process)
    if not state.is_main_process:  # every process holds the same supernet; the main process writes it
        state.wait_for_everyone()
        return report
    with atomic_output_dir(output, overwrite=output_args.overwrite_output_dir, inputs=[i for i in inputs if i],
                           tool="supersam convert") as staging:  # complete, or not there at all
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        report.save(staging)
    print(
        f"supersam convert: {model_args.model_name_or_path} -> {output} (calibrated on {report.num_images} images; "
        f"elastic layers {report.elastic_layers}, drop probabilities {[round(p, 3) for p in report.layer_drop_probs]}; "
        f"input resolutions {model.config.image_size_choices})"
    )
    state.wait_for_everyone()
    return report

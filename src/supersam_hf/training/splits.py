"""The training and validation data of `train_supernet`: the splits of `args.dataset_name` (or the datasets given),
wrapped as SAM examples, map-style or streamed."""

from __future__ import annotations

import functools
import logging
from typing import Any

import datasets
from accelerate import PartialState
from transformers import SamProcessor

from ..checks import load_dataset_rows
from ..data import SamSegmentationData, SamStreamingData, load_segmentation_dataset
from ..errors import UnsupportedSetupError
from .arguments import SupernetTrainingArguments

def _data_options(args: SupernetTrainingArguments) -> dict[str, Any]:
    return {"image_column": args.image_column, "mask_column": args.mask_column, "seed": args.seed,
            "intensity_normalization": args.intensity_normalization, "min_mask_area": args.min_mask_area,
            "category_ids": args.category_ids}


def build_datasets(args: SupernetTrainingArguments, processor: SamProcessor, train_dataset=None, eval_dataset=None):
    """The training `SamSegmentationData` and the validation one (or None). Bad columns, mask kinds and datasets
    without a usable instance raise here, before any training starts. `train_dataset` / `eval_dataset`
    (`datasets.Dataset`, or `datasets.IterableDataset`) replace the splits of `args.dataset_name`.

    With `args.streaming` (or a `datasets.IterableDataset` given) the training data is a `SamStreamingData`: rows
    decoded on the fly, shuffled in blocks of `shuffle_buffer_size`, this process's part of the stream
    (`split_dataset_by_node`). Training keeps at most `max_instances_per_image` instances per image (memory);
    validation scores every instance."""
    if args.streaming or isinstance(train_dataset, datasets.IterableDataset):
        return _build_streaming_datasets(args, processor, train_dataset, eval_dataset)
    load = functools.partial(load_dataset_rows, functools.partial(load_segmentation_dataset, image_dir=args.image_dir),
                             args.dataset_name, config_name=args.dataset_config_name)
    raw = train_dataset
    if raw is None:
        raw = load(split=args.train_split_name, split_flag="--train_split_name")
    validation = eval_dataset
    source = "the given eval_dataset" if eval_dataset is not None else None
    if validation is None and args.eval_split_name:
        validation = load(split=args.eval_split_name, split_flag="--eval_split_name")
        source = f"split {args.eval_split_name!r}"
    elif validation is None and args.validation_fraction > 0:
        parts = raw.train_test_split(test_size=args.validation_fraction, seed=args.seed, shuffle=True)
        raw, validation = parts["train"], parts["test"]
        source = f"{args.validation_fraction:g} of split {args.train_split_name!r} held out"
    elif validation is None and args.eval_steps > 0 and train_dataset is None:
        source, validation = _default_eval_split(args)
    if args.max_train_images is not None:
        raw = raw.select(range(min(len(raw), args.max_train_images)))
    train_data = SamSegmentationData(raw, processor, mask_kind=args.mask_kind, prompt=args.prompt_type,
                                     max_instances_per_image=args.max_instances_per_image, **_data_options(args))
    if validation is None:
        _info_on_main("No evaluation during training: give eval_split_name or validation_fraction, or a dataset with a "
                      "'validation' or 'test' split.")
        return train_data, None
    _info_on_main(f"Evaluation during training on {source} of {args.dataset_name or 'the given data'}.")
    return train_data, _eval_data(args, processor, validation, train_data.mask_kind)


def _eval_data(args: SupernetTrainingArguments, processor: SamProcessor, validation, mask_kind: str):
    """The validation rows as SAM examples with every instance, box prompts (points for a point run); a stream is
    read again at every evaluation, with full-size masks."""
    streamed = isinstance(validation, datasets.IterableDataset)
    return (SamStreamingData if streamed else SamSegmentationData)(
        validation, processor, mask_kind=mask_kind, max_instances_per_image=None, return_full_masks=streamed,
        prompt="point" if args.prompt_type == "point" else "box", **_data_options(args))


def _build_streaming_datasets(args: SupernetTrainingArguments, processor: SamProcessor, train_dataset, eval_dataset):
    """`build_datasets` for a stream: this process's part of the training stream, shuffled; the validation split
    (if any) streamed in order, read again at every evaluation."""
    if args.validation_fraction:
        raise UnsupportedSetupError("--validation_fraction holds out rows of a map-style dataset; with --streaming "
                                    "give --eval_split_name instead.")
    if args.shuffle_buffer_size < 1:
        raise UnsupportedSetupError(f"--shuffle_buffer_size must be >= 1, got {args.shuffle_buffer_size}.")
    load = functools.partial(load_segmentation_dataset, args.dataset_name, config_name=args.dataset_config_name,
                             streaming=True, image_dir=args.image_dir)
    raw = train_dataset if train_dataset is not None else load(split=args.train_split_name)
    if isinstance(raw, datasets.Dataset):
        raw = raw.to_iterable_dataset(num_shards=max(1, min(64, len(raw))))
    state = PartialState()
    train_data = SamStreamingData(
        raw, processor, mask_kind=args.mask_kind, max_instances_per_image=args.max_instances_per_image,
        prompt=args.prompt_type, shuffle=True, shuffle_buffer_size=args.shuffle_buffer_size,
        rank=state.process_index, world_size=state.num_processes, max_rows=args.max_train_images,
        **_data_options(args),
    )
    validation = eval_dataset if eval_dataset is not None else (load(split=args.eval_split_name) if args.eval_split_name else None)
    return train_data, None if validation is None else _eval_data(args, processor, validation, train_data.mask_kind)


DEFAULT_EVAL_SPLITS = ("validation", "test")


def _info_on_main(message: str) -> None:
    """Log once: on the main process of an accelerate run, or plainly when no accelerate state exists yet."""
    if PartialState._shared_state and not PartialState().is_main_process:
        return
    logging.getLogger(__name__).info(message)


def _default_eval_split(args: SupernetTrainingArguments):
    """(description, dataset) of the dataset's `validation` (else `test`) split, or (None, None) when it has neither
    (a split the data does not have raises `ValueError` in `load_segmentation_dataset`)."""
    for name in DEFAULT_EVAL_SPLITS:
        if name == args.train_split_name:
            continue
        try:
            data = load_segmentation_dataset(args.dataset_name, split=name, config_name=args.dataset_config_name,
                                             image_dir=args.image_dir)
        except ValueError:
            continue
        return f"split {name!r} (the dataset's {name} split; eval_split_name chooses another)", data
    return None, None


__all__ = ["DEFAULT_EVAL_SPLITS", "build_datasets"]

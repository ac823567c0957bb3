"""One str-valued enum per choice set: the CLI's choices, the package's tuples and its messages all come from it."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

import supersam_hf
from supersam_hf.commands.cli import UsageError, build_parser, parse_stage_arguments
from supersam_hf.errors import SupersamError
from supersam_hf.types import (
    EvaluationPromptType,
    ExplicitEnum,
    IntensityNormalization,
    LatencyBackend,
    LogLevel,
    LossType,
    LrSchedulerType,
    MaskKind,
    MaskSelection,
    MixedPrecision,
    PromptType,
    SearchStrategy,
    SizeMetric,
)

ENUMS = (EvaluationPromptType, IntensityNormalization, LatencyBackend, LogLevel, LossType, LrSchedulerType, MaskKind,
         MaskSelection, MixedPrecision, PromptType, SearchStrategy, SizeMetric)

# (stage, flag, enum): every flag whose values are one of the choice sets.
FLAGS = [
    *[(stage, "--log_level", LogLevel) for stage in ("convert", "train", "search", "evaluate", "export", "demo")],
    *[(stage, "--intensity_normalization", IntensityNormalization)
      for stage in ("convert", "train", "search", "evaluate", "export")],
    ("train", "--prompt_type", PromptType),
    ("search", "--prompt_type", EvaluationPromptType),
    ("evaluate", "--prompt_type", EvaluationPromptType),
    ("export", "--prompt_type", EvaluationPromptType),
    ("search", "--mask_selection", MaskSelection),
    ("evaluate", "--mask_selection", MaskSelection),
    ("search", "--latency_backend", LatencyBackend),
    ("search", "--strategy", SearchStrategy),
    ("train", "--loss_type", LossType),
    ("train", "--lr_scheduler_type", LrSchedulerType),
    ("train", "--mixed_precision", MixedPrecision),
]


def _action(stage: str, flag: str):
    parser = build_parser(stage)
    return parser, next(a for a in parser._actions if flag in a.option_strings)


@pytest.mark.parametrize("stage,flag,enum", FLAGS, ids=[f"{s}{f}" for s, f, _ in FLAGS])
def test_cli_choices_are_the_enum_values(stage, flag, enum):
    parser, action = _action(stage, flag)
    assert list(action.choices) == [member.value for member in enum]
    # what `supersam <stage> --help` shows, e.g. `--prompt_type {point,box,mixed}`
    assert f"{flag} {{{','.join(enum.values())}}}" in parser.format_help()
    # the parsed value is the plain string (the rest of the code compares strings), and the default is one of them
    for value in enum.values():
        assert type(action.type(value)) is str and action.type(value) == value
    assert action.default is None or (type(action.default) is str and action.default in enum.values())


def test_package_tuples_are_derived_from_the_enums():
    from supersam_hf.arguments import DEFAULT_PROMPT_TYPE, LOG_LEVELS, PROMPT_CHOICES
    from supersam_hf.data import MASK_KINDS, PROMPT_TYPES
    from supersam_hf.data.images import DEFAULT_INTENSITY_NORMALIZATION
    from supersam_hf.evaluation import MASK_SELECTIONS, PROMPTS
    from supersam_hf.intensity import INTENSITY_MODES
    from supersam_hf.losses import LOSS_TYPES
    from supersam_hf.model_card import CARD_PROMPTS
    from supersam_hf.search import STRATEGIES
    from supersam_hf.search.driver import LATENCY_BACKENDS
    from supersam_hf.training.arguments import MIXED_PRECISION, SCHEDULERS

    assert PROMPT_CHOICES == PROMPT_TYPES == ("point", "box", "mixed") == PromptType.values()
    assert PROMPTS == CARD_PROMPTS == ("point", "box") == EvaluationPromptType.values()
    assert MASK_KINDS == ("instance", "masks", "semantic", "coco") == MaskKind.values()
    assert INTENSITY_MODES == ("percentile", "range", "minmax") == IntensityNormalization.values()
    assert MASK_SELECTIONS == ("single", "oracle", "single_output") == MaskSelection.values()
    assert LATENCY_BACKENDS == ("torch", "onnxruntime") == LatencyBackend.values()
    assert LOG_LEVELS == ("debug", "info", "warning", "error") == LogLevel.values()
    assert LOSS_TYPES == ("focal_dice", "dice", "dice_bce") == LossType.values()
    assert STRATEGIES == ("opentuner", "random") == SearchStrategy.values()
    assert SCHEDULERS == ("cosine", "linear", "constant", "constant_with_warmup") == LrSchedulerType.values()
    assert MIXED_PRECISION == ("no", "fp16", "bf16") == MixedPrecision.values()
    # plain strings, so messages that print the tuples read as before: ('point', 'box')
    for values in (PROMPT_TYPES, PROMPTS, MASK_KINDS, INTENSITY_MODES, MASK_SELECTIONS, LATENCY_BACKENDS, LOG_LEVELS):
        assert all(type(value) is str for value in values)
    assert type(DEFAULT_PROMPT_TYPE) is str and DEFAULT_PROMPT_TYPE == PromptType.BOX
    assert type(DEFAULT_INTENSITY_NORMALIZATION) is str and DEFAULT_INTENSITY_NORMALIZATION == "percentile"
    assert all(getattr(supersam_hf, enum.__name__) is enum for enum in ENUMS)
    assert set(EvaluationPromptType.values()) < set(PromptType.values())


@pytest.mark.parametrize("enum", ENUMS, ids=[e.__name__ for e in ENUMS])
def test_members_are_their_strings_and_unknown_values_name_the_valid_ones(enum):
    for member in enum:
        assert member == member.value and enum(member.value) is member and enum(member) is member
        assert str(member) == f"{member}" == member.value and hash(member) == hash(member.value)
        assert json.loads(json.dumps({"v": member, "l": [member]})) == {"v": member.value, "l": [member.value]}
    with pytest.raises(SupersamError, match=re.escape(f"'bogus' is not a valid {enum.__name__}; choose one of "
                                                      f"{', '.join(enum.values())}.")):
        enum("bogus")
    assert issubclass(enum, ExplicitEnum) and issubclass(enum, str)


@pytest.mark.parametrize("flag,value,valid", [("--prompt_type", "mixed", "'point', 'box'"),
                                              ("--mask_selection", "best", "'single', 'oracle', 'single_output'")])
def test_a_flag_outside_the_enum_is_refused_in_one_line(flag, value, valid):
    with pytest.raises(UsageError, match=re.escape(f"invalid choice: '{value}' (choose from {valid})")):
        parse_stage_arguments("evaluate", ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o",
                                           flag, value])


@pytest.mark.parametrize("stage,flag", [("train", "--mask_kind"), ("demo", "--prompt_type"), ("demo", "--size_metric")])
def test_flags_checked_by_their_stage_keep_their_own_message(stage, flag):
    """These flags had no argparse choices: a bad value reaches the stage, whose message (from the enum's values)
    says more (`Unknown --mask_kind 'x'; valid kinds are (...) (or None to auto-detect)`)."""
    assert _action(stage, flag)[1].choices is None


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_arguments_from_flags_and_files_stay_plain_strings(tmp_path, suffix):
    """Flags and .json / .yaml argument files give plain strings, so asdict → json and yaml.safe_dump still work."""
    values = {"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o", "prompt_type": "point",
              "mask_selection": "oracle", "mask_kind": "coco", "intensity_normalization": "minmax",
              "log_level": "warning"}
    path = tmp_path / f"args{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values), encoding="utf-8")
    flags = [item for key, value in values.items() for item in (f"--{key}", value)]
    for parsed in (parse_stage_arguments("evaluate", [str(path)]), parse_stage_arguments("evaluate", flags)):
        merged = {k: v for args in parsed for k, v in dataclasses.asdict(args).items()}
        assert {k: merged[k] for k in values} == values
        assert all(type(merged[k]) is str for k in values)
        assert yaml.safe_load(yaml.safe_dump(merged)) == json.loads(json.dumps(merged))
    path.write_text(json.dumps({**values, "mask_selection": "best"}), encoding="utf-8")
    with pytest.raises(SupersamError, match="'mask_selection' must be one of 'single', 'oracle', 'single_output', got 'best'"):
        parse_stage_arguments("evaluate", [str(path)])


def test_library_functions_take_members_and_record_plain_strings():
    """An enum member works wherever its string does, and results keep plain strings (they go into YAML card
    metadata, where a member would be written as a Python object)."""
    from helpers import tiny_processor, tiny_supernet

    from supersam_hf.data import make_synthetic_shapes
    from supersam_hf.evaluation import evaluate_model

    model, processor = tiny_supernet(num_layers=2, image_size=64), tiny_processor(64)
    dataset = make_synthetic_shapes(2, image_size=64, seed=1)
    plain = evaluate_model(model, dataset, processor, prompt="point", mask_selection="oracle", show_progress=False)
    member = evaluate_model(model, dataset, processor, prompt=PromptType.POINT, mask_selection=MaskSelection.ORACLE,
                            show_progress=False)
    assert member == plain
    assert type(member["prompt"]) is str and type(member["mask_selection"]) is str
    assert yaml.safe_load(yaml.safe_dump(member.to_dict())) == json.loads(json.dumps(member.to_dict()))

"""Nothing wrong passes silently: partial or corrupt checkpoints, non-finite weights and metrics, mistyped arguments."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest
import torch
from helpers import tiny_sam, tiny_supernet
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import SamModel

from supersam_hf import SuperSamModel
from supersam_hf.errors import ModelFileError
from supersam_hf.checks import (
    check_finite,
    check_finite_metric,
    check_loading_info,
    check_model_folder,
    check_positive,
    check_safetensors_file,
    check_state_dict,
    is_finite_metric,
    load_args_file,
    named_load_errors,
    strict_dataclass_from_dict,
)


@pytest.fixture(scope="module")
def saved_sam(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam")
    tiny_sam(num_layers=2).save_pretrained(folder)
    return folder


def _without_decoder(saved: Path, destination: Path) -> Path:
    destination.mkdir()
    (destination / "config.json").write_text((saved / "config.json").read_text())
    weights = {k: v for k, v in load_file(saved / "model.safetensors").items() if not k.startswith("mask_decoder.")}
    save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def test_complete_checkpoint_passes(saved_sam):
    model, info = SamModel.from_pretrained(saved_sam, output_loading_info=True)
    check_state_dict(model, info, str(saved_sam))
    with safe_open(saved_sam / "model.safetensors", framework="pt") as handle:  # tied weights are not stored
        check_state_dict(model, list(handle.keys()), str(saved_sam))
    check_state_dict(model, load_file(saved_sam / "model.safetensors"), str(saved_sam))


def test_checkpoint_missing_the_mask_decoder_is_named(saved_sam, tmp_path):
    broken = _without_decoder(saved_sam, tmp_path / "broken")
    model, info = SamModel.from_pretrained(broken, output_loading_info=True)
    with pytest.raises(ValueError, match=r"broken does not match the model: \d+ weights missing \(mask_decoder\."):
        check_state_dict(model, info, str(broken))
    supernet, info = SuperSamModel.from_pretrained(broken, output_loading_info=True)
    with pytest.raises(ValueError, match=r"weights missing \(mask_decoder\..* and \d+ more"):
        check_state_dict(supernet, info, str(broken))
    with pytest.raises(ValueError, match=r"weights missing \(mask_decoder\."):
        check_state_dict(tiny_supernet(num_layers=2), load_file(broken / "model.safetensors"), str(broken))


def test_unexpected_and_mismatched_weights_are_named(saved_sam):
    model = SamModel.from_pretrained(saved_sam)
    weights = load_file(saved_sam / "model.safetensors")
    weights["vision_encoder.layers.7.mlp.lin1.weight"] = torch.zeros(2, 2)  # a deeper model's layer
    weights["vision_encoder.neck.conv1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError) as error:
        check_state_dict(model, weights, "ckpt")
    message = str(error.value)
    assert "1 unexpected weights (vision_encoder.layers.7.mlp.lin1.weight)" in message
    assert "vision_encoder.neck.conv1.weight: checkpoint (3, 3) vs model" in message
    del weights["vision_encoder.neck.conv1.weight"]
    with pytest.raises(ValueError, match=r"1 weights missing \(vision_encoder\.neck\.conv1\.weight\)"):
        check_state_dict(model, weights, "ckpt", allow_unexpected=[r"layers\.7\."])


def test_allowed_patterns_accept_known_differences():
    info = {"missing_keys": {"a.importance"}, "unexpected_keys": {"b.extra"}, "mismatched_keys": set()}
    check_loading_info(info, "ckpt", allow_missing=[r"importance$"], allow_unexpected=[r"^b\."])
    with pytest.raises(ValueError, match=r"1 weights missing \(a\.importance\)"):
        check_loading_info(info, "ckpt", allow_unexpected=[r"^b\."])


def test_nan_weights_are_named():
    model = tiny_sam(num_layers=2)
    check_finite(model, "supernet")
    with torch.no_grad():
        model.mask_decoder.iou_token.weight[0, 0] = float("nan")
        model.vision_encoder.layers[1].mlp.lin2.bias[3] = float("inf")
    with pytest.raises(ValueError, match=r"supernet has non-finite weights \(NaN or inf\) in 2 tensors") as error:
        check_finite(model, "supernet")
    assert "mask_decoder.iou_token.weight" in str(error.value)
    assert "vision_encoder.layers.1.mlp.lin2.bias" in str(error.value)
    with pytest.raises(ValueError, match="mask_decoder.iou_token.weight"):
        check_finite(model.state_dict(), "state dict")


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -math.inf, None, "0.5", True, torch.tensor(float("nan"))]
)
def test_non_finite_metric_is_never_ranked(value):
    assert not is_finite_metric(value)
    with pytest.raises(ValueError, match="metric miou"):
        check_finite_metric(value, "miou")


def test_finite_metrics_pass():
    assert check_finite_metric(torch.tensor(0.25), "miou") == 0.25
    assert check_finite_metric(1, "params") == 1.0
    assert is_finite_metric(0.0) and is_finite_metric(np.float32(0.5)) and is_finite_metric(np.int64(3))


def test_truncated_and_random_safetensors_are_named(saved_sam, tmp_path):
    assert "mask_decoder.iou_token.weight" in check_safetensors_file(saved_sam / "model.safetensors")
    data = (saved_sam / "model.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    random_bytes = tmp_path / "random.safetensors"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path in (truncated, random_bytes, empty):
        expected = rf"{path.name} is not a valid safetensors file \(truncated or corrupt.*re-download or re-save it"
        with pytest.raises(ValueError, match=expected):
            check_safetensors_file(path)


def test_model_folder_problems_are_named(saved_sam, tmp_path):
    assert check_model_folder(saved_sam) == [saved_sam / "model.safetensors"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_folder(tmp_path / "nope")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        check_model_folder(no_config)
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text((saved_sam / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        check_model_folder(only_config)
    (only_config / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        check_model_folder(only_config)
    (only_config / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"model config .*config\.json is corrupt"):
        check_model_folder(only_config)


@pytest.mark.parametrize("value", [0, -1, 2.0, "4", True, None])
def test_bad_batch_sizes_are_refused(value):
    with pytest.raises(ValueError, match=r"--per_device_eval_batch_size must be a positive integer"):
        check_positive("per_device_eval_batch_size", value)


def test_positive_values_pass():
    assert check_positive("batch_size", 8) == 8
    assert check_positive("logging_steps", 0, allow_zero=True) == 0


class Strategy(enum.Enum):
    STEPS = "steps"
    NO = "no"


@dataclass
class ToyArguments:
    output_dir: str
    max_steps: int = 10
    learning_rate: float = 1e-4
    fp16: bool = False
    resume_from_checkpoint: Optional[str] = None
    prompt_type: Literal["point", "box", "mixed"] = "point"
    kept_layers: list[int] = field(default_factory=list)
    shape: tuple[int, ...] = (1, 2)
    save_strategy: Strategy = Strategy.STEPS
    data_dir: Optional[Path] = None


def test_strict_arguments_accept_valid_values():
    args = strict_dataclass_from_dict(
        ToyArguments,
        {"output_dir": "out", "max_steps": 5, "learning_rate": 1, "kept_layers": [0, 2], "shape": [3, 4],
         "save_strategy": "no", "data_dir": "data", "resume_from_checkpoint": None, "prompt_type": "box"},
        "args.json",
    )
    assert args.max_steps == 5 and args.shape == (3, 4) and args.data_dir == Path("data")
    assert isinstance(args.learning_rate, float) and args.save_strategy is Strategy.NO


def test_unknown_argument_is_named_with_valid_keys():
    expected = r"args.json: unknown argument 'max_step' \(did you mean 'max_steps'\?\); valid arguments: .*output_dir"
    with pytest.raises(ValueError, match=expected):
        strict_dataclass_from_dict(ToyArguments, {"output_dir": "o", "max_step": 3}, "args.json")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("max_steps", "ten", "an integer"),
        ("max_steps", 1.7, "an integer"),
        ("max_steps", True, "an integer"),
        ("learning_rate", "fast", "a number"),
        ("fp16", "yes", "true or false"),
        ("kept_layers", [0, 1.7, 2], "a list of integers"),
        ("kept_layers", None, "a list"),
        ("prompt_type", "points", "one of 'point', 'box', 'mixed'"),
        ("save_strategy", "sometimes", "one of 'steps', 'no'"),
        ("output_dir", 3, "a string"),
    ],
)
def test_mistyped_argument_is_named_with_expected_type(key, value, expected):
    with pytest.raises(ValueError) as error:
        strict_dataclass_from_dict(ToyArguments, {"output_dir": "o", key: value}, "args.json")
    message = str(error.value)
    assert message.startswith(f"args.json: argument {key!r} must be ")
    assert expected in message and repr(value) in message


def test_args_files_json_and_yaml(tmp_path):
    good = tmp_path / "args.yaml"
    good.write_text("output_dir: out\nmax_steps: 3\n")
    assert load_args_file(ToyArguments, good).max_steps == 3
    bad = tmp_path / "args.json"
    bad.write_text(json.dumps({"output_dir": "out", "max_steps": "ten"}))
    with pytest.raises(ValueError, match=r"args\.json: argument 'max_steps' must be an integer, got 'ten'"):
        load_args_file(ToyArguments, bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: [unclosed\n")
    with pytest.raises(ValueError, match=r"arguments file .*broken\.yaml is not valid YAML"):
        load_args_file(ToyArguments, broken)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{")
    with pytest.raises(ValueError, match=r"arguments file .*corrupt\.json is corrupt"):
        load_args_file(ToyArguments, corrupt)


def test_corrupt_or_incompatible_resume_checkpoint_is_named(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "step_4"
    checkpoint.mkdir(parents=True)
    optimizer = checkpoint / "optimizer.bin"
    optimizer.write_bytes(bytes([246]) * 64)  # garbage where a torch pickle should be
    remedy = "resume from the previous checkpoint or start afresh with --overwrite_output_dir"
    expected = r"training checkpoint .*step_4 is corrupt or does not fit this model \(.*\); resume from the previous"
    with pytest.raises(ValueError, match=expected):
        with named_load_errors(checkpoint, "training checkpoint", remedy):
            torch.load(optimizer, weights_only=True)
    small = torch.nn.Linear(4, 4)
    expected = r"step_4 is corrupt or does not fit this model \(RuntimeError: Error\(s\) in loading state_dict"
    with pytest.raises(ValueError, match=expected):
        with named_load_errors(checkpoint, "training checkpoint", remedy):
            small.load_state_dict(torch.nn.Linear(6, 6).state_dict())
    (checkpoint / "model.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(ValueError, match=r"step_4 is corrupt or does not fit this model \(SafetensorError"):
        with named_load_errors(checkpoint, "training checkpoint", remedy):
            load_file(checkpoint / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        with named_load_errors(checkpoint, "training checkpoint", remedy):
            torch.load(checkpoint / "missing.bin", weights_only=True)


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 1_000_000), ("hidden_size", 10**7), ("image_size", 10**6)])
def test_absurd_config_is_refused_fast_before_any_model_is_built(tmp_path, monkeypatch, field, value):
    import time

    from supersam_hf.loading import load_supernet
    from supersam_hf.modeling_supersam import SuperSamModel

    folder = tmp_path / "absurd"
    tiny_sam(num_layers=2, image_size=32).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(SuperSamModel, "__init__", lambda *a, **k: built.append(1))  # never reached
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"this config describes a model of about [\d,]+ parameters .* more than "
                                             r"this machine's [\d.,]+ GiB of memory") as error:
        load_supernet(folder, device="cpu")
    assert time.perf_counter() - start < 1.0 and built == []
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_model_size_estimate_is_close_to_the_real_count_and_names_bad_fields():
    from transformers import SamConfig

    from supersam_hf.checks import check_model_size, estimate_model_memory

    sam = tiny_sam(num_layers=4, image_size=64)
    estimate = estimate_model_memory(sam.config.to_dict())
    real = sum(p.numel() for p in sam.parameters())
    assert 0.5 * real < estimate["params"] < 2 * real
    base = estimate_model_memory(SamConfig().to_dict())["params"]  # sam-vit-base: 93.7 M parameters
    assert 0.8 * 93.7e6 < base < 1.2 * 93.7e6
    with pytest.raises(ModelFileError, match=r"vision_config\.hidden_size must be a positive integer, got -3"):
        check_model_size({"vision_config": {"hidden_size": -3}}, "x/config.json")
    assert check_model_size(sam.config.to_dict(), "tiny", memory_bytes=10**9)["params"] == estimate["params"]
    with pytest.raises(ModelFileError, match="more than this machine's 0.0 GiB"):
        check_model_size(sam.config.to_dict(), "tiny", memory_bytes=1000)

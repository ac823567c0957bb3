"""accelerate's engines: what a launch asked for vs what runs (supersam_hf.distributed), each engine config either
working (and matching one process) or refused in one line, and evaluate / convert / search split across processes.

The multi-process tests launch 2 CPU processes (gloo) with `accelerate launch`; they are few and tiny (64 px,
4 images), and share one launch where they can.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType
from datasets import DatasetDict
from helpers import prompt_inputs, tiny_processor, tiny_sam
from safetensors.torch import load_file
from transformers import HfArgumentParser

from supersam_hf import SuperSamModel
from supersam_hf.cli import main
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.distributed import (
    check_engine_request,
    check_launch,
    engine_info,
    engine_line,
    refuse_multi_process,
    requested_engine,
)
from supersam_hf.errors import UnsupportedSetupError
from supersam_hf.training import SupernetTrainingArguments, build_datasets, train_supernet

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "engine_configs"
LAUNCH_TIMEOUT = 600  # generous: a shared 2-core machine

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny SAM + processor, a 4-image dataset and a DatasetDict with train / validation splits (64 px)."""
    root = tmp_path_factory.mktemp("engine_assets")
    sam = tiny_sam(num_layers=4, image_size=64)
    sam.save_pretrained(root / "sam")
    tiny_processor(64).save_pretrained(root / "sam")
    make_synthetic_shapes(4, image_size=64, seed=0, max_shapes=3).save_to_disk(str(root / "data4"))
    DatasetDict({
        "train": make_synthetic_shapes(3, image_size=64, seed=1, max_shapes=2),
        "validation": make_synthetic_shapes(2, image_size=64, seed=2, max_shapes=2),
    }).save_to_disk(str(root / "splits"))
    return root


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], config: str | None = "ddp.yaml", cpu: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch` of 2 processes (`config` from tests/engine_configs, or plain `--multi_gpu`)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    where = ["--config_file", str(CONFIGS / config)] if config else [
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *where, "--main_process_port", str(free_port()), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def supersam_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("supersam ")]


# ---------------------------------------------------------------------------------------------------------------
# What was asked for vs what runs (no launch)
# ---------------------------------------------------------------------------------------------------------------


def fake_state(num_processes: int, kind=DistributedType.NO):
    return SimpleNamespace(num_processes=num_processes, distributed_type=kind, backend="gloo" if num_processes > 1 else None,
                           device=torch.device("cpu"))


def test_launch_of_n_processes_that_formed_one_is_refused():
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    with pytest.raises(UnsupportedSetupError, match=r"started 2 processes .* formed a 1-process state .*ACCELERATE_USE_CPU=true"):
        check_launch(fake_state(1), env)
    check_launch(fake_state(2, DistributedType.MULTI_CPU), env)  # a real group
    check_launch(fake_state(1), {})  # no launcher
    check_launch(fake_state(1), {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"})  # --cpu, 1 process
    cpu_launch_of_2 = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1"}
    with pytest.raises(UnsupportedSetupError, match=r"--cpu with several processes starts only one"):
        check_launch(fake_state(1), cpu_launch_of_2)


@pytest.mark.parametrize("env, kind, match", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp", "FSDP version 1 .* not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "fsdp", "FSDP version 2 .* not supported yet: on CPU"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "deepspeed", "needs CUDA GPUs"),
])
def test_engines_refused_on_cpu(env, kind, match):
    env = {"WORLD_SIZE": "2", **env}
    assert requested_engine(env)["kind"] == kind
    with pytest.raises(UnsupportedSetupError, match=match) as error:
        check_engine_request(env, cuda_available=False)
    assert "use DDP instead" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UnsupportedSetupError, match="splits its images across plain processes"):
        check_engine_request(env, cuda_available=False, stage="evaluate")


@pytest.mark.parametrize("stage, match", [(1, "ZeRO stage 1 is not supported yet"), (2, "ZeRO stage 2 is not supported yet"),
                                          (3, "ZeRO stage 3 is not supported: it gathers a weight only")])
def test_deepspeed_on_gpus_is_refused_with_the_reason(stage, match):
    env = {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage)}
    with pytest.raises(UnsupportedSetupError, match=match):
        check_engine_request(env, cuda_available=True)


def test_single_process_stages_refuse_a_multi_process_launch():
    refuse_multi_process("export", fake_state(1))
    with pytest.raises(UnsupportedSetupError, match="supersam export runs in one process; it was launched as 2"):
        refuse_multi_process("export", fake_state(2, DistributedType.MULTI_CPU))


def test_plain_launches_pass_and_are_described():
    check_engine_request({}, cuda_available=False)
    check_engine_request({"WORLD_SIZE": "2"}, cuda_available=False)
    info = engine_info(fake_state(4, DistributedType.MULTI_GPU), "bf16", {"LOCAL_WORLD_SIZE": "2"})
    assert (info["engine"], info["num_processes"], info["num_machines"], info["mixed_precision"]) == ("DDP", 4, 2, "bf16")
    assert engine_line(info) == "Engine: DDP (gloo on cpu), 4 processes on 2 machines, mixed precision bf16."
    assert engine_info(fake_state(1), None, {})["engine"] == "single process"


@pytest.mark.parametrize("env", [
    {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
])
def test_every_stage_refuses_an_engine_launch_in_one_line_exit_2(assets, tmp_path, monkeypatch, capsys, env):
    """The environment `accelerate launch` gives each process of an engine config (here without the launcher)."""
    for name, value in {"WORLD_SIZE": "1", "ACCELERATE_USE_CPU": "true", **env}.items():
        monkeypatch.setenv(name, value)
    data = ["--model_name_or_path", str(assets / "sam"), "--dataset_name", str(assets / "data4")]
    for stage in ("train", "evaluate", "convert", "search"):
        assert main([stage, *data, "--output_dir", str(tmp_path / stage)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"supersam {stage}: error: "), err
        assert "use DDP instead" in err[0] or "accelerate launch --multi_gpu" in err[0]
        assert not (tmp_path / stage).exists()


# ---------------------------------------------------------------------------------------------------------------
# Evaluation during training: the dataset's validation split by default
# ---------------------------------------------------------------------------------------------------------------


def test_training_evaluates_on_the_validation_split_by_default(assets, caplog):
    args = SupernetTrainingArguments(model_name_or_path=str(assets / "sam"), dataset_name=str(assets / "splits"),
                                     output_dir="unused", eval_steps=5, max_instances_per_image=2)
    processor = tiny_processor(64)
    with caplog.at_level("INFO", logger="supersam_hf"):
        train_data, eval_data = build_datasets(args, processor)
    assert (len(train_data), len(eval_data)) == (3, 2)
    assert "on split 'validation'" in caplog.text
    args.eval_steps = 0  # only at the end, and only on an explicit eval split
    assert build_datasets(args, processor)[1] is None
    args.dataset_name = str(assets / "data4")  # no validation / test split: no evaluation, and the log says so
    args.eval_steps = 5
    caplog.clear()
    with caplog.at_level("INFO", logger="supersam_hf"):
        assert build_datasets(args, processor)[1] is None
    assert "No evaluation during training" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Launches (2 CPU processes, gloo)
# ---------------------------------------------------------------------------------------------------------------


def train_flags(assets: Path, out: Path) -> list[str]:
    # One instance per image: the loss is a mean over instances, so 2 processes x 1 image average exactly what
    # 1 process x 2 images does.
    return ["--model_name_or_path", str(assets / "sam"), "--dataset_name", str(assets / "data4"), "--output_dir", str(out),
            "--max_steps", "2", "--num_random_subnets", "1", "--max_instances_per_image", "1", "--learning_rate", "1e-3",
            "--gradient_accumulation_steps", "1", "--save_steps", "0", "--eval_steps", "0", "--seed", "3",
            "--logging_steps", "1"]


def test_ddp_equals_one_process_with_the_same_global_batch_and_names_the_engine(assets, tmp_path):
    out = tmp_path / "ddp"
    evaluation = ["--eval_split_name", "train", "--max_eval_images", "3", "--per_device_eval_batch_size", "1"]
    result = launch(["-m", "supersam_hf.cli", "train", *train_flags(assets, out), *evaluation,
                     "--per_device_train_batch_size", "1"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    first = next(line for line in result.stderr.splitlines() if "supersam_hf" in line and "] " in line)
    assert "] Engine: DDP (gloo on cpu" in first and "), 2 processes on 1 machine, mixed precision no." in first
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["engine"]["engine"] == "DDP" and summary["engine"]["num_processes"] == 2
    assert summary["engine"]["num_machines"] == 1

    single = tmp_path / "single"
    parser = HfArgumentParser(SupernetTrainingArguments)
    args = parser.parse_args_into_dataclasses(args=[*train_flags(assets, single), *evaluation,
                                                    "--per_device_train_batch_size", "2"])[0]
    model = train_supernet(args)
    assert json.loads((single / "training_summary.json").read_text())["engine"]["engine"] == "single process"
    ddp = load_file(out / "model.safetensors")
    start = load_file(assets / "sam" / "model.safetensors")
    name = "vision_encoder.layers.0.attn.qkv.weight"
    assert not torch.equal(ddp[name], start[name])  # it trained
    # Attention key biases get a true gradient of 0 (softmax ignores a shift shared by all keys), so AdamW turns
    # their rounding noise into full-size steps of either sign: they are compared through the outputs instead.
    key_bias = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("attn.qkv.bias"):
            key_bias[key] = slice(tensor.shape[0] // 3, 2 * tensor.shape[0] // 3)
        elif key.endswith("k_proj.bias"):
            continue
        if key in ddp:
            expected, actual = tensor, ddp[key]
            if key in key_bias:
                keep = torch.ones(tensor.shape[0], dtype=torch.bool)
                keep[key_bias[key]] = False
                expected, actual = expected[keep], actual[keep]
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=key)
    ddp_model = SuperSamModel.from_pretrained(out).eval()
    inputs = prompt_inputs("boxes", batch=2, prompts=2, image_size=64)
    with torch.no_grad():
        torch.testing.assert_close(ddp_model(**inputs).pred_masks, model.eval()(**inputs).pred_masks, rtol=1e-4, atol=1e-4)
    losses_one = [r["loss"] for r in map(json.loads, (single / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "train"]
    losses_two = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "train"]
    assert len(losses_one) == len(losses_two) == 2
    for a, b in zip(losses_one, losses_two):
        assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-5) for k in a)
    # The final evaluation: 3 images in batches of 1 split across the 2 processes (2 + 1), gathered.
    evals = [[r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "eval"]
             for run in (single, out)]
    assert [len(e) for e in evals] == [1, 1] and evals[1][0]["num_images"] == 3
    assert evals[1][0]["num_objects"] == evals[0][0]["num_objects"]
    for name, value in evals[0][0]["miou"].items():
        assert evals[1][0]["miou"][name] == pytest.approx(value, abs=1e-3)


def test_launch_that_formed_no_process_group_stops_before_writing(assets, tmp_path):
    out = tmp_path / "alone"
    result = launch(["-m", "supersam_hf.cli", "train", *train_flags(assets, out)], config=None, cpu=False)
    assert result.returncode != 0
    lines = supersam_lines(result.stderr)
    assert len(lines) == 2 and all("error: the launcher started 2 processes" in line for line in lines), result.stderr[-3000:]
    assert "exitcode: 2" in result.stderr  # each process: a user error
    assert not out.exists()


# accelerate's launcher itself imports deepspeed for a DeepSpeed config (without it: its own ImportError first).
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="accelerate launch of a DeepSpeed config needs `pip install deepspeed`")


@pytest.mark.parametrize("config, match", [
    ("fsdp1.yaml", "FSDP version 1 (FullyShardedDataParallel) is not supported"),
    ("fsdp2.yaml", "FSDP version 2 (fully_shard) is not supported yet"),
    pytest.param("deepspeed_zero1.yaml", "DeepSpeed (ZeRO stage 1) needs CUDA GPUs", marks=needs_deepspeed),
    pytest.param("deepspeed_zero2.yaml", "DeepSpeed (ZeRO stage 2) needs CUDA GPUs", marks=needs_deepspeed),
    pytest.param("deepspeed_zero3.yaml", "DeepSpeed (ZeRO stage 3) needs CUDA GPUs", marks=needs_deepspeed),
])
def test_engine_configs_are_refused_in_one_line(assets, tmp_path, config, match):
    out = tmp_path / "engine"
    result = launch(["-m", "supersam_hf.cli", "train", *train_flags(assets, out)], config=config)
    assert result.returncode != 0
    lines = supersam_lines(result.stderr)
    assert lines and all(line.startswith("supersam train: error: ") and match in line for line in lines), result.stderr[-3000:]
    assert "internal error" not in result.stderr and "exitcode: 2" in result.stderr
    assert not out.exists()


def test_sandwich_step_on_fully_shard_parameters_matches_one_process(tmp_path):
    """FSDP version 2 itself: the sandwich step (sliced widths, dropped layers) on sharded weights, gathered
    gradients equal to the unsharded one-process step (fp32 tolerance). The blocker measured: not torch but
    accelerate, which applies FSDP only on GPUs, and the sharded save / evaluation not written yet."""
    result = launch([str(REPO / "tests" / "fsdp2_sandwich_check.py"), str(tmp_path)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "fsdp2.json").read_text())
    assert report["sharded_parameters"] == report["parameters"] and not report["missing_gradients"]
    assert len(set(report["slots"])) == 3
    assert report["max_abs_grad_difference"] <= 1e-5 * max(1.0, report["max_abs_grad"])


def test_evaluate_convert_search_split_across_processes_equal_one_process(assets, tmp_path):
    def commands(root: Path) -> list[list[str]]:
        data = ["--dataset_name", str(assets / "data4")]
        return [
            ["convert", "--model_name_or_path", str(assets / "sam"), *data, "--output_dir", str(root / "supernet"),
             "--num_calibration_images", "4", "--calibration_batch_size", "1"],
            ["evaluate", "--model_name_or_path", str(root / "supernet"), *data, "--output_dir", str(root / "eval"),
             "--batch_size", "1", "--prompt_type", "box", "--subnet", "{\"kept_layers\": [0, 1, 2], \"mlp_dims\": [128, 128, 128]}"],
            ["search", "--model_name_or_path", str(root / "supernet"), *data, "--output_dir", str(root / "search"),
             "--budget", "3", "--batch_size", "1", "--strategy", "random"],
        ]

    result = launch([str(REPO / "tests" / "stages_ddp_check.py"), json.dumps(commands(tmp_path / "two"))])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Traceback" not in result.stderr
    for argv in commands(tmp_path / "one"):
        assert main(argv) == 0
        AcceleratorState._reset_state(True)
    one, two = tmp_path / "one", tmp_path / "two"

    # convert: the same calibrated supernet (statistics summed across processes; sums in another order)
    assert load_file(one / "supernet" / "model.safetensors").keys() == load_file(two / "supernet" / "model.safetensors").keys()
    for key, tensor in load_file(one / "supernet" / "model.safetensors").items():
        assert torch.equal(tensor, load_file(two / "supernet" / "model.safetensors")[key]), key
    report_one, report_two = (json.loads((r / "supernet" / "prioritization_report.json").read_text()) for r in (one, two))
    assert report_one["layer_drop_probs"] == pytest.approx(report_two["layer_drop_probs"], rel=1e-6)
    assert report_one["elastic_layers"] == report_two["elastic_layers"]
    assert report_two["num_images"] == 4
    assert report_one["layer_importance"] == pytest.approx(report_two["layer_importance"], rel=1e-6)
    # evaluate and search: identical files (the gathered objects are scored by the metric's own code, in order)
    assert (one / "eval" / "eval_results.json").read_text() == (two / "eval" / "eval_results.json").read_text()
    assert json.loads((two / "eval" / "eval_results.json").read_text())["num_images"] == 4
    assert (one / "search" / "search_results.json").read_text() == (two / "search" / "search_results.json").read_text()
    assert (one / "search" / "pareto.json").read_text() == (two / "search" / "pareto.json").read_text()

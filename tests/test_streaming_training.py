"""Training from a stream (`--streaming`): the same model as map-style on the same rows, and a kill + resume
that continues with exactly the examples of the uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from helpers import tiny_processor, tiny_sam
from test_training import assets, fresh_accelerate_state, reset_accelerate  # noqa: F401 (fixtures)

from supersam_hf.errors import DataError
from supersam_hf.evaluation import evaluate_model
from supersam_hf.training import SupernetTrainingArguments, train_supernet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_args(assets: Path, output_dir: Path, **overrides) -> SupernetTrainingArguments:
    values = dict(model_name_or_path=str(assets / "sam"), dataset_name=str(assets / "data5"), output_dir=str(output_dir),
                  max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3,
                  num_random_subnets=0, max_instances_per_image=3, logging_steps=1, save_steps=0, eval_steps=0, seed=0,
                  prompt_type="point")
    values.update(overrides)
    return SupernetTrainingArguments(**values)


def test_streaming_train_then_evaluate_equals_map_style(assets, tmp_path):
    """One row, one image per micro-batch: both readers give the same batches (row 0, prompts of (seed, 0, epoch)),
    so the trained weights and their evaluation are identical."""
    common = dict(dataset_name=str(assets / "data1"), max_steps=3, per_device_train_batch_size=1)
    mapped = train_supernet(make_args(assets, tmp_path / "map", **common)).cpu()
    reset_accelerate()
    streamed = train_supernet(make_args(assets, tmp_path / "stream", streaming=True, **common)).cpu()
    a, b = mapped.state_dict(), streamed.state_dict()
    start = tiny_sam(num_layers=4, image_size=64).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in start)  # it trained
    for name in a:
        assert torch.equal(a[name], b[name]), name
    summary = json.loads((tmp_path / "stream" / "training_summary.json").read_text())
    assert summary["streaming"] is True and summary["max_instances_per_image"] == 3
    rows = datasets.load_from_disk(str(assets / "data1"))
    processor = tiny_processor(64)
    result_map = evaluate_model(mapped, rows, processor, prompt="point", show_progress=False)
    result_stream = evaluate_model(streamed, rows.to_iterable_dataset(), processor, prompt="point", show_progress=False)
    assert result_map == result_stream


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_kill_and_resume_continues_exactly(assets, tmp_path, workers):
    """5 rows, shuffle blocks of 3, 2 images per micro-batch: step 2 ends mid-epoch and mid-block."""
    common = dict(streaming=True, shuffle_buffer_size=3, dataloader_num_workers=workers)
    straight = tmp_path / "straight"
    model_a = train_supernet(make_args(assets, straight, save_steps=2, **common)).cpu()
    checkpoint = straight / "checkpoints" / "step_2"
    assert (checkpoint / "data_state_0.json").is_file()
    reset_accelerate()
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / "checkpoints" / "step_2")  # the run killed after step 2
    model_b = train_supernet(make_args(assets, resumed, resume_from_checkpoint="latest", **common)).cpu()
    a, b = model_a.state_dict(), model_b.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    resumed_losses = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed_losses if r.get("type", "train") == "train"] == \
        [r["loss"] for r in losses if r.get("type", "train") == "train" and r["step"] > 2]
    # A checkpoint without this process's stream position (e.g. saved by another number of processes): one line.
    reset_accelerate()
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other / "checkpoints" / "step_2")
    with pytest.raises(DataError, match="saved by a --streaming run; resume it with --streaming"):
        train_supernet(make_args(assets, other, resume_from_checkpoint="latest"))
    reset_accelerate()
    (other / "checkpoints" / "step_2" / "data_state_0.json").unlink()
    with pytest.raises(DataError, match="no stream position for process 0"):
        train_supernet(make_args(assets, other, resume_from_checkpoint="latest", **common))


def test_two_ranks_stream_their_own_shards_and_save_their_positions(assets, tmp_path):
    """`accelerate launch` with 2 CPU processes: each rank reads its part of the stream (split_dataset_by_node),
    the ranks stay identical (DDP), and a checkpoint holds both positions."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(repo / "tests" / "train_ddp_check.py"),
        "--model_name_or_path", str(assets / "sam"), "--dataset_name", str(assets / "data5"), "--output_dir", str(out),
        "--streaming", "--shuffle_buffer_size", "2", "--max_steps", "3", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--num_random_subnets", "0", "--max_instances_per_image", "3",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--save_steps", "2", "--eval_steps", "0", "--seed", "3",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [[json.loads(line) for line in (out / f"metrics_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert any(a["loss"] != b["loss"] for a, b in zip(*ranks))  # different images on the two ranks
    w0, w1 = (load_file(out / f"weights_rank{r}.safetensors") for r in (0, 1))
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    states = [json.loads((out / "checkpoints" / "step_2" / f"data_state_{r}.json").read_text()) for r in (0, 1)]
    assert all(state["loader"] for state in states)

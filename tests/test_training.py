"""Sandwich-rule training (supersam_hf.training): learning, resume, DDP, LoRA, distillation, bad input, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from helpers import tiny_processor, tiny_sam
from safetensors.torch import load_file

from supersam_hf import SuperSamModel
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.results import TrainingResult
from supersam_hf.training import (
    NonFiniteLossError,
    SupernetTrainingArguments,
    configure_trainable,
    sandwich_subnets,
    train_supernet,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny SAM checkpoint + processor and three small synthetic datasets (4, 5 and 1 images, 64 px) on disk."""
    root = tmp_path_factory.mktemp("training_assets")
    sam = tiny_sam(num_layers=4, image_size=64)
    sam.save_pretrained(root / "sam")
    tiny_processor(64).save_pretrained(root / "sam")
    make_synthetic_shapes(4, image_size=64, seed=0, max_shapes=3).save_to_disk(str(root / "data4"))
    make_synthetic_shapes(5, image_size=64, seed=1, max_shapes=3).save_to_disk(str(root / "data5"))
    make_synthetic_shapes(1, image_size=64, seed=2, max_shapes=3).save_to_disk(str(root / "data1"))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def reset_accelerate() -> None:
    """Each run builds its own Accelerator; drop accelerate's process-wide singletons between runs."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


def make_args(assets: Path, output_dir: Path, **overrides) -> SupernetTrainingArguments:
    values = dict(
        model_name_or_path=str(assets / "sam"),
        dataset_name=str(assets / "data4"),
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        num_random_subnets=0,
        max_instances_per_image=3,
        logging_steps=1,
        save_steps=0,
        eval_steps=0,
        seed=0,
    )
    values.update(overrides)
    return SupernetTrainingArguments(**values)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_metrics(path: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type", "train") == kind]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sandwich_losses_go_down_and_supernet_is_saved(assets, tmp_path):
    out = tmp_path / "run"
    args = make_args(assets, out, max_steps=24, per_device_train_batch_size=4, learning_rate=2e-3,
                     lr_scheduler_type="constant", eval_split_name="train", max_eval_images=2)
    model, returned = train_supernet(args, return_result=True)
    model = model.cpu()

    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    for slot in ("largest", "smallest"):
        losses = [r["loss"][slot] for r in records]
        assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), (slot, losses)
    assert records[0]["subnets"]["largest"] != records[0]["subnets"]["smallest"]

    # Periodic evaluation (here only at the end): mIoU of the largest and the smallest subnet.
    evals = read_metrics(out / "metrics.jsonl", "eval")
    assert len(evals) == 1 and evals[0]["step"] == 24
    assert set(evals[0]["miou"]) == {"largest", "smallest"} and all(0 <= v <= 1 for v in evals[0]["miou"].values())

    # The output folder is a loadable supernet (search space kept) with the processor next to it.
    loaded = SuperSamModel.from_pretrained(out)
    assert loaded.search_space == model.search_space
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[name], rtol=0, atol=0)
    assert (out / "processor_config.json").is_file()
    assert (out / "checkpoints" / "step_24" / "training_state.json").is_file()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 24 and summary["subnets_per_step"] == 2
    result = TrainingResult.load(out)  # the typed summary reads the file back exactly
    assert result.to_dict() == summary and result.global_step == 24 and result.final_eval["miou"].keys() == {"largest", "smallest"}
    assert isinstance(returned, TrainingResult) and returned.to_dict() == summary  # what return_result=True gives


def test_resume_reproduces_straight_run(assets, tmp_path):
    # 5 images, batch 2 → 3 micro-batches per epoch; 2 micro-batches per step, so step 2 resumes mid-epoch.
    common = dict(dataset_name=str(assets / "data5"), max_steps=4, gradient_accumulation_steps=2,
                  num_random_subnets=1, prompt_type="mixed", lr_scheduler_type="cosine", warmup_steps=1)
    straight = tmp_path / "straight"
    model_a = train_supernet(make_args(assets, straight, save_steps=2, **common)).cpu()
    assert (straight / "checkpoints" / "step_2" / "training_state.json").is_file()
    reset_accelerate()

    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    model_b = train_supernet(make_args(assets, resumed, resume_from_checkpoint="latest", **common)).cpu()

    a, b = weights(model_a), weights(model_b)
    start = SuperSamModel.from_pretrained(assets / "sam").state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    # The resumed run logged steps 3-4 only, with the straight run's subnets and losses.
    records_a = {r["step"]: r for r in read_metrics(straight / "metrics.jsonl")}
    records_b = read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in records_b] == [3, 4]
    for r in records_b:
        assert r["subnets"] == records_a[r["step"]]["subnets"]
        for slot, value in r["loss"].items():
            assert value == pytest.approx(records_a[r["step"]]["loss"][slot], abs=1e-6)


def test_distributed_ranks_train_same_subnets_and_end_identical(assets, tmp_path):
    out = tmp_path / "ddp"
    # CPU processes over gloo, also on a machine with a GPU (hidden: else gloo's barrier binds to a CUDA device per rank).
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(REPO / "tests" / "train_ddp_check.py"),
        "--model_name_or_path", str(assets / "sam"), "--dataset_name", str(assets / "data4"), "--output_dir", str(out),
        "--max_steps", "3", "--per_device_train_batch_size", "1", "--num_random_subnets", "2",
        "--max_instances_per_image", "3", "--learning_rate", "1e-3", "--logging_steps", "1", "--save_steps", "0",
        "--eval_steps", "0", "--seed", "3",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    ranks = [read_metrics(out / f"metrics_rank{r}.jsonl") for r in (0, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == [1, 2, 3]
    for rec0, rec1 in zip(*ranks):
        assert rec0["subnets"] == rec1["subnets"]  # same subnet in every slot on both ranks
        assert len(rec0["subnets"]) == 4
    # The ranks saw different images (different local losses), yet end with identical weights.
    assert any(rec0["loss"] != rec1["loss"] for rec0, rec1 in zip(*ranks))
    w0, w1 = (load_file(out / f"weights_rank{r}.safetensors") for r in (0, 1))
    start = SuperSamModel.from_pretrained(assets / "sam").state_dict()
    assert any(not torch.equal(w0[k], start[k]) for k in w0)
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    assert (out / "config.json").is_file()


def test_lora_trains_only_adapters_and_merge_is_exact(assets, tmp_path):
    out = tmp_path / "lora"
    args = make_args(assets, out, lora_r=4, lora_alpha=8, learning_rate=1e-2, max_steps=2)
    merged = train_supernet(args).cpu()
    start = SuperSamModel.from_pretrained(assets / "sam")
    start_state = start.state_dict()

    state = load_file(out / "checkpoints" / "step_2" / "model.safetensors")
    lora_keys = [k for k in state if "lora_" in k]
    assert any("vision_encoder.layers.0.attn.qkv.lora_A" in k for k in lora_keys)
    assert any("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.lora_B" in k for k in lora_keys)
    assert not any(".mlp." in k for k in lora_keys)  # elastic MLPs are never adapted
    assert any(k.endswith("lora_B.default.weight") and state[k].abs().sum() > 0 for k in lora_keys)
    for key, tensor in state.items():  # every base weight is exactly what it was
        if "lora_" in key:
            continue
        base = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(tensor, start_state[base]), key

    # Unmerged (checkpoint) vs merged (returned and saved): same outputs for the largest and the smallest subnet.
    unmerged = configure_trainable(SuperSamModel.from_pretrained(assets / "sam"), args)
    unmerged.load_state_dict(state, strict=False)
    unmerged.eval()
    base = unmerged.get_base_model()
    g = torch.Generator().manual_seed(0)
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64, generator=g), "input_points": torch.rand(1, 2, 1, 2, generator=g) * 64,
              "input_labels": torch.ones(1, 2, 1, dtype=torch.long)}
    for cfg in (merged.search_space.largest(), merged.search_space.smallest()):
        with torch.no_grad(), base.subnet(cfg), merged.subnet(cfg):
            expected = unmerged(**inputs).pred_masks
            actual = merged(**inputs).pred_masks
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())
    saved = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in saved)
    assert not torch.equal(saved["vision_encoder.layers.0.attn.qkv.weight"], start_state["vision_encoder.layers.0.attn.qkv.weight"])
    assert torch.equal(saved["vision_encoder.layers.0.mlp.lin1.weight"], start_state["vision_encoder.layers.0.mlp.lin1.weight"])


@pytest.mark.parametrize("distill_weight", [0.0, 1.0])
def test_training_with_and_without_distillation(assets, tmp_path, distill_weight):
    out = tmp_path / f"kd{distill_weight}"
    # Also exercised here: with KD, TensorBoard + a held-out validation fraction evaluated every step; without, bf16.
    extra = (dict(report_to="tensorboard", validation_fraction=0.25, eval_steps=1, max_eval_images=1) if distill_weight
             else dict(mixed_precision="bf16"))
    model = train_supernet(make_args(assets, out, distill_weight=distill_weight, num_random_subnets=1, **extra)).cpu()
    start = SuperSamModel.from_pretrained(assets / "sam").state_dict()
    trained = model.state_dict()
    assert not torch.equal(trained["vision_encoder.layers.0.attn.qkv.weight"], start["vision_encoder.layers.0.attn.qkv.weight"])
    assert not torch.equal(trained["mask_decoder.iou_prediction_head.proj_out.weight"], start["mask_decoder.iou_prediction_head.proj_out.weight"])
    # The prompt encoder is frozen by default.
    assert torch.equal(trained["prompt_encoder.point_embed.1.weight"], start["prompt_encoder.point_embed.1.weight"])
    records = read_metrics(out / "metrics.jsonl")
    assert all(np.isfinite(v) for r in records for v in r["loss"].values())
    if distill_weight:
        assert set(records[0]["distill"]) == {"smallest", "random_1"}
        assert all(v > 0 for v in records[0]["distill"].values())
        assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "eval")] == [1, 2]
        assert list((out / "runs").rglob("events.out.tfevents.*"))
    else:
        assert "distill" not in records[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision needs a GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_gpu(assets, tmp_path, precision):
    out = tmp_path / precision
    model = train_supernet(make_args(assets, out, mixed_precision=precision, num_random_subnets=1, distill_weight=1.0,
                                     max_steps=3, gradient_accumulation_steps=2)).cpu()
    records = read_metrics(out / "metrics.jsonl")
    assert all(np.isfinite(v) for r in records for v in r["loss"].values())
    start = SuperSamModel.from_pretrained(assets / "sam").state_dict()
    trained = model.state_dict()
    assert trained["vision_encoder.layers.0.attn.qkv.weight"].dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(trained["vision_encoder.layers.0.attn.qkv.weight"], start["vision_encoder.layers.0.attn.qkv.weight"])


def test_subnet_slots_are_a_function_of_seed_and_step():
    space = SuperSamModel.from_sam(tiny_sam(num_layers=6)).search_space
    a = sandwich_subnets(space, seed=0, step=5, num_random=3)
    assert [name for name, _ in a] == ["largest", "smallest", "random_1", "random_2", "random_3"]
    assert a == sandwich_subnets(space, seed=0, step=5, num_random=3)
    assert a[0][1] == space.largest() and a[1][1] == space.smallest()
    others = [sandwich_subnets(space, seed=0, step=s, num_random=3)[2:] for s in range(6, 12)]
    assert any(o != a[2:] for o in others)
    # the sandwich's bread spans the embedding width too: full width on top, the narrowest at the bottom
    assert a[0][1].hidden_size is None and a[1][1].hidden_size == space.hidden_size_choices[0] < space.hidden_size
    sampled = {cfg.hidden_size for step in range(12) for _, cfg in sandwich_subnets(space, 0, step, 3)[2:]}
    assert len(sampled) == len(space.hidden_size_choices) == 4  # sampled slots draw every width
    # ... and the input resolution: the smallest at the bottom, every resolution among the sampled slots
    assert a[0][1].image_size is None and a[1][1].image_size == space.image_size_choices[0] < space.image_size
    assert {cfg.image_size or space.image_size for step in range(12) for _, cfg in sandwich_subnets(space, 0, step, 3)[2:]} \
        == set(space.image_size_choices)


# -- bad input: a clear error, nothing written ------------------------------------------------------------------


def test_missing_column_fails_before_anything_is_written(assets, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"image_column='photo'.*\['image', 'label'\]"):
        train_supernet(make_args(assets, out, image_column="photo"))
    assert not out.exists()


def test_bad_arguments(assets, tmp_path):
    with pytest.raises(ValueError, match="num_random_subnets must be >= 0"):
        train_supernet(make_args(assets, tmp_path / "a", num_random_subnets=-1))
    with pytest.raises(ValueError, match="Unknown --mask_kind 'polygons'"):
        train_supernet(make_args(assets, tmp_path / "b", mask_kind="polygons"))
    with pytest.raises(ValueError, match="trainable"):
        train_supernet(make_args(assets, tmp_path / "c", trainable="encoder,neck"))
    with pytest.raises(ValueError, match="point_fraction must be between 0 and 1"):
        train_supernet(make_args(assets, tmp_path / "c2", prompt_type="mixed", point_fraction=1.5))
    with pytest.raises(ValueError, match="iou_loss_weight must be >= 0"):
        train_supernet(make_args(assets, tmp_path / "c3", iou_loss_weight=-1.0))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train_supernet(make_args(assets, tmp_path / "d", resume_from_checkpoint="latest"))
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        train_supernet(make_args(assets, tmp_path / "f", resume_from_checkpoint=str(tmp_path / "e")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_dataset_without_usable_instance(assets, tmp_path):
    empty = make_synthetic_shapes(2, image_size=64).map(lambda row: {"label": np.zeros((64, 64), dtype=np.int32)})
    empty.save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="No image of the 2"):
        train_supernet(make_args(assets, tmp_path / "out", dataset_name=str(tmp_path / "empty")))
    assert not (tmp_path / "out").exists()


def test_existing_output_dir_is_refused(assets, tmp_path):
    out = tmp_path / "prev"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match="previous run"):
        train_supernet(make_args(assets, out))
    assert (out / "config.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]
    with pytest.raises(FileExistsError, match="did not write"):  # not this tool's files: overwrite refuses too
        train_supernet(make_args(assets, out, overwrite_output_dir=True, max_steps=1))
    assert (out / "config.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]
    # overwrite_output_dir replaces the previous run of this tool (the files its manifest lists; its metrics do not
    # leak into the new ones). Files it did not record writing are never replaced: see tests/test_faults.py.
    from supersam_hf.outputs import record_tool_outputs

    record_tool_outputs(out, ["config.json", "metrics.jsonl"], tool="supersam train")
    train_supernet(make_args(assets, out, overwrite_output_dir=True, max_steps=1))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert json.loads((out / "config.json").read_text())["model_type"] == "supersam"


def test_nan_loss_stops_naming_step_and_subnet_and_keeps_checkpoint(assets, tmp_path, monkeypatch):
    import supersam_hf.training.sandwich as training

    calls = {"n": 0}
    real_sam_loss = training.sam_loss

    def poisoned(*args, **kwargs):  # slots per step: largest, smallest → call 6 is step 3, "smallest"
        out = real_sam_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(training, "sam_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"step 3 in subnet 'smallest' \(R32-H8-L2-w16x2") as error:
        train_supernet(make_args(assets, out, max_steps=4, save_steps=2))
    assert "checkpoints/step_2" in str(error.value)
    checkpoint = out / "checkpoints" / "step_2"
    assert json.loads((checkpoint / "training_state.json").read_text())["global_step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]
    assert not (out / "config.json").exists()  # no final model written
    saved = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_nan_weight_is_reported_at_first_step(assets, tmp_path):
    sam = tiny_sam(num_layers=4, image_size=64)
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.proj_out.weight.fill_(float("nan"))
    sam.save_pretrained(tmp_path / "bad")
    tiny_processor(64).save_pretrained(tmp_path / "bad")
    # loaded from a folder: refused on load, naming the tensor
    with pytest.raises(ValueError, match=r"non-finite weights .*mask_decoder\.iou_prediction_head\.proj_out\.weight"):
        train_supernet(make_args(assets, tmp_path / "out", model_name_or_path=str(tmp_path / "bad"), max_steps=1))
    # given as an object (no load check): the first step's loss says where
    args = make_args(assets, tmp_path / "out", model_name_or_path=str(tmp_path / "bad"), max_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"step 1 in subnet 'largest'"):
        train_supernet(args, model=SuperSamModel.from_sam(sam), processor=tiny_processor(64))
    assert not (tmp_path / "out" / "checkpoints").exists()


# -- command line ------------------------------------------------------------------------------------------------


def test_cli_train_and_yaml_arguments(assets, tmp_path, capsys):
    from supersam_hf.cli import main, parse_stage_arguments

    out = tmp_path / "cli"
    flags = ["train", "--model_name_or_path", str(assets / "sam"), "--dataset_name", str(assets / "data4"),
             "--output_dir", str(out), "--max_steps", "2", "--num_random_subnets", "1", "--max_instances_per_image", "2",
             "--save_steps", "0", "--eval_steps", "0"]
    assert main(flags) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "supersam"
    assert SuperSamModel.from_pretrained(out).search_space is not None
    reset_accelerate()

    assert main(flags) == 2  # the same output_dir again: refused, with a message and no traceback
    assert "previous run" in capsys.readouterr().err

    yaml_file = tmp_path / "args.yaml"
    yaml_file.write_text(f"model_name_or_path: {assets / 'sam'}\ndataset_name: {assets / 'data4'}\noutput_dir: {out}\n"
                         "max_steps: 7\ndistill_weight: 0.5\nprompt_type: point\n")
    parsed, _run_arguments = parse_stage_arguments("train", [str(yaml_file)])
    assert isinstance(parsed, SupernetTrainingArguments)
    assert (parsed.max_steps, parsed.distill_weight, parsed.prompt_type) == (7, 0.5, "point")
    yaml_file.write_text(yaml_file.read_text() + "model: x\n")  # a key no stage knows: one clear line
    assert main(["train", str(yaml_file)]) == 2
    assert "model" in capsys.readouterr().err


def test_largest_only_is_plain_fine_tuning(assets, tmp_path):
    out = tmp_path / "full"
    start = SuperSamModel.from_pretrained(assets / "sam").state_dict()
    model = train_supernet(make_args(assets, out, largest_only=True, num_random_subnets=2, max_steps=3)).cpu()
    records = read_metrics(out / "metrics.jsonl")
    assert all(set(r["loss"]) == {"largest"} for r in records)
    assert json.loads((out / "training_summary.json").read_text())["subnets_per_step"] == 1
    trained = model.state_dict()
    assert not torch.equal(trained["vision_encoder.layers.0.mlp.lin1.weight"], start["vision_encoder.layers.0.mlp.lin1.weight"])


def test_mixed_prompts_follow_point_fraction():
    from supersam_hf.training.sandwich import prompt_kind

    def kinds(fraction):
        return [prompt_kind("mixed", 0, step, micro, fraction) for step in range(400) for micro in range(2)]

    assert set(kinds(0.0)) == {"box"} and set(kinds(1.0)) == {"point"}
    assert kinds(0.75) == kinds(0.75)  # seeded: every process draws the same kinds
    assert 0.70 < kinds(0.75).count("point") / 800 < 0.80
    assert 0.45 < kinds(0.5).count("point") / 800 < 0.55
    # a larger fraction only turns boxes into points (one uniform draw per micro-batch)
    assert all(b == "point" for a, b in zip(kinds(0.5), kinds(0.75)) if a == "point")
    assert prompt_kind("box", 0, 3, 0, 1.0) == "box"  # the fraction applies to "mixed" only

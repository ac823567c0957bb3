"""Training sized for SAM ViT-B: batch 1 + accumulation by default, gradient checkpointing that is exact for every
subnet, `save_total_limit` that never deletes a foreign folder, and no tied-weight warning per save."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import tiny_processor, tiny_supernet
from test_training import assets, fresh_accelerate_state, reset_accelerate  # noqa: F401 (fixtures)

from supersam_hf import SubnetConfig
from supersam_hf.data import SamCollator, SamSegmentationData, make_synthetic_shapes, model_inputs
from supersam_hf.losses import sam_loss
from supersam_hf.training import SupernetTrainingArguments, train_supernet
from supersam_hf.training.checkpoints import remove_previous_run, rotate_checkpoints, save_tied_weights_once
from supersam_hf.training.trainer import set_activation_checkpointing

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_args(assets: Path, output_dir: Path, **overrides) -> SupernetTrainingArguments:
    values = dict(model_name_or_path=str(assets / "sam"), dataset_name=str(assets / "data4"), output_dir=str(output_dir),
                  max_steps=1, learning_rate=1e-3, num_random_subnets=0, max_instances_per_image=2, save_steps=0,
                  eval_steps=0, logging_steps=1, seed=0)
    values.update(overrides)
    return SupernetTrainingArguments(**values)


def test_default_is_one_image_per_micro_batch_accumulated_to_two(assets, tmp_path, monkeypatch):
    args = make_args(assets, tmp_path / "run")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.save_total_limit) == (1, 2, 2)
    seen = []
    original = torch.nn.Module.__call__

    def spy(module, *inputs, **kwargs):
        if type(module).__name__ == "ElasticSamVisionEncoder" and module.training:
            seen.append(int((inputs[0] if inputs else kwargs["pixel_values"]).shape[0]))
        return original(module, *inputs, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    train_supernet(args)
    assert seen == [1, 1, 1, 1]  # 2 micro-batches x 2 sandwich slots (largest, smallest), one image each
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_1" / "training_state.json").read_text())
    assert state["micro_batches_done"] == 2


def _subnet_gradients(supernet, batch, cfg: SubnetConfig) -> dict[str, torch.Tensor]:
    supernet.zero_grad(set_to_none=True)
    with supernet.subnet(cfg):
        outputs = supernet(**model_inputs(batch), multimask_output=True)
        sam_loss(outputs.pred_masks, outputs.iou_scores, batch["labels"], batch["instance_mask"])["loss"].backward()
    return {n: p.grad.clone() for n, p in supernet.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients_for_a_subnet():
    torch.manual_seed(0)
    supernet = tiny_supernet(num_layers=6, image_size=64).train()
    space = supernet.search_space
    cfg = SubnetConfig(kept_layers=(0, 2, 3, 5), mlp_dims=(128, 32, 64, 96), hidden_size=min(space.hidden_size_choices))
    space.validate(cfg)
    data = SamSegmentationData(make_synthetic_shapes(2, image_size=64, seed=1), tiny_processor(64), prompt="box")
    batch = SamCollator("box")([data[0], data[1]])

    calls = []
    # A pre-hook: non-reentrant checkpointing stops the recompute early, once the tensors it needs are back.
    hook = supernet.vision_encoder.layers[2].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    plain = _subnet_gradients(supernet, batch, cfg)
    plain_calls = len(calls)
    set_activation_checkpointing(supernet, True)
    checkpointed = _subnet_gradients(supernet, batch, cfg)
    hook.remove()
    set_activation_checkpointing(supernet, False)

    assert (plain_calls, len(calls) - plain_calls) == (1, 2)  # the layer really was recomputed in the backward
    assert plain.keys() == checkpointed.keys()
    assert "vision_encoder.layers.1.mlp.lin1.weight" not in plain  # the dropped layer got no gradient
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_with_gradient_checkpointing_matches_training_without(assets, tmp_path):
    common = dict(max_steps=2, num_random_subnets=2, save_steps=0)
    plain = train_supernet(make_args(assets, tmp_path / "plain", **common)).state_dict()
    reset_accelerate()
    checkpointed = train_supernet(make_args(assets, tmp_path / "gc", gradient_checkpointing=True, **common))
    assert not any(getattr(layer, "gradient_checkpointing", False) for layer in checkpointed.vision_encoder.layers)
    for name, tensor in checkpointed.state_dict().items():
        torch.testing.assert_close(tensor, plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_save_total_limit_keeps_the_newest_and_never_a_foreign_folder(assets, tmp_path, caplog):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    train_supernet(make_args(assets, out, max_steps=2, save_steps=1, save_total_limit=None))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_1", "step_2"]  # None keeps every checkpoint
    reset_accelerate()
    # Folders this tool did not write: no training_state.json, or one that does not match the folder's step.
    (checkpoints / "my_notes").mkdir(parents=True)
    (checkpoints / "my_notes" / "notes.txt").write_text("mine")
    (checkpoints / "step_0").mkdir()
    (checkpoints / "step_0" / "model.safetensors").write_text("not a checkpoint of this run")
    (checkpoints / "step_7").mkdir()
    (checkpoints / "step_7" / "training_state.json").write_text(json.dumps({"global_step": 99}))
    caplog.set_level(logging.WARNING)
    train_supernet(make_args(assets, out, max_steps=4, save_steps=1, save_total_limit=2,
                             resume_from_checkpoint=str(checkpoints / "step_2")))

    steps = sorted(p.name for p in checkpoints.iterdir())
    assert steps == ["my_notes", "step_0", "step_3", "step_4", "step_7"]  # the earlier session's step_1/2 rotated
    assert (checkpoints / "my_notes" / "notes.txt").read_text() == "mine"
    assert (checkpoints / "step_0" / "model.safetensors").is_file()
    assert (checkpoints / "step_7" / "training_state.json").is_file()
    assert "Removed shared tensor" not in caplog.text  # the tied positional table is not a surprise worth a warning


def test_rotation_keeps_a_users_file_inside_an_old_checkpoint(tmp_path, caplog):
    from supersam_hf.outputs import record_tool_outputs

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        folder = root / f"step_{step}"
        folder.mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            (folder / name).write_bytes(b"x")
        (folder / "training_state.json").write_text(json.dumps({"global_step": step}))
        record_tool_outputs(tmp_path, [folder], tool="supersam train")  # as save_checkpoint records it
    (root / "step_1" / "my_eval.csv").write_text("mine")
    (root / "step_2" / "optimizer.bin").write_bytes(b"edited by the user")
    assert rotate_checkpoints(tmp_path, 5) == []
    with caplog.at_level(logging.WARNING, logger="supersam_hf"):
        removed = rotate_checkpoints(tmp_path, 1)
    assert removed == [root / "step_3"]
    assert sorted(p.name for p in (root / "step_1").iterdir()) == ["my_eval.csv"]  # ours gone, the user's kept
    assert sorted(p.name for p in (root / "step_2").iterdir()) == ["optimizer.bin"]  # changed since: kept, named
    assert "checkpoints/step_2/optimizer.bin (changed since this tool wrote it)" in caplog.text
    assert (root / "step_4" / "model.safetensors").is_file()
    assert rotate_checkpoints(tmp_path, 1) == []  # step_1 is no longer a checkpoint, only the user's folder


def test_overwrite_clears_an_interrupted_save_but_keeps_a_users_file_in_it(tmp_path):
    root = tmp_path / "checkpoints"
    for name, extra in (("step_4.tmp", None), ("step_6.tmp", "my_notes.txt")):
        folder = root / name
        folder.mkdir(parents=True)
        for file in ("model.safetensors", "optimizer.bin", "random_states_0.pkl"):
            (folder / file).write_bytes(b"x")
        if extra:
            (folder / extra).write_text("mine")
    remove_previous_run(tmp_path)
    assert not (root / "step_4.tmp").exists()  # only this tool's files: the folder goes
    assert sorted(p.name for p in (root / "step_6.tmp").iterdir()) == ["my_notes.txt"]  # the user's file stays


def test_saving_leaves_out_only_the_alias_of_a_declared_tie():
    model = torch.nn.Module()
    model._tied_weights_keys = {"prompt_encoder.shared_embedding.positional_embedding":
                                "shared_image_embedding.positional_embedding"}
    tied, other, untied = torch.ones(2, 2), torch.zeros(3), torch.ones(2, 2)
    state = {"base_model.model.shared_image_embedding.positional_embedding": tied,  # PEFT-wrapped names
             "base_model.model.prompt_encoder.shared_embedding.positional_embedding": tied,
             "mask_decoder.iou_head.weight": other, "mask_decoder.iou_head.alias": other}  # not declared: accelerate's
    copies = {"shared_image_embedding.positional_embedding": tied,  # a declared tie that no longer shares storage
              "prompt_encoder.shared_embedding.positional_embedding": untied}
    save_tied_weights_once(model)([model, model], [state, copies], "unused")
    assert sorted(state) == ["base_model.model.shared_image_embedding.positional_embedding",
                             "mask_decoder.iou_head.alias", "mask_decoder.iou_head.weight"]
    assert len(copies) == 2

"""Training plugs into the tools users already have: accelerate's trackers (`--report_to`), a PEFT `LoraConfig`
(`--lora_config`), and the Hub (`--push_to_hub --hub_model_id --hub_private_repo` for train and export)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import at_resolution
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from test_training import assets, fresh_accelerate_state, make_args  # noqa: F401 (fixtures)
from transformers import SamModel

from supersam_hf import SubnetConfig, SuperSamModel
from supersam_hf.cli import main as cli_main
from supersam_hf.cli import parse_stage_arguments
from supersam_hf.errors import SupersamError, UnsupportedSetupError
from supersam_hf.export import export_subnet
from supersam_hf.loading import load_supernet
from supersam_hf.training import configure_trainable, train_supernet

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]

# LoRA on two projections of the decoder's first two-way attention block only.
DECODER_TARGETS = ["mask_decoder.transformer.layers.0.self_attn.q_proj",
                   "mask_decoder.transformer.layers.0.self_attn.v_proj"]


# -- trackers ---------------------------------------------------------------------------------------------------


def test_tensorboard_and_wandb_offline_write_their_files(assets, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    out = tmp_path / "run"
    train_supernet(make_args(assets, out, report_to="tensorboard,wandb"))
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    history = (runs[0] / "files" / "wandb-summary.json")
    if history.is_file():  # written when the run finishes
        assert "train/loss_largest" in json.loads(history.read_text())
    assert not (tmp_path / "wandb").exists()


def test_report_to_accepts_lists_all_and_none(assets, tmp_path):
    args = make_args(assets, tmp_path / "a", report_to=["tensorboard", "wandb"])
    assert args.trackers() == ["tensorboard", "wandb"]
    assert make_args(assets, tmp_path / "a", report_to="none").trackers() == []
    assert make_args(assets, tmp_path / "a", report_to="all").trackers() == ["all"]
    parsed, _ = parse_stage_arguments("train", ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o",
                                                "--report_to", "tensorboard", "wandb"])
    assert parsed.trackers() == ["tensorboard", "wandb"]
    with pytest.raises(SupersamError, match="--report_to neptune: unknown tracker"):
        make_args(assets, tmp_path / "a", report_to="neptune").validate()
    with pytest.raises(SupersamError, match="stand alone"):
        make_args(assets, tmp_path / "a", report_to=["none", "tensorboard"]).validate()
    with pytest.raises(UnsupportedSetupError, match=r"aim: not installed; pip install 'supersam_hf\[trackers\]'"):
        make_args(assets, tmp_path / "a", report_to="aim").validate()
    assert not (tmp_path / "a").exists()


def test_report_to_all_uses_every_installed_tracker(assets, tmp_path, monkeypatch):
    from accelerate.tracking import get_available_trackers

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "all"
    train_supernet(make_args(assets, out, report_to="all", max_steps=1))
    installed = {str(t) for t in get_available_trackers()}
    if "tensorboard" in installed:
        assert list((out / "runs").rglob("events.out.tfevents.*"))
    if "wandb" in installed:
        assert list((out / "wandb").glob("offline-run-*"))


# -- PEFT -------------------------------------------------------------------------------------------------------


def test_lora_config_with_custom_targets_trains_only_those_and_exports_the_merged_model(assets, tmp_path):
    config_file = tmp_path / "lora.json"
    config_file.write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": DECODER_TARGETS,
                                       "init_lora_weights": "gaussian"}))
    out = tmp_path / "lora"
    args = make_args(assets, out, lora_config=str(config_file), learning_rate=1e-2)
    args.validate()

    wrapped = configure_trainable(SuperSamModel.from_pretrained(assets / "sam"), args)
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)  # only adapter weights train
    assert {name.split(".lora_")[0].removeprefix("base_model.model.") for name in trainable} == set(DECODER_TARGETS)
    assert wrapped.peft_config["default"].r == 2

    merged = train_supernet(args).cpu()
    start = SuperSamModel.from_pretrained(assets / "sam").state_dict()
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {f"{t}.weight" for t in DECODER_TARGETS}  # the targets' weights, nothing else

    # the checkpoint holds the unmerged adapters; exporting that PEFT model merges and unloads it, giving the same
    # vanilla SamModel as exporting the merged supernet
    state = load_file(out / "checkpoints" / "step_2" / "model.safetensors")
    unmerged = configure_trainable(SuperSamModel.from_pretrained(assets / "sam"), args)
    unmerged.load_state_dict(state, strict=False)
    subnet = merged.search_space.smallest()
    a = export_subnet(merged, subnet, tmp_path / "from-merged")
    b = export_subnet(unmerged.eval(), subnet, tmp_path / "from-peft")
    assert json.loads((a / "config.json").read_text())["model_type"] == "sam"
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys() and not any("lora" in k for k in weights_a)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=0, atol=1e-6)
    # a folder holding only that adapter loads as the merged supernet, as before
    unmerged.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and not (tmp_path / "adapter" / "config.json").exists()
    loaded = load_supernet(tmp_path / "adapter", device="cpu")
    assert type(loaded) is SuperSamModel and not any("lora" in k for k in loaded.state_dict())
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=1e-6)

    sam = SamModel.from_pretrained(a).eval()
    g = torch.Generator().manual_seed(0)
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64, generator=g),
              "input_points": torch.rand(1, 2, 1, 2, generator=g) * 64}
    with torch.no_grad(), merged.subnet(subnet):
        expected = merged(**inputs)
        got = sam(**at_resolution(inputs, subnet))  # the smallest subnet takes a smaller input
    torch.testing.assert_close(got.pred_masks, expected.pred_masks, rtol=0, atol=1e-5)


def test_lora_config_errors_are_one_line(assets, tmp_path):
    def config(fields):
        path = tmp_path / "lora.json"
        path.write_text(json.dumps(fields))
        return str(path)

    with pytest.raises(SupersamError, match="not both"):
        make_args(assets, tmp_path / "a", lora_r=4, lora_config=config({"r": 4})).validate()
    with pytest.raises(SupersamError, match="rank: not a peft.LoraConfig field"):
        make_args(assets, tmp_path / "a", lora_config=config({"rank": 4})).validate()
    with pytest.raises(SupersamError, match="no such file"):
        make_args(assets, tmp_path / "a", lora_config=str(tmp_path / "missing.json")).validate()
    args = make_args(assets, tmp_path / "a", lora_config=config({"target_modules": ["lin1"]}))
    with pytest.raises(SupersamError, match="sliced for elastic width"):
        configure_trainable(SuperSamModel.from_pretrained(assets / "sam"), args)
    with pytest.raises(SupersamError, match="peft refuses"):
        configure_trainable(SuperSamModel.from_pretrained(assets / "sam"),
                            make_args(assets, tmp_path / "a", lora_config=config({"target_modules": ["nothing_here"]})))


# -- the Hub ----------------------------------------------------------------------------------------------------


def test_train_pushes_the_supernet_with_its_own_card(assets, tmp_path, local_hub, monkeypatch):
    out = tmp_path / "supernet"
    train_supernet(make_args(assets, out, push_to_hub=True, hub_model_id="user/supernet", hub_private_repo=True,
                             token=local_hub.token, save_steps=1))
    files = local_hub.files("user/supernet")
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md", "training_summary.json"} <= set(files)
    assert not any(name.startswith("checkpoints/") for name in files) and (out / "checkpoints" / "step_2").is_dir()
    assert local_hub.repos["user/supernet"]["private"] is True
    card = ModelCard.load("user/supernet", token=local_hub.token)
    assert "supernet" in card.data.tags and "It is not meant to be used as is" in card.text
    assert "supersam export --model_name_or_path user/supernet" in card.text and str(tmp_path) not in card.content

    # the card's Python snippet exports a vanilla SAM from the pushed supernet, as written
    (code,) = [block.split("\n", 1)[1] for block in card.text.split("```")[1::2] if block.startswith("python")]
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<supernet card>", "exec"), {})
    assert json.loads((tmp_path / "sam-small" / "config.json").read_text())["model_type"] == "sam"
    SamModel.from_pretrained(tmp_path / "sam-small")


def test_train_push_without_token_fails_before_training(assets, tmp_path, local_hub):
    with pytest.raises(SupersamError, match="no Hugging Face token"):
        train_supernet(make_args(assets, tmp_path / "x", push_to_hub=True))
    assert not (tmp_path / "x").exists()


def test_export_cli_hub_flags_and_the_deprecated_repo_id(tmp_path, local_hub, caplog):
    from helpers import tiny_processor, tiny_supernet

    supernet = tiny_supernet(num_layers=4, image_size=64)
    supernet.save_pretrained(tmp_path / "supernet")
    tiny_processor().save_pretrained(tmp_path / "supernet")
    subnet = json.dumps(SubnetConfig(kept_layers=(0, 1, 3), mlp_dims=(64, 96, 64)).to_dict())
    base = ["export", "--model_name_or_path", str(tmp_path / "supernet"), "--subnet", subnet, "--push_to_hub",
            "--token", local_hub.token]
    assert cli_main([*base, "--output_dir", str(tmp_path / "a"), "--hub_model_id", "user/a",
                     "--hub_private_repo"]) == 0
    assert "model.safetensors" in local_hub.files("user/a") and local_hub.repos["user/a"]["private"] is True
    assert 'SamModel.from_pretrained("user/a")' in (tmp_path / "a" / "README.md").read_text()

    caplog.set_level(logging.WARNING)
    assert cli_main([*base, "--output_dir", str(tmp_path / "b"), "--repo_id", "user/b"]) == 0
    assert "--repo_id is deprecated" in caplog.text and "--hub_model_id" in caplog.text
    assert "model.safetensors" in local_hub.files("user/b") and local_hub.repos["user/b"]["private"] is False
    assert cli_main([*base, "--output_dir", str(tmp_path / "c"), "--repo_id", "user/b", "--hub_model_id",
                     "user/c"]) == 2
    assert not (tmp_path / "c").exists()

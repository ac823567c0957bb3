"""`export_subnet` / `supersam export`: a standard SAM folder that plain transformers loads, a model card, the Hub."""

import json
import re
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import prompt_inputs, tiny_processor, tiny_supernet
from huggingface_hub import ModelCard, RepoUrl, constants
from PIL import Image
from transformers import SamModel, SamProcessor, pipeline

from supersam_hf import SubnetConfig, SuperSamModel
from supersam_hf.cli import main as cli_main
from supersam_hf.errors import SupersamError
from supersam_hf.export import export_subnet
from supersam_hf.loading import load_processor, load_supernet
from supersam_hf.model_card import format_macs, model_card_template
from supersam_hf.outputs import MANIFEST_NAME
from supersam_hf.results import ExportResult

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

# Non-uniform widths, dropped layers 2 and 4 (layer 5 is global attention in the base: its kind must survive).
SUBNET = SubnetConfig(kept_layers=(0, 1, 3, 5), mlp_dims=(128, 64, 32, 96))
METRICS = {"miou": 0.6125, "mean_dice": 0.7, "num_objects": 31, "num_images": 8, "prompt": "point",
           "mask_selection": "single", "resolution": "original", "seed": 0, "subnet": SUBNET.name}


@pytest.fixture(scope="module")
def supernet():
    return tiny_supernet(num_layers=6, image_size=64)


@pytest.fixture(scope="module")
def supernet_dir(supernet, tmp_path_factory):
    """A saved supernet + processor, as `supersam convert` / training write it."""
    folder = tmp_path_factory.mktemp("supernet")
    supernet.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(supernet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "tiny-subnet"
    out = export_subnet(supernet, SUBNET, folder, processor=tiny_processor(), metrics=METRICS,
                        base_model="facebook/sam-vit-base", license="apache-2.0", datasets=["user/shapes"])
    assert out == folder
    return folder


def _subnet_outputs(supernet, inputs):
    with torch.no_grad(), supernet.subnet(SUBNET):
        return supernet(**inputs)


def _assert_same_outputs(expected, model, inputs):
    with torch.no_grad():
        got = model.eval()(**inputs)
    assert expected.pred_masks.std() > 0.01  # the comparison is of something that varies
    torch.testing.assert_close(got.pred_masks, expected.pred_masks, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.iou_scores, expected.iou_scores, atol=1e-5, rtol=0)


def _image():
    return Image.fromarray((np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8))


def test_export_is_a_vanilla_sam_with_the_subnet_outputs(supernet, exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "sam" and config["architectures"] == ["SamModel"]
    assert config["vision_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["global_attn_indexes"] == [3]  # base layer 5 is now position 3
    assert not any(key in config for key in ("elastic_layers", "mlp_dim_choices"))  # no supernet fields leak
    assert (exported / "model.safetensors").is_file()

    model = SamModel.from_pretrained(exported)
    assert type(model) is SamModel
    assert sum(p.numel() for p in model.parameters()) == supernet.count_parameters(SUBNET)
    for kind in ("points", "boxes"):
        inputs = prompt_inputs(kind)
        _assert_same_outputs(_subnet_outputs(supernet, inputs), model, inputs)
    # and it really is smaller than the full model, whose outputs differ
    with torch.no_grad():
        full = supernet(**prompt_inputs("points"))
    assert (full.pred_masks - _subnet_outputs(supernet, prompt_inputs("points")).pred_masks).abs().max() > 1e-3

    processor = SamProcessor.from_pretrained(exported)
    # transformers.js reads the image processor from preprocessor_config.json; Python loads the same processor
    preprocessor = json.loads((exported / "preprocessor_config.json").read_text())
    assert preprocessor == json.loads(json.dumps({**tiny_processor().image_processor.to_dict(),
                                                  "processor_class": "SamProcessor"}))
    assert processor.image_processor.to_dict() == tiny_processor().image_processor.to_dict()
    image = _image()
    reference = tiny_processor()(images=image, input_points=[[[20.0, 24.0]]], return_tensors="pt")
    loaded = processor(images=image, input_points=[[[20.0, 24.0]]], return_tensors="pt")
    assert torch.equal(reference["pixel_values"], loaded["pixel_values"])
    assert torch.equal(reference["input_points"], loaded["input_points"])

    record = json.loads((exported / "subnet.json").read_text())
    assert SubnetConfig.from_json((exported / "subnet.json").read_text()) == SUBNET
    assert record["params"] == supernet.count_parameters(SUBNET) < record["base_params"]
    assert record["macs"] == supernet.count_macs(SUBNET) < record["base_macs"]
    assert record["metrics"]["miou"] == METRICS["miou"]


def test_mask_generation_pipeline_loads_the_export(exported):
    generator = pipeline("mask-generation", model=str(exported), device="cpu")
    outputs = generator(_image(), points_per_batch=8, points_per_crop=4, crops_n_layers=0,
                        pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert len(outputs["masks"]) >= 1 and len(outputs["scores"]) == len(outputs["masks"])
    assert tuple(np.asarray(outputs["masks"][0]).shape) == (48, 40)  # masks at the input image's size


def test_model_card_metadata_and_body(supernet, exported):
    card = ModelCard.load(exported / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "mask-generation"
    assert data.license == "apache-2.0"
    assert data.base_model == "facebook/sam-vit-base"
    assert data.datasets == ["user/shapes"]
    assert {"supersam", "sam", "segment-anything", "pruning", "nas"} <= set(data.tags)
    (result,) = data.eval_results
    assert result.metric_type == "mean_iou" and result.metric_value == pytest.approx(METRICS["miou"])

    body = card.text
    assert "{{" not in body and "}}" not in body  # every placeholder was filled
    assert f"{supernet.count_parameters(SUBNET):,}" in body and f"{supernet.count_parameters():,}" in body
    assert format_macs(supernet.count_macs(SUBNET)) in body and "MMACs" in body  # e.g. "4.27 MMACs", not raw digits
    assert "mIoU" in body and "0.6125" in body
    assert "`prompt`: point" in body and "`mask_selection`: single" in body and "`num_images`: 8" in body
    assert SUBNET.name in body and "[0, 1, 3, 5]" in body and "[128, 64, 32, 96]" in body
    assert "facebook/sam-vit-base" in body
    assert 'SamModel.from_pretrained("./tiny-subnet")' in body  # no repo id: the folder, never a machine path
    assert str(exported.parent) not in (exported / "README.md").read_text()
    # the card comes from the template shipped inside the package
    assert model_card_template().is_file() and "{{ card_data }}" in model_card_template().read_text()


def test_card_metadata_from_the_source_and_no_metrics(supernet_dir, tmp_path):
    """Loaded from a Hub-like id: base_model recorded from the source; no metrics → the card says so."""
    supernet = SuperSamModel.from_pretrained(supernet_dir)
    supernet.config._name_or_path = "someone/sam-supernet"  # what from_pretrained("someone/sam-supernet") records
    out = export_subnet(supernet, SUBNET.to_dict(), tmp_path / "out", license="mit")
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == "someone/sam-supernet" and data.license == "mit"
    assert data.eval_results is None
    assert "Not evaluated at export time" in ModelCard.load(out / "README.md").text
    assert not (out / "processor_config.json").exists()  # in-memory supernet, no processor given: none written


def test_local_base_model_is_named_but_not_in_metadata(supernet, tmp_path):
    base = tmp_path / "my-local-sam"
    base.mkdir()
    out = export_subnet(supernet, SUBNET, tmp_path / "out", base_model=str(base), datasets="user/shapes")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None  # the Hub accepts only repo ids there
    assert "**my-local-sam**" in card.text and str(tmp_path) not in card.text.split("## How to use")[0]
    assert card.data.datasets == ["user/shapes"]
    assert json.loads((out / "subnet.json").read_text())["base_model"] == str(base)  # the recorded string
    record = ExportResult.load(out)  # the typed record of subnet.json
    assert record.base_model == str(base) and record.subnet == SUBNET and record.params < record.base_params
    assert record.to_dict() == json.loads((out / "subnet.json").read_text())
    # the returned folder is a Path (as before) carrying the typed result it wrote; paths derived from it carry none
    assert isinstance(out, Path) and out == tmp_path / "out" and out.result == record
    assert (out / "subnet.json").result is None


def test_local_base_recorded_in_the_supernet_is_not_lost(tmp_path):
    """No base_model argument: the supernet's recorded local base is named in the card and written to subnet.json."""
    supernet = tiny_supernet(num_layers=6, image_size=64)
    supernet.config.base_model = str(tmp_path / "runs" / "base")
    out = export_subnet(supernet, SUBNET, tmp_path / "out")
    assert ModelCard.load(out / "README.md").data.base_model is None
    assert "**base**" in (out / "README.md").read_text()
    assert json.loads((out / "subnet.json").read_text())["base_model"] == str(tmp_path / "runs" / "base")


def test_card_has_point_and_box_rows_with_the_box_reference(supernet, tmp_path):
    box = {**METRICS, "prompt": "box", "miou": 0.8125, "box_reference_miou": 0.7031, "dataset": "user/shapes",
           "split": "test"}
    point = {**METRICS, "miou": 0.5625, "dataset": "user/shapes", "split": "test"}
    out = export_subnet(supernet, SUBNET, tmp_path / "both", metrics={"point": point, "box": box},
                        base_model="facebook/sam-vit-base")
    card = ModelCard.load(out / "README.md")
    rows = {line.split("|")[1].strip().split(" ")[0]: line for line in card.text.splitlines()
            if line.startswith("| point") or line.startswith("| box")}
    assert "0.5625" in rows["point"] and "0.8125" in rows["box"] and "0.7031" in rows["box"]
    assert "single mask" in rows["point"] and "the box itself as the mask" in card.text
    assert "How the point-prompt row was measured" in card.text and "How the box-prompt row was measured" in card.text
    assert sorted(r.metric_name for r in card.data.eval_results) == ["mIoU (box prompt)", "mIoU (point prompt)"]
    # one measured prompt: the other row says how to measure it
    only_box = export_subnet(supernet, SUBNET, tmp_path / "box", metrics=box)
    text = (only_box / "README.md").read_text()
    assert "| point | not measured: `supersam evaluate --prompt_type point ...`" in text and "0.8125" in text


@pytest.mark.parametrize("macs, text", [(487.8e9, "487.8 GMACs"), (96.31e6, "96.3 MMACs"), (4.274e9, "4.27 GMACs"),
                                        (812e3, "812.0 kMACs"), (950, "950 MACs")])
def test_macs_are_printed_with_a_prefix_and_sensible_digits(macs, text):
    assert format_macs(macs) == text


def test_output_folder_is_not_touched_without_overwrite(supernet, supernet_dir, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        export_subnet(supernet, SUBNET, target, processor=tiny_processor())
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "mine"

    # overwrite: an earlier export of another subnet is replaced (the files it wrote), other files left alone, even a
    # weights file of the user's (it is not the export's: the export's own index/weights are what loads)
    loaded, processor = load_supernet(supernet_dir), load_processor(supernet_dir)
    export_subnet(loaded, supernet.search_space.largest(), target, processor=processor, overwrite=True)
    (target / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")
    out = export_subnet(loaded, SUBNET, target, processor=processor, overwrite=True)
    assert (target / "model-00001-of-00002.safetensors").read_bytes() == b"stale shard"
    assert (target / "notes.txt").read_text() == "mine"
    assert SubnetConfig.from_json((out / "subnet.json").read_text()) == SUBNET
    inputs = prompt_inputs("points")
    _assert_same_outputs(_subnet_outputs(supernet, inputs), SamModel.from_pretrained(out), inputs)
    assert (out / "processor_config.json").is_file()  # loaded from the supernet folder


def test_push_without_token_is_a_clear_error_and_keeps_the_export(supernet, tmp_path, monkeypatch, capsys):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))  # no stored login
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="HF_TOKEN.*--token") as error:
        export_subnet(supernet, SUBNET, out, processor=tiny_processor(), push_to_hub=True, repo_id="user/tiny")
    assert str(out) in str(error.value)  # says where the export is
    inputs = prompt_inputs("points")
    _assert_same_outputs(_subnet_outputs(supernet, inputs), SamModel.from_pretrained(out), inputs)
    assert (out / "README.md").is_file()
    assert "user/tiny" in (out / "README.md").read_text()  # the card already names the intended repo


def test_push_to_local_hub_round_trip(supernet, local_hub, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="supersam_hf")
    out = export_subnet(supernet, SUBNET, tmp_path / "out", processor=tiny_processor(), metrics=METRICS,
                        push_to_hub=True, repo_id="user/tiny-subnet", token=local_hub.token, private=True)
    printed = caplog.text
    caplog.clear()
    assert f"{local_hub.endpoint}/user/tiny-subnet/commit/" in printed
    assert local_hub.token not in printed
    files = local_hub.files("user/tiny-subnet")
    assert {"config.json", "model.safetensors", "processor_config.json", "subnet.json", "README.md"} <= set(files)
    assert MANIFEST_NAME not in files and local_hub.repos["user/tiny-subnet"]["private"] is True
    assert files["README.md"] == (out / "README.md").read_bytes()

    model = SamModel.from_pretrained("user/tiny-subnet", token=local_hub.token)  # the Hub's copy (HF cache)
    inputs = prompt_inputs("points")
    _assert_same_outputs(_subnet_outputs(supernet, inputs), model, inputs)
    card = ModelCard.load("user/tiny-subnet", token=local_hub.token)
    assert card.data.pipeline_tag == "mask-generation"

    # the token can also come from HF_TOKEN
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    export_subnet(supernet, SUBNET, tmp_path / "out2", push_to_hub=True, repo_id="user/from-env")
    assert f"{local_hub.endpoint}/user/from-env/commit/" in caplog.text
    assert "model.safetensors" in local_hub.files("user/from-env")
    assert local_hub.repos["user/from-env"]["private"] is False


@pytest.mark.parametrize("token,repo,error", [("wrong-token", "user/x", "401"), ("test-token", "other/x", "403"),
                                              ("test-token", "user/gone", "RepositoryNotFoundError")])
def test_hub_errors_are_one_line_and_keep_the_files(local_hub, tmp_path, monkeypatch, token, repo, error):
    import huggingface_hub

    from supersam_hf.hub import push_folder

    (tmp_path / "config.json").write_text("{}")
    if repo == "user/gone":  # the repo vanished between create_repo and the upload: the Hub's 404
        monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **_: RepoUrl(f"{local_hub.endpoint}/{repo_id}"))
    with pytest.raises(SupersamError) as raised:
        push_folder(tmp_path, repo, private=None, token=token, commit_message="up")
    message = str(raised.value)
    assert "\n" not in message and error in message and f"files are kept in {tmp_path}" in message
    assert token not in message and (tmp_path / "config.json").is_file()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft calls it
def test_lora_adapters_are_merged_and_the_callers_model_is_kept(supernet, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_supernet(num_layers=6, image_size=64),
                                LoraConfig(r=4, target_modules=["qkv"], init_lora_weights=False))
    inner = peft_model.get_base_model()
    inputs = prompt_inputs("points")
    with torch.no_grad(), inner.subnet(SUBNET):
        expected = peft_model(**inputs)
        with peft_model.disable_adapter():
            without = peft_model(**inputs)
    assert (expected.pred_masks - without.pred_masks).abs().max() > 1e-3  # the adapter matters

    out = export_subnet(peft_model, SUBNET, tmp_path / "out")
    _assert_same_outputs(expected, SamModel.from_pretrained(out), inputs)
    assert any("lora_" in name for name, _ in peft_model.named_parameters())  # not merged in place


def test_corrupt_or_foreign_supernet_is_a_clear_error(supernet_dir, tmp_path):
    out = tmp_path / "out"
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for file in supernet_dir.iterdir():
        (truncated / file.name).write_bytes(file.read_bytes())
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{truncated / 'model.safetensors'} is not a valid safetensors")):
        load_supernet(truncated)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    config = json.loads((supernet_dir / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match="model of type 'bert'"):
        load_supernet(foreign)
    with pytest.raises(FileNotFoundError, match="No model folder"):
        load_supernet(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_supernet(tmp_path)
    with pytest.raises(ValueError, match="needs a SuperSamModel"):
        export_subnet(torch.nn.Linear(2, 2), SUBNET, out)
    with pytest.raises(ValueError, match="kept_layers"):  # not in the search space (layer 0 is not elastic)
        export_subnet(load_supernet(supernet_dir), SubnetConfig((1, 2, 3), (32, 32, 32)), out)
    assert not out.exists()  # nothing written on any error


def _write_search_output(search_dir, supernet):
    """search_results.json + pareto.json in the format `search_subnets` writes (pareto sorted by params)."""
    largest = supernet.search_space.largest()
    entries = []
    for cfg, miou in ((largest, 0.7), (SUBNET, 0.5432)):
        params = supernet.count_parameters(cfg)
        entries.append({"name": cfg.name, **cfg.to_dict(), "params": params, "macs": supernet.count_macs(cfg),
                        "latency_ms": None, "size_reduction": 1 - params / supernet.count_parameters(largest),
                        "miou": miou, "per_image_miou": miou - 0.01, "mean_dice": miou + 0.05, "feasible": True,
                        "violations": [], "reference": cfg == largest})
    settings = {"prompt": "box", "mask_selection": "oracle", "eval_seed": 0, "num_images": 6, "max_images": 6,
                "search_space": supernet.search_space.to_dict(), "largest_params": entries[0]["params"]}
    search_dir.mkdir(parents=True, exist_ok=True)
    (search_dir / "search_results.json").write_text(json.dumps(
        {"settings": settings, "constraints": {}, "strategy": "random", "seed": 0, "budget": 2,
         "best": entries[0]["name"], "evaluations": entries, "rejected": []}))
    (search_dir / "pareto.json").write_text(json.dumps(sorted(entries, key=lambda e: e["params"])))


def test_cli_export_pareto_end_to_end(supernet, supernet_dir, tmp_path, capsys):
    search_dir = tmp_path / "search"
    _write_search_output(search_dir, supernet)
    out = tmp_path / "exported"
    argv = ["export", "--model_name_or_path", str(supernet_dir), "--subnet", "pareto:0", "--search_dir", str(search_dir),
            "--output_dir", str(out), "--license", "apache-2.0", "--datasets", "user/shapes"]
    assert cli_main(argv) == 0
    assert SUBNET.name in capsys.readouterr().out
    assert SubnetConfig.from_json((out / "subnet.json").read_text()) == SUBNET
    inputs = prompt_inputs("boxes")
    _assert_same_outputs(_subnet_outputs(supernet, inputs), SamModel.from_pretrained(out), inputs)
    SamProcessor.from_pretrained(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["user/shapes"] and card.data.license == "apache-2.0"
    # the search's measurement of this subnet, and how it was made
    assert "0.5432" in card.text and "0.7000" in card.text  # this subnet's and the largest subnet's mIoU
    assert "`prompt`: box" in card.text and "`mask_selection`: oracle" in card.text and "`num_images`: 6" in card.text
    assert card.data.eval_results[0].metric_value == pytest.approx(0.5432)

    capsys.readouterr()
    assert cli_main([*argv[:4], "pareto:99", *argv[5:8], str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("supersam export: error:") and "Traceback" not in error
    assert "pareto:99" in error and "pareto:0 … pareto:1" in error
    assert not (tmp_path / "other").exists()

    assert cli_main(argv) == 2  # the folder now exists and is not empty
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite_output_dir"]) == 0


def test_example_script_runs_the_same_export(supernet, supernet_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "export_example", os.path.join(os.path.dirname(__file__), "..", "examples", "export.py")
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    subnet_json = tmp_path / "subnet.json"
    subnet_json.write_text(SUBNET.to_json())
    example.main(["--model_name_or_path", str(supernet_dir), "--subnet", str(subnet_json), "--output_dir", str(tmp_path / "out")])
    assert SubnetConfig.from_json((tmp_path / "out" / "subnet.json").read_text()) == SUBNET


def test_arguments_objects_equal_keywords_and_unknown_keywords_are_refused(supernet, tmp_path):
    from supersam_hf.arguments import DataArguments, ExportArguments, OutputArguments

    args = ExportArguments(subnet="best", license="mit", datasets=["user/shapes"])
    by_object = export_subnet(supernet, SUBNET, args, OutputArguments(output_dir=str(tmp_path / "a")),
                              DataArguments(dataset_name="user/shapes", eval_split_name="validation"))
    by_keywords = export_subnet(supernet, SUBNET, tmp_path / "b", license="mit", datasets=["user/shapes"],
                                eval_dataset="user/shapes", eval_split="validation")
    for name in ("subnet.json", "model.safetensors"):  # the cards differ only by the folder they name
        assert (by_object / name).read_bytes() == (by_keywords / name).read_bytes()
    card_a, card_b = (ModelCard.load(out / "README.md") for out in (by_object, by_keywords))
    assert card_a.data.license == card_b.data.license == "mit" and card_a.data.datasets == ["user/shapes"]
    with pytest.raises(SupersamError, match="unknown keyword argument.*licence"):
        export_subnet(supernet, SUBNET, tmp_path / "c", licence="mit")
    with pytest.raises(SupersamError, match="needs the folder to write"):
        export_subnet(supernet, SUBNET, args)
    assert not (tmp_path / "c").exists()

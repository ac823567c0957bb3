"""Faults and bad inputs a user meets, through the command line (issue 10's table, one test per case).

Every case asserts three things: the exit status (2 for a user's error, one line `supersam <stage>: error: ...`),
that the message names the problem (which file, flag or tensor, and what to do), and that the user's files are
untouched. Faults are injected where the platform cannot produce them on demand (a full disk, a kill mid-search).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_processor, tiny_sam
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import SamModel

from supersam_hf import SubnetConfig, SuperSamModel
from supersam_hf.commands.cli import main
from supersam_hf.data import SamSegmentationData, SamStreamingData, make_synthetic_shapes
from supersam_hf.outputs import MANIFEST_NAME, record_tool_outputs

QUIET = ["--log_level", "error"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A tiny SAM, a tiny supernet (both with processors), a 4-image dataset and a 2-step training run."""
    root = tmp_path_factory.mktemp("faults")
    sam = tiny_sam(num_layers=4, image_size=64)
    sam.save_pretrained(root / "sam")
    tiny_processor(64).save_pretrained(root / "sam")
    SuperSamModel.from_sam(sam).save_pretrained(root / "supernet")
    tiny_processor(64).save_pretrained(root / "supernet")
    make_synthetic_shapes(4, image_size=64, seed=0, max_shapes=3).save_to_disk(str(root / "data"))
    code = main(["train", *_train_flags(root, root / "trained"), "--save_steps", "1", *QUIET])
    assert code == 0
    return root


def _train_flags(ws: Path, output: Path, model: Path | None = None) -> list[str]:
    return ["--model_name_or_path", str(model or ws / "sam"), "--dataset_name", str(ws / "data"), "--output_dir",
            str(output), "--max_steps", "2", "--per_device_train_batch_size", "2", "--num_random_subnets", "0",
            "--max_instances_per_image", "2", "--eval_steps", "0", "--save_steps", "0"]


def _eval_flags(ws: Path, model: Path | str, output: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(ws / "data"), "--output_dir", str(output),
            "--max_eval_images", "2", "--device", "cpu", *QUIET]


def _largest(ws: Path) -> str:
    config = json.loads((ws / "supernet" / "config.json").read_text())
    layers = config["vision_config"]["num_hidden_layers"]
    return json.dumps({"kept_layers": list(range(layers)), "mlp_dims": [config["vision_config"]["mlp_dim"]] * layers})


def _export_flags(model: Path, output: Path, subnet: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--subnet", subnet, "--output_dir", str(output), *QUIET]


def one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    """Run `supersam argv` in-process; assert the exit status and a single `supersam <stage>: error:` line."""
    assert main(argv) == code
    text = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", text) if line.strip() and "%|" not in line]  # minus progress bars
    assert len(lines) == 1, text
    err = lines[0].strip()
    assert "Traceback" not in text
    prefix = f"supersam {argv[0]}: " + ("error: " if code == 2 else "internal error")
    assert err.startswith(prefix), err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes (to assert nothing of the user's changed)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------------------------------------------------------
# data loss
# ---------------------------------------------------------------------------------------------------------------


def test_export_overwrite_removes_only_what_export_wrote(ws, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", *_export_flags(ws / "supernet", out, _largest(ws))]) == 0
    (out / "user.safetensors").write_bytes(b"the user's weights")
    (out / "notes.txt").write_text("mine")
    err = one_line_error(capsys, ["export", *_export_flags(ws / "supernet", out, _largest(ws))])
    assert "not empty" in err and "--overwrite_output_dir" in err
    assert main(["export", *_export_flags(ws / "supernet", out, _largest(ws)), "--overwrite_output_dir"]) == 0
    assert (out / "user.safetensors").read_bytes() == b"the user's weights" and (out / "notes.txt").read_text() == "mine"
    assert isinstance(SamModel.from_pretrained(out), SamModel)
    assert "user.safetensors" not in json.loads((out / MANIFEST_NAME).read_text())["files"]


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_export_into_the_supernet_folder_is_refused(ws, tmp_path, capsys, where):
    supernet = copy_model(ws / "supernet", tmp_path / "supernet")
    before = snapshot(supernet)
    out = supernet if where == "equal" else supernet / "export"
    err = one_line_error(capsys, ["export", *_export_flags(supernet, out, _largest(ws)), "--overwrite_output_dir"])
    assert ("is the input" if where == "equal" else "is inside the input folder") in err and str(supernet) in err
    assert snapshot(supernet) == before
    assert json.loads((supernet / "config.json").read_text())["model_type"] == "supersam"


def test_train_overwrite_never_touches_another_tools_checkpoints(ws, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "other_tool").mkdir(parents=True)
    (out / "checkpoints" / "other_tool" / "state.pt").write_bytes(b"another tool's checkpoint")
    before = snapshot(out)
    err = one_line_error(capsys, ["train", *_train_flags(ws, out), "--overwrite_output_dir", *QUIET])
    assert "did not write" in err and "checkpoints/other_tool/state.pt" in err
    assert snapshot(out) == before


def test_train_overwrite_removes_its_own_run_only(ws, tmp_path):
    out = copy_model(ws / "trained", tmp_path / "trained")
    (out / "notes.txt").write_text("mine")
    assert main(["train", *_train_flags(ws, out), "--max_steps", "1", "--overwrite_output_dir", *QUIET]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]  # step_2 of the old run: removed
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_demo_overwrite_removes_only_demo_files(tmp_path):
    from supersam_hf.commands.demo import DemoArguments, DemoState, _prepare_output

    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "rows.arrow").write_bytes(b"demo data")
    DemoState(out).record("data", {"domain_B": str(out / "data")})
    (out / "my_notes.txt").write_text("mine")
    (out / "results").mkdir()
    (out / "results" / "mine.csv").write_text("a,b")
    assert _prepare_output(DemoArguments(output_dir=str(out), overwrite_output_dir=True)) == out
    assert sorted(snapshot(out)) == ["my_notes.txt", "results/mine.csv"]


def test_unwritable_output_is_found_before_any_work(ws, tmp_path, capsys, monkeypatch):
    import supersam_hf.commands.convert as convert
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if "write-probe" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(convert, "load_supernet", never)
    out = tmp_path / "converted"
    err = one_line_error(capsys, ["convert", "--model_name_or_path", str(ws / "sam"), "--dataset_name",
                                  str(ws / "data"), "--output_dir", str(out), *QUIET])
    assert f"cannot write to {tmp_path}" in err and "Read-only file system" in err and "--output_dir" in err
    assert not out.exists()


def test_disk_full_during_export_leaves_no_partial_output(ws, tmp_path, capsys, monkeypatch):
    import supersam_hf.export as export

    monkeypatch.setattr(export, "write_model_card", full_disk)  # after the weights are written
    out = tmp_path / "export"
    err = one_line_error(capsys, ["export", *_export_flags(ws / "supernet", out, _largest(ws))])
    assert "No space left on device" in err and "partial output was removed" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half folder, no temporary sibling


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_checkpoint(ws, tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = {"n": 0}

    def fails_second_time(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # a partial write, then the disk is full
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            full_disk()
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fails_second_time)
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", *_train_flags(ws, out), "--save_steps", "1", *QUIET])
    assert "No space left on device" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]
    assert json.loads((out / "checkpoints" / "step_1" / "training_state.json").read_text())["global_step"] == 1
    monkeypatch.setattr(Accelerator, "save_state", real_save)  # space again: resume from step 1 works
    assert main(["train", *_train_flags(ws, out), "--resume_from_checkpoint", "latest", *QUIET]) == 0


# ---------------------------------------------------------------------------------------------------------------
# silent wrong results
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["evaluate", "search", "export"])
def test_non_finite_weights_are_named_on_load(ws, tmp_path, capsys, stage):
    bad = copy_model(ws / "supernet", tmp_path / "nan")
    weights = load_file(bad / "model.safetensors")
    weights["vision_encoder.layers.1.mlp.lin1.weight"][0, 0] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    argv = {
        "evaluate": ["evaluate", *_eval_flags(ws, bad, out)],
        "search": ["search", *_eval_flags(ws, bad, out), "--budget", "2", "--strategy", "random"],
        "export": ["export", *_export_flags(bad, out, _largest(ws))],
    }[stage]
    err = one_line_error(capsys, argv)
    assert "non-finite weights" in err and "vision_encoder.layers.1.mlp.lin1.weight" in err
    assert not out.exists()


def test_nan_metric_is_never_ranked_or_exported(ws, tmp_path, capsys):
    from supersam_hf.search.results import best_entry, pareto_front

    base = {"feasible": True, "reference": False}
    entries = [{**base, "name": "a", "params": 10, "miou": math.nan}, {**base, "name": "b", "params": 20, "miou": 0.5},
               {**base, "name": "c", "params": 5, "miou": math.inf}]
    assert best_entry(entries)["name"] == "b" and [e["name"] for e in pareto_front(entries)] == ["b"]

    search = tmp_path / "search"
    search.mkdir()
    subnet = json.loads(_largest(ws))
    name = SubnetConfig.from_dict(subnet).name
    (search / "best_subnet.json").write_text(json.dumps({**subnet, "name": name, "miou": math.nan}))
    out = tmp_path / "export"
    err = one_line_error(capsys, ["export", *_export_flags(ws / "supernet", out, "best"), "--search_dir", str(search)])
    assert "mIoU nan" in err and "never exported" in err
    assert not out.exists()


def test_missing_decoder_weights_are_an_error_naming_them(ws, tmp_path, capsys):
    partial = copy_model(ws / "supernet", tmp_path / "partial")
    weights = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("mask_decoder.")}, partial / "model.safetensors",
              metadata={"format": "pt"})
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, partial, tmp_path / "out")])
    assert "weights missing" in err and "mask_decoder." in err and str(partial) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kept, words", [
    ("[0, 1.7, 2, 3]", "1.7"),  # silently truncated to 1 before
    ('["a", 1, 2, 3]', "'a'"),  # "invalid literal for int()" before
    ("null", "None"),  # a traceback before
])
def test_mistyped_kept_layers_are_refused_naming_the_field(ws, tmp_path, capsys, kept, words):
    config = json.loads((ws / "supernet" / "config.json").read_text())["vision_config"]
    subnet = f'{{"kept_layers": {kept}, "mlp_dims": {[config["mlp_dim"]] * 4}}}'
    out = tmp_path / "export"
    err = one_line_error(capsys, ["export", *_export_flags(ws / "supernet", out, subnet)])
    assert "kept_layers" in err and words in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# crashes → one line
# ---------------------------------------------------------------------------------------------------------------


def _truncated(source: Path, target: Path) -> Path:
    copy_model(source, target)
    data = (target / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    return target


def _random_bytes(source: Path, target: Path) -> Path:
    copy_model(source, target)
    (target / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    return target


@pytest.mark.parametrize("corrupt", [_truncated, _random_bytes])
@pytest.mark.parametrize("stage", ["convert", "train", "evaluate", "search", "export"])
def test_corrupt_safetensors_in_every_stage(ws, tmp_path, capsys, stage, corrupt):
    model = corrupt(ws / "supernet", tmp_path / "model")
    out = tmp_path / "out"
    argv = {
        "convert": ["convert", "--model_name_or_path", str(model), "--dataset_name", str(ws / "data"),
                    "--output_dir", str(out), *QUIET],
        "train": ["train", *_train_flags(ws, out, model), *QUIET],
        "evaluate": ["evaluate", *_eval_flags(ws, model, out)],
        "search": ["search", *_eval_flags(ws, model, out), "--budget", "2", "--strategy", "random"],
        "export": ["export", *_export_flags(model, out, _largest(ws))],
    }[stage]
    err = one_line_error(capsys, argv)
    assert f"{model / 'model.safetensors'} is not a valid safetensors file" in err and "re-download" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["nonexistent", "no_config", "config_without_weights", "mlp_dim_mismatch"])
def test_broken_model_folders_are_one_line(ws, tmp_path, capsys, case):
    model = tmp_path / "model"
    if case == "no_config":
        model.mkdir()
        (model / "model.safetensors").write_bytes((ws / "sam" / "model.safetensors").read_bytes())
    elif case == "config_without_weights":
        model.mkdir()
        (model / "config.json").write_text((ws / "sam" / "config.json").read_text())
    elif case == "mlp_dim_mismatch":
        copy_model(ws / "sam", model)
        config = json.loads((model / "config.json").read_text())
        config["vision_config"]["mlp_dim"] = 96
        (model / "config.json").write_text(json.dumps(config))
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, model, tmp_path / "out")])
    expected = {
        "nonexistent": "No model folder at",
        "no_config": "is a folder without config.json",
        "config_without_weights": "has config.json but no model.safetensors",
        "mlp_dim_mismatch": "weights of the wrong shape (vision_encoder.layers.0.mlp.lin1",
    }[case]
    assert expected in err and str(model) in err
    assert not (tmp_path / "out").exists()


def test_corrupt_optimizer_state_on_resume_names_the_checkpoint(ws, tmp_path, capsys):
    run = copy_model(ws / "trained", tmp_path / "run")
    (run / "checkpoints" / "step_2" / "optimizer.bin").write_bytes(np.random.default_rng(1).bytes(2048))
    before = snapshot(run)
    err = one_line_error(capsys, ["train", *_train_flags(ws, run), "--max_steps", "3", "--resume_from_checkpoint",
                                  "latest", *QUIET])
    assert f"training checkpoint {run / 'checkpoints' / 'step_2'} is corrupt" in err
    assert "resume from an earlier checkpoint" in err and "--overwrite_output_dir" in err
    assert snapshot(run) == before


def test_resuming_a_larger_model_from_a_smaller_checkpoint_is_one_line(ws, tmp_path, capsys):
    sam6 = tmp_path / "sam6"
    tiny_sam(num_layers=6, image_size=64).save_pretrained(sam6)
    tiny_processor(64).save_pretrained(sam6)
    run = copy_model(ws / "trained", tmp_path / "run")
    before = snapshot(run)
    err = one_line_error(capsys, ["train", *_train_flags(ws, run, sam6), "--max_steps", "3",
                                  "--resume_from_checkpoint", "latest", *QUIET])
    assert "does not fit this model" in err and str(run / "checkpoints" / "step_2") in err
    assert snapshot(run) == before


@pytest.mark.parametrize("extra, words", [
    ({"bogus_flag": 1}, "unknown argument 'bogus_flag'"),
    ({"max_steps": "ten"}, "argument 'max_steps' must be an integer, got 'ten'"),
    ({"max_stepz": 3}, "did you mean 'max_steps'"),
])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_argument_files_are_strictly_typed(ws, tmp_path, capsys, extra, words, suffix):
    import yaml

    values = {"model_name_or_path": str(ws / "sam"), "dataset_name": str(ws / "data"),
              "output_dir": str(tmp_path / "out"), **extra}
    path = tmp_path / f"args{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values))
    err = one_line_error(capsys, ["train", str(path)])
    assert words in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_batch_size_zero_is_refused_before_loading(ws, tmp_path, capsys, monkeypatch):
    import supersam_hf.commands.evaluate as evaluate

    monkeypatch.setattr(evaluate, "load_sam_model", lambda *a, **k: pytest.fail("loaded before checking flags"))
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, ws / "sam", tmp_path / "out"), "--batch_size", "0"])
    assert err.endswith("--batch_size must be a positive integer, got 0.")


def test_model_folder_without_processor_says_where_it_looked(ws, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ws / "supernet" / name, bare / name)
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, bare, tmp_path / "out")])
    assert "No SamProcessor found" in err and f"Looked in '{bare}'" in err and "--processor_name_or_path" in err


def test_demo_resume_continues_a_search_killed_midway(ws, tmp_path, monkeypatch):
    from supersam_hf.commands.demo import DemoArguments, DemoState, _DemoRun, _stage_search
    from supersam_hf.commands.demo_plan import DemoPlan
    from supersam_hf.data import load_segmentation_dataset
    from supersam_hf.search.driver import SubnetSearch

    supernet = SuperSamModel.from_pretrained(ws / "supernet")
    data = load_segmentation_dataset(ws / "data").select(range(2))
    out = tmp_path / "demo"
    out.mkdir()
    run = _DemoRun(DemoArguments(output_dir=str(out), resume=True), DemoPlan({"search_budget": 3}, 0.0),
                   tiny_processor(64), out, DemoState(out), search_prompt="box")
    base_params = supernet.count_parameters()
    real_score, calls = SubnetSearch.score, {"n": 0}

    def killed_on_second_subnet(self, cfg, cost):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C / a kill after one subnet was scored and saved
        return real_score(self, cfg, cost)

    monkeypatch.setattr(SubnetSearch, "score", killed_on_second_subnet)
    with pytest.raises(KeyboardInterrupt):
        _stage_search(run, supernet, 0.0, ws / "supernet", base_params, data, data)
    assert (out / "search" / "search_0" / "search_results.json").is_file() and not run.state.done("search_0")
    monkeypatch.setattr(SubnetSearch, "score", real_score)
    _stage_search(run, supernet, 0.0, ws / "supernet", base_params, data, data)  # --resume: continues
    assert run.state.done("search_0") and SamModel.from_pretrained(run.state.stages["search_0"]["folder"])


def test_masks_rows_without_annotation_contribute_no_instances(ws, tmp_path, capsys, caplog):
    import datasets

    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 8:40] = 1
    images = [Image.fromarray(np.full((64, 64, 3), 60 * k, dtype=np.uint8)) for k in range(3)]
    rows = datasets.Dataset.from_dict({"image": images, "masks": [[mask], [], [mask, 1 - mask]]})
    with caplog.at_level("WARNING", logger="supersam_hf"):
        wrapped = SamSegmentationData(rows, tiny_processor(64), mask_kind="masks")
    assert wrapped.row_indices == [0, 2] and wrapped.num_unannotated_images == 1
    assert "1 of them have no annotation" in caplog.text
    rows.save_to_disk(str(tmp_path / "rows"))
    argv = ["evaluate", "--model_name_or_path", str(ws / "sam"), "--dataset_name", str(tmp_path / "rows"),
            "--output_dir", str(tmp_path / "out"), "--mask_kind", "masks", "--device", "cpu", *QUIET]
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["num_images"] == 2


# ---------------------------------------------------------------------------------------------------------------
# poor messages
# ---------------------------------------------------------------------------------------------------------------


def test_image_path_strings_are_decoded_or_refused_with_the_reason(ws, tmp_path, capsys):
    import datasets

    source = make_synthetic_shapes(2, image_size=64, seed=5)
    paths = []
    for k, image in enumerate(source["image"]):
        paths.append(str(tmp_path / f"image{k}.png"))
        image.save(paths[-1])
    as_paths = datasets.Dataset.from_dict({"image": paths, "label": source["label"]})
    wrapped = SamSegmentationData(as_paths, tiny_processor(64))
    reference = SamSegmentationData(source, tiny_processor(64))
    torch.testing.assert_close(wrapped[0]["pixel_values"], reference[0]["pixel_values"])
    streamed = next(iter(SamStreamingData(as_paths.to_iterable_dataset(), tiny_processor(64))))  # the stream's twin
    torch.testing.assert_close(streamed["pixel_values"], reference[0]["pixel_values"])
    missing = datasets.Dataset.from_dict({"image": ["nowhere/a.png", "nowhere/b.png"], "label": source["label"]})
    missing.save_to_disk(str(tmp_path / "missing"))
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, ws / "sam", tmp_path / "out")[:2], "--dataset_name",
                                  str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"), *QUIET])
    assert "holds strings, not images" in err and "'nowhere/a.png' is not an existing image file" in err


def test_binary_0_255_maps_point_to_mask_kind_masks(tmp_path):
    import datasets

    source = make_synthetic_shapes(2, image_size=64, seed=5)
    binary = [(np.asarray(label) > 0).astype(np.uint8) * 255 for label in source["label"]]
    rows = datasets.Dataset.from_dict({"image": source["image"], "label": binary})
    with pytest.raises(ValueError, match="only the values 0 and 255.*--mask_kind masks"):
        SamSegmentationData(rows, tiny_processor(64))
    assert len(SamSegmentationData(rows, tiny_processor(64), mask_kind="masks")) == 2  # what the message says works


def test_resuming_a_run_written_before_manifests_existed(ws, tmp_path):
    run = copy_model(ws / "trained", tmp_path / "run")
    (run / MANIFEST_NAME).unlink()  # as an older version left it
    assert main(["train", *_train_flags(ws, run), "--max_steps", "3", "--resume_from_checkpoint", "latest",
                 "--save_total_limit", "10", *QUIET]) == 0  # keep every checkpoint (no rotation)
    recorded = set(json.loads((run / MANIFEST_NAME).read_text())["files"])
    assert {"config.json", "model.safetensors", "metrics.jsonl", "checkpoints/step_1/training_state.json",
            "checkpoints/step_3/training_state.json"} <= recorded


def test_garbage_training_state_names_the_file_and_the_way_out(ws, tmp_path, capsys):
    run = copy_model(ws / "trained", tmp_path / "run")
    (run / "checkpoints" / "step_2" / "training_state.json").write_text("\x00\x13garbage")
    err = one_line_error(capsys, ["train", *_train_flags(ws, run), "--max_steps", "3", "--resume_from_checkpoint",
                                  "latest", *QUIET])
    assert f"training state {run / 'checkpoints' / 'step_2' / 'training_state.json'} is corrupt" in err
    assert "--resume_from_checkpoint" in err and "step_N" in err


def test_torn_last_metrics_line_is_repaired_on_resume(ws, tmp_path):
    run = copy_model(ws / "trained", tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"type": "train", "step": 3, "lo')  # a kill mid-append
    assert main(["train", *_train_flags(ws, run), "--max_steps", "3", "--resume_from_checkpoint", "latest",
                 *QUIET]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # logged: the last step of each run; the torn record is gone


def test_corrupt_search_results_name_the_file_and_the_way_out(ws, tmp_path, capsys):
    search = tmp_path / "search"
    search.mkdir()
    (search / "search_results.json").write_text('{"settings": {"prompt": "bo')
    record_tool_outputs(search, ["search_results.json"], tool="supersam search")  # a search's own file, torn
    before = snapshot(search)
    err = one_line_error(capsys, ["search", *_eval_flags(ws, ws / "supernet", search), "--budget", "2", "--strategy",
                                  "random", "--resume"])
    assert f"search results {search / 'search_results.json'} is corrupt" in err and "delete it" in err
    assert snapshot(search) == before


def test_nonexistent_processor_path_is_one_clear_line(ws, tmp_path, capsys):
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, ws / "sam", tmp_path / "out"),
                                  "--processor_name_or_path", "/nonexistent"])
    assert "--processor_name_or_path '/nonexistent': no such folder" in err and "Repo id" not in err


def test_evaluate_into_a_non_empty_folder_is_one_clear_line(ws, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, ws / "sam", out)])
    assert "is not empty; pass --overwrite_output_dir" in err and "[Errno" not in err
    assert snapshot(out) == {"notes.txt": b"mine"}


# ---------------------------------------------------------------------------------------------------------------
# 16-bit microscopy, one-line errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["convert", "train", "search", "evaluate"])
def test_every_data_stage_has_the_intensity_flag(stage, capsys):
    assert main([stage, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--intensity_normalization" in text and "percentile" in text


def test_8bit_data_stored_as_16bit_keeps_its_contrast(tmp_path):
    import datasets

    source = make_synthetic_shapes(1, image_size=64, seed=5)
    grey = np.asarray(source[0]["image"].convert("L")).astype(np.uint16) * 235 // 255  # 0..235 in uint16
    rows = datasets.Dataset.from_dict({"image": [grey], "label": source["label"]})
    processor = tiny_processor(64)
    for mode, low_contrast in (("percentile", False), ("range", True)):
        red = SamSegmentationData(rows, processor, intensity_normalization=mode)[0]["pixel_values"][0]
        assert (float(red.max() - red.min()) < 0.1) == low_contrast  # ÷257: a black image (1 of 255 levels)


def test_a_bug_is_one_line_pointing_to_the_debug_switch(ws, tmp_path, capsys, monkeypatch):
    import supersam_hf.commands.evaluate as evaluate

    def bug(*args):
        raise KeyError("oops")

    monkeypatch.setattr(evaluate, "run", bug)
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, ws / "sam", tmp_path / "out")], code=1)
    assert "internal error (KeyError" in err and "SUPERSAM_DEBUG=1" in err


# ---------------------------------------------------------------------------------------------------------------
# Issue 19: nothing lost, nothing silent, round two
# ---------------------------------------------------------------------------------------------------------------


def _search_flags(ws: Path, output: Path) -> list[str]:
    return [*_eval_flags(ws, ws / "supernet", output), "--budget", "2", "--strategy", "random"]


@pytest.mark.parametrize("flag", ["--overwrite_output_dir", "--resume"])
def test_search_never_replaces_a_users_same_named_files(ws, tmp_path, capsys, flag):
    out = tmp_path / "results"
    out.mkdir()
    (out / "pareto.json").write_text('["the user\'s own front"]')
    (out / "best_subnet.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    err = one_line_error(capsys, ["search", *_search_flags(ws, out), flag])
    assert "best_subnet.json (not written by this tool)" in err and "pareto.json (not written by this tool)" in err
    assert "move them away or choose another --output_dir" in err
    assert snapshot(out) == before


def test_search_overwrite_keeps_a_result_the_user_edited(ws, tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", *_search_flags(ws, out)]) == 0
    assert {"search_results.json", "pareto.json", "pareto.png"} <= set(json.loads(
        (out / MANIFEST_NAME).read_text())["files"])
    (out / "pareto.json").write_text('["annotated by the user"]')
    capsys.readouterr()
    before = snapshot(out)
    for flag in ("--overwrite_output_dir", "--resume"):
        err = one_line_error(capsys, ["search", *_search_flags(ws, out), flag])
        assert "pareto.json (changed since this tool wrote it)" in err
        assert snapshot(out) == before
    (out / "pareto.json").unlink()  # without the edited file, the search's own files are replaced
    assert main(["search", *_search_flags(ws, out), "--overwrite_output_dir"]) == 0


def test_sigint_inside_opentuners_database_calls_exits_130(ws, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from supersam_hf.search.opentuner_compat import import_opentuner

    import_opentuner()  # without its SQLAlchemy 2 deprecation warnings
    from opentuner.api import TuningRunManager

    real = TuningRunManager.report_result
    calls = []

    def report_result(self, *args, **kwargs):  # Ctrl-C arrives inside the DB layer, which swallows it
        calls.append(1)
        if len(calls) == 1:
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                pass
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TuningRunManager, "report_result", report_result)
    out = tmp_path / "search"
    flags = [*_eval_flags(ws, ws / "supernet", out), "--budget", "4", "--strategy", "opentuner"]
    assert main(["search", *flags]) == 130
    err = capsys.readouterr().err
    assert "supersam search: interrupted; rerun with --resume to continue" in err and "Traceback" not in err
    assert len(calls) == 1  # the search stopped at the first report, it did not run on
    scored = json.loads((out / "search_results.json").read_text())["evaluations"]
    assert 1 <= len(scored) < 4
    assert not list(out.glob(".opentuner.db.tmp-*"))  # no temporary database left
    monkeypatch.undo()
    assert main(["search", *flags, "--resume"]) == 0
    assert len(json.loads((out / "search_results.json").read_text())["evaluations"]) == 4


def test_full_disk_reported_by_safetensors_while_train_saves_is_one_line(ws, tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator
    from safetensors import SafetensorError

    real_save = Accelerator.save_state

    def full_disk_in_safetensors(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(Accelerator, "save_state", full_disk_in_safetensors)
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", *_train_flags(ws, out), "--save_steps", "1", *QUIET])
    assert f"could not write {out / 'checkpoints' / 'step_1'} (no space left on the device)" in err
    assert "--resume_from_checkpoint latest" in err
    assert list((out / "checkpoints").iterdir()) == []  # the partial checkpoint was removed
    monkeypatch.setattr(Accelerator, "save_state", real_save)


@pytest.mark.parametrize("which", ["safetensors", "torch.save"])
def test_file_size_limit_while_train_saves_a_checkpoint_is_one_line(ws, tmp_path, which):
    import os
    import resource
    import subprocess
    import sys

    weights = (ws / "sam" / "model.safetensors").stat().st_size
    # below the weights (safetensors fails), or above them but below the optimizer state (torch.save fails)
    limit = weights // 2 if which == "safetensors" else weights + weights // 4
    out = tmp_path / "run"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    result = subprocess.run(
        [sys.executable, "-m", "supersam_hf.cli", "train", *_train_flags(ws, out), "--save_steps", "1", *QUIET],
        capture_output=True, text=True, preexec_fn=limit_file_size, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip() and "%|" not in line
             and "Warning" not in line and "warnings.warn" not in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("supersam train: error: could not write "), result.stderr
    assert f"file-size limit of {limit:,} bytes (ulimit -f)" in lines[0] or "file-size limit (ulimit -f)" in lines[0]
    assert list((out / "checkpoints").iterdir()) == []


def test_a_dataset_of_0_rows_is_one_line_naming_the_flag(ws, tmp_path, capsys):
    import datasets

    empty = tmp_path / "empty"
    datasets.load_from_disk(str(ws / "data")).select([]).save_to_disk(str(empty))
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, ws / "sam", tmp_path / "out")[:3], str(empty),
                                  "--output_dir", str(tmp_path / "out"), "--device", "cpu", *QUIET])
    assert f"--dataset_name {str(empty)!r} holds no rows" in err and "at least one annotated image" in err
    flags = _train_flags(ws, tmp_path / "run")
    flags[flags.index("--dataset_name") + 1] = str(empty)
    err = one_line_error(capsys, ["train", *flags, *QUIET])
    assert "(split 'train') holds no rows" in err and "--train_split_name" in err


def test_an_image_above_pils_decompression_bomb_limit_is_one_line(ws, tmp_path, capsys, monkeypatch):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # the 64 x 64 images are above twice this limit
    err = one_line_error(capsys, ["evaluate", *_eval_flags(ws, ws / "sam", tmp_path / "out")])
    assert "above PIL's decompression-bomb limit (Image size (4096 pixels) exceeds limit of 2000 pixels" in err
    assert "downscale or tile it" in err


def test_an_absurd_config_is_refused_by_convert_in_one_line(ws, tmp_path, capsys):
    import time

    model = copy_model(ws / "sam", tmp_path / "absurd")
    config = json.loads((model / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 1_000_000
    (model / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    err = one_line_error(capsys, ["convert", "--model_name_or_path", str(model), "--dataset_name", str(ws / "data"),
                                  "--output_dir", str(tmp_path / "out"), *QUIET])
    assert time.perf_counter() - start < 5  # the data is read first; the model is never built
    assert "this config describes a model of about" in err and "GiB of memory" in err and str(model) in err


@pytest.mark.parametrize("stage", ["evaluate", "search"])
def test_max_eval_images_errors_name_the_flag(ws, tmp_path, capsys, stage):
    model = ws / ("sam" if stage == "evaluate" else "supernet")
    flags = _eval_flags(ws, model, tmp_path / "out")
    flags[flags.index("--max_eval_images") + 1] = "0"
    err = one_line_error(capsys, [stage, *flags])
    assert "--max_eval_images must be a positive integer, got 0." in err and "max_images" not in err.replace(
        "--max_eval_images", "")


def test_train_overwrite_refuses_early_a_checkpoint_file_the_user_changed(ws, tmp_path, capsys):
    out = copy_model(ws / "trained", tmp_path / "trained")
    (out / "checkpoints" / "step_1" / "optimizer.bin").write_bytes(b"the user's own optimizer state")
    before = snapshot(out)
    err = one_line_error(capsys, ["train", *_train_flags(ws, out), "--overwrite_output_dir", *QUIET])
    assert "checkpoints/step_1/optimizer.bin (changed since this tool wrote it)" in err
    assert snapshot(out) == before


def test_ctrl_c_of_a_running_search_process_exits_130_with_the_resume_hint(ws, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "search"
    flags = [*_eval_flags(ws, ws / "supernet", out), "--budget", "400", "--strategy", "opentuner"]
    process = subprocess.Popen([sys.executable, "-m", "supersam_hf.cli", "search", *flags], stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "search_results.json").is_file() and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # inside the search loop: scoring and OpenTuner's database calls
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("supersam search: interrupted; rerun with --resume to continue from the "
                                            "subnets already scored")
    assert "Traceback" not in err
    assert json.loads((out / "search_results.json").read_text())["evaluations"]  # what was scored is kept


def test_resuming_a_search_with_other_settings_names_the_flags(ws, tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", *_search_flags(ws, out), "--prompt_type", "box"]) == 0
    capsys.readouterr()
    flags = _search_flags(ws, out)
    flags[flags.index("--max_eval_images") + 1] = "1"
    err = one_line_error(capsys, ["search", *flags, "--prompt_type", "point", "--resume"])
    assert "--prompt_type ('box' vs now 'point')" in err and "--max_eval_images (2 vs now 1)" in err

"""The `supersam` command line as a user meets it: a Hub id (from a local HF cache, offline) through every stage
with the one argument vocabulary, `--help` with the shared flags, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import SamModel

from helpers import tiny_processor, tiny_sam
from supersam_hf.commands.cli import STAGES, main
from supersam_hf.data import make_synthetic_shapes

HUB_ID = "facebook/sam-vit-base"
SRC = Path(__file__).resolve().parents[1] / "src"
SHARED_FLAGS = ("--model_name_or_path", "--output_dir", "--overwrite_output_dir", "--log_level")
DATA_FLAGS = ("--dataset_name", "--dataset_config_name", "--image_column", "--mask_column", "--mask_kind")


def lay_out_in_hub_cache(hf_home: Path, repo_id: str, model, processor, revision: str = "0123456789abcdef" * 2 + "01234567") -> Path:
    """Save `model` + `processor` where huggingface_hub looks for `repo_id` in the cache under `hf_home`:
    hub/models--org--name/snapshots/<revision>/ with refs/main pointing at it (what a download leaves)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    model.save_pretrained(snapshot)
    processor.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny SAM cached as `facebook/sam-vit-base` (offline) and a small dataset folder."""
    root = tmp_path_factory.mktemp("cli")
    lay_out_in_hub_cache(root / "hf_home", HUB_ID, tiny_sam(num_layers=4, image_size=64), tiny_processor(64))
    make_synthetic_shapes(6, image_size=64, seed=3).save_to_disk(str(root / "data"))
    return root


def supersam(workspace: Path, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`supersam ...` in a fresh process whose HF cache is the workspace's and whose Hub is offline."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HOME": str(workspace / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        **(env or {}),
    }
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ENDPOINT", "SUPERSAM_DEBUG"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", "supersam_hf.cli", *argv], cwd=workspace, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_every_stage_with_the_hub_id_and_one_vocabulary(workspace):
    data = str(workspace / "data")
    common = ["--dataset_name", data, "--log_level", "warning"]

    # convert: the Hub id, resolved from the cache (no network), processor from the same snapshot
    done = supersam(workspace, "convert", "--model_name_or_path", HUB_ID, *common, "--output_dir", "converted",
                    "--num_calibration_images", "4", "--calibration_batch_size", "2")
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr  # transformers' per-load bars stay out of the CLI output
    assert json.loads((workspace / "converted" / "config.json").read_text())["model_type"] == "supersam"

    # train: straight from the Hub id (converted on load), two steps
    done = supersam(workspace, "train", "--model_name_or_path", HUB_ID, *common, "--output_dir", "trained",
                    "--max_steps", "2", "--per_device_train_batch_size", "2", "--num_random_subnets", "0",
                    "--max_instances_per_image", "2", "--save_steps", "0", "--eval_steps", "0")
    assert done.returncode == 0, done.stderr
    trained = json.loads((workspace / "trained" / "config.json").read_text())
    assert trained["model_type"] == "supersam" and trained["base_model"] == HUB_ID

    # search the trained supernet (tiny budget)
    done = supersam(workspace, "search", "--model_name_or_path", "trained", *common, "--output_dir", "search",
                    "--budget", "3", "--strategy", "random", "--max_eval_images", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert (workspace / "search" / "best_subnet.json").is_file()
    assert json.loads((workspace / "search" / "search_results.json").read_text())["settings"]["prompt"] == "box"

    # evaluate the Hub id itself; eval_results.json lands in --output_dir
    done = supersam(workspace, "evaluate", "--model_name_or_path", HUB_ID, *common, "--output_dir", "eval",
                    "--max_eval_images", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    result = json.loads((workspace / "eval" / "eval_results.json").read_text())
    assert result["num_images"] == 2 and result["prompt"] == "box" and result["subnet"] is None

    # export the search's best subnet: a plain SAM folder
    done = supersam(workspace, "export", "--model_name_or_path", "trained", "--subnet", "best", "--search_dir", "search",
                    "--output_dir", "exported", "--log_level", "warning")
    assert done.returncode == 0, done.stderr
    assert isinstance(SamModel.from_pretrained(workspace / "exported"), SamModel)

    # a supernet folder without processor files: the processor comes from the base model it records (the Hub id)
    bare = workspace / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((workspace / "trained" / name).read_bytes())
    done = supersam(workspace, "evaluate", "--model_name_or_path", "bare", *common, "--output_dir", "eval_bare",
                    "--max_eval_images", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr


def test_demo_with_the_hub_id_from_the_cache(workspace):
    done = supersam(workspace, "demo", "--model_name_or_path", HUB_ID, "--dataset_name", str(workspace / "data"),
                    "--output_dir", "demo", "--time_budget_minutes", "0.0001", "--size_reductions", "0.3",
                    "--search_budget", "2")
    assert done.returncode == 0, done.stderr
    assert f"base {HUB_ID}" in done.stdout  # the plan names the Hub id it resolved, not a stand-in
    state = json.loads((workspace / "demo" / "demo_state.json").read_text())
    assert "base" not in state and state["zero_shot"]["by_prompt"]["box"]["num_images"] >= 1
    exported = workspace / state["search_30"]["folder"]  # relative to the run's working directory
    assert isinstance(SamModel.from_pretrained(exported), SamModel)
    assert HUB_ID in (exported / "README.md").read_text()  # the card names the base it came from


def test_hub_id_missing_from_the_cache_offline_is_one_line(workspace):
    done = supersam(workspace, "evaluate", "--model_name_or_path", "facebook/sam-vit-huge", "--dataset_name",
                    str(workspace / "data"), "--output_dir", "nowhere")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supersam evaluate: error: 'facebook/sam-vit-huge'")
    assert "HF_HUB_OFFLINE" in lines[0] and "Traceback" not in done.stderr
    assert not (workspace / "nowhere").exists()


@pytest.mark.parametrize("stage", list(STAGES))
def test_help_lists_the_shared_flags(stage, capsys):
    assert main([stage, "--help"]) == 0
    text = capsys.readouterr().out
    expected = SHARED_FLAGS + (DATA_FLAGS if stage not in ("export", "demo") else ()) + (
        ("--prompt_type",) if stage in ("train", "search", "evaluate", "demo") else ())
    if stage == "demo":
        expected = ("--model_name_or_path", "--dataset_name", "--output_dir", "--overwrite_output_dir", "--prompt_type")
    missing = [flag for flag in expected if flag not in text]
    assert not missing, f"supersam {stage} --help lacks {missing}"


@pytest.mark.parametrize("argv, flag", [
    (["train", "--model", "x", "--dataset_name", "d", "--output_dir", "o"], "--model"),  # no "ambiguous option"
    (["search", "--supernet", "x"], "--supernet"),  # a flag of the old vocabulary, before the required ones
    (["evaluate", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o", "--budget", "3"], "--budget"),
])
def test_foreign_flag_is_one_line_naming_it_and_the_stage_flags(argv, flag, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"supersam {argv[0]}: error: unrecognized argument {flag};")
    assert "this stage's flags:" in err and "--model_name_or_path" in err and "Traceback" not in err


def test_missing_required_flag_and_bad_value_are_one_line(capsys):
    assert main(["evaluate", "--model_name_or_path", "m"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dataset_name" in err and "--output_dir" in err
    assert main(["train", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o", "--max_steps", "ten"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max_steps" in err


def test_traceback_only_in_debug_mode(tmp_path, capsys, monkeypatch):
    argv = ["evaluate", "--model_name_or_path", str(tmp_path / "missing"), "--dataset_name", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().startswith(
        f"supersam evaluate: error: No model folder at '{tmp_path / 'missing'}'")
    monkeypatch.setenv("SUPERSAM_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("SUPERSAM_DEBUG")
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_unknown_stage_and_usage(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown stage 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 0
    usage = capsys.readouterr().out
    assert all(stage in usage for stage in STAGES)

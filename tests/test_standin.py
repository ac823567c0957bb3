"""The stand-in SAM shipped with the package: its weights load, are finite and score what its card says; it is placed
in the HF cache under its own name only (a user's other entries, and a differing entry of its name, are never
touched) and loads from there by repo id offline; the demo's thread choice follows the free cores."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file
from transformers import SamModel

from supersam_hf.commands.demo_plan import SMALL_MODEL_MAX_THREADS, pick_num_threads
from supersam_hf.configuration_supersam import build_sam_config
from supersam_hf.errors import ModelFileError, SupersamError
from supersam_hf.standin import (
    CARD_FILE,
    CHECKPOINT_FILES,
    STANDIN_DIR,
    STANDIN_REPO_ID,
    load_standin,
    place_in_hf_cache,
    score_standin,
    shipped_scores,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
ENTRY = "models--" + STANDIN_REPO_ID.replace("/", "--")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An HF hub cache under tmp_path (huggingface_hub's import-time copy patched, as the user's HF_HUB_CACHE)."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_shipped_weights_load_are_finite_and_score_what_the_card_says(hf_cache):
    for name in CHECKPOINT_FILES + (CARD_FILE,):
        assert (STANDIN_DIR / name).is_file(), name
    size_mb = (STANDIN_DIR / "model.safetensors").stat().st_size / 1e6
    assert size_mb < 8  # "a few MB": it ships inside the package
    assert all(torch.isfinite(t).all() for t in load_file(STANDIN_DIR / "model.safetensors").values())
    model, processor, _ = load_standin()
    card = shipped_scores()
    scores = score_standin(model, processor)
    assert scores["num_objects"] == card["num_objects"] and scores["num_images"] == card["num_images"]
    for key in ("box_miou", "point_miou", "box_single_output_miou", "box_reference_miou"):
        assert scores[key] == pytest.approx(card[key], abs=0.01), key
    text = (STANDIN_DIR / CARD_FILE).read_text()
    assert f"{card['box_miou']:.3f}" in text and f"{card['point_miou']:.3f}" in text and "not SAM" in text
    assert f"{size_mb:.1f} MB" in text
    # issue 21's goals on held-out domain A (benchmarks/results/standin_base.md)
    assert card["box_miou"] >= card["box_reference_miou"] + 0.25 and card["point_miou"] >= 0.65


def test_placed_in_the_hf_cache_and_loaded_by_repo_id_offline(hf_cache):
    model, processor, snapshot = load_standin()
    assert snapshot.parent.parent == hf_cache / ENTRY and (hf_cache / ENTRY / "refs" / "main").read_text() == snapshot.name
    assert SamModel.from_pretrained(STANDIN_REPO_ID, local_files_only=True).config.to_dict() == model.config.to_dict()
    for name in CHECKPOINT_FILES + (CARD_FILE,):
        assert (snapshot / name).read_bytes() == (STANDIN_DIR / name).read_bytes()
    reference = SamModel.from_pretrained(STANDIN_DIR)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert processor.image_processor.size["longest_edge"] == reference.config.vision_config.image_size
    assert not constants.HF_HUB_OFFLINE  # offline only while loading


def test_cache_placement_never_touches_another_entry(hf_cache):
    other = hf_cache / "models--someone--their-model"
    (other / "snapshots" / "abc").mkdir(parents=True)
    (other / "snapshots" / "abc" / "config.json").write_text("{}")
    (other / "refs").mkdir()
    (other / "refs" / "main").write_text("abc")
    loose = hf_cache / "notes.txt"
    loose.write_text("mine")
    before = {p: p.read_bytes() for p in hf_cache.rglob("*") if p.is_file()}
    snapshot = place_in_hf_cache()
    again = place_in_hf_cache()  # identical: reused, nothing rewritten
    assert again == snapshot
    after = {p: p.read_bytes() for p in hf_cache.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before  # every file of the user's is untouched
    assert all(str(p).startswith(str(hf_cache / ENTRY)) for p in set(after) - set(before))
    assert sorted(p.name for p in (hf_cache / ENTRY / "snapshots").iterdir()) == [snapshot.name]  # no temporary left


def test_an_existing_entry_of_its_name_is_never_overwritten(hf_cache):
    # an earlier stand-in's entry: its snapshot and refs/main stay, the shipped one is added and loads by revision
    entry = hf_cache / ENTRY
    (entry / "snapshots" / ("1" * 40)).mkdir(parents=True)
    (entry / "snapshots" / ("1" * 40) / "config.json").write_text("{}")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("1" * 40)
    model, _, snapshot = load_standin()
    assert (entry / "refs" / "main").read_text() == "1" * 40 and (entry / "snapshots" / ("1" * 40) / "config.json").is_file()
    assert snapshot.name != "1" * 40 and model.config.vision_config.image_size == 128
    # a snapshot of the shipped revision whose files differ (edited by the user): refused, left as it is
    snapshot = place_in_hf_cache()
    (snapshot / "config.json").write_text(json.dumps({"edited": "by the user"}))
    with pytest.raises(ModelFileError, match="differ from the stand-in"):
        place_in_hf_cache()
    assert json.loads((snapshot / "config.json").read_text()) == {"edited": "by the user"}


def test_thread_choice_follows_free_cores_and_the_model(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert pick_num_threads(small_model=True, cores=2, load=0.0).count == 2
    assert pick_num_threads(small_model=True, cores=2, load=1.2).count == 1  # one core busy: one thread
    assert pick_num_threads(small_model=True, cores=2, load=7.0).count == 1  # never below 1
    assert pick_num_threads(small_model=True, cores=16, load=0.0).count == SMALL_MODEL_MAX_THREADS
    assert pick_num_threads(small_model=False, cores=16, load=3.0).count == 13
    assert "load 1.2" in pick_num_threads(small_model=True, cores=2, load=1.2).reason
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pick_num_threads(small_model=True, cores=2, load=0.0).count == 3  # the user's explicit choice is kept


def test_the_training_script_runs_in_smoke_mode(tmp_path):
    """benchmarks/train_standin.py --smoke: a few steps of a tiny stand-in, scored and given its card (in a temporary
    folder: neither the package's stand-in nor the results log is touched)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    shipped = (STANDIN_DIR / "model.safetensors").stat().st_mtime_ns
    log = repo / "benchmarks" / "results" / "standin_base.jsonl"
    logged = log.read_text() if log.exists() else None
    env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "train_standin.py"), "--smoke"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["train"]["max_steps"] == 3 and 0.0 <= record["box_miou"] <= 1.0 and record["num_images"] == 32
    assert 0.2 < record["box_reference_miou"] < 0.6
    assert (STANDIN_DIR / "model.safetensors").stat().st_mtime_ns == shipped
    assert (log.read_text() if log.exists() else None) == logged


def test_position_scale_spreads_the_fourier_features_and_rejects_zero():
    """`build_sam_config(position_scale=)` (train_standin.py --position_scale): the same random draw, scaled."""
    shape = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, output_channels=16)
    torch.manual_seed(0)
    sam_like = SamModel(build_sam_config(**shape)).shared_image_embedding.positional_embedding
    torch.manual_seed(0)
    config = build_sam_config(**shape, position_scale=4.0)
    wider = SamModel(config).shared_image_embedding.positional_embedding
    assert config.vision_config.scale == 4.0
    assert torch.equal(wider, 4.0 * sam_like)  # a power of two: exact in float32
    with pytest.raises(SupersamError, match="position_scale must be > 0"):
        build_sam_config(**shape, position_scale=0.0)


def test_smaller_input_resolutions_bring_the_stand_in_under_five_percent_of_its_macs():
    """What --image_size_choices' help promises: the stand-in's default space stops at 7 % of its MACs (its 128-channel
    decoder is not elastic), 32 px inputs bring the smallest subnet under 5 %, and no subnet exists below it."""
    from transformers import SamConfig

    from supersam_hf import SuperSamModel
    from supersam_hf.configuration_supersam import SuperSamConfig
    from supersam_hf.search.budgets import cheapest_subnet
    from supersam_hf.search_space import SearchSpace
    from supersam_hf.standin import STANDIN_DIR

    base = SamConfig.from_pretrained(STANDIN_DIR)
    fractions = {}
    for choices in (None, [32, 48, 64, 96, 128]):
        model_config = SuperSamConfig.from_sam_config(base, **({} if choices is None else {"image_size_choices": choices}))
        supernet = SuperSamModel(model_config)
        subnet, fewest = cheapest_subnet(SearchSpace.from_config(model_config), supernet.count_macs)
        fractions[choices is None] = fewest / supernet.count_macs()
        assert subnet.image_size == min(model_config.image_size_choices)
    assert 0.06 < fractions[True] < 0.08 and fractions[False] < 0.05


def test_an_earlier_stand_in_placed_by_supersam_gives_refs_main_to_the_shipped_one(hf_cache):
    """After an upgrade, the repo id without a revision loads the shipped stand-in, as a Hub download of a newer main
    would give: refs/main moves on from a snapshot an earlier supersam_hf placed (its name the content hash of its
    files); that snapshot stays."""
    import shutil

    from supersam_hf.standin import _revision, hub_offline

    entry = hf_cache / ENTRY
    staging = hf_cache.parent / "staging"
    staging.mkdir()
    for name in CHECKPOINT_FILES + (CARD_FILE,):
        shutil.copyfile(STANDIN_DIR / name, staging / name)
    (staging / CARD_FILE).write_text("an earlier stand-in\n")
    earlier = _revision(staging)
    (entry / "snapshots").mkdir(parents=True)
    staging.rename(entry / "snapshots" / earlier)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(earlier)
    _, _, snapshot = load_standin()
    assert (entry / "refs" / "main").read_text() == snapshot.name != earlier
    assert (entry / "snapshots" / earlier / CARD_FILE).read_text() == "an earlier stand-in\n"
    reference = SamModel.from_pretrained(STANDIN_DIR).state_dict()
    with hub_offline():
        loaded = SamModel.from_pretrained(STANDIN_REPO_ID).state_dict()  # refs/main's: the shipped weights
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)

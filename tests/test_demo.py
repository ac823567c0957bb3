"""`supersam demo` end to end at a tiny size: every artifact exists, each export loads with vanilla SamModel and
its reported mIoU is reproduced by `supersam evaluate`; box and point rows and the box reference; a dataset's own
splits; a given model sized to a time budget; resume after a kill; bad input is refused with a clear message."""

import dataclasses
import json

import datasets
import pytest
from helpers import tiny_processor, tiny_sam
from transformers import SamModel, ViTConfig, ViTModel

from supersam_hf.cli import main
from supersam_hf.commands import demo as demo_module
from supersam_hf.commands.demo import DemoArguments, dataset_splits
from supersam_hf.data import make_synthetic_shapes

TINY = ["--train_base", "--image_size", "64", "--hidden_size", "64", "--num_layers", "6", "--decoder_channels", "16",
        "--num_train_images", "8", "--num_eval_images", "4", "--base_steps", "3", "--train_steps", "2",
        "--search_budget", "4", "--batch_size", "2", "--size_reductions", "0.3", "0.5", "0.6"]


# Domain-B sizes only (no flag of a base trained here): the shipped stand-in's or a given model's run, tiny.
QUICK_SHIPPED = ["--num_train_images", "8", "--num_eval_images", "4", "--train_steps", "2", "--search_budget", "4",
                 "--batch_size", "2", "--size_reductions", "0.3"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--output_dir", str(output), *TINY]) == 0
    return output


def test_demo_writes_every_artifact(demo_run):
    for name in ("summary.md", "pareto.png", "demo_state.json", "supernet/config.json", "base/config.json",
                 "supernet_init/prioritization_report.json"):
        assert (demo_run / name).is_file(), name
    state = json.loads((demo_run / "demo_state.json").read_text())
    summary = (demo_run / "summary.md").read_text()
    assert "zero-shot" in summary and "fine-tuned" in summary
    rows = state["summary"]["rows"]
    assert len(rows) == 6 and rows[-1]["model"] == "the box itself as the mask (reference)"
    assert "mIoU on B, box prompt" in summary and "mIoU on B, point prompt" in summary  # every column says its prompt
    reference = state["zero_shot"]["by_prompt"]["box"]["box_reference_miou"]
    assert rows[-1]["miou_box"] == reference and 0.3 < reference < 1.0 and rows[-1]["miou_point"] is None
    assert f"| the box itself as the mask (reference) | — | — | {reference:.3f} |" in summary
    assert "the box itself as the mask" in summary.split("Measured:")[0].split("|")[-1]  # the one-line verdict
    for reduction in (30, 50, 60):
        stage = state[f"search_{reduction}"]
        assert stage["params"] <= state["summary"]["base_params"] * (1 - reduction / 100)
        for prompt in ("box", "point"):
            assert f"{stage['test']['by_prompt'][prompt]['miou']:.3f}" in summary
        card = (demo_run / "exports" / f"supersam-{reduction}pct-smaller" / "README.md").read_text()
        assert "| point (one per object, single mask) |" in card and "| box (one per object, single mask) |" in card
    assert state["convert"]["elastic_layers"] and len(state["convert"]["elastic_layers"]) == 4  # convert's default: all but two
    assert state["plan"]["sizes"]["train_steps"] == 2 and state["plan"]["estimate_seconds"]


def test_stand_in_base_is_scored_against_the_box_reference_on_hard_shapes(demo_run):
    base = json.loads((demo_run / "demo_state.json").read_text())["base"]
    # make_hard_shapes: the box prompt, filled, is far from the answer (the easy shapes' box scores ~0.62).
    assert 0.0 < base["box_reference_domain_A"] <= 0.5
    assert 0.0 <= base["point_miou_domain_A"] <= 1.0 and 0.0 <= base["miou_domain_A"] <= 1.0
    assert "Quick mode" not in (demo_run / "summary.md").read_text()  # only --quick adds that line


def test_quick_demo_starts_from_the_shipped_stand_in_and_says_when_its_models_miss_the_bars(tmp_path, capsys,
                                                                                             monkeypatch):
    from huggingface_hub import constants

    from supersam_hf.standin import STANDIN_DIR, STANDIN_REPO_ID, shipped_scores

    cache = tmp_path / "hub"
    mine = cache / "models--me--my-sam" / "refs" / "main"
    mine.parent.mkdir(parents=True)
    mine.write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # the user's HF cache
    output = tmp_path / "quick"
    assert main(["demo", "--quick", "--output_dir", str(output), *QUICK_SHIPPED, "--size_metric", "macs"]) == 0
    printed = capsys.readouterr().out
    state = json.loads((output / "demo_state.json").read_text())
    base = state["base"]
    # the base is the shipped stand-in, placed in the HF cache under its own name and loaded from there
    assert base["repo_id"] == STANDIN_REPO_ID and base["card"] == shipped_scores()
    assert base["path"].startswith(str(cache / "models--supersam-hf--sam-standin-shapes" / "snapshots"))
    assert mine.read_text() == "0" * 40 and sorted(p.name for p in cache.iterdir()) == [
        "models--me--my-sam", "models--supersam-hf--sam-standin-shapes"]
    assert not (output / "base").exists() and not (output / "base_training").exists()  # nothing trained on A
    assert f"box {base['domain_A']['box']['miou']:.3f}, point {base['point_miou_domain_A']:.3f}" in printed
    assert f"the box itself as the mask: {base['box_reference_domain_A']:.3f}" in printed
    assert STANDIN_REPO_ID in (output / "summary.md").read_text()
    card = (output / "exports" / "supersam-30pct-smaller" / "README.md").read_text()
    assert STANDIN_REPO_ID in card  # the export names its base as a Hub id, not a cache path
    assert "torch thread" in printed  # the plan says how many threads it timed and runs with
    assert state["plan"]["threads"] >= 1 and (STANDIN_DIR / "model.safetensors").is_file()
    assert state["search_30"]["macs"] <= 0.7 * state["summary"]["base_macs"]  # --size_metric macs: MACs, not parameters
    notes = [line for line in (output / "summary.md").read_text().splitlines() if line.startswith("Quick mode")]
    assert len(notes) == 1 and notes[0] in printed
    # 2 steps on B leave the winners below B's box reference: the line names where they stand, with the numbers.
    assert "shows the mechanics" in notes[0] and "below the box reference" in notes[0]
    assert f"{base['miou_domain_A']:.3f}" in notes[0] and f"{base['box_reference_domain_A']:.3f}" in notes[0]
    assert f"point {base['point_miou_domain_A']:.3f}" in notes[0]
    # size flags of a base trained here are refused with the shipped stand-in, before anything is written
    assert main(["demo", "--output_dir", str(tmp_path / "bad"), "--hidden_size", "64"]) == 2
    assert "--hidden_size size a base trained here" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_quick_demo_refuses_bad_flags(tmp_path, capsys):
    assert main(["demo", "--quick", "--output_dir", str(tmp_path / "bad"), *TINY, "--size_metric", "flops"]) == 2
    assert "--size_metric must be params or macs" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["demo", "--quick", "--output_dir", str(tmp_path / "bad"), *TINY, "--learning_rate", "0"]) == 2
    assert "--learning_rate must be > 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_exports_load_with_vanilla_sam_and_evaluate_reproduces_the_miou(demo_run, tmp_path):
    state = json.loads((demo_run / "demo_state.json").read_text())
    for reduction in (30, 50, 60):
        stage = state[f"search_{reduction}"]
        model = SamModel.from_pretrained(stage["folder"])
        assert sum(p.numel() for p in model.parameters()) == stage["params"]
        assert (demo_run / "exports" / f"supersam-{reduction}pct-smaller" / "README.md").is_file()
        result_dir = tmp_path / f"eval{reduction}"
        code = main(["evaluate", "--model_name_or_path", stage["folder"], "--dataset_name", str(demo_run / "data" / "domain_B"),
                     "--eval_split_name", "test", "--prompt_type", "box", "--output_dir", str(result_dir)])
        assert code == 0
        result_file = result_dir / "eval_results.json"
        evaluated = json.loads(result_file.read_text())
        assert evaluated["miou"] == pytest.approx(stage["test"]["by_prompt"]["box"]["miou"], abs=1e-9)
        assert evaluated["box_reference_miou"] == pytest.approx(stage["test"]["by_prompt"]["box"]["box_reference_miou"])


def test_demo_refuses_an_earlier_run_and_resumes_it(demo_run, capsys):
    assert main(["demo", "--output_dir", str(demo_run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    before = (demo_run / "supernet" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--output_dir", str(demo_run), "--resume", *TINY]) == 0  # every stage done: nothing re-run
    assert (demo_run / "supernet" / "model.safetensors").stat().st_mtime_ns == before


def test_demo_refuses_a_foreign_model(tmp_path, capsys):
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "vit")
    assert main(["demo", "--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "vit"),
                 *QUICK_SHIPPED]) == 2
    assert "model of type 'vit'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_refuses_a_dataset_without_usable_masks(tmp_path, capsys):
    data = make_synthetic_shapes(4, 64, seed=0).map(lambda row: {"label": [[0] * 64] * 64})
    data.save_to_disk(tmp_path / "empty")
    assert main(["demo", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "empty"), *TINY]) == 2
    assert "min_mask_area" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _splits_dataset(folder, names=("train", "validation", "test"), sizes=(6, 3, 3), unlabelled=()):
    parts = {}
    for k, (name, size) in enumerate(zip(names, sizes)):
        part = make_synthetic_shapes(size, 64, seed=10 + k, min_shapes=2, max_shapes=3)
        if name in unlabelled:
            part = part.map(lambda row: {"label": [[0] * 64] * 64})
        parts[name] = part
    datasets.DatasetDict(parts).save_to_disk(folder)
    return str(folder)


def test_dataset_splits_use_the_datasets_own_and_carve_only_what_is_missing(tmp_path):
    processor = tiny_processor(64)
    splits, notes = dataset_splits(_splits_dataset(tmp_path / "all"), processor, n_eval=2, seed=0)
    assert [len(splits[r]) for r in ("train", "search", "test")] == [6, 2, 2]
    assert "its 'validation' split" in notes[1] and "its 'test' split" in notes[2]
    first_test = splits["test"][0]["label"]
    assert any((first_test == row["label"]) for row in datasets.load_from_disk(str(tmp_path / "all"))["test"])

    splits, notes = dataset_splits(_splits_dataset(tmp_path / "no_val", ("train", "test"), (6, 3)), processor, 2, 0)
    assert [len(splits[r]) for r in ("train", "search", "test")] == [5, 1, 2]  # search carved: 1 (6 // 5) image
    assert "carved from train" in notes[1] and "no 'validation'" in notes[1] and "its 'test' split" in notes[2]

    splits, notes = dataset_splits(_splits_dataset(tmp_path / "unlabelled", unlabelled=("test",)), processor, 2, 0)
    assert "its 'validation' split" in notes[1] and "carved from train" in notes[2] and "no usable masks" in notes[2]


def test_demo_with_a_given_model_and_dataset_sized_to_a_time_budget(tmp_path, capsys):
    tiny_sam(num_layers=6, image_size=64).save_pretrained(tmp_path / "sam")
    tiny_processor(64).save_pretrained(tmp_path / "sam")
    data = _splits_dataset(tmp_path / "data")
    output = tmp_path / "run"
    argv = ["demo", "--output_dir", str(output), "--model_name_or_path", str(tmp_path / "sam"), "--dataset_name", data,
            "--time_budget_minutes", "0.0001", "--size_reductions", "0.3", "--search_budget", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    state = json.loads((output / "demo_state.json").read_text())
    sizes = state["plan"]["sizes"]
    # ~6 ms of budget: everything at its minimum, the explicit search budget kept, batch 1 x 2 for a given model
    assert (sizes["train_steps"], sizes["num_calibration_images"], sizes["num_eval_images"]) == (1, 1, 1)
    assert (sizes["search_budget"], sizes["batch_size"], sizes["gradient_accumulation_steps"]) == (3, 1, 2)
    assert "plan:" in printed and "estimated ~" in printed and "training steps of 1 image x 2 accumulated" in printed
    assert "its 'validation' split" in printed and "its 'test' split" in printed
    assert "base" not in state  # no stand-in: the given model is the base
    assert state["search_30"]["test"]["by_prompt"]["point"]["num_images"] == 1
    summary = (output / "summary.md").read_text()
    assert "the box itself as the mask (reference)" in summary and "its 'validation' split" in summary


def test_resume_continues_a_run_killed_in_the_search(tmp_path, monkeypatch):
    """A kill inside the second search: --resume reuses the first search's result, continues the second one from
    its scored subnets (the demo passes resume to the search) and finishes; nothing is trained again."""
    output = tmp_path / "run"
    tiny = [*TINY[:TINY.index("--size_reductions")], "--size_reductions", "0.3", "0.5"]
    calls = []
    real_search = demo_module.search_subnets

    def killed_in_second_search(supernet, data, processor, search_args, **kwargs):
        calls.append(search_args.resume)
        if len(calls) == 2:  # part of the budget scored, then the kill
            real_search(supernet, data, processor, dataclasses.replace(search_args, budget=2), **kwargs)
            raise KeyboardInterrupt
        return real_search(supernet, data, processor, search_args, **kwargs)

    monkeypatch.setattr(demo_module, "search_subnets", killed_in_second_search)
    assert main(["demo", "--output_dir", str(output), *tiny]) == 130  # the CLI's exit code for an interrupt
    state = json.loads((output / "demo_state.json").read_text())
    assert "search_30" in state and "search_50" not in state
    trained = (output / "supernet" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--output_dir", str(output), "--resume", *tiny]) == 0
    assert calls == [False, False, True]  # the interrupted search was resumed, the finished one not re-run
    scored = json.loads((output / "search" / "search_50" / "search_results.json").read_text())
    assert sum(1 for e in scored["evaluations"] if e.get("miou") is not None) >= 2
    assert (output / "supernet" / "model.safetensors").stat().st_mtime_ns == trained
    assert len(json.loads((output / "demo_state.json").read_text())["summary"]["rows"]) == 5


def test_size_to_budget_grows_with_the_budget_and_keeps_presets_and_explicit_sizes():
    from supersam_hf.commands.demo_plan import MODEL_BATCH, PRESETS, estimate_seconds, size_to_budget

    preset = {**PRESETS["default"], **MODEL_BATCH}
    forward = 15.0  # seconds per ViT-B image on a laptop CPU
    small = size_to_budget(preset, forward, 30 * 60, set(), False, 3)
    large = size_to_budget(preset, forward, 600 * 60, set(), False, 3)
    huge = size_to_budget(preset, 0.01, 30 * 60, set(), False, 3)  # a GPU: the presets themselves
    for key in ("train_steps", "num_calibration_images", "num_eval_images"):
        assert 1 <= small[key] <= large[key] <= huge[key] == preset[key], key
    assert small["train_steps"] < preset["train_steps"] and small["search_budget"] >= 4
    kept = size_to_budget(preset, forward, 30 * 60, {"train_steps"}, False, 3)
    assert kept["train_steps"] == preset["train_steps"]
    # the estimate of the sized run stays near the budget it was sized to (rough, by construction)
    total = sum(estimate_seconds(large, forward, "given", False, 3).values())
    assert 0.3 * 600 * 60 <= total <= 1.2 * 600 * 60


def test_domain_b_learning_rate_depends_on_the_base_unless_given():
    from supersam_hf.commands.demo_plan import TARGET_LEARNING_RATE, target_learning_rate

    assert target_learning_rate(DemoArguments()) == TARGET_LEARNING_RATE["stand-in"] == 1e-3
    assert target_learning_rate(DemoArguments(model_name_or_path="facebook/sam-vit-base")) == 2e-4
    assert target_learning_rate(DemoArguments(model_name_or_path="x", learning_rate=5e-5)) == 5e-5


def test_image_size_choices_reach_the_converted_supernet_and_bad_ones_stop_before_training(tmp_path, capsys):
    """--image_size_choices: a resolution that is not whole patches is refused in one line before any training; good
    ones become the converted supernet's input resolutions (its smallest subnet takes the smallest), and a budget
    only they reach passes the reachability check that follows convert."""
    output = tmp_path / "run"
    base = TINY[:TINY.index("--size_reductions")]
    assert main(["demo", "--output_dir", str(output), *base, "--image_size_choices", "20", "64"]) == 2
    err = capsys.readouterr().err
    assert "resolution 20 must be a multiple of the patch size 8 in 1..64" in err and len(err.strip().splitlines()) == 1
    state = json.loads((output / "demo_state.json").read_text())
    assert "finetuned" not in state and "data" not in state and not (output / "data").exists()
    # 0.97: beyond the default space's smallest subnet (32 px) but within 16 px's; 0.999 still out of reach.
    assert main(["demo", "--output_dir", str(output), "--overwrite_output_dir", *base,
                 "--image_size_choices", "16", "32", "64", "--size_reductions", "0.97", "0.999"]) == 2
    err = capsys.readouterr().err
    assert "--size_reductions 0.999: this supernet's smallest subnet keeps" in err and "0.97" not in err
    assert json.loads((output / "supernet_init" / "config.json").read_text())["image_size_choices"] == [16, 32, 64]


def test_an_unreachable_budget_is_refused_before_the_supernet_trains(tmp_path, capsys):
    """--size_reductions beyond the supernet's smallest subnet: one line naming it and what is reachable, right after
    convert (before the sandwich training and every search); --resume with a reachable list then finishes."""
    output = tmp_path / "run"
    tiny = [*TINY[:TINY.index("--size_reductions")], "--size_reductions", "0.3", "0.999"]
    assert main(["demo", "--output_dir", str(output), *tiny]) == 2
    err = capsys.readouterr().err
    assert "--size_reductions 0.999: this supernet's smallest subnet keeps" in err and "fewer are reachable" in err
    state = json.loads((output / "demo_state.json").read_text())
    assert "convert" in state and "train" not in state and "search_30" not in state
    reachable = [*TINY[:TINY.index("--size_reductions")], "--size_reductions", "0.3"]
    # Other input resolutions than the converted supernet's: refused on resume (the default space here: 32 48 64).
    assert main(["demo", "--output_dir", str(output), "--resume", *reachable, "--image_size_choices", "16", "64"]) == 2
    err = capsys.readouterr().err
    assert "--image_size_choices 16 64: this run's supernet was converted with input resolutions 32 48 64" in err
    assert main(["demo", "--output_dir", str(output), "--resume", *reachable]) == 0
    assert "search_30" in json.loads((output / "demo_state.json").read_text())

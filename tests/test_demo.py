"""`supersam demo` end to end at a tiny size: every artifact exists, each export loads with vanilla SamModel and
its reported mIoU is reproduced by `supersam evaluate`; bad input is refused with a clear message."""

import json

import pytest
from transformers import SamModel, ViTConfig, ViTModel

from supersam_hf.cli import main
from supersam_hf.data import make_synthetic_shapes

TINY = ["--image_size", "64", "--hidden_size", "64", "--num_layers", "6", "--decoder_channels", "16",
        "--num_train_images", "8", "--num_eval_images", "4", "--base_steps", "3", "--train_steps", "2",
        "--search_budget", "4", "--batch_size", "2", "--size_reductions", "0.3", "0.5", "0.6"]


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
    assert len(state["summary"]["rows"]) == 5
    for reduction in (30, 50, 60):
        stage = state[f"search_{reduction}"]
        assert stage["params"] <= state["summary"]["base_params"] * (1 - reduction / 100)
        assert f"{stage['test']['miou']:.3f}" in summary


def test_stand_in_base_is_scored_against_the_box_reference_on_hard_shapes(demo_run):
    base = json.loads((demo_run / "demo_state.json").read_text())["base"]
    # make_hard_shapes: the box prompt, filled, is far from the answer (the easy shapes' box scores ~0.62).
    assert 0.0 < base["box_reference_domain_A"] <= 0.5
    assert 0.0 <= base["point_miou_domain_A"] <= 1.0 and 0.0 <= base["miou_domain_A"] <= 1.0
    assert "Quick mode" not in (demo_run / "summary.md").read_text()  # only --quick adds that line


def test_quick_demo_says_in_one_line_when_its_models_miss_the_bars(tmp_path, capsys):
    output = tmp_path / "quick"
    assert main(["demo", "--quick", "--output_dir", str(output), *TINY[:-4], "--size_reductions", "0.3",
                 "--size_metric", "macs"]) == 0
    state = json.loads((output / "demo_state.json").read_text())
    base = state["base"]
    assert state["search_30"]["macs"] <= 0.7 * state["summary"]["base_macs"]  # --size_metric macs: MACs, not parameters
    notes = [line for line in (output / "summary.md").read_text().splitlines() if line.startswith("Quick mode")]
    assert len(notes) == 1 and notes[0] in capsys.readouterr().out
    # A 3-step base is nowhere near the bars: the line names where it stands, with the measured numbers.
    assert "shows the mechanics" in notes[0] and ("below the box reference" in notes[0] or "near" in notes[0])
    assert f"{base['miou_domain_A']:.3f}" in notes[0] and f"{base['box_reference_domain_A']:.3f}" in notes[0]
    assert f"point {base['point_miou_domain_A']:.3f}" in notes[0]
    assert main(["demo", "--quick", "--output_dir", str(tmp_path / "bad"), *TINY, "--size_metric", "flops"]) == 2
    assert "--size_metric must be params or macs" in capsys.readouterr().err and not (tmp_path / "bad").exists()


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
        assert json.loads(result_file.read_text())["miou"] == pytest.approx(stage["test"]["miou"], abs=1e-9)


def test_demo_refuses_an_earlier_run_and_resumes_it(demo_run, capsys):
    assert main(["demo", "--output_dir", str(demo_run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    before = (demo_run / "supernet" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--output_dir", str(demo_run), "--resume", *TINY]) == 0  # every stage done: nothing re-run
    assert (demo_run / "supernet" / "model.safetensors").stat().st_mtime_ns == before


def test_demo_refuses_a_foreign_model(tmp_path, capsys):
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "vit")
    assert main(["demo", "--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "vit"), *TINY]) == 2
    assert "model of type 'vit'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_refuses_a_dataset_without_usable_masks(tmp_path, capsys):
    data = make_synthetic_shapes(4, 64, seed=0).map(lambda row: {"label": [[0] * 64] * 64})
    data.save_to_disk(tmp_path / "empty")
    assert main(["demo", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "empty"), *TINY]) == 2
    assert "min_mask_area" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

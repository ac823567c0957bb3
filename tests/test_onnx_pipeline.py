"""ONNX wired into the stages: `export --onnx [--quantize int8]`, `evaluate --onnx`, ORT latency budgets in the
search, and the message without the [onnx] extra."""

from __future__ import annotations

import json
import sys

import pytest
from huggingface_hub import ModelCard

from helpers import tiny_processor, tiny_supernet
from supersam_hf import SubnetConfig
from supersam_hf.cli import main as cli_main
from supersam_hf.commands.export import format_onnx
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.evaluation import EvaluationData
from supersam_hf.export import export_subnet
from supersam_hf.onnx_export import ENCODER_FILE, ENCODER_INT8_FILE, OnnxSamModel, OrtLatencyCache
from supersam_hf.onnx_pipeline import PARITY_TOLERANCE, onnx_card_section
from supersam_hf.search import driver, search_subnets

pytest.importorskip("onnxruntime")  # installed with the [onnx] extra, which the test command installs

IMAGE = 64
# Depth and width: layer 2 dropped, narrower MLPs, embedding width 16 of 32 (2 of 4 heads).
SUBNET = SubnetConfig(kept_layers=(0, 1, 3), mlp_dims=(64, 96, 64), hidden_size=16)


@pytest.fixture(scope="module")
def supernet():
    return tiny_supernet(num_layers=4, image_size=IMAGE)


@pytest.fixture(scope="module")
def folders(supernet, tmp_path_factory):
    """A saved supernet + processor and a saved synthetic dataset, as the CLI reads them."""
    root = tmp_path_factory.mktemp("pipeline")
    supernet.save_pretrained(root / "supernet")
    tiny_processor(IMAGE).save_pretrained(root / "supernet")
    make_synthetic_shapes(3, image_size=IMAGE, seed=3).save_to_disk(str(root / "data"))
    return root


@pytest.fixture(scope="module")
def cli_export(folders):
    """`supersam export --onnx --quantize int8 --dataset_name ...` of SUBNET."""
    out = folders / "export"
    argv = ["export", "--model_name_or_path", str(folders / "supernet"), "--subnet", json.dumps(SUBNET.to_dict()),
            "--output_dir", str(out), "--onnx", "--quantize", "int8", "--dataset_name", str(folders / "data"),
            "--prompt_type", "point"]
    assert cli_main(argv) == 0
    return out


def test_export_writes_onnx_beside_the_weights_and_parity_passes(supernet, tmp_path):
    supernet.search_space.validate(SUBNET)
    out = export_subnet(supernet, SUBNET, tmp_path / "export", processor=tiny_processor(IMAGE), onnx=True)
    onnx_dir = out / "onnx"
    for name in (ENCODER_FILE, "prompt_encoder_mask_decoder.onnx", "prompt_encoder_mask_decoder_boxes.onnx"):
        assert (onnx_dir / name).is_file()
    assert not (onnx_dir / ENCODER_INT8_FILE).exists()  # only with quantize="int8"
    report = json.loads((onnx_dir / "parity.json").read_text())
    assert report["parity_passed"] and set(report["parity"]["fp32"]) == {"points", "boxes"}
    for parity in report["parity"]["fp32"].values():
        assert parity["embeddings_max_rel"] <= PARITY_TOLERANCE and parity["pred_masks_max_rel"] <= PARITY_TOLERANCE
        assert parity["masks_identical"] and parity["mask_pixels_differing"] == 0
    # the files hold the subnet: 3 layers at embedding width 16
    vision = OnnxSamModel(out).config.vision_config
    assert (vision.num_hidden_layers, vision.hidden_size, vision.num_attention_heads) == (3, 16, 2)
    summary = json.loads((out / "subnet.json").read_text())["onnx"]
    assert summary["parity_passed"] and f"onnx/{ENCODER_FILE}" in summary["files"]
    card = ModelCard.load(out / "README.md").text
    assert "## ONNX Runtime" in card and "import onnxruntime as ort" in card and "onnx/parity.json" in card
    assert "Accuracy through ONNX Runtime" not in card  # no data given: nothing measured, nothing claimed
    # overwriting with a plain export leaves no ONNX files of the old weights behind
    export_subnet(supernet, SUBNET, out, processor=tiny_processor(IMAGE), overwrite=True)
    assert not list(onnx_dir.glob("*.onnx")) and not (onnx_dir / "parity.json").exists()
    assert "## ONNX Runtime" not in ModelCard.load(out / "README.md").text


def test_quantize_needs_onnx_and_data_before_anything_is_written(supernet, tmp_path):
    processor = tiny_processor(IMAGE)
    with pytest.raises(ValueError, match="onnx=True"):
        export_subnet(supernet, SUBNET, tmp_path / "a", processor=processor, quantize="int8")
    with pytest.raises(ValueError, match="eval_data"):
        export_subnet(supernet, SUBNET, tmp_path / "b", processor=processor, onnx=True, quantize="int8")
    with pytest.raises(ValueError, match="int8"):
        export_subnet(supernet, SUBNET, tmp_path / "c", processor=processor, onnx=True, quantize="int4")
    assert not any(tmp_path.iterdir())


def test_cli_quantize_int8_records_both_mious(cli_export, capsys):
    assert (cli_export / "onnx" / ENCODER_INT8_FILE).is_file()
    report = json.loads((cli_export / "onnx" / "parity.json").read_text())
    evaluation = report["evaluation"]
    fp32, int8 = evaluation["onnxruntime_fp32"]["miou"], evaluation["onnxruntime_int8"]["miou"]
    assert evaluation["pytorch"]["miou"] == pytest.approx(fp32, abs=1e-3)  # same files, same metric
    assert evaluation["int8_miou_drop"] == pytest.approx(fp32 - int8)
    assert evaluation["onnxruntime_int8"]["prompt"] == "point"  # --prompt_type reached the evaluation
    assert set(report["parity"]) == {"fp32", "int8"}
    card = ModelCard.load(cli_export / "README.md").text
    assert f"| ONNX Runtime, `onnx/{ENCODER_FILE}` | {fp32:.4f} |" in card
    assert f"| ONNX Runtime, `onnx/{ENCODER_INT8_FILE}` (dynamic INT8) | {int8:.4f} |" in card
    summary = json.loads((cli_export / "subnet.json").read_text())["onnx"]
    assert summary["onnxruntime_int8_miou"] == int8 and summary["onnxruntime_fp32_miou"] == fp32


def test_cli_evaluate_onnx_matches_the_pytorch_evaluation(cli_export, folders, capsys):
    results = {}
    for name, flags in (("torch", []), ("onnx", ["--onnx"]), ("int8", ["--onnx_int8"])):
        out = folders / f"eval_{name}"
        argv = ["evaluate", "--model_name_or_path", str(cli_export), "--dataset_name", str(folders / "data"),
                "--prompt_type", "point", "--device", "cpu", "--output_dir", str(out), *flags]
        assert cli_main(argv) == 0
        results[name] = json.loads((out / "eval_results.json").read_text())
    assert results["onnx"]["miou"] == pytest.approx(results["torch"]["miou"], abs=1e-3)
    assert results["onnx"]["num_objects"] == results["torch"]["num_objects"] > 0
    assert results["onnx"]["params"] is None and results["torch"]["params"] > 0
    assert results["onnx"]["runtime"] == "onnxruntime (fp32 encoder)"
    recorded = json.loads((cli_export / "onnx" / "parity.json").read_text())["evaluation"]
    assert results["int8"]["miou"] == pytest.approx(recorded["onnxruntime_int8"]["miou"], abs=1e-9)
    assert "runtime" in capsys.readouterr().out


def test_int8_drop_over_threshold_is_loud_on_card_and_console():
    parity = {"embeddings_max_rel": 1e-7, "pred_masks_max_rel": 1e-7, "mask_pixels_differing": 0, "mask_agreement": 1.0}
    miou = {"miou": 0.8, "mean_dice": 0.85, "prompt": "box", "mask_selection": "single", "num_objects": 9, "num_images": 3}
    warning = "WARNING: the INT8 encoder loses 0.1000 mIoU"
    report = {"files": [f"onnx/{ENCODER_FILE}", f"onnx/{ENCODER_INT8_FILE}"], "inputs": "x", "tolerance": 1e-4,
              "parity_passed": True, "parity": {"fp32": {"boxes": parity}},
              "evaluation": {"pytorch": miou, "onnxruntime_fp32": miou, "onnxruntime_int8": {**miou, "miou": 0.7},
                             "int8_miou_drop": 0.1, "int8_drop_threshold": 0.01, "int8_warning": warning}}
    assert "**Warning:** the INT8 encoder loses 0.1000 mIoU" in onnx_card_section(report, "user/model")
    line = format_onnx({"files": report["files"], "parity_passed": True, "embeddings_max_rel": 1e-7,
                        "pred_masks_max_rel": 1e-7, "onnxruntime_fp32_miou": 0.8, "onnxruntime_int8_miou": 0.7,
                        "int8_warning": warning})
    assert warning in line.splitlines() and "ORT INT8 0.7000" in line


def test_search_ort_latency_budget_is_respected_by_every_result(supernet, tmp_path):
    processor = tiny_processor(IMAGE)
    data = EvaluationData.prepare(make_synthetic_shapes(2, image_size=IMAGE, seed=4), processor)
    out = tmp_path / "search"
    # Time the fastest and the largest subnet into the search's own cache first, so the budget (between them) is
    # decided on the very numbers the search reads, not on a second, noisy measurement.
    space = supernet.search_space
    fastest, _ = driver.cheapest_subnet(space, lambda c: supernet.count_macs(c))
    cache = OrtLatencyCache(out / driver.ORT_LATENCY_CACHE, repeats=3)
    low = cache.measure(driver.ort_latency_key(fastest), supernet.extract_subnet(fastest))
    high = cache.measure(driver.ort_latency_key(space.largest()), supernet.extract_subnet(space.largest()))
    budget = max((low + high) / 2, low * 1.01)

    result = search_subnets(supernet, data, processor, budget=3, max_latency_ms=budget, latency_backend="onnxruntime",
                            latency_repeats=3, strategy="random", seed=1, max_proposals=12, output_dir=out,
                            show_progress=False)
    timings = json.loads((out / driver.ORT_LATENCY_CACHE).read_text())["latency_ms"]
    saved = json.loads((out / "search_results.json").read_text())
    assert saved["settings"]["latency_backend"] == "onnxruntime"
    for entry in saved["evaluations"] + saved["rejected"]:
        cfg = SubnetConfig.from_dict(entry)
        if entry["latency_ms"] is not None:  # the recorded latency is the ORT timing of that subnet
            assert entry["latency_ms"] == timings[driver.ort_latency_key(cfg)]
    reported = [e for e in result.evaluations if not e["reference"]] + result.pareto
    reported += [result.best.entry] if result.best else []
    assert len(reported) >= 2
    assert all(e["feasible"] and e["latency_ms"] <= budget for e in reported)
    assert all(e["latency_ms"] > budget for e in saved["rejected"] if "max_latency_ms" in e["violations"])
    assert result.reference["feasible"] == (result.reference["latency_ms"] <= budget)
    assert (out / "pareto.png").is_file()


@pytest.mark.parametrize("stage", ["export", "evaluate", "search"])
def test_missing_extra_is_one_line_naming_the_install(stage, folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    common = ["--model_name_or_path", str(folders / "supernet"), "--output_dir", str(tmp_path / "out")]
    data = ["--dataset_name", str(folders / "data")]
    argv = {"export": ["export", *common, "--subnet", json.dumps(SUBNET.to_dict()), "--onnx"],
            "evaluate": ["evaluate", *common, *data, "--onnx"],
            "search": ["search", *common, *data, "--latency_backend", "onnxruntime", "--max_latency_ms", "100"]}[stage]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"supersam {stage}: error:") and len(error.splitlines()) == 1
    assert "pip install supersam_hf[onnx]" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "wrong_file"])
def test_evaluate_onnx_of_a_damaged_file_is_one_line_naming_it(cli_export, folders, tmp_path, capsys, damage):
    import re
    import shutil

    import numpy as np

    export = tmp_path / "export"
    shutil.copytree(cli_export, export)
    encoder = export / "onnx" / ENCODER_FILE
    data = encoder.read_bytes()
    encoder.write_bytes({"truncated": data[: len(data) // 3], "random": np.random.default_rng(0).bytes(4096),
                         "wrong_file": (export / "onnx" / "prompt_encoder_mask_decoder.onnx").read_bytes()}[damage])
    argv = ["evaluate", "--model_name_or_path", str(export), "--dataset_name", str(folders / "data"),
            "--prompt_type", "point", "--device", "cpu", "--output_dir", str(tmp_path / "out"), "--onnx"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"supersam evaluate: error: {encoder} is not")
    assert "again with `supersam export --onnx`" in lines[0]
    assert not (tmp_path / "out").exists()

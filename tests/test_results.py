"""The typed stage results: `to_dict()` is the file the stage writes, `save` / `load` round-trip, and the
transitional read-only Mapping interface."""

import json

import pytest

from supersam_hf.results import EvaluationResult, ExportResult, TrainingResult
from supersam_hf.search_space import SubnetConfig

EVAL = dict(miou=0.625, per_image_miou=0.5, mean_dice=0.75, num_objects=8, num_images=3, prompt="box",
            mask_selection="single", seed=7)


def test_evaluation_to_dict_is_the_former_json_in_its_order():
    result = EvaluationResult(**EVAL, subnet="L1-2_M32-32", subnet_config={"kept_layers": [1, 2], "mlp_dims": [32, 32]},
                              params=1234, box_reference_miou=0.25, box_reference_per_image_miou=0.2,
                              max_instances_per_image=4, num_instances_left_out=2)
    assert list(result.to_dict()) == [
        "miou", "per_image_miou", "mean_dice", "num_objects", "num_images", "prompt", "mask_selection", "resolution",
        "seed", "subnet", "subnet_config", "params", "box_reference_miou", "box_reference_per_image_miou",
        "max_instances_per_image", "num_instances_left_out"]
    plain = EvaluationResult(**EVAL)
    assert "box_reference_miou" not in plain and "runtime" not in plain  # absent, as before, when not measured
    plain.runtime = "onnxruntime (fp32 encoder)"
    assert list(plain.to_dict())[-1] == "runtime"


def test_evaluation_mapping_interface_and_equality():
    result = EvaluationResult(**EVAL)
    assert result["miou"] == result.miou == 0.625
    assert result.get("params") is None and result.get("nope", 3) == 3
    assert "seed" in result and "nope" not in result
    assert len(result) == len(result.to_dict()) and list(result) == list(result.to_dict())
    assert dict(result) == result.to_dict() and {**result} == result.to_dict()
    assert result == result.to_dict() and result == EvaluationResult(**EVAL)
    assert result != EvaluationResult(**{**EVAL, "miou": 0.5})
    with pytest.raises(KeyError):
        result["nope"]
    with pytest.raises(TypeError):  # read-only
        result["miou"] = 1.0


def test_evaluation_save_and_load(tmp_path):
    result = EvaluationResult(**EVAL, max_instances_per_image=None, num_instances_left_out=0)
    path = result.save(tmp_path)
    assert path == tmp_path / "eval_results.json"
    assert path.read_text() == json.dumps(result.to_dict(), indent=2) + "\n"
    assert EvaluationResult.load(tmp_path) == result
    with pytest.raises(FileNotFoundError, match="eval_results.json"):
        EvaluationResult.load(tmp_path / "missing")


def test_training_save_writes_the_former_summary(tmp_path):
    summary = dict(global_step=4, start_step=2, train_runtime_s=1.5, steps_per_second=1.3333, num_processes=1,
                   subnets_per_step=3, trainable_parameters=100, lora=False, final_loss={"largest": 0.5},
                   max_instances_per_image=8, instances_left_out=1, streaming=False,
                   final_eval={"type": "eval", "miou": {"largest": 0.4}}, last_checkpoint="out/checkpoints/step_4",
                   engine={"engine": "single process"})
    result = TrainingResult.from_dict(summary)
    assert result.to_dict() == summary and list(result.to_dict()) == list(summary)
    result.save(tmp_path)
    assert (tmp_path / "training_summary.json").read_text() == json.dumps(summary, indent=2)  # byte for byte
    loaded = TrainingResult.load(tmp_path)
    assert loaded == result and loaded.final_eval["miou"]["largest"] == 0.4 and loaded["global_step"] == 4


def test_export_record_round_trip(tmp_path):
    subnet = SubnetConfig((0, 1, 3), (32, 16, 32))
    metrics = {"box": EvaluationResult(**EVAL), "point": {**EVAL, "prompt": "point"}}
    record = ExportResult(subnet=subnet, params=10, macs=20, base_params=30, base_macs=40, macs_per="one image",
                          base_model="facebook/sam-vit-base", metrics=metrics)
    data = record.to_dict()
    assert data == {**subnet.to_dict(), "name": subnet.name, "params": 10, "macs": 20, "base_params": 30,
                    "base_macs": 40, "macs_per": "one image", "base_model": "facebook/sam-vit-base",
                    "metrics": {"box": EvaluationResult(**EVAL).to_dict(), "point": {**EVAL, "prompt": "point"}}}
    assert "onnx" not in record
    record.onnx = {"files": ["vision_encoder.onnx"]}
    record.save(tmp_path)
    assert SubnetConfig.from_json((tmp_path / "subnet.json").read_text()) == subnet  # the file still names the subnet at its top
    loaded = ExportResult.load(tmp_path)
    assert loaded.subnet == subnet and loaded.params == 10 and loaded.onnx == record.onnx
    assert loaded == record.to_dict() and loaded.output_dir == tmp_path


def test_evaluate_model_returns_an_evaluation_result(tmp_path):
    from helpers import tiny_processor, tiny_supernet

    from supersam_hf.data import make_synthetic_shapes
    from supersam_hf.evaluation import evaluate_model

    supernet = tiny_supernet(num_layers=2, image_size=64)
    dataset = make_synthetic_shapes(2, image_size=64, seed=1)
    result = evaluate_model(supernet, dataset, tiny_processor(64), prompt="box", box_reference=True, show_progress=False)
    assert isinstance(result, EvaluationResult)
    assert result.miou == result["miou"] and result.prompt == "box" and result.num_images == 2
    assert result.box_reference_miou is not None and result.params == supernet.count_parameters()
    result.save(tmp_path)
    assert EvaluationResult.load(tmp_path) == result


def test_load_of_a_missing_corrupt_or_incomplete_file_is_one_clear_error(tmp_path):
    from supersam_hf.errors import ModelFileError

    with pytest.raises(FileNotFoundError, match="training_summary.json"):
        TrainingResult.load(tmp_path)
    (tmp_path / "training_summary.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="training_summary.json"):
        TrainingResult.load(tmp_path)
    (tmp_path / "subnet.json").write_text(json.dumps({"kept_layers": [0], "mlp_dims": [32], "params": 1}))
    with pytest.raises(ModelFileError, match="lacks macs, base_params, base_macs, macs_per"):
        ExportResult.load(tmp_path)


def _entry(kept, dims, params, miou, feasible=True, reference=False):
    subnet = SubnetConfig(kept, dims)
    return {"name": subnet.name, **subnet.to_dict(), "params": params, "macs": 2 * params, "latency_ms": None,
            "size_reduction": 1 - params / 100, "miou": miou, "per_image_miou": miou, "mean_dice": miou,
            "num_objects": 3, "feasible": feasible, "violations": [] if feasible else ["max_params"],
            "reference": reference}


def test_search_result_is_search_results_json_and_derives_front_best_and_reference(tmp_path):
    from supersam_hf.search import SearchResult

    largest, small, smaller = (_entry((0, 1, 2), (32, 32, 32), 100, 0.7, feasible=False, reference=True),
                               _entry((0, 2), (32, 16), 60, 0.6), _entry((0,), (16,), 30, 0.4))
    settings = {"prompt": "box", "mask_selection": "single", "eval_seed": 7, "num_images": 2}
    result = SearchResult(settings=settings, constraints={"max_params": 80}, strategy="random", seed=1, budget=3,
                          evaluations=[largest, small, smaller], rejected=[_entry((1,), (16,), 90, None, False)],
                          num_new_evaluations=2, num_proposals=5)
    data = result.to_dict()
    assert list(data) == ["settings", "constraints", "strategy", "seed", "budget", "best", "evaluations", "rejected"]
    assert data["best"] == small["name"] and result["best"] == small["name"]  # the file (and Mapping) name it
    assert result.reference is largest and result.pareto == [smaller, small]
    assert (result.num_evaluated, result.num_rejected, result.num_new_evaluations) == (3, 1, 2)
    best = result.best
    assert best.subnet == SubnetConfig((0, 2), (32, 16)) and best.entry is small
    assert best.metrics["miou"] == 0.6 and best.metrics["seed"] == 7 and best.metrics["num_images"] == 2
    path = result.save(tmp_path)
    assert path.read_text() == json.dumps(data, indent=2) + "\n"  # byte for byte what a search writes
    loaded = SearchResult.load(tmp_path)
    assert loaded == result and loaded.best.subnet == best.subnet and loaded.num_new_evaluations == 0
    assert SearchResult(settings=settings, constraints={}, strategy="random", seed=1, budget=1,
                        evaluations=[largest]).best is None

"""evaluate_model: result contents, determinism, mask selection, subnet == extracted == saved, one encoder pass
per image, mode restoration, and `supersam evaluate` end to end."""

import json

import numpy as np
import pytest
import torch

from helpers import tiny_processor, tiny_supernet
from transformers import SamModel

from supersam_hf import SubnetConfig
from supersam_hf.cli import main as cli_main
from supersam_hf.data import SamSegmentationData, make_synthetic_shapes
from supersam_hf.evaluation import EvaluationData, evaluate_model, parse_subnet
from supersam_hf.evaluation.masks import _crop_pair
from supersam_hf.loading import load_processor, load_sam_model
from supersam_hf.metrics import load_sam_miou

IMAGE = 64
RESULT_KEYS = {
    "miou", "per_image_miou", "mean_dice", "num_objects", "num_images", "prompt", "mask_selection", "resolution",
    "seed", "subnet", "params",
}


@pytest.fixture(scope="module")
def supernet():
    return tiny_supernet(num_layers=6, image_size=IMAGE)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(IMAGE)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_shapes(4, image_size=IMAGE, seed=3)


@pytest.fixture(scope="module")
def subnet(supernet):
    cfg = SubnetConfig(kept_layers=(0, 1, 3, 5), mlp_dims=(128, 64, 96, 32))
    supernet.search_space.validate(cfg)
    return cfg


def instance_count(dataset):
    return sum(len(np.unique(np.asarray(label))) - 1 for label in dataset["label"])


def test_result_keys_values_and_determinism(supernet, processor, dataset):
    assert evaluate_model(supernet, dataset, processor, show_progress=False)["prompt"] == "box"  # the one default
    first = evaluate_model(supernet, dataset, processor, prompt="point", show_progress=False)
    assert RESULT_KEYS <= set(first)
    assert 0.0 <= first["miou"] <= 1.0 and 0.0 <= first["mean_dice"] <= 1.0
    assert first["num_images"] == 4 and first["num_objects"] == instance_count(dataset)
    assert first["prompt"] == "point" and first["mask_selection"] == "single" and first["resolution"] == "original"
    assert first["subnet"] is None and first["params"] == supernet.count_parameters()
    again = evaluate_model(supernet, dataset, processor, prompt="point", show_progress=False)
    assert again == first
    other_prompts = evaluate_model(supernet, dataset, processor, prompt="point", seed=1, show_progress=False)
    assert other_prompts["seed"] == 1 and other_prompts["miou"] != first["miou"]


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_oracle_is_at_least_single(supernet, processor, dataset, prompt):
    single = evaluate_model(supernet, dataset, processor, prompt=prompt, show_progress=False)
    oracle = evaluate_model(supernet, dataset, processor, prompt=prompt, mask_selection="oracle", show_progress=False)
    assert oracle["mask_selection"] == "oracle" and oracle["prompt"] == prompt
    assert oracle["miou"] >= single["miou"]
    assert oracle["miou"] > single["miou"] or prompt == "box"  # a random tiny model's choice is rarely the best


def test_subnet_equals_extracted_model_and_saved_folder(supernet, processor, dataset, subnet, tmp_path):
    under_subnet = evaluate_model(supernet, dataset, processor, subnet=subnet, show_progress=False)
    assert under_subnet["subnet"] == subnet.name and under_subnet["params"] == supernet.count_parameters(subnet)
    full = evaluate_model(supernet, dataset, processor, show_progress=False)
    assert under_subnet["miou"] != full["miou"]  # the subnet really ran

    extracted = supernet.extract_subnet(subnet)
    in_memory = evaluate_model(extracted, dataset, processor, show_progress=False)
    extracted.save_pretrained(tmp_path / "small")
    processor.save_pretrained(tmp_path / "small")
    by_path = evaluate_model(load_sam_model(tmp_path / "small", device="cpu"), dataset, load_processor(tmp_path / "small"),
                             show_progress=False)
    assert type(load_sam_model(tmp_path / "small")) is SamModel  # an export stays a plain SamModel
    for result in (in_memory, by_path):
        assert result["miou"] == pytest.approx(under_subnet["miou"], abs=1e-6)
        assert result["num_objects"] == under_subnet["num_objects"]
        assert result["params"] == under_subnet["params"] == sum(p.numel() for p in extracted.parameters())


def test_one_encoder_pass_per_image_and_all_instances_decoded_together(supernet, processor, dataset):
    images_seen, prompt_batches = [], []

    def on_encoder(module, args, kwargs, output):
        images_seen.append((args[0] if args else kwargs["pixel_values"]).shape[0])

    def on_decoder(module, args, kwargs, output):
        prompt_batches.append(tuple(output[0].shape[:2]))  # (images, prompts per image)

    hooks = [
        supernet.vision_encoder.register_forward_hook(on_encoder, with_kwargs=True),
        supernet.mask_decoder.register_forward_hook(on_decoder, with_kwargs=True),
    ]
    try:
        result = evaluate_model(supernet, dataset, processor, batch_size=3, show_progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert images_seen == [3, 1]  # ceil(4 / 3) forwards, every image encoded once
    assert sum(b for b, _ in prompt_batches) == 4
    max_instances = max(len(np.unique(np.asarray(label))) - 1 for label in dataset["label"])
    assert max(p for _, p in prompt_batches) == max_instances  # an image's instances share one decoder call
    assert result["num_objects"] == instance_count(dataset)


def test_mode_and_active_subnet_are_restored(processor, dataset, subnet):
    model = tiny_supernet(num_layers=6, image_size=IMAGE).train()
    model.set_subnet(subnet)
    result = evaluate_model(model, dataset, processor, max_images=2, show_progress=False)
    assert model.training and model.active_subnet == subnet
    assert result["subnet"] == subnet.name and result["num_images"] == 2  # the active subnet was what ran
    other = model.search_space.largest()
    evaluate_model(model, dataset, processor, subnet=other, max_images=1, show_progress=False)
    assert model.active_subnet == subnet


def test_ready_data_and_prepared_batches_give_the_same_result(supernet, processor, dataset):
    reference = evaluate_model(supernet, dataset, processor, seed=2, show_progress=False)
    wrapped = SamSegmentationData(dataset, processor, seed=2)  # no full masks asked for: evaluate adds them
    assert evaluate_model(supernet, wrapped, processor, show_progress=False) == reference
    prepared = EvaluationData.prepare(dataset, processor, seed=2, batch_size=2)
    assert evaluate_model(supernet, prepared, processor, show_progress=False) == reference
    with pytest.raises(ValueError, match="prompt"):
        evaluate_model(supernet, prepared, processor, prompt="point", show_progress=False)


def test_cropping_leaves_the_metric_unchanged():
    rng = np.random.default_rng(0)
    metric = load_sam_miou(keep_in_memory=True)
    preds, refs = [], []
    for k in range(6):
        pred = np.zeros((40, 50), dtype=bool)
        ref = np.zeros((40, 50), dtype=bool)
        if k != 5:  # the last pair is empty/empty (IoU 1 by convention)
            pred[rng.integers(0, 20):rng.integers(20, 40), rng.integers(0, 25):rng.integers(25, 50)] = True
            ref[rng.integers(0, 20):rng.integers(20, 40), rng.integers(0, 25):rng.integers(25, 50)] = True
        preds.append(pred)
        refs.append(ref)
    full = metric.compute(predictions=preds, references=refs)
    cropped = [_crop_pair(torch.from_numpy(p), torch.from_numpy(r)) for p, r in zip(preds, refs)]
    assert max(c[0].size for c in cropped) < 40 * 50
    small = metric.compute(predictions=[c[0] for c in cropped], references=[c[1] for c in cropped])
    assert small == pytest.approx(full)


def test_bad_arguments_raise_clear_errors(supernet, processor, dataset, subnet):
    with pytest.raises(ValueError, match="mask_selection"):
        evaluate_model(supernet, dataset, processor, mask_selection="best")
    with pytest.raises(ValueError, match="SuperSamModel"):
        evaluate_model(supernet.extract_subnet(subnet), dataset, processor, subnet=subnet)
    with pytest.raises(ValueError, match="min_layers"):
        evaluate_model(supernet, dataset, processor, subnet=SubnetConfig((0,), (32,)))
    assert parse_subnet(subnet.to_json()) == subnet
    assert parse_subnet({"subnet": subnet.to_dict(), "miou": 0.5}) == subnet


def test_cli_evaluate_writes_the_result_json(supernet, processor, dataset, subnet, tmp_path, capsys):
    supernet.save_pretrained(tmp_path / "supernet")
    processor.save_pretrained(tmp_path / "supernet")
    dataset.save_to_disk(str(tmp_path / "data"))
    (tmp_path / "subnet.json").write_text(subnet.to_json())
    out = tmp_path / "results"
    argv = ["evaluate", "--model_name_or_path", str(tmp_path / "supernet"), "--dataset_name", str(tmp_path / "data"),
            "--subnet", str(tmp_path / "subnet.json"), "--mask_selection", "oracle", "--device", "cpu", "--output_dir",
            str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and subnet.name in printed
    expected = evaluate_model(supernet, dataset, processor, subnet=subnet, mask_selection="oracle", show_progress=False,
                              box_reference=True)  # box prompts: the box-as-mask reference comes with the result
    assert json.loads((out / "eval_results.json").read_text()) == expected
    assert cli_main(argv) == 2 and "--overwrite_output_dir" in capsys.readouterr().err  # the result is not replaced
    assert cli_main([*argv, "--overwrite_output_dir"]) == 0
    capsys.readouterr()

    out_flag = ["--output_dir", str(tmp_path / "o")]
    assert cli_main(["evaluate", "--model_name_or_path", str(tmp_path / "nowhere"), "--dataset_name", str(tmp_path / "data"),
                     *out_flag]) == 2
    assert "No model folder" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "supersam"}')
    assert cli_main(["evaluate", "--model_name_or_path", str(tmp_path / "broken"), "--dataset_name", str(tmp_path / "data"),
                     *out_flag]) == 2
    assert "has config.json but no model.safetensors" in capsys.readouterr().err


def test_arguments_object_equals_keywords_and_unknown_keywords_are_refused(supernet, processor, dataset, subnet):
    from supersam_hf.arguments import DataArguments, EvaluateArguments
    from supersam_hf.errors import SupersamError

    spec = json.dumps({"kept_layers": list(subnet.kept_layers), "mlp_dims": list(subnet.mlp_dims)})
    args = EvaluateArguments(prompt_type="point", seed=1, subnet=spec)  # a flag's string, as the CLI parses it
    data_args = DataArguments(dataset_name="unused", max_eval_images=3)
    by_object = evaluate_model(supernet, dataset, processor, args, data_args, show_progress=False)
    by_keywords = evaluate_model(supernet, dataset, processor, prompt="point", seed=1, subnet=subnet, max_images=3,
                                 show_progress=False)
    assert by_object == by_keywords and by_object["num_images"] == 3 and by_object["prompt"] == "point"
    overridden = evaluate_model(supernet, dataset, processor, args, data_args, prompt="box", show_progress=False)
    assert overridden["prompt"] == "box" and args.prompt_type == "point"  # the caller's object is not changed
    with pytest.raises(SupersamError, match="unknown keyword argument.*promt"):
        evaluate_model(supernet, dataset, processor, promt="point")
    with pytest.raises(SupersamError, match="must be a EvaluateArguments"):
        evaluate_model(supernet, dataset, processor, subnet)


def test_an_interrupted_evaluation_leaves_nothing_behind(supernet, processor, dataset, monkeypatch):
    """Each call owns its metrics: the objects of an interrupted pass never reach the next evaluation."""
    from supersam_hf.errors import UnsupportedSetupError
    from supersam_hf.evaluation import StreamedBatches, masks
    from supersam_hf.evaluation.distributed import process_share

    expected = evaluate_model(supernet, dataset, processor, batch_size=1, show_progress=False)
    real, calls = masks._model_masks, []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(masks, "_model_masks", interrupted)
        with pytest.raises(KeyboardInterrupt):
            evaluate_model(supernet, dataset, processor, batch_size=1, show_progress=False)
    assert evaluate_model(supernet, dataset, processor, batch_size=1, show_progress=False) == expected
    with pytest.raises(UnsupportedSetupError, match="streamed dataset is not split across processes"):
        process_share(StreamedBatches(None, "box", 1, None), state=None)

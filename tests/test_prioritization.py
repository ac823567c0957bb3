"""Prioritization: exact Wanda MLP reordering that helps narrow subnets, layer importance → drop probabilities,
bad input, and `supersam convert` end to end."""

import io
import json
import logging
from functools import partial

import datasets
import pytest
import torch
import torch.nn.functional as F
from tqdm import tqdm as tqdm_std
from transformers import SamProcessor

from supersam_hf import SuperSamModel
from supersam_hf.cli import main as cli_main
from supersam_hf.data import make_synthetic_shapes
from supersam_hf import prioritization
from supersam_hf.prioritization import (
    PrioritizationReport,
    calibration_batches,
    drop_probabilities,
    layer_calls_per_image,
    neuron_scores,
    permute_mlp_neurons,
    prioritize,
)
from helpers import prompt_inputs, tiny_processor, tiny_sam, tiny_supernet

S = 64  # image size of every test model
LOGGER = "supersam_hf.prioritization"


@pytest.fixture(scope="module")
def calibration():
    return make_synthetic_shapes(12, image_size=S, seed=0)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(S)


def heterogeneous_supernet(seed: int, sigma: float = 1.0) -> SuperSamModel:
    """A tiny supernet whose MLP neurons differ in importance, scattered in random order: each hidden neuron's
    `lin1` row/bias and `lin2` column are scaled by its own log-normal factor."""
    model = tiny_supernet(num_layers=4, image_size=S, seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for layer in model.vision_encoder.layers:
            mlp = layer.mlp
            scale = torch.exp(sigma * torch.randn(mlp.lin1.out_features, generator=g))
            mlp.lin1.weight.mul_(scale[:, None])
            mlp.lin1.bias.mul_(scale)
            mlp.lin2.weight.mul_(scale[None, :])
    return model


def relative_embedding_error(model, pixel_values, width_fraction: float) -> float:
    with torch.no_grad():
        full = model.get_image_embeddings(pixel_values)
        with model.subnet(model.search_space.uniform(width_fraction)):
            narrow = model.get_image_embeddings(pixel_values)
    return ((narrow - full).norm() / full.norm()).item()


def no_hooks_left(model) -> bool:
    return all(
        not layer.mlp.lin1._forward_pre_hooks and not layer.mlp.lin2._forward_pre_hooks
        for layer in model.vision_encoder.layers
    )


# -- MLP reordering ------------------------------------------------------------------------------------------------
def test_reordering_preserves_full_model_outputs(calibration, processor):
    model = tiny_supernet(num_layers=4, image_size=S).double()
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in prompt_inputs("points", image_size=S).items()}
    before_weights = [layer.mlp.lin1.weight.clone() for layer in model.vision_encoder.layers]
    with torch.no_grad():
        before = model(**inputs)
    report = prioritize(model, calibration, processor, num_images=8, show_progress=False)
    with torch.no_grad():
        after = model(**inputs)

    # Not vacuous: the neurons really moved.
    assert all(s["moved_fraction"] > 0.5 for s in report.neuron_scores)
    assert any(not torch.equal(w, layer.mlp.lin1.weight) for w, layer in zip(before_weights, model.vision_encoder.layers))
    assert (before.pred_masks - after.pred_masks).abs().max().item() <= 1e-5
    assert (before.iou_scores - after.iou_scores).abs().max().item() <= 1e-5
    assert next(model.parameters()).dtype == torch.float64
    assert no_hooks_left(model)


def test_reordering_lowers_narrow_subnet_error(calibration, processor):
    held_out = processor(images=list(make_synthetic_shapes(8, image_size=S, seed=1)["image"]), return_tensors="pt")["pixel_values"]
    before, after = [], []
    for seed in range(3):
        model = heterogeneous_supernet(seed)
        before.append(relative_embedding_error(model, held_out, 0.5))
        prioritize(model, calibration, processor, num_images=8, measure_layers=False, show_progress=False)
        after.append(relative_embedding_error(model, held_out, 0.5))
    mean_before, mean_after = sum(before) / 3, sum(after) / 3
    assert mean_after < 0.8 * mean_before, (before, after)


def test_prioritize_is_deterministic_and_idempotent(calibration, processor):
    first, second = tiny_supernet(num_layers=4, image_size=S), tiny_supernet(num_layers=4, image_size=S)
    report_a = prioritize(first, calibration, processor, num_images=8, show_progress=False)
    report_b = prioritize(second, calibration, processor, num_images=8, show_progress=False)
    assert report_a.permutations == report_b.permutations
    assert report_a.layer_importance == pytest.approx(report_b.layer_importance, rel=1e-6, abs=1e-9)

    # A second call on the reordered model finds it already ordered (no statistics leaked from the first call:
    # importance equals a fresh measurement).
    again = prioritize(first, calibration, processor, num_images=8, show_progress=False)
    assert all(p == list(range(len(p))) for p in again.permutations)
    assert all(s["moved_fraction"] == 0.0 for s in again.neuron_scores)
    assert again.layer_importance == pytest.approx(report_a.layer_importance, rel=1e-4, abs=1e-7)


def test_restores_previous_subnet_and_mode(calibration, processor):
    model = tiny_supernet(num_layers=4, image_size=S).train()
    narrow = model.search_space.uniform(0.5)
    model.set_subnet(narrow)
    prioritize(model, calibration, processor, num_images=4, show_progress=False)
    assert model.active_subnet == narrow
    assert model.vision_encoder.layers[1].mlp.active_dim == narrow.mlp_dims[1]
    assert model.training
    assert no_hooks_left(model)


def test_previous_subnet_outside_new_space_falls_back_to_full(calibration, processor, caplog):
    model = tiny_supernet(num_layers=4, image_size=S, elastic_layers=[1, 2, 3], min_layers=1)
    model.set_subnet(model.search_space.uniform(1.0, kept_layers=[0]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prioritize(model, calibration, processor, num_images=4, show_progress=False)
    assert model.config.min_layers == 2  # a one-layer subnet is no longer in the space
    assert model.active_subnet is None and all(layer.active for layer in model.vision_encoder.layers)
    assert any("not in the new search space" in r.getMessage() for r in caplog.records)


# -- layer importance → drop probabilities --------------------------------------------------------------------------
def test_drop_probabilities_follow_importance_and_survive_save_load(calibration, processor, tmp_path):
    model = tiny_supernet(num_layers=6, image_size=S)
    report = prioritize(model, calibration, processor, num_images=8, max_drop_prob=0.4, show_progress=False)
    importance = report.layer_importance
    assert len(importance) == 6 and all(i > 0 for i in importance)

    # Default: all but two layers (at least half; default_num_elastic_layers), layer 0 fixed, the least important
    # among 1..5.
    assert report.elastic_layers == sorted(report.elastic_layers) and len(report.elastic_layers) == 4
    assert 0 not in report.elastic_layers
    fixed_candidates = [i for i in range(1, 6) if i not in report.elastic_layers]
    assert max(importance[i] for i in report.elastic_layers) <= min(importance[i] for i in fixed_candidates)

    probs = dict(zip(report.elastic_layers, report.layer_drop_probs))
    assert all(0.0 <= p <= 0.4 for p in probs.values())
    for i in probs:
        for j in probs:
            if importance[i] < importance[j]:
                assert probs[i] >= probs[j]
    assert len(set(probs.values())) > 1  # measured, not a constant
    cheapest = min(range(6), key=lambda i: importance[i])
    if cheapest in probs:  # the cheapest layer overall gets the full max_drop_prob
        assert probs[cheapest] == pytest.approx(0.4)

    assert model.config.prioritized is True
    assert model.config.elastic_layers == report.elastic_layers
    assert model.config.min_layers == 2
    space = model.search_space
    assert space.smallest().kept_layers == tuple(i for i in range(6) if i not in report.elastic_layers)

    model.save_pretrained(tmp_path)
    loaded = SuperSamModel.from_pretrained(tmp_path)
    assert loaded.config.prioritized is True
    assert loaded.config.elastic_layers == report.elastic_layers
    assert loaded.config.layer_drop_probs == pytest.approx(report.layer_drop_probs)
    assert loaded.config.min_layers == 2
    assert torch.equal(loaded.vision_encoder.layers[2].mlp.lin1.weight, model.vision_encoder.layers[2].mlp.lin1.weight)


def test_drop_probability_formula():
    # min-max normalised importance over all layers: cheapest -> max, most important -> 0, linear in between.
    importance = [0.9, 0.1, 0.5, 0.3]
    assert drop_probabilities(importance, [1, 2, 3], 0.5) == pytest.approx([0.5, 0.25, 0.375])
    assert drop_probabilities(importance, [0, 1], 0.5) == pytest.approx([0.0, 0.5])
    assert drop_probabilities([0.2, 0.2, 0.2], [1, 2], 0.3) == pytest.approx([0.3, 0.3])
    assert drop_probabilities(importance, [], 0.5) == []


def test_num_elastic_layers_and_first_layer(calibration, processor):
    model = tiny_supernet(num_layers=4, image_size=S)
    report = prioritize(model, calibration, processor, num_images=4, num_elastic_layers=4, keep_first_layer=False,
                        show_progress=False)
    assert report.elastic_layers == [0, 1, 2, 3] and model.config.min_layers == 1
    with pytest.raises(ValueError, match="num_elastic_layers"):
        prioritize(model, calibration, processor, num_images=4, num_elastic_layers=4, show_progress=False)
    with pytest.raises(ValueError, match="max_drop_prob"):
        prioritize(model, calibration, processor, num_images=4, max_drop_prob=1.0, show_progress=False)


def test_report_save(calibration, processor, tmp_path):
    report = prioritize(tiny_supernet(num_layers=4, image_size=S), calibration, processor, num_images=4, show_progress=False)
    assert isinstance(report, PrioritizationReport)
    report.save(tmp_path)
    data = json.loads((tmp_path / "prioritization_report.json").read_text())
    assert data["num_images"] == 4 and data["measure"] == report.measure
    assert data["elastic_layers"] == report.elastic_layers and len(data["layer_importance"]) == 4
    summary = data["neuron_scores"][0]
    assert summary["min"] <= summary["median"] <= summary["max"] and 0.5 <= summary["top_half_fraction"] <= 1.0
    assert (tmp_path / "layer_importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- bad input -------------------------------------------------------------------------------------------------------
def test_more_images_requested_than_available(processor, caplog):
    small = make_synthetic_shapes(3, image_size=S, seed=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = prioritize(tiny_supernet(num_layers=4, image_size=S), small, processor, num_images=10, show_progress=False)
    assert report.num_images == 3
    assert any("only 3 rows" in r.getMessage() for r in caplog.records)


def test_missing_image_column_lists_columns(processor):
    data = datasets.Dataset.from_dict({"photo_bytes": [1, 2], "label": [0, 1]})
    model = tiny_supernet(num_layers=4, image_size=S)
    with pytest.raises(ValueError, match=r"photo_bytes.*label|columns are \['photo_bytes', 'label'\]"):
        prioritize(model, data, processor, show_progress=False)
    with pytest.raises(ValueError, match="image_column='photo'"):
        prioritize(model, data, processor, image_column="photo", show_progress=False)


def test_image_column_override(calibration, processor):
    # Undecoded images ({"bytes", "path"} cells) are decoded as data/ decodes them for training.
    renamed = calibration.rename_column("image", "frame").cast_column("frame", datasets.Image(decode=False))
    report = prioritize(tiny_supernet(num_layers=4, image_size=S), renamed, processor, num_images=4, image_column="frame",
                        show_progress=False)
    assert report.num_images == 4


def test_no_usable_image(processor):
    data = datasets.Dataset.from_dict({"image": [None, None, [[[[1]]]]], "label": [0, 1, 2]})
    model = tiny_supernet(num_layers=4, image_size=S)
    config_before = model.config.to_dict()
    with pytest.raises(ValueError, match="No usable image"):
        prioritize(model, data, processor, show_progress=False)
    # Strings that are not image files: refused as data/ refuses them for training.
    with pytest.raises(ValueError, match="'image' holds strings, not images, and 'not an image' is not an existing"):
        prioritize(model, datasets.Dataset.from_dict({"image": [None, "not an image"]}), processor, show_progress=False)
    assert model.config.to_dict() == config_before
    assert no_hooks_left(model)


def test_already_prioritized_warns_and_stays_exact(calibration, processor, caplog):
    model = tiny_supernet(num_layers=4, image_size=S).double()
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in prompt_inputs("boxes", image_size=S).items()}
    with torch.no_grad():
        before = model(**inputs).pred_masks
    prioritize(model, calibration, processor, num_images=4, show_progress=False)
    # Different images: a genuinely different order on the second pass.
    other = make_synthetic_shapes(4, image_size=S, seed=5, domain="B")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prioritize(model, other, processor, num_images=4, show_progress=False)
    assert any("already prioritized" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        after = model(**inputs).pred_masks
    assert (before - after).abs().max().item() <= 1e-5


# -- supersam convert -------------------------------------------------------------------------------------------------
def test_convert_cli_end_to_end(tmp_path, capsys):
    model_dir, data_dir, out = tmp_path / "sam", tmp_path / "data", tmp_path / "out"
    tiny_sam(num_layers=4, image_size=S).save_pretrained(model_dir)
    tiny_processor(S).save_pretrained(model_dir)
    make_synthetic_shapes(6, image_size=S, seed=3).save_to_disk(data_dir)

    code = cli_main(["convert", "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--output_dir",
                     str(out), "--num_calibration_images", "4", "--calibration_batch_size", "2",
                     "--image_size_choices", "16", "64", "32"])
    assert code == 0
    supernet = SuperSamModel.from_pretrained(out)
    assert supernet.config.prioritized is True
    assert supernet.config.image_size_choices == [16, 32, 64]  # the flag's resolutions (default: 32 48 64)
    assert supernet.search_space.smallest().image_size == 16
    assert "input resolutions [16, 32, 64]" in capsys.readouterr().out
    assert supernet.config.model_type == "supersam" and len(supernet.config.elastic_layers) == 2
    assert isinstance(SamProcessor.from_pretrained(out), SamProcessor)
    report = json.loads((out / "prioritization_report.json").read_text())
    assert report["num_images"] == 4 and report["elastic_layers"] == supernet.config.elastic_layers
    assert (out / "layer_importance.png").is_file()

    # Bad input comes back as a clean CLI error, not a traceback.
    code = cli_main(["convert", "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--output_dir",
                     str(tmp_path / "o2"), "--image_column", "nope"])
    assert code == 2
    assert "image_column='nope'" in capsys.readouterr().err
    for choices, message in ((["40", "64"], "resolution 40 must be a multiple of the patch size 16 in 1..64"),
                             (["16", "32"], "must include the full resolution 64")):
        code = cli_main(["convert", "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
                         "--output_dir", str(tmp_path / "o3"), "--image_size_choices", *choices])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "o3").exists()


# -- calibration cost: layer importance reuses the prefix -------------------------------------------------------------
class LayerCallCounter:
    """Counts encoder-layer forwards, in images (a call on a batch of n images counts n)."""

    def __init__(self, model):
        self.images = 0
        self.handles = [layer.register_forward_hook(self.hook) for layer in model.vision_encoder.layers]

    def hook(self, module, args, output):
        self.images += output.shape[0]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def add_square_sum(store: list, index: int, module, args) -> None:
    """Forward pre-hook body: add the squared input features of one MLP linear, summed over tokens, to store[index]."""
    store[index] = store[index] + args[0].reshape(-1, args[0].shape[-1]).float().pow(2).sum(dim=0)


@torch.no_grad()
def naive_prioritize(model, dataset, processor, num_images, batch_size, max_drop_prob=0.5):
    """The pre-prefix-reuse calibration, kept as the reference: the full encoder once per batch (recording the MLP
    norms), then the full encoder again with each layer in turn replaced by the identity. Returns importance,
    elastic layers (all but two, at least half; layer 0 kept), drop probabilities and the neuron orders (the model is
    reordered in place like `prioritize` does)."""
    layers = list(model.vision_encoder.layers)
    num_layers = len(layers)
    input_sq, hidden_sq = [0.0] * num_layers, [0.0] * num_layers
    removal_cost = torch.zeros(num_layers, dtype=torch.float64)
    stats = {"used": 0, "skipped": 0}
    model.reset_subnet()
    calibration_pixels = []
    for images in calibration_batches(dataset, "image", num_images, batch_size, 0, stats):
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        calibration_pixels.append(pixel_values)
        handles = [h for i, layer in enumerate(layers) for h in (
            layer.mlp.lin1.register_forward_pre_hook(partial(add_square_sum, input_sq, i)),
            layer.mlp.lin2.register_forward_pre_hook(partial(add_square_sum, hidden_sq, i)))]
        full = model.get_image_embeddings(pixel_values).flatten(1).float()
        for handle in handles:
            handle.remove()
        for i, layer in enumerate(layers):
            layer.active = False
            without = model.get_image_embeddings(pixel_values).flatten(1).float()
            layer.active = True
            removal_cost[i] += (1.0 - F.cosine_similarity(full, without, dim=1)).double().sum()
    orders = []
    for i, layer in enumerate(layers):
        order = torch.sort(neuron_scores(layer.mlp, input_sq[i].sqrt(), hidden_sq[i].sqrt()), descending=True, stable=True).indices
        permute_mlp_neurons(layer.mlp, order)
        orders.append(order.tolist())
    # Embedding channels and heads: their own measurement pass (prioritize records them in its full pass).
    prioritization.reorder_embedding(model, calibration_pixels)
    importance = (removal_cost / stats["used"]).tolist()
    elastic = sorted(sorted(range(1, num_layers), key=lambda i: (importance[i], i))[: max(num_layers // 2, num_layers - 2)])
    return importance, elastic, drop_probabilities(importance, elastic, max_drop_prob), orders


def test_layer_importance_reuses_prefix_and_equals_naive_report(processor):
    num_layers, images, batch_size = 12, 5, 2
    data = make_synthetic_shapes(images, image_size=S, seed=4)
    fast, naive = tiny_supernet(num_layers=num_layers, image_size=S), tiny_supernet(num_layers=num_layers, image_size=S)

    counter = LayerCallCounter(fast)
    report = prioritize(fast, data, processor, num_images=images, batch_size=batch_size, show_progress=False)
    counter.remove()
    reference_counter = LayerCallCounter(naive)
    importance, elastic, probs, orders = naive_prioritize(naive, data, processor, images, batch_size)
    reference_counter.remove()

    # Cost: the full pass + the layers after each removed one = L (L + 1) / 2 = 78 layer calls per image for L = 12,
    # i.e. 6.5 encoder passes, within the L / 2 + 1 = 7 budget (the naive way: 13 passes, 156 layer forwards).
    per_image = counter.images / images
    assert per_image == layer_calls_per_image(num_layers) == num_layers * (num_layers + 1) // 2 == 78
    assert per_image <= (num_layers / 2 + 1) * num_layers
    # (the naive way: the full model, L runs with one layer skipped (L - 1 calls each), and a separate embedding
    # measurement pass: L + L (L - 1) + L = (L + 1) L calls)
    assert reference_counter.images / images == (num_layers + 1) * num_layers

    # Same report as the naive measurement.
    assert report.num_images == images
    assert report.layer_importance == pytest.approx(importance, rel=1e-6, abs=1e-9)
    assert len(set(report.layer_importance)) == num_layers  # measured per layer, not a constant
    assert report.elastic_layers == elastic
    assert report.layer_drop_probs == pytest.approx(probs, rel=1e-6, abs=1e-9)
    assert report.permutations == orders
    for a, b in zip(fast.state_dict().values(), naive.state_dict().values()):
        assert torch.equal(a, b)


def test_without_layer_measurement_only_the_full_pass_runs(calibration, processor):
    model = tiny_supernet(num_layers=4, image_size=S)
    counter = LayerCallCounter(model)
    prioritize(model, calibration, processor, num_images=4, batch_size=3, measure_layers=False, show_progress=False)
    counter.remove()
    assert counter.images == 4 * 4 == 4 * layer_calls_per_image(4, measure_layers=False)


class RecordingBar(tqdm_std):
    """A quiet tqdm that remembers its position and postfix after every update."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)
        self.positions: list[float] = []
        self.postfixes: list[str] = []
        RecordingBar.instances.append(self)

    def update(self, n=1):
        result = super().update(n)
        self.positions.append(float(self.n))
        self.postfixes.append(self.postfix or "")
        return result


def test_progress_moves_per_layer_and_counts_images(calibration, processor, monkeypatch, caplog):
    monkeypatch.setattr(prioritization.calibration, "tqdm", RecordingBar)
    RecordingBar.instances = []
    num_layers = 6
    with caplog.at_level(logging.INFO, logger=LOGGER):
        prioritize(tiny_supernet(num_layers=num_layers, image_size=S), calibration, processor, num_images=5,
                   batch_size=2, show_progress=True)
    (bar,) = RecordingBar.instances
    assert bar.total == 5 and bar.n == pytest.approx(5)
    assert all(b >= a - 1e-9 for a, b in zip(bar.positions, bar.positions[1:]))  # never goes back
    # Within the first batch (2 images) the bar moves after the full pass and after each removal run ...
    first_batch = [p for p in bar.positions if p < 2 - 1e-9]
    assert len(set(first_batch)) >= num_layers - 1
    assert bar.positions[0] == pytest.approx(2 * num_layers / layer_calls_per_image(num_layers))
    # ... and lands on the exact image count at the end of each batch (2, 4, 5 images).
    assert {2.0, 4.0, 5.0} <= set(bar.positions)
    assert any(f"layer {num_layers}/{num_layers} removed" in p for p in bar.postfixes)
    # Logged too, for runs without a terminal: what it does, then one line per batch.
    messages = [r.getMessage() for r in caplog.records]
    calls = layer_calls_per_image(num_layers)
    assert any(f"{calls} encoder-layer calls per image" in m and f"{num_layers} layers" in m for m in messages)
    progress = [m.split(" image(s)")[0] for m in messages if m.startswith("Calibrated ") and "image(s) (" in m]
    assert progress == ["Calibrated 2/5", "Calibrated 4/5", "Calibrated 5/5"]


def test_arguments_object_equals_keywords_and_unknown_keywords_are_refused(calibration, processor):
    from supersam_hf.arguments import ConvertArguments, DataArguments
    from supersam_hf.errors import SupersamError

    first, second = tiny_supernet(num_layers=4, image_size=S), tiny_supernet(num_layers=4, image_size=S)
    args = ConvertArguments(num_calibration_images=4, calibration_batch_size=2, max_drop_prob=0.4, seed=1)
    by_object = prioritize(first, calibration, processor, args, DataArguments(dataset_name="unused"),
                           show_progress=False)
    by_keywords = prioritize(second, calibration, processor, num_images=4, batch_size=2, max_drop_prob=0.4, seed=1,
                             show_progress=False)
    assert by_object.num_images == by_keywords.num_images == 4
    assert by_object.permutations == by_keywords.permutations
    assert by_object.layer_drop_probs == by_keywords.layer_drop_probs
    with pytest.raises(SupersamError, match="unknown keyword argument.*num_imgs"):
        prioritize(first, calibration, processor, num_imgs=4)

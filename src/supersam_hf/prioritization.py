"""Prioritization: measure a SAM image encoder on calibration images and design the supernet's search space from it.

Two measurements, one calibration loop (the full model, `torch.no_grad`, hooks removed afterwards, no state kept
between calls):

* **MLP neuron importance (elastic width).** Wanda-style scores of every hidden neuron of every encoder MLP, from
  the L2 norms of the MLP's input features and hidden activations over all calibration tokens. The neurons are then
  permuted in place, most important first, so that the prefix slice a narrow subnet uses keeps the most important
  ones. The permutation is exact: the full-width function does not change.
* **Embedding channel and head importance (elastic embedding width).** Per residual channel, the mean |LayerNorm
  output| over all encoder LayerNorms; per layer and head, the norm of the head's attention output. One channel
  permutation through the whole encoder and one head permutation per layer put the most important first, so that
  a narrower embedding width keeps them (`reorder_embedding`). Exact at full width.
* **Layer importance (elastic depth).** The cost of removing each encoder layer, measured on the final image
  embeddings. The least important layers become elastic, with drop probabilities that grow as importance falls.
  Each removal run starts from the removed layer's cached input (the prefix is the same with or without it), so
  calibration costs `(L + 1) / 2` encoder passes per image, not `L + 1` (see `layer_calls_per_image`).

`prioritize` writes the result into `model.config` (`elastic_layers`, `layer_drop_probs`, `min_layers`,
`prioritized`), so `save_pretrained` keeps it, and returns a `PrioritizationReport`. `commands/convert.py` is the
`supersam convert` stage: SAM checkpoint + dataset in, prioritized supernet + processor + report out.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .arguments import ConvertArguments, DataArguments, with_keywords
from .errors import DataError, SupersamError
from .data import IMAGE_COLUMN_CANDIDATES, to_rgb_image
from .elastic.embedding import permute_attention_heads, permute_embedding_channels
from .elastic.mlp import permute_mlp_neurons
from .modeling_supersam import SuperSamModel
from .search_space import check_search_space

logger = logging.getLogger(__name__)

LAYER_IMPORTANCE_MEASURE = "embedding_cosine_distance"
LAYER_IMPORTANCE_DESCRIPTION = (
    "1 - cosine similarity between the image embeddings (neck output, flattened per image) of the full model and of "
    "the model without that encoder layer (identity in its place), averaged over the calibration images"
)
NEURON_SCORE_DESCRIPTION = (
    "mean of the sum-normalised input-side Wanda score sum_i |W1[j,i]|*||X_i|| and output-side score "
    "sum_o |W2[o,j]|*||H_j|| of each MLP hidden neuron j (norms over all calibration tokens)"
)
REPORT_JSON = "prioritization_report.json"
REPORT_PNG = "layer_importance.png"


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PrioritizationReport:
    """What `prioritize` measured and decided.

    Attributes:
        num_images: calibration images actually used.
        num_layers: encoder layers.
        measure: name of the layer-importance measure (`measure_description` says what it is).
        layer_importance: per encoder layer, the cost of removing it (None if layers were not measured).
        elastic_layers: layers a subnet may drop (sorted), as written to the config.
        layer_drop_probs: drop probability of each elastic layer (aligned with `elastic_layers`).
        min_layers: fewest layers a subnet keeps, as written to the config.
        max_drop_prob: the probability given to the cheapest layer to remove (see `drop_probabilities`).
        reordered: whether the MLP neurons were permuted.
        neuron_scores: per layer, a summary of the neuron scores: min / median / max, `top_half_fraction` (share
            of the layer's total score held by its top 50 % neurons: 0.5 = all equal, near 1 = very skewed) and
            `moved_fraction` (neurons whose position changed; 0 for an already ordered layer).
        permutations: per layer, the applied order (new position -> old neuron index). Not written to JSON.
    """

    num_images: int
    num_layers: int
    measure: str
    layer_importance: list[float] | None
    elastic_layers: list[int]
    layer_drop_probs: list[float]
    min_layers: int
    max_drop_prob: float
    reordered: bool
    neuron_scores: list[dict[str, float]]
    measure_description: str = LAYER_IMPORTANCE_DESCRIPTION
    neuron_score_description: str = NEURON_SCORE_DESCRIPTION
    permutations: list[list[int]] | None = field(default=None, repr=False)
    embedding_order: EmbeddingOrder | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("permutations")
        data.pop("embedding_order")
        return data

    def save(self, output_dir: str | os.PathLike) -> Path:
        """Write `prioritization_report.json` and `layer_importance.png` (bar chart) into `output_dir`."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / REPORT_JSON).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        self.plot(output_dir / REPORT_PNG)
        return output_dir

    def plot(self, path: str | os.PathLike) -> None:
        """Bar chart of layer importance, elastic layers highlighted and labelled with their drop probability."""
        # Figure + Agg canvas directly: no pyplot, so no global backend switch and no GUI needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        fig = Figure(figsize=(max(5.0, 0.45 * self.num_layers + 2.0), 3.6), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        layers = list(range(self.num_layers))
        importance = self.layer_importance or [0.0] * self.num_layers
        elastic = dict(zip(self.elastic_layers, self.layer_drop_probs))
        colors = ["tab:orange" if i in elastic else "tab:blue" for i in layers]
        bars = ax.bar(layers, importance, color=colors)
        for i, bar in zip(layers, bars):
            if i in elastic:
                ax.annotate(f"p={elastic[i]:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(layers)
        ax.set_xlabel("encoder layer")
        ax.set_ylabel("removal cost (1 - cos sim)")
        title = "Layer importance" if self.layer_importance is not None else "Layer importance (not measured)"
        ax.set_title(f"{title}, {self.num_images} calibration images", fontsize=10)
        ax.legend(handles=[Patch(color="tab:blue", label="fixed"), Patch(color="tab:orange", label="elastic (drop prob p)")],
                  fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path)


# ---------------------------------------------------------------------------------------------------------------
# calibration data
# ---------------------------------------------------------------------------------------------------------------
def find_image_column(dataset, image_column: str | None = None) -> str:
    """The dataset's image column: `image_column` if given, else the first of image/img/pixel_values/picture, else
    the first column whose feature is `datasets.Image`. ValueError listing the columns if there is none."""
    columns = list(dataset.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise DataError(f"image_column={image_column!r} is not a column of the dataset; its columns are {columns}.")
        return image_column
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in columns:
            return name
    try:
        from datasets import Image as ImageFeature

        for name, feature in dataset.features.items():
            if isinstance(feature, ImageFeature):
                return name
    except (ImportError, AttributeError):
        pass
    raise DataError(
        f"Could not find an image column in the dataset; its columns are {columns}. Looked for "
        f"{list(IMAGE_COLUMN_CANDIDATES)} and for an Image feature; name the column with image_column."
    )


def usable_image(value: Any, intensity_normalization: str = "percentile") -> Image.Image | None:
    """An RGB PIL image from a dataset cell (via `data.to_rgb_image`; also undecoded {"bytes"/"path"} cells), or
    None if the cell holds no usable image."""
    if value is None:
        return None
    try:
        if isinstance(value, dict):
            if value.get("bytes"):
                value = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                value = Image.open(value["path"])
            else:
                return None
        elif isinstance(value, str) and os.path.isfile(os.path.expanduser(value)):  # a column of image paths
            value = Image.open(os.path.expanduser(value))
        image = to_rgb_image(value, intensity_normalization)
    except (ValueError, TypeError, OSError):
        return None
    return image if image.width > 0 and image.height > 0 else None


def _calibration_batches(dataset, column: str, num_images: int, batch_size: int, seed: int, stats: dict,
                         intensity_normalization: str = "percentile") -> Iterator[list[Image.Image]]:
    """Batches of usable RGB images, taken in a seeded random order until `num_images` are found (unusable cells
    are skipped and counted in `stats`)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    images_only = dataset.select_columns([column])
    batch: list[Image.Image] = []
    for start in range(0, len(order), batch_size):
        if stats["used"] >= num_images:
            break
        rows = images_only[order[start : start + batch_size]][column]
        for value in rows:
            image = usable_image(value, intensity_normalization)
            if image is None:
                stats["skipped"] += 1
                continue
            batch.append(image)
            stats["used"] += 1
            if len(batch) == batch_size or stats["used"] == num_images:
                yield batch
                batch = []
            if stats["used"] >= num_images:
                break
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------------------------
# statistics and scores
# ---------------------------------------------------------------------------------------------------------------
class _MlpNormRecorder:
    """Sum of squares over calibration tokens of each MLP's input features (into `lin1`) and hidden activations
    (into `lin2`). Lives for one `prioritize` call; hooks are attached only inside `recording()`."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.input_sq: list[torch.Tensor | None] = [None] * len(self.layers)
        self.hidden_sq: list[torch.Tensor | None] = [None] * len(self.layers)

    def _hook(self, store: list, index: int):
        def hook(module, args):
            x = args[0]
            # Encoder activations are channels-last (batch, height, width, channels): one row per token.
            sq = x.detach().reshape(-1, x.shape[-1]).float().pow(2).sum(dim=0)
            store[index] = sq if store[index] is None else store[index] + sq

        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator["_MlpNormRecorder"]:
        """Record inside the block; the hooks are removed on exit, also on error."""
        handles = []
        try:
            for i, layer in enumerate(self.layers):
                handles.append(layer.mlp.lin1.register_forward_pre_hook(self._hook(self.input_sq, i)))
                handles.append(layer.mlp.lin2.register_forward_pre_hook(self._hook(self.hidden_sq, i)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def norms(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_sq[index] is None or self.hidden_sq[index] is None:
            raise RuntimeError(f"No MLP statistics were recorded for encoder layer {index}.")
        return self.input_sq[index].sqrt(), self.hidden_sq[index].sqrt()


def neuron_scores(mlp, input_norm: torch.Tensor, hidden_norm: torch.Tensor, input_weight: float = 0.5) -> torch.Tensor:
    """Importance of each hidden neuron j of an encoder MLP (float64, sums to 1 over the layer).

    `score_in[j]  = sum_i |W1[j, i]| * ||X_i||`  (Wanda on `lin1`: how strongly the data drive neuron j),
    `score_out[j] = sum_o |W2[o, j]| * ||H_j||`  (Wanda on `lin2`: how much neuron j writes into the residual),
    `score[j] = (score_in[j] / sum(score_in) + score_out[j] / sum(score_out)) / 2`  (sums over the layer's neurons).

    Each side is divided by its own sum before averaging because the two live on unrelated scales (input features
    after LayerNorm vs. GELU activations, summed over `hidden_size` vs. `hidden_size` outputs with different weight
    norms); raw sums would let whichever side is larger decide alone. Sum normalisation is scale-free and keeps
    each side's ratios between neurons, so the result is an equal-weight mixture of two importance distributions.
    `input_weight` (default 0.5, the equal mixture) exists for ablations: 0 = output side only, 1 = input side only.
    """
    w1 = mlp.lin1.weight.detach().float()
    w2 = mlp.lin2.weight.detach().float()
    score_in = (w1.abs() @ input_norm.to(w1.device).float()).double()
    score_out = (w2.abs().sum(dim=0) * hidden_norm.to(w2.device).float()).double()
    tiny = torch.finfo(torch.float64).tiny
    score_in, score_out = score_in / score_in.sum().clamp_min(tiny), score_out / score_out.sum().clamp_min(tiny)
    return input_weight * score_in + (1.0 - input_weight) * score_out


def _score_summary(scores: torch.Tensor, order: torch.Tensor) -> dict[str, float]:
    ranked = scores[order]
    top = ranked[: math.ceil(len(ranked) / 2)].sum()
    return {
        "min": float(scores.min()),
        "median": float(scores.median()),
        "max": float(scores.max()),
        "top_half_fraction": float(top / ranked.sum().clamp_min(torch.finfo(torch.float64).tiny)),
        "moved_fraction": float((order != torch.arange(len(order))).double().mean()),
    }


def drop_probabilities(importance: list[float], elastic_layers: list[int], max_drop_prob: float) -> list[float]:
    """Drop probability of each elastic layer from measured layer importance.

    `p_i = max_drop_prob * (I_max - I_i) / (I_max - I_min)`, with min and max over *all* encoder layers: the
    importance is min-max normalised, so the cheapest layer to remove gets `max_drop_prob`, a layer as costly as
    the most important one would get 0, and the layers in between get probabilities proportional to where their
    cost sits in the measured range (magnitudes count, not just ranks). The result is monotone non-increasing in
    importance and lies in [0, max_drop_prob] (< 1). Unlike `max_drop_prob * (1 - I_i / I_max)` it cannot collapse
    to near-zero probabilities when all layers cost about the same, which would leave elastic depth almost never
    sampled. If every layer costs the same, every elastic layer gets `max_drop_prob`.
    """
    if not elastic_layers:
        return []
    low, high = min(importance), max(importance)
    probs = []
    for i in elastic_layers:
        p = max_drop_prob if high <= low else max_drop_prob * (high - importance[i]) / (high - low)
        probs.append(float(min(max_drop_prob, max(0.0, p))))
    return probs


# ---------------------------------------------------------------------------------------------------------------
# calibration passes: full model once, then each layer's removal from its cached input
# ---------------------------------------------------------------------------------------------------------------
def layer_calls_per_image(num_layers: int, measure_layers: bool = True) -> int:
    """Encoder-layer forwards per calibration image: the full pass (`L`), plus, when measuring layer importance,
    the layers after each removed layer i (`L - 1 - i`, the prefix is reused): `L + L (L - 1) / 2` in all, i.e.
    `(L + 1) / 2` encoder passes (6.5 for ViT-B's 12 layers instead of 13 when every removal reran the encoder)."""
    return num_layers + (num_layers * (num_layers - 1) // 2 if measure_layers else 0)


class _LayerInputCache:
    """Each encoder layer's input during one forward. The hidden state entering layer i is the same whether layer i
    is then kept or removed, so a removal run starts from it instead of recomputing layers 0..i-1."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)

    def _store(self, index: int, module, args) -> None:
        self.inputs[index] = args[0]

    @contextlib.contextmanager
    def capturing(self) -> Iterator["_LayerInputCache"]:
        """Cache layer inputs inside the block; the hooks are removed on exit, also on error."""
        handles = [layer.register_forward_pre_hook(partial(self._store, i)) for i, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def pop(self, index: int) -> torch.Tensor:
        """Layer `index`'s cached input, released from the cache (each removal run needs it once)."""
        hidden = self.inputs[index]
        if hidden is None:
            raise RuntimeError(f"No input was cached for encoder layer {index}; run the full encoder first.")
        self.inputs[index] = None
        return hidden


def _removal_costs(model: SuperSamModel, cache: _LayerInputCache, full: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """For each encoder layer i, `(i, sum over the batch of 1 - cos(E, E_-i))`: `E_-i` = the neck applied to layers
    i+1..L-1 run from layer i's cached input, the same computation as the full encoder with layer i as the identity
    (`full` = `E`, flattened per image, float32). Yields after each layer, so callers can report progress."""
    encoder = model.vision_encoder
    for i in range(len(encoder.layers)):
        hidden = cache.pop(i)
        for layer in encoder.layers[i + 1 :]:
            hidden = layer(hidden)
        without = encoder.neck(hidden).flatten(1).float()
        cos = F.cosine_similarity(full, without, dim=1)
        yield i, (1.0 - cos).double().sum().cpu()


@torch.no_grad()
def _calibrate(model: SuperSamModel, batches: Iterator[torch.Tensor], recorders: tuple,
               measure_layers: bool, num_images: int, show_progress: bool) -> torch.Tensor:
    """Run the calibration batches (pixel values) through the full model once each, recording MLP and embedding
    statistics into `recorders` (each has a `recording()` context), and, if `measure_layers`, every layer's removal
    from its cached input. Returns the per-layer removal costs summed over images (zeros if not measured).

    Memory: a batch's L layer inputs are cached until their removal run (float32 ViT-B at 1024 px: ~150 MB per
    image). The bar counts images; inside a batch it advances in proportion to the layer calls done, with the
    removed layer as postfix, so a slow batch still shows progress and an honest time estimate."""
    layers = model.vision_encoder.layers
    num_layers = len(layers)
    per_image = layer_calls_per_image(num_layers, measure_layers)
    removal_cost = torch.zeros(num_layers, dtype=torch.float64)
    removals = f", then each of the {num_layers} layers is removed in turn from its cached input" if measure_layers else ""
    logger.info(
        "Calibrating on %d image(s): the full model records MLP neuron statistics%s (%d encoder-layer calls per "
        "image = %.1f encoder passes).", num_images, removals, per_image, per_image / num_layers,
    )
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    bar = tqdm(total=num_images, desc="prioritize: calibrating", unit="img", bar_format=bar_format,
               disable=not show_progress)
    done, start = 0, time.perf_counter()
    cache = _LayerInputCache(layers)
    with bar:
        for pixel_values in batches:
            size = pixel_values.shape[0]
            with contextlib.ExitStack() as stack:
                for recorder in recorders:
                    stack.enter_context(recorder.recording())
                if measure_layers:
                    stack.enter_context(cache.capturing())
                full = model.get_image_embeddings(pixel_values).flatten(1).float()
            bar.update(size * num_layers / per_image)
            if measure_layers:
                for i, cost in _removal_costs(model, cache, full):
                    removal_cost[i] += cost
                    bar.set_postfix_str(f"layer {i + 1}/{num_layers} removed", refresh=False)
                    bar.update(size * (num_layers - 1 - i) / per_image)
            done += size
            bar.update(done - bar.n)  # exact image count at the end of each batch (no float drift)
            logger.info("Calibrated %d/%d image(s) (%.1f s).", done, num_images, time.perf_counter() - start)
    return removal_cost


# ---------------------------------------------------------------------------------------------------------------
# embedding channels and attention heads (elastic embedding width)
# ---------------------------------------------------------------------------------------------------------------
CHANNEL_SCORE_DESCRIPTION = (
    "per residual channel, the mean |LayerNorm output| over calibration tokens, each encoder LayerNorm's means "
    "normalised to sum 1, averaged over all of them"
)
HEAD_SCORE_DESCRIPTION = "per layer and head, the L2 norm of the head's attention output (proj input) over calibration tokens"


@dataclass
class EmbeddingOrder:
    """The embedding-channel and head orders `reorder_embedding` applied (new position -> old index).

    Attributes:
        channel_order: one permutation of the residual channels, shared by the whole encoder.
        head_orders: per encoder layer, the order of its attention heads.
        channel_scores: importance of each (old) channel, as `embedding_channel_scores` computes it.
        head_scores: per layer, importance of each (old) head.
    """

    channel_order: list[int]
    head_orders: list[list[int]]
    channel_scores: list[float] = field(repr=False, default_factory=list)
    head_scores: list[list[float]] = field(repr=False, default_factory=list)
    channel_score_description: str = field(repr=False, default=CHANNEL_SCORE_DESCRIPTION)
    head_score_description: str = field(repr=False, default=HEAD_SCORE_DESCRIPTION)


class _EmbeddingRecorder:
    """Per-channel sums of |LayerNorm output| (every encoder LayerNorm) and per-channel sums of squares of each
    attention's output before `proj` (its heads' outputs side by side). Hooks live only inside `recording()`."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.norm_abs: dict[tuple[int, int], torch.Tensor] = {}
        self.attn_sq: dict[int, torch.Tensor] = {}

    @staticmethod
    def _add(store: dict, key, value: torch.Tensor) -> None:
        store[key] = value if key not in store else store[key] + value

    def _norm_hook(self, key: tuple[int, int]):
        def hook(module, args, output):
            self._add(self.norm_abs, key, output.detach().reshape(-1, output.shape[-1]).float().abs().sum(dim=0))

        return hook

    def _proj_hook(self, index: int):
        def hook(module, args):
            x = args[0].detach()
            self._add(self.attn_sq, index, x.reshape(-1, x.shape[-1]).float().pow(2).sum(dim=0))

        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator["_EmbeddingRecorder"]:
        handles = []
        try:
            for i, layer in enumerate(self.layers):
                handles.append(layer.layer_norm1.register_forward_hook(self._norm_hook((i, 1))))
                handles.append(layer.layer_norm2.register_forward_hook(self._norm_hook((i, 2))))
                handles.append(layer.attn.proj.register_forward_pre_hook(self._proj_hook(i)))
            yield self
        finally:
            for handle in handles:
                handle.remove()


def embedding_channel_scores(norm_abs_sums: list[torch.Tensor]) -> torch.Tensor:
    """Importance of each residual channel (float64, sums to 1): every LayerNorm's per-channel |output| sums are
    divided by their own total (so no layer dominates by scale alone), then averaged over the LayerNorms."""
    tiny = torch.finfo(torch.float64).tiny
    stacked = torch.stack([s.double().cpu() for s in norm_abs_sums])
    return (stacked / stacked.sum(dim=1, keepdim=True).clamp_min(tiny)).mean(dim=0)


def attention_head_scores(attn_output_sq: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Importance of each head of one layer: the L2 norm of its output (its `head_dim` channels of the proj input)."""
    return attn_output_sq.double().cpu().reshape(num_heads, -1).sum(dim=1).sqrt()


def reorder_embedding(model: SuperSamModel, pixel_batches: Iterable[torch.Tensor], apply: bool = True) -> EmbeddingOrder:
    """Measure embedding-channel and head importance of `model`'s full encoder on `pixel_batches` (preprocessed
    `pixel_values`, on the model's device and dtype) and, if `apply`, permute both most important first, so that
    a narrower embedding width keeps the most important channels and heads. Exact at full width.

    Runs the full model under `torch.no_grad`; the caller sets eval mode and the full subnet (as `prioritize` does,
    which records the same statistics during its own calibration pass and calls `embedding_order_from`).
    """
    recorder = _EmbeddingRecorder(model.vision_encoder.layers)
    with torch.no_grad(), recorder.recording():
        for pixel_values in pixel_batches:
            model.get_image_embeddings(pixel_values)
    return embedding_order_from(model, recorder, apply=apply)


def embedding_order_from(model: SuperSamModel, recorder: _EmbeddingRecorder, apply: bool = True) -> EmbeddingOrder:
    """The channel and head orders from a filled `_EmbeddingRecorder`, applied to `model` if `apply`."""
    encoder = model.vision_encoder
    layers = list(encoder.layers)
    if not recorder.attn_sq:
        raise SupersamError("reorder_embedding got no calibration batch; pass at least one batch of pixel_values.")
    channel_scores = embedding_channel_scores([recorder.norm_abs[key] for key in sorted(recorder.norm_abs)])
    channel_order = torch.sort(channel_scores, descending=True, stable=True).indices
    head_scores = [attention_head_scores(recorder.attn_sq[i], layer.attn.num_attention_heads) for i, layer in enumerate(layers)]
    head_orders = [torch.sort(scores, descending=True, stable=True).indices for scores in head_scores]
    if apply:
        # Heads first: their indices are output rows of qkv / input columns of proj, which the channel order
        # (qkv input columns, proj output rows) does not touch, so the two permutations commute.
        for layer, order in zip(layers, head_orders):
            permute_attention_heads(layer.attn, order)
        permute_embedding_channels(encoder, channel_order)
    return EmbeddingOrder(
        channel_order=channel_order.tolist(),
        head_orders=[order.tolist() for order in head_orders],
        channel_scores=channel_scores.tolist(),
        head_scores=[scores.tolist() for scores in head_scores],
    )


# ---------------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------------
# How many encoder layers become elastic by default, in `supersam convert`, `prioritize` and the demo: all but
# DEFAULT_KEPT_LAYERS (at least half of them), so that subnets 70 % smaller than the base exist (ViT-B: 10 of 12).
# Drop probabilities scale with measured importance, so important layers still rarely drop during training.
DEFAULT_KEPT_LAYERS = 2


def default_num_elastic_layers(num_layers: int, keep_first_layer: bool = True) -> int:
    """How many layers `prioritize` makes elastic by default: all but `DEFAULT_KEPT_LAYERS`, at least half of
    them (rounded down), at most the candidates (every layer but the first with `keep_first_layer`)."""
    wanted = max(num_layers // 2, num_layers - DEFAULT_KEPT_LAYERS)
    return max(0, min(wanted, num_layers - (1 if keep_first_layer else 0)))


# prioritize's keyword conveniences: keyword -> its ConvertArguments field (the library's older names included:
# `num_images` is --num_calibration_images), and keyword -> its DataArguments field.
PRIORITIZE_KEYWORDS = {name: name for name in (
    "num_calibration_images", "calibration_batch_size", "reorder", "measure_layers", "num_elastic_layers",
    "max_drop_prob", "keep_first_layer", "seed")} | {"num_images": "num_calibration_images",
                                                     "batch_size": "calibration_batch_size"}
PRIORITIZE_DATA_KEYWORDS = {"image_column": "image_column", "intensity_normalization": "intensity_normalization"}


def prioritize(
    model: SuperSamModel,
    dataset,
    processor,
    args: ConvertArguments | None = None,
    data_args: DataArguments | None = None,
    *,
    show_progress: bool = True,
    state=None,
    **keywords,
) -> PrioritizationReport:
    """Measure `model`'s image encoder on calibration images and write the search space into `model.config`.

    Args:
        model: the supernet (`SuperSamModel`); modified in place (MLP neuron order, config).
        dataset: a `datasets.Dataset` with an image column.
        processor: the model's `SamProcessor` (resizes, normalises and pads the images).
        args: the `ConvertArguments` the CLI parses (`supersam convert`'s flags; None: their defaults; `device` is
            where the CLI loads the model and is not read here).
        data_args: the `DataArguments` the CLI parses; read: `image_column`, `intensity_normalization`.
        **keywords: conveniences for the fields of `args` / `data_args` (see `PRIORITIZE_KEYWORDS` and
            `PRIORITIZE_DATA_KEYWORDS`), e.g. `num_images=32`; they override `args` / `data_args` (neither object is
            changed). An unknown keyword is refused. The fields:
        num_images (num_calibration_images): calibration images, drawn in a seeded random order (all of them if the dataset has fewer).
        batch_size (calibration_batch_size): images per encoder forward.
        reorder: permute each encoder MLP's hidden neurons most important first (see `neuron_scores`).
        measure_layers: measure layer importance and set `elastic_layers` / `layer_drop_probs` / `min_layers`;
            if False the config's depth settings are left as they are.
        num_elastic_layers: how many of the least important layers become elastic (default: all but two, at least
            half the layers, at most the number of candidates; `default_num_elastic_layers`).
        max_drop_prob: drop probability of the cheapest layer to remove; in [0, 1) (see `drop_probabilities`).
        keep_first_layer: never make layer 0 elastic (it turns patch embeddings into features).
        image_column: the dataset's image column (default: auto-detected).
        seed: seed of the image selection.
        show_progress: show a tqdm progress bar.
        intensity_normalization: how non-8-bit images reach 0-255 (`data.to_rgb_image`), as in training/evaluation.
        state: accelerate's `PartialState` of a multi-process run (every process calls with the same arguments):
            the calibration batches are dealt round-robin to the processes, and the statistics (sums over images)
            are gathered and added up, so every process ends with the same model and report as one process would
            (equal up to the order of floating-point additions). None: this process calibrates on everything.

    Layer importance = `1 - cos(E, E_-i)` with `E` the image embeddings (neck output, one flattened vector per
    image) of the full model and `E_-i` those with layer i replaced by the identity, averaged over images. Elastic
    layers are the `num_elastic_layers` lowest-importance candidates; see `drop_probabilities` for their
    probabilities; `min_layers = num_layers - num_elastic_layers` (at least 1), so the smallest subnet drops them all.
    `E_-i` is computed from layer i's input cached during the full pass (same result, `layer_calls_per_image` cost).

    Everything runs at the full model under `torch.no_grad` on the model's device and dtype, in eval mode; the
    previous subnet and train/eval mode are restored afterwards. Statistics live only inside this call.
    """
    args, data = with_keywords(args, ConvertArguments, keywords, PRIORITIZE_KEYWORDS, "prioritize", data_args,
                               PRIORITIZE_DATA_KEYWORDS)
    num_images, batch_size, seed = args.num_calibration_images, args.calibration_batch_size, args.seed
    reorder, measure_layers, max_drop_prob = args.reorder, args.measure_layers, args.max_drop_prob
    num_elastic_layers, keep_first_layer = args.num_elastic_layers, args.keep_first_layer
    image_column, intensity_normalization = data["image_column"], data["intensity_normalization"]
    _check_prioritize_arguments(model, dataset, num_images, batch_size, max_drop_prob)
    layers = list(model.vision_encoder.layers)
    num_layers = len(layers)
    candidates, num_elastic_layers = _elastic_candidates(num_layers, num_elastic_layers, keep_first_layer)
    column = _calibration_column(model, dataset, image_column, num_images)

    previous_subnet, was_training = model.active_subnet, model.training
    recorder, embedding_recorder = _MlpNormRecorder(layers), _EmbeddingRecorder(layers)
    model.reset_subnet()
    model.eval()
    try:
        removal_cost, used = _measure(model, dataset, processor, column, (recorder, embedding_recorder), num_images,
                                      batch_size, seed, measure_layers, show_progress, intensity_normalization, state)
        summaries, permutations = _order_mlp_neurons(layers, recorder, reorder)
        embedding_order = embedding_order_from(model, embedding_recorder, apply=reorder)
        importance = None
        if measure_layers:
            importance = _set_elastic_depth(model.config, (removal_cost / used).tolist(), candidates,
                                            num_elastic_layers, max_drop_prob)
        if reorder and measure_layers:
            model.config.prioritized = True
    finally:
        model.train(was_training)
        _restore_subnet(model, previous_subnet)

    return _logged_report(model.config, used, num_layers, importance, max_drop_prob, reorder, summaries,
                          permutations, embedding_order)


def _logged_report(config, used: int, num_layers: int, importance: list[float] | None, max_drop_prob: float,
                   reorder: bool, summaries: list[dict[str, float]], permutations: list[list[int]],
                   embedding_order: EmbeddingOrder) -> PrioritizationReport:
    """The `PrioritizationReport` of a finished `prioritize` (depth settings as now in `config`), logged."""
    report = PrioritizationReport(
        num_images=used,
        num_layers=num_layers,
        measure=LAYER_IMPORTANCE_MEASURE,
        layer_importance=importance,
        elastic_layers=list(config.elastic_layers),
        layer_drop_probs=list(config.layer_drop_probs),
        min_layers=int(config.min_layers),
        max_drop_prob=float(max_drop_prob),
        reordered=bool(reorder),
        neuron_scores=summaries,
        permutations=permutations,
        embedding_order=embedding_order,
    )
    logger.info(
        "Prioritized on %d image(s): elastic layers %s with drop probabilities %s.",
        used, report.elastic_layers, [round(p, 3) for p in report.layer_drop_probs],
    )
    return report


def _check_prioritize_arguments(model, dataset, num_images: int, batch_size: int, max_drop_prob: float) -> None:
    """Refuse what `prioritize` cannot work with before anything runs: not a supernet, a drop probability outside
    [0, 1), no images or batch, a DatasetDict or anything without columns."""
    if not isinstance(model, SuperSamModel):
        raise SupersamError(
            f"prioritize needs a SuperSamModel, got {type(model).__name__}; convert with SuperSamModel.from_sam(model) "
            "or load with SuperSamModel.from_pretrained(path)."
        )
    if not 0.0 <= max_drop_prob < 1.0:
        raise SupersamError(f"max_drop_prob={max_drop_prob} must be in [0, 1).")
    if num_images < 1:
        raise SupersamError(f"num_images={num_images} must be at least 1.")
    if batch_size < 1:
        raise SupersamError(f"batch_size={batch_size} must be at least 1.")
    if isinstance(dataset, dict) or not hasattr(dataset, "column_names"):
        splits = f" of splits {list(dataset.keys())}; pick one" if hasattr(dataset, "keys") else ""
        raise DataError(f"Expected a datasets.Dataset with an image column, got a {type(dataset).__name__}{splits}.")


def _elastic_candidates(num_layers: int, num_elastic_layers: int | None, keep_first_layer: bool) -> tuple[list[int], int]:
    """The layers that may become elastic and how many will (default: `default_num_elastic_layers`); a count
    outside [0, candidates] is refused."""
    candidates = list(range(1 if keep_first_layer else 0, num_layers))
    if num_elastic_layers is None:
        num_elastic_layers = default_num_elastic_layers(num_layers, keep_first_layer)
    if not 0 <= num_elastic_layers <= len(candidates):
        raise DataError(
            f"num_elastic_layers={num_elastic_layers} must be between 0 and {len(candidates)} (the layers that may be "
            f"made elastic{' with keep_first_layer=True' if keep_first_layer else ''})."
        )
    return candidates, num_elastic_layers


def _calibration_column(model: SuperSamModel, dataset, image_column: str | None, num_images: int) -> str:
    """The dataset's image column; an empty dataset is refused, and a warning says when there are fewer rows than
    `num_images` or the model was already prioritized (measured again, its depth settings replaced)."""
    column = find_image_column(dataset, image_column)
    if len(dataset) == 0:
        raise DataError("The calibration dataset is empty; prioritize needs at least one image.")
    if num_images > len(dataset):
        logger.warning(
            "num_images=%d but the dataset has only %d rows: calibrating on all of them.", num_images, len(dataset)
        )
    if model.config.prioritized:
        logger.warning(
            "This model was already prioritized; measuring again on these images and re-ordering (exact: the full "
            "model's outputs do not change) and replacing the search space's depth settings."
        )
    return column


def _measure(model: SuperSamModel, dataset, processor, column: str, recorders: tuple, num_images: int,
             batch_size: int, seed: int, measure_layers: bool, show_progress: bool,
             intensity_normalization: str, state=None) -> tuple[torch.Tensor, int]:
    """One calibration pass of the full model (in eval mode, set by the caller) over up to `num_images` usable
    images of `column`, on the model's device and dtype: fills `recorders` and returns the per-layer removal costs
    (summed over images) and how many images were used. No usable image is an error; skipped rows and fewer
    images than asked for are warnings."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    stats = {"used": 0, "skipped": 0}
    target = min(num_images, len(dataset))
    batches = _calibration_batches(dataset, column, target, batch_size, seed, stats, intensity_normalization)
    distributed = state is not None and state.num_processes > 1
    if distributed:  # every process walks the same selection (so `stats` agree) and runs its own batches
        rank, size = state.process_index, state.num_processes
        batches = (batch for k, batch in enumerate(batches) if k % size == rank)
        show_progress = show_progress and state.is_local_main_process
    inputs = (processor(images=images, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype) for images in batches)
    share = -(-target // state.num_processes) if distributed else target
    removal_cost = _calibrate(model, inputs, recorders, measure_layers, share, show_progress)
    if distributed:
        removal_cost = _sum_across_processes(removal_cost, recorders, device)

    used = stats["used"]
    if used == 0:
        raise SupersamError(
            f"No usable image in column {column!r}: {stats['skipped']} row(s) examined, none held a decodable "
            "image (PIL image, image bytes/path, or an (H, W) / (H, W, C) / (C, H, W) array)."
        )
    if stats["skipped"]:
        logger.warning("Skipped %d row(s) of column %r without a usable image.", stats["skipped"], column)
    if used < num_images:
        logger.warning("Calibrated on %d image(s) instead of the requested num_images=%d.", used, num_images)
    return removal_cost, used


def _sum_across_processes(removal_cost: torch.Tensor, recorders: tuple, device: torch.device) -> torch.Tensor:
    """Add up every process's calibration sums (removal costs, MLP and embedding statistics) in process order and
    put the totals (on `device`, the model's) into this process's recorders; returns the total removal costs (CPU,
    as `_calibrate` returns them). A process that had no batch
    contributes nothing (its entries are None)."""
    from accelerate.utils import gather_object

    mlp, embedding = recorders

    def cpu(value):
        if isinstance(value, torch.Tensor):
            return value.cpu()
        if isinstance(value, list):
            return [cpu(v) for v in value]
        if isinstance(value, dict):
            return {k: cpu(v) for k, v in value.items()}
        return value

    def add(total, part):
        if isinstance(total, list):
            return [add(a, b) for a, b in zip(total, part)]
        if isinstance(total, dict):
            return {k: add(total.get(k), part.get(k)) for k in dict.fromkeys([*total, *part])}
        if total is None or part is None:
            return part if total is None else total
        return total + part

    def back(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, list):
            return [back(v) for v in value]
        if isinstance(value, dict):
            return {k: back(v) for k, v in value.items()}
        return value

    local = cpu({"removal": removal_cost, "input_sq": mlp.input_sq, "hidden_sq": mlp.hidden_sq,
                 "norm_abs": embedding.norm_abs, "attn_sq": embedding.attn_sq})
    parts = gather_object([local])  # one per process, process 0 first
    total = parts[0]
    for part in parts[1:]:
        total = add(total, part)
    total = back(total)
    mlp.input_sq, mlp.hidden_sq = total["input_sq"], total["hidden_sq"]
    embedding.norm_abs, embedding.attn_sq = total["norm_abs"], total["attn_sq"]
    return total["removal"].cpu()


def _order_mlp_neurons(layers: list, recorder: _MlpNormRecorder, reorder: bool) -> tuple[list[dict[str, float]], list[list[int]]]:
    """Score every encoder MLP's hidden neurons from the recorded norms (`neuron_scores`), order them most
    important first and, if `reorder`, permute them in place. Returns per layer the score summary and the order."""
    summaries, permutations = [], []
    for i, layer in enumerate(layers):
        input_norm, hidden_norm = recorder.norms(i)
        scores = neuron_scores(layer.mlp, input_norm, hidden_norm).cpu()
        order = torch.sort(scores, descending=True, stable=True).indices
        if reorder:
            permute_mlp_neurons(layer.mlp, order)
        summaries.append(_score_summary(scores, order))
        permutations.append(order.tolist())
    return summaries, permutations


def _set_elastic_depth(config, importance: list[float], candidates: list[int], num_elastic_layers: int,
                       max_drop_prob: float) -> list[float]:
    """Write the depth search space into `config`: the `num_elastic_layers` least important candidates become
    elastic (ties: lower index first) with `drop_probabilities`, `min_layers` = the rest (at least 1), checked
    first. Returns `importance` (per layer, mean removal cost)."""
    num_layers = len(importance)
    by_importance = sorted(candidates, key=lambda i: (importance[i], i))
    elastic = sorted(by_importance[:num_elastic_layers])
    probs = drop_probabilities(importance, elastic, max_drop_prob)
    min_layers = max(1, num_layers - num_elastic_layers)
    check_search_space(num_layers, config.vision_config.mlp_dim, elastic, probs, config.mlp_dim_choices, min_layers)
    config.elastic_layers, config.layer_drop_probs, config.min_layers = elastic, probs, min_layers
    return importance


def _restore_subnet(model: SuperSamModel, subnet) -> None:
    """Re-activate `subnet` (None = full model); if the new search space no longer contains it, stay at full."""
    if subnet is None:
        model.reset_subnet()
        return
    try:
        model.set_subnet(subnet)
    except ValueError as error:
        model.reset_subnet()
        logger.warning(
            "The previously active subnet %s is not in the new search space (%s); the full model is active.",
            subnet.name, error,
        )

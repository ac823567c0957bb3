"""What `prioritize` measured and decided: `PrioritizationReport` (JSON + bar chart) and `EmbeddingOrder`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LAYER_IMPORTANCE_MEASURE = "embedding_cosine_distance"
LAYER_IMPORTANCE_DESCRIPTION = (
    "1 - cosine similarity between the image embeddings (neck output, flattened per image) of the full model and of "
    "the model without that encoder layer (identity in its place), averaged over the calibration images"
)
NEURON_SCORE_DESCRIPTION = (
    "mean of the sum-normalised input-side Wanda score sum_i |W1[j,i]|*||X_i|| and output-side score "
    "sum_o |W2[o,j]|*||H_j|| of each MLP hidden neuron j (norms over all calibration tokens)"
)
CHANNEL_SCORE_DESCRIPTION = (
    "per residual channel, the mean |LayerNorm output| over calibration tokens, each encoder LayerNorm's means "
    "normalised to sum 1, averaged over all of them"
)
HEAD_SCORE_DESCRIPTION = "per layer and head, the L2 norm of the head's attention output (proj input) over calibration tokens"
REPORT_JSON = "prioritization_report.json"
REPORT_PNG = "layer_importance.png"


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

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

Modules: `calibration` (images through `data/`'s column and image handling; the calibration pass), `recorders`
(the hooks that record statistics), `scores` (scores, orders, depth settings), `report`, `stage` (`prioritize`).
The permutations are the elastic rules' (`elastic.mlp`, `elastic.embedding`), re-exported here.
"""

from ..elastic.embedding import permute_attention_heads, permute_embedding_channels
from ..elastic.mlp import permute_mlp_neurons
from .calibration import calibration_batches, layer_calls_per_image
from .report import REPORT_JSON, REPORT_PNG, EmbeddingOrder, PrioritizationReport
from .scores import (
    attention_head_scores,
    drop_probabilities,
    embedding_channel_scores,
    neuron_scores,
    reorder_embedding,
)
from .stage import DEFAULT_KEPT_LAYERS, default_num_elastic_layers, prioritize

__all__ = [
    "DEFAULT_KEPT_LAYERS", "EmbeddingOrder", "PrioritizationReport", "REPORT_JSON", "REPORT_PNG",
    "attention_head_scores", "calibration_batches", "default_num_elastic_layers", "drop_probabilities",
    "embedding_channel_scores", "layer_calls_per_image", "neuron_scores", "permute_attention_heads",
    "permute_embedding_channels", "permute_mlp_neurons", "prioritize", "reorder_embedding",
]

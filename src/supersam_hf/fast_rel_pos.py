"""SAM's decomposed relative-position bias written in one pass, for the supernet and, on request, for transformers' own
`SamModel` (an exported checkpoint run as it is).

transformers' `SamVisionAttention.get_decomposed_rel_pos` adds its two small terms, `rel_h` (batch·heads, q_h, q_w,
k_h) and `rel_w` (…, k_w), in the transposed layout `torch.einsum` leaves them in. The broadcast sum, heads × tokens²
per window (6 × 2304² = 32 M numbers in each global layer of a ViT-B subnet at 768 px), then comes out transposed, and
the reshape to attention's (batch, heads, tokens, tokens) copies it once more: two memory-bound passes over the
largest tensor of the layer, which MACs do not count. Made contiguous first (k_h or k_w numbers per query), the sum is
one pass and the reshape a view. The numbers are the same, element by element, so every output is bitwise the same.

`use_fast_sam_rel_pos()` puts this version into transformers' `SamVisionAttention` (both its eager and its SDPA
attention) for the whole process, or within a `with` block, like `torch.set_grad_enabled`:

    from supersam_hf import use_fast_sam_rel_pos

    use_fast_sam_rel_pos()                # from now on (use_fast_sam_rel_pos(False): transformers' own again)
    with use_fast_sam_rel_pos():          # only inside the block; the previous setting after it
        outputs = model(**inputs)

Nothing is changed on import: a process that does not call it runs transformers' code as it is.
"""

from __future__ import annotations

import torch
from transformers.models.sam.modeling_sam import SamVisionAttention

__all__ = ["decomposed_rel_pos", "fast_sam_rel_pos_enabled", "use_fast_sam_rel_pos"]

_TRANSFORMERS_REL_POS = SamVisionAttention.get_decomposed_rel_pos


def decomposed_rel_pos(self, query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                       q_size: tuple[int, int], k_size: tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position bias (batch, q_h, q_w, k_h, k_w): the numbers of
    `SamVisionAttention.get_decomposed_rel_pos`, written contiguously in one pass (a method of a `SamVisionAttention`:
    `self.get_rel_pos` resamples the tables)."""
    (query_h, query_w), (key_h, key_w) = q_size, k_size
    table_h = self.get_rel_pos(query_h, key_h, rel_pos_h)
    table_w = self.get_rel_pos(query_w, key_w, rel_pos_w)
    grid = query.reshape(query.shape[0], query_h, query_w, query.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid, table_h).contiguous()
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid, table_w).contiguous()
    return rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]


def fast_sam_rel_pos_enabled() -> bool:
    """Whether transformers' `SamVisionAttention` runs `decomposed_rel_pos` now."""
    return SamVisionAttention.get_decomposed_rel_pos is decomposed_rel_pos


def _set(enabled: bool) -> None:
    SamVisionAttention.get_decomposed_rel_pos = decomposed_rel_pos if enabled else _TRANSFORMERS_REL_POS


class use_fast_sam_rel_pos:  # noqa: N801 (a function to its callers, as torch.set_grad_enabled)
    """Run transformers' `SamVisionAttention` (every `SamModel`, eager or SDPA attention) with `decomposed_rel_pos`
    (`enabled=True`) or with transformers' own bias (`False`), from this call on; as a context manager, only until
    the block ends, then the previous setting. Outputs are bitwise the same either way; only the time changes."""

    def __init__(self, enabled: bool = True) -> None:
        self.previous = fast_sam_rel_pos_enabled()
        _set(bool(enabled))

    def __enter__(self) -> "use_fast_sam_rel_pos":
        return self

    def __exit__(self, *exc) -> None:
        _set(self.previous)

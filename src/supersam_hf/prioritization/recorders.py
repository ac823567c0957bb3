"""The hooks of one calibration pass: sums over calibration tokens that the scores are computed from, and each
encoder layer's cached input (the prefix a layer-removal run reuses). Hooks are attached only inside
`recording()` and removed on exit, also on error; the statistics live for one `prioritize` call."""

from __future__ import annotations

import abc
import contextlib
from typing import Iterator

import torch


def _token_sum(x: torch.Tensor, square: bool) -> torch.Tensor:
    """Per channel, the sum over all tokens of x² (`square`) or |x|: encoder activations are channels-last (batch,
    height, width, channels), one row per token."""
    rows = x.detach().reshape(-1, x.shape[-1]).float()
    return (rows.pow(2) if square else rows.abs()).sum(dim=0)


class _Recorder(abc.ABC):
    """Base of the recorders: `SUMS` names the dicts of per-channel sums (gathered across processes)."""

    SUMS: tuple[str, ...] = ()

    def __init__(self, layers):
        self.layers = list(layers)
        for name in self.SUMS:
            setattr(self, name, {})

    @abc.abstractmethod
    def _attach(self, handles: list) -> None:
        """Register this recorder's hooks, appending their handles to `handles`."""

    @staticmethod
    def _add(store: dict, key, value: torch.Tensor) -> None:
        store[key] = value if key not in store else store[key] + value

    def _pre_hook(self, store: dict, key, square: bool = True):
        return lambda module, args: self._add(store, key, _token_sum(args[0], square))

    @contextlib.contextmanager
    def recording(self) -> Iterator["_Recorder"]:
        """Record inside the block; the hooks are removed on exit, also on error."""
        handles: list = []
        try:
            self._attach(handles)
            yield self
        finally:
            for handle in handles:
                handle.remove()


class MlpNormRecorder(_Recorder):
    """Sum of squares over calibration tokens of each MLP's input features (into `lin1`) and hidden activations
    (into `lin2`), per encoder layer."""

    SUMS = ("input_sq", "hidden_sq")

    def _attach(self, handles: list) -> None:
        for i, layer in enumerate(self.layers):
            handles.append(layer.mlp.lin1.register_forward_pre_hook(self._pre_hook(self.input_sq, i)))
            handles.append(layer.mlp.lin2.register_forward_pre_hook(self._pre_hook(self.hidden_sq, i)))

    def norms(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self.input_sq or index not in self.hidden_sq:
            raise RuntimeError(f"No MLP statistics were recorded for encoder layer {index}.")
        return self.input_sq[index].sqrt(), self.hidden_sq[index].sqrt()


class EmbeddingRecorder(_Recorder):
    """Per-channel sums of |LayerNorm output| (every encoder LayerNorm, keyed (layer, 1 or 2)) and per-channel sums
    of squares of each attention's output before `proj` (its heads' outputs side by side, keyed by layer)."""

    SUMS = ("norm_abs", "attn_sq")

    def _norm_hook(self, key: tuple[int, int]):
        return lambda module, args, output: self._add(self.norm_abs, key, _token_sum(output, square=False))

    def _attach(self, handles: list) -> None:
        for i, layer in enumerate(self.layers):
            handles.append(layer.layer_norm1.register_forward_hook(self._norm_hook((i, 1))))
            handles.append(layer.layer_norm2.register_forward_hook(self._norm_hook((i, 2))))
            handles.append(layer.attn.proj.register_forward_pre_hook(self._pre_hook(self.attn_sq, i)))


class LayerInputCache(_Recorder):
    """Each encoder layer's input during one forward. The hidden state entering layer i is the same whether layer i
    is then kept or removed, so a removal run starts from it instead of recomputing layers 0..i-1."""

    SUMS = ("inputs",)

    def _attach(self, handles: list) -> None:
        for i, layer in enumerate(self.layers):
            handles.append(layer.register_forward_pre_hook(lambda module, args, i=i: self.inputs.update({i: args[0]})))

    def pop(self, index: int) -> torch.Tensor:
        """Layer `index`'s cached input, released from the cache (each removal run needs it once)."""
        if index not in self.inputs:
            raise RuntimeError(f"No input was cached for encoder layer {index}; run the full encoder first.")
        return self.inputs.pop(index)


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    return {k: _map_tensors(v, fn) for k, v in value.items()} if isinstance(value, dict) else value


def _add_sums(total, part):
    if isinstance(total, dict):
        return {k: _add_sums(total.get(k), part.get(k)) for k in dict.fromkeys([*total, *part])}
    if total is None or part is None:
        return part if total is None else total
    return total + part


def sum_across_processes(removal_cost: torch.Tensor, recorders: tuple[_Recorder, ...],
                         device: torch.device) -> torch.Tensor:
    """Add up every process's calibration sums (removal costs and the recorders' `SUMS`) in process order and put
    the totals (on `device`, the model's) into this process's recorders; returns the total removal costs (CPU, as
    `calibrate` returns them). A process that had no batch contributes nothing (its sums are empty)."""
    from accelerate.utils import gather_object

    local = {"removal": removal_cost}
    local.update({(i, name): getattr(r, name) for i, r in enumerate(recorders) for name in r.SUMS})
    parts = gather_object([_map_tensors(local, torch.Tensor.cpu)])  # one per process, process 0 first
    total = parts[0]
    for part in parts[1:]:
        total = _add_sums(total, part)
    total = _map_tensors(total, lambda tensor: tensor.to(device))
    for i, recorder in enumerate(recorders):
        for name in recorder.SUMS:
            setattr(recorder, name, total[(i, name)])
    return total["removal"].cpu()

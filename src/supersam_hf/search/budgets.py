"""What a search's budgets are checked against: the constraints, each subnet's cheap costs (parameters, MACs and size
reduction of the checkpoint export would write), its measured latency (PyTorch or ONNX Runtime), and the cheapest
subnet of a space (so that a budget no subnet can meet is refused before any work, naming the smallest value)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..arguments import SearchArguments
from ..elastic import RESOLUTION
from ..errors import SupersamError
from ..evaluation import EvaluationData
from ..modeling_supersam import SuperSamModel
from ..search_space import SearchSpace, SubnetConfig
from ..types import LatencyBackend
from .results import ORT_LATENCY_CACHE

COST_KEYS = ("params", "macs", "size_reduction")
LATENCY_BACKENDS = LatencyBackend.values()
LATENCY_LABELS = {"torch": "latency, ms (PyTorch forward, one image)",
                  "onnxruntime": "encoder latency, ms (ONNX Runtime, CPU)"}


@dataclass
class Constraints:
    max_params: int | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None
    min_size_reduction: float | None = None

    def violations(self, cost: dict[str, Any]) -> dict[str, float]:
        """Violated constraint → relative amount (0 < v); empty when feasible. Latency only if measured."""
        out = {}
        if self.max_params is not None and cost["params"] > self.max_params:
            out["max_params"] = cost["params"] / self.max_params - 1.0
        if self.max_macs is not None and cost["macs"] > self.max_macs:
            out["max_macs"] = cost["macs"] / self.max_macs - 1.0
        if self.min_size_reduction is not None and cost["size_reduction"] < self.min_size_reduction:
            out["min_size_reduction"] = self.min_size_reduction - cost["size_reduction"]
        latency = cost.get("latency_ms")
        if self.max_latency_ms is not None and latency is not None and latency > self.max_latency_ms:
            out["max_latency_ms"] = latency / self.max_latency_ms - 1.0
        return out

    @classmethod
    def from_args(cls, args: SearchArguments) -> "Constraints":
        return cls(args.max_params, args.max_macs, args.max_latency_ms, args.min_size_reduction)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        if self.min_size_reduction is not None and not 0.0 <= self.min_size_reduction < 1.0:
            raise SupersamError(f"min_size_reduction must be in [0, 1), got {self.min_size_reduction}.")
        for name in ("max_params", "max_macs", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SupersamError(f"{name} must be positive, got {value}.")


@torch.no_grad()
def measure_latency(supernet: SuperSamModel, cfg: SubnetConfig, data: EvaluationData, repeats: int = 5) -> float:
    """Median milliseconds of `repeats` forwards of the *extracted* subnet (a standard SamModel, what export
    writes) on the first search image with its prompts, after one warm-up forward, on the supernet's device."""
    sam = supernet.extract_subnet(cfg).eval()
    batch = data.batches[0]
    param = next(sam.parameters())
    inputs = {}
    for key in ("pixel_values", "input_points", "input_labels", "input_boxes"):
        if key in batch:
            value = batch[key][:1].to(param.device)
            inputs[key] = value.to(param.dtype) if value.is_floating_point() else value
    inputs = RESOLUTION.export_inputs(inputs, supernet.search_space.layer_plan(cfg))  # at the subnet's resolution
    sync = torch.cuda.synchronize if param.device.type == "cuda" else (lambda: None)
    sam(**inputs)
    times = []
    for _ in range(max(1, repeats)):
        sync()
        start = time.perf_counter()
        sam(**inputs)
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    del sam
    return float(statistics.median(times))



def ort_latency_key(cfg: SubnetConfig) -> str:
    """A subnet's key in the ORT latency cache: its name plus its kept layers (which fix the attention kinds)."""
    return f"{cfg.name}@{'-'.join(map(str, cfg.kept_layers))}"


def subnet_latency_ms(supernet: SuperSamModel, cfg: SubnetConfig, data: EvaluationData, backend: str = "torch",
                      repeats: int = 5, ort_cache=None) -> float:
    """The latency a budget is checked against, where the model will run.

    "torch": `measure_latency` (the extracted subnet's PyTorch forward on the supernet's device). "onnxruntime":
    the exported subnet's image encoder timed in ONNX Runtime on this machine's CPU (warm-up, median of the cache's
    repeats), through `ort_cache` (an `onnx_export.OrtLatencyCache`, persisted per subnet), so a subnet is exported
    and timed once.
    """
    if backend == "torch":
        return measure_latency(supernet, cfg, data, repeats)
    if backend != "onnxruntime":
        raise SupersamError(f"Unknown latency backend {backend!r}; choose one of {LATENCY_BACKENDS}.")
    if ort_cache is None:
        from ..onnx_export import OrtLatencyCache

        ort_cache = OrtLatencyCache(None, repeats=repeats)
    key = ort_latency_key(cfg)
    if key not in ort_cache:
        ort_cache.measure(key, supernet.extract_subnet(cfg))
    return float(ort_cache.get(key))


def agreed(state, compute: Callable[[], Any]) -> Any:
    """`compute()` on the main process, the same value on every process of `state` (a multi-process search must
    take identical decisions everywhere: a measured latency differs between processes, so the main one's counts)."""
    if state is None or state.num_processes == 1:
        return compute()
    from accelerate.utils import broadcast_object_list

    box = [compute() if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]



def cheapest_subnet(space: SearchSpace, cost: Callable[[SubnetConfig], float]) -> tuple[SubnetConfig, float]:
    """The cheapest subnet under `cost` among `space.smallest()` and a greedy candidate (narrowest MLP and
    embedding widths, drop the elastic layers whose removal saves the most). Exact when every layer has the same
    width choices (costs are then sums over kept layers, and every cost shrinks with the uniform embedding width);
    a close upper bound otherwise."""
    full = space.narrowest()
    base = cost(full)
    savings = []
    for i in space.elastic_layers:
        savings.append((base - cost(space.narrowest(j for j in full.kept_layers if j != i)), -i, i))
    num_drop = space.num_layers - space.min_layers
    dropped = {i for _, _, i in sorted(savings, reverse=True)[:num_drop]}
    candidates = [space.smallest(), space.narrowest(i for i in range(space.num_layers) if i not in dropped)]
    return min(((c, cost(c)) for c in candidates), key=lambda item: item[1])


class CheapCosts:
    """Parameters, MACs and size reduction of a subnet's exported checkpoint, computed once per subnet."""

    def __init__(self, supernet: SuperSamModel) -> None:
        self.supernet = supernet
        self.largest_params = int(supernet.count_parameters(supernet.search_space.largest()))
        self._cache: dict[SubnetConfig, dict[str, Any]] = {}

    def __call__(self, cfg: SubnetConfig) -> dict[str, Any]:
        if cfg not in self._cache:
            params = self.supernet.count_parameters(cfg)
            self._cache[cfg] = {
                "params": int(params),
                "macs": int(self.supernet.count_macs(cfg)),
                "size_reduction": 1.0 - params / self.largest_params,
            }
        return self._cache[cfg]

    def remember(self, cfg: SubnetConfig, entry: dict[str, Any]) -> None:
        self._cache[cfg] = {k: entry[k] for k in COST_KEYS}


def check_cheap_budgets(space: SearchSpace, costs: CheapCosts, constraints: Constraints) -> None:
    """`ValueError` naming the smallest achievable value when no subnet can meet a parameter or MAC budget."""
    largest_params = costs.largest_params
    if constraints.max_params is not None or constraints.min_size_reduction is not None:
        _, fewest = cheapest_subnet(space, lambda c: costs(c)["params"])
        if constraints.max_params is not None and fewest > constraints.max_params:
            raise SupersamError(
                f"max_params={constraints.max_params:,} is below the smallest subnet's {int(fewest):,} parameters."
            )
        reduction = constraints.min_size_reduction
        if reduction is not None and 1.0 - fewest / largest_params < reduction:
            raise SupersamError(
                f"min_size_reduction={reduction} is above the largest achievable reduction "
                f"{1.0 - fewest / largest_params:.4f} (the smallest subnet has {int(fewest):,} of {largest_params:,} "
                "parameters)."
            )
    if constraints.max_macs is not None:
        _, fewest_macs = cheapest_subnet(space, lambda c: costs(c)["macs"])
        if fewest_macs > constraints.max_macs:
            raise SupersamError(f"max_macs={constraints.max_macs:,} is below the smallest subnet's {int(fewest_macs):,} MACs.")


def open_ort_cache(output: Path, backend: str, repeats: int):
    """The ORT latency cache of a search's output folder (None for the torch backend); needs the [onnx] extra."""
    if backend not in LATENCY_BACKENDS:
        raise SupersamError(f"Unknown latency_backend {backend!r}; choose one of {LATENCY_BACKENDS}.")
    if backend != "onnxruntime":
        return None
    from ..onnx_export import OrtLatencyCache

    return OrtLatencyCache(output / ORT_LATENCY_CACHE, repeats=repeats)



def check_latency_budget(supernet: SuperSamModel, data: EvaluationData, costs: CheapCosts, args: SearchArguments,
                         ort_cache=None, state=None) -> None:
    """`SupersamError` naming the measured latency when even the fastest subnet (the fewest MACs) is over
    `args.max_latency_ms`; measured by the main process of `state` (see `agreed`)."""
    fastest, _ = cheapest_subnet(supernet.search_space, lambda c: costs(c)["macs"])
    latency = agreed(state, lambda: subnet_latency_ms(supernet, fastest, data, args.latency_backend,
                                                      args.latency_repeats, ort_cache))
    if latency > args.max_latency_ms:
        where = ("ONNX Runtime, CPU" if args.latency_backend == "onnxruntime"
                 else f"PyTorch on {next(supernet.parameters()).device}")
        raise SupersamError(
            f"max_latency_ms={args.max_latency_ms} is below the smallest subnet's measured {latency:.2f} ms "
            f"({fastest.name}, median of {args.latency_repeats} runs, {where})."
        )


__all__ = [
    "COST_KEYS",
    "CheapCosts",
    "Constraints",
    "LATENCY_BACKENDS",
    "LATENCY_LABELS",
    "ORT_LATENCY_CACHE",
    "agreed",
    "cheapest_subnet",
    "check_cheap_budgets",
    "check_latency_budget",
    "measure_latency",
    "open_ort_cache",
    "ort_latency_key",
    "subnet_latency_ms",
]

"""The search driver: the best subnet of a trained supernet under size / compute / latency budgets.

The search space is the supernet's: one keep flag per elastic encoder layer, one MLP width per layer and the
encoder's embedding width (uniform across layers). A proposal strategy (`search.proposals`: OpenTuner or random)
proposes subnets; each one's cheap costs (parameters and MACs of the checkpoint export would write) are checked
against the constraints first, and only a feasible subnet is scored (mIoU on the search images, `evaluate_model`).
The objective, minimised, is `1 - mIoU`; an infeasible proposal gets a penalty of 10 plus its relative constraint
violation, without any mIoU evaluation (the violation term points the search back towards feasible subnets).

Semantics (see `search_subnets`):

* budget: the number of mIoU evaluations, i.e. of distinct subnets scored, the largest-subnet reference included.
  Rejected (infeasible) proposals and repeated subnets cost no evaluation; `max_proposals` bounds the loop.
* caching: a subnet (`SubnetConfig`) is scored at most once. OpenTuner configurations that differ only in the
  width of a dropped layer, or that repair to the same subnet, hit the cache.
* min_layers: a proposal keeping fewer layers is *repaired*, not rejected: the dropped elastic layers with the
  lowest drop probability (the most important; ties: lower index) are restored until it keeps `min_layers`.
* resume: every scored (and every rejected) subnet is written to `search_results.json` as soon as it is known.
  `resume=True` reloads that file as the cache and replays the search from the start with the same seed: the
  proposals already answered come from the cache, so the search continues where it stopped, and a resumed run
  scores the same subnets as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm
from transformers import SamProcessor

from ..arguments import DEFAULT_PROMPT_TYPE, DataArguments, SearchArguments, with_keywords
from ..checks import is_finite_metric
from ..elastic import RESOLUTION
from ..evaluation import MASK_SELECTIONS, PROMPTS, EvaluationData, evaluate_model
from ..modeling_supersam import SuperSamModel
from ..errors import OutputFolderError, SupersamError, interrupt_checkpoints
from ..outputs import process_alive, read_json_file, record_tool_outputs, remove_tool_outputs, unverified_files
from ..search_space import SearchSpace, SubnetConfig
from ..types import LatencyBackend
from .opentuner_compat import check_technique, quiet_opentuner
from .proposals import STRATEGIES, make_proposals
from .results import (
    BEST_FILE,
    OPENTUNER_DB,
    PARETO_FILE,
    PARETO_PLOT,
    RESULTS_FILE,
    SearchCandidate,
    SearchResult,
    best_entry,
    pareto_front,
    plot_pareto,
    write_json,
)

logger = logging.getLogger(__name__)

INFEASIBLE_PENALTY = 10.0
SCORE_KEYS = ("miou", "per_image_miou", "mean_dice", "num_objects")
COST_KEYS = ("params", "macs", "size_reduction")


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_params": self.max_params,
            "max_macs": self.max_macs,
            "max_latency_ms": self.max_latency_ms,
            "min_size_reduction": self.min_size_reduction,
        }

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


LATENCY_BACKENDS = LatencyBackend.values()
ORT_LATENCY_CACHE = "ort_latency_cache.json"
TOOL = "supersam search"
# A search's recorded settings, named as the flags that set them (a resume with other values is refused, named).
RESUME_SETTING_FLAGS = {"dataset": "--dataset_name", "split": "--eval_split_name", "prompt": "--prompt_type",
                        "mask_selection": "--mask_selection", "eval_seed": "--eval_seed",
                        "num_images": "the number of images (--max_eval_images)", "max_images": "--max_eval_images",
                        "search_space": "the supernet's search space", "largest_params": "the supernet's size",
                        "latency_backend": "--latency_backend"}
# What a search writes in its output_dir (a resume replaces them, an overwrite removes them): only this tool's.
SEARCH_FILES = (RESULTS_FILE, PARETO_FILE, PARETO_PLOT, BEST_FILE, OPENTUNER_DB, ORT_LATENCY_CACHE)
LATENCY_LABELS = {"torch": "latency, ms (PyTorch forward, one image)",
                  "onnxruntime": "encoder latency, ms (ONNX Runtime, CPU)"}


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


def _narrowest_all_kept(space: SearchSpace) -> SubnetConfig:
    """Every layer, each at its narrowest MLP width, at the narrowest embedding width and smallest resolution."""
    return _narrowest(space, tuple(range(space.num_layers)))


def _narrowest(space: SearchSpace, kept: tuple[int, ...]) -> SubnetConfig:
    """`kept` at every layer's narrowest MLP width, the narrowest embedding width and the smallest resolution."""
    narrowest = space.hidden_size_choices[0] if space.hidden_size_choices else None
    smallest_image = space.image_size_choices[0] if space.image_size_choices else None
    return space.canonical(SubnetConfig(kept, tuple(space.mlp_dim_choices[i][0] for i in kept), narrowest,
                                        smallest_image))


def cheapest_subnet(space: SearchSpace, cost: Callable[[SubnetConfig], float]) -> tuple[SubnetConfig, float]:
    """The cheapest subnet under `cost` among `space.smallest()` and a greedy candidate (narrowest MLP and
    embedding widths, drop the elastic layers whose removal saves the most). Exact when every layer has the same
    width choices (costs are then sums over kept layers, and every cost shrinks with the uniform embedding width);
    a close upper bound otherwise."""
    full = _narrowest_all_kept(space)
    base = cost(full)
    savings = []
    for i in space.elastic_layers:
        savings.append((base - cost(_narrowest(space, tuple(j for j in full.kept_layers if j != i))), -i, i))
    num_drop = space.num_layers - space.min_layers
    dropped = {i for _, _, i in sorted(savings, reverse=True)[:num_drop]}
    candidates = [space.smallest(), _narrowest(space, tuple(i for i in range(space.num_layers) if i not in dropped))]
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


@dataclass
class SearchOptions:
    """How one search runs (everything but the supernet, the data and the constraints)."""

    strategy: str = "opentuner"
    seed: int = 0
    budget: int = 40
    technique: str = "AUCBanditMetaTechniqueA"
    prompt: str = DEFAULT_PROMPT_TYPE
    mask_selection: str = "single"
    latency_repeats: int = 5
    latency_backend: str = "torch"
    max_proposals: int | None = None
    show_progress: bool = True


class SubnetSearch:
    """One search: the scored and rejected subnets (the cache a resume reloads), the objective and the loop."""

    def __init__(self, supernet: SuperSamModel, data: EvaluationData, processor: SamProcessor, costs: CheapCosts,
                 constraints: Constraints, output: Path, options: SearchOptions, settings: dict[str, Any],
                 state=None) -> None:
        self.supernet, self.data, self.processor = supernet, data, processor
        # accelerate's PartialState of a multi-process search (None: one process): every process runs the same loop,
        # each scores its share of the images, and only the main process writes.
        self.state = state
        self.costs, self.constraints, self.output, self.options, self.settings = costs, constraints, output, options, settings
        self.largest = supernet.search_space.largest()
        self.evaluated: dict[SubnetConfig, dict[str, Any]] = {}  # scored subnets, in order
        self.rejected: dict[SubnetConfig, dict[str, Any]] = {}  # costs of subnets never scored (over a budget)
        self.num_new = 0
        self.num_proposals = 0
        self.progress = None
        self.ort_cache = None  # onnx_export.OrtLatencyCache of output_dir, with latency_backend="onnxruntime"

    @property
    def results_path(self) -> Path:
        return self.output / RESULTS_FILE

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    # -- resume ---------------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Reload the scored and rejected subnets of an earlier search in `output` (same settings required)."""
        def read():
            if not self.results_path.exists():
                return None
            return read_json_file(self.results_path, what="search results", expect=dict,
                                  remedy="delete it and opentuner.db to search afresh (--overwrite_output_dir without "
                                  "--resume), or restore the file")

        previous = agreed(self.state, read)  # the main process's file (other machines may not see the folder)
        if previous is None:
            logger.info("Nothing to resume in %s; starting a new search.", self.output)
            return
        before = previous.get("settings", {})
        optional = ("dataset", "split", "latency_backend")  # only recorded when known (the CLI records them)
        differing = [
            k for k, v in self.settings.items()
            if before.get(k) != v and not (k in optional and (v is None or before.get(k) is None))
        ]
        if differing:
            raise SupersamError(
                f"Cannot resume the search in {str(self.output)!r}: it was measured with different "
                + ", ".join(f"{RESUME_SETTING_FLAGS.get(k, k)} ({before.get(k)!r} vs now {self.settings[k]!r})"
                            for k in differing)
                + ". Use the same settings, or a new output_dir."
            )
        for entry in previous.get("evaluations", []):
            self.evaluated[SubnetConfig.from_dict(entry)] = entry
        for entry in previous.get("rejected", []):
            self.rejected[SubnetConfig.from_dict(entry)] = entry
        for cfg, entry in [*self.evaluated.items(), *self.rejected.items()]:
            self.costs.remember(cfg, entry)
        if self.constraints.max_latency_ms is not None:  # a latency budget new to this search: time what was scored
            for cfg, entry in self.evaluated.items():
                if entry.get("latency_ms") is None and not self.constraints.violations(entry):
                    entry["latency_ms"] = self._latency(cfg)
        logger.info("Resuming the search in %s: %d subnets already scored.", self.output, len(self.evaluated))

    # -- costs and scores -----------------------------------------------------------------------------------------
    def _latency(self, cfg: SubnetConfig) -> float:
        latency = agreed(self.state, lambda: subnet_latency_ms(self.supernet, cfg, self.data,
                                                               self.options.latency_backend,
                                                               self.options.latency_repeats, self.ort_cache))
        self._record(self.output / ORT_LATENCY_CACHE)
        return latency

    def _record(self, *paths: Path) -> None:
        """These files are this search's (as they now read): an overwrite may remove them, a resume replace them.
        Only the main process writes (and records)."""
        present = [path for path in paths if path.is_file()]
        if present and self.is_main:
            record_tool_outputs(self.output, [path.absolute() for path in present], tool=TOOL)

    def full_cost(self, cfg: SubnetConfig, force_latency: bool = False) -> dict[str, Any]:
        """Cheap costs plus the latency (measured only under a latency budget, and only past the cheap checks)."""
        cost = dict(self.costs(cfg))
        known = self.evaluated.get(cfg) or self.rejected.get(cfg)
        cost["latency_ms"] = known.get("latency_ms") if known else None
        if self.constraints.max_latency_ms is not None and cost["latency_ms"] is None:
            if force_latency or not self.constraints.violations(cost):
                cost["latency_ms"] = self._latency(cfg)
        return cost

    def entry_for(self, cfg: SubnetConfig, cost: dict[str, Any]) -> dict[str, Any]:
        violations = self.constraints.violations(cost)
        return {"name": cfg.name, **cfg.to_dict(), **cost, "feasible": not violations,
                "violations": sorted(violations), "reference": cfg == self.largest}

    def score(self, cfg: SubnetConfig, cost: dict[str, Any]) -> dict[str, Any]:
        """The subnet's entry with its mIoU: from the cache, or evaluated now (and saved at once)."""
        if cfg in self.evaluated:
            return self.evaluated[cfg]
        metrics = evaluate_model(self.supernet, self.data, self.processor, subnet=cfg, prompt=self.options.prompt,
                                 mask_selection=self.options.mask_selection, show_progress=False, state=self.state)
        entry = self.entry_for(cfg, cost)
        entry.update({k: metrics[k] for k in SCORE_KEYS})
        self.evaluated[cfg] = entry
        self.rejected.pop(cfg, None)
        self.num_new += 1
        self.save()
        best = best_entry(list(self.evaluated.values()))
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(best_miou=f"{best['miou']:.4f}" if best else "-", last=cfg.name)
        return entry

    def objective(self, cfg: SubnetConfig) -> float:
        """1 - mIoU of a feasible subnet; INFEASIBLE_PENALTY + relative violation (no mIoU) otherwise."""
        cost = self.full_cost(cfg)
        violations = self.constraints.violations(cost)
        if violations:
            if cfg not in self.evaluated and cfg not in self.rejected:
                self.rejected[cfg] = self.entry_for(cfg, cost)
                self.save()
            return INFEASIBLE_PENALTY + min(sum(violations.values()), 1e3)
        miou = self.score(cfg, cost)["miou"]
        return 1.0 - miou if is_finite_metric(miou) else INFEASIBLE_PENALTY  # a NaN score is never a good subnet

    def save(self) -> None:
        """Write search_results.json (atomically, main process); feasibility is re-judged under *these* constraints."""
        for table in (self.evaluated, self.rejected):
            for entry in table.values():
                violations = self.constraints.violations(entry)
                entry["feasible"], entry["violations"] = not violations, sorted(violations)
        evaluations = list(self.evaluated.values())
        best = best_entry(evaluations)
        if not self.is_main:
            return
        write_json(self.results_path, {
            "settings": self.settings, "constraints": self.constraints.to_dict(), "strategy": self.options.strategy,
            "seed": self.options.seed, "budget": self.options.budget, "best": best["name"] if best else None,
            "evaluations": evaluations, "rejected": list(self.rejected.values()),
        })
        self._record(self.results_path)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Score the largest subnet (the reference), then answer proposals until the budget is spent."""
        options = self.options
        budget = options.budget
        max_proposals = options.max_proposals or max(100, 25 * budget)
        was_training = self.supernet.training
        self.supernet.eval()
        self.progress = tqdm(total=budget, initial=min(len(self.evaluated), budget), desc=f"search ({options.strategy})",
                             unit="subnet", disable=not (options.show_progress and self.is_main))
        # Other processes replay the same OpenTuner run (same seed, same answers) in a database of their own.
        scratch = None if self.is_main else Path(tempfile.mkdtemp(prefix="supersam_search_"))
        try:
            self.score(self.largest, self.full_cost(self.largest, force_latency=True))  # feasible or not
            # OpenTuner's database is written under a temporary name and becomes opentuner.db when the search ends
            # (a resume replays the search from its cache, so a killed run's database is never needed).
            database = (scratch or self.output) / f".{OPENTUNER_DB}.tmp-{os.getpid()}"
            proposals = make_proposals(options.strategy, self.supernet.search_space, options.seed, options.technique,
                                       database)
            completed = False
            with quiet_opentuner(), interrupt_checkpoints() as interrupts:
                try:
                    cfg = next(proposals)
                    while len(self.evaluated) < budget and self.num_proposals < max_proposals:
                        interrupts.check()
                        self.num_proposals += 1
                        value = self.objective(cfg) if cfg is not None else None
                        cfg = proposals.send(value) if cfg is not None else next(proposals)
                    interrupts.check()
                    completed = True
                finally:
                    proposals.close()
                    if completed and self.is_main and database.is_file():
                        os.replace(database, self.output / OPENTUNER_DB)
                        self._record(self.output / OPENTUNER_DB)
                    for leftover in database.parent.glob(f"{database.name}*"):
                        leftover.unlink(missing_ok=True)
            if len(self.evaluated) < budget:
                logger.warning(
                    "The search stopped after %d proposals with %d of %d subnets scored: the feasible space is smaller "
                    "than the budget, or the constraints reject nearly everything.",
                    self.num_proposals, len(self.evaluated), budget,
                )
        finally:
            self.progress.close()
            self.supernet.train(was_training)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if self.evaluated:
                self.save()

    def result(self) -> SearchResult:
        """Write pareto.json, best_subnet.json and pareto.png (main process); the `SearchResult` (every process)."""
        evaluations = list(self.evaluated.values())
        front = pareto_front(evaluations)
        best = best_entry(evaluations)
        best_path = self.output / BEST_FILE
        if self.is_main:
            self._write_result_files(evaluations, front, best)
        return SearchResult(
            evaluations=evaluations, pareto=front, best=self._candidate(best), reference=self.evaluated[self.largest],
            num_evaluated=len(evaluations), num_new_evaluations=self.num_new, num_proposals=self.num_proposals,
            num_rejected=len(self.rejected),
            paths={
                "results": str(self.results_path),
                "pareto": str(self.output / PARETO_FILE),
                "plot": str(self.output / PARETO_PLOT),
                "best": str(best_path) if best else None,
                "database": str(self.output / OPENTUNER_DB) if self.options.strategy == "opentuner" else None,
            },
        )

    def _write_result_files(self, evaluations: list[dict[str, Any]], front: list[dict[str, Any]],
                            best: dict[str, Any] | None) -> None:
        write_json(self.output / PARETO_FILE, front)
        best_path = self.output / BEST_FILE
        if best is not None:
            write_json(best_path, best)
        else:  # an earlier best of this search (never a file this tool did not write, or one changed since)
            remove_tool_outputs(self.output, within=BEST_FILE)
        title = f"{self.options.strategy} search, {len(evaluations)} subnets scored" + (
            f", best feasible mIoU {best['miou']:.4f}" if best else ", no feasible subnet"
        )
        plot_pareto(evaluations, front, self.output / PARETO_PLOT, self.constraints, self.costs.largest_params, title,
                    latency_label=LATENCY_LABELS[self.options.latency_backend])
        self._record(self.output / PARETO_FILE, best_path, self.output / PARETO_PLOT)

    def _candidate(self, best: dict[str, Any] | None) -> SearchCandidate | None:
        if best is None:
            return None
        subnet = SubnetConfig.from_dict(best)
        metrics = {k: best.get(k) for k in SCORE_KEYS}
        metrics.update(num_images=self.data.num_images, prompt=self.options.prompt,
                       mask_selection=self.options.mask_selection, resolution="original", seed=self.data.seed,
                       subnet=best["name"], subnet_config=subnet.to_dict())
        metrics.update({k: best.get(k) for k in ("params", "macs", "latency_ms", "size_reduction")})
        return SearchCandidate(subnet=subnet, metrics=metrics, entry=best)


def check_search_output(output: Path, resume: bool) -> None:
    """Refuse, before any work, an output_dir whose search files a search would replace but this tool may not:
    files it did not write, changed since, or behind a symbolic link (a resume included); and an earlier search
    without `resume`. A killed search's temporary database (a process that no longer runs) is removed."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output_dir {str(output)!r} exists and is not a folder.")
    if (output / RESULTS_FILE).exists() and not resume and not unverified_files(output, [RESULTS_FILE]):
        raise FileExistsError(
            f"{str(output)!r} already holds a search ({RESULTS_FILE}); pass resume=True (--resume) to continue it, "
            "or choose a new output_dir."
        )
    problems = unverified_files(output, SEARCH_FILES)
    if problems:
        raise OutputFolderError(
            f"{output} holds files a search would replace that this tool may not: {', '.join(problems)}; move them "
            "away or choose another --output_dir."
        )
    for leftover in output.glob(f".{OPENTUNER_DB}.tmp-*") if output.is_dir() else ():
        pid = leftover.name.split(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _ort_cache(output: Path, backend: str, repeats: int):
    """The ORT latency cache of a search's output folder (None for the torch backend); needs the [onnx] extra."""
    if backend not in LATENCY_BACKENDS:
        raise SupersamError(f"Unknown latency_backend {backend!r}; choose one of {LATENCY_BACKENDS}.")
    if backend != "onnxruntime":
        return None
    from ..onnx_export import OrtLatencyCache

    return OrtLatencyCache(output / ORT_LATENCY_CACHE, repeats=repeats)


# search_subnets' keyword conveniences: keyword -> its SearchArguments field (the library's older names included:
# `prompt` is --prompt_type), and keyword -> its DataArguments field (`max_images` is --max_eval_images).
SEARCH_KEYWORDS = {name: name for name in (
    "budget", "max_params", "max_macs", "max_latency_ms", "min_size_reduction", "strategy", "seed", "resume",
    "prompt_type", "latency_repeats", "mask_selection", "batch_size", "eval_seed", "technique", "max_proposals",
    "latency_backend")} | {"prompt": "prompt_type"}
SEARCH_DATA_KEYWORDS = {"max_images": "max_eval_images", "max_eval_images": "max_eval_images",
                        "image_column": "image_column", "mask_column": "mask_column", "mask_kind": "mask_kind",
                        "dataset_name": "dataset_name", "split": "eval_split_name", "eval_split_name": "eval_split_name"}


def search_subnets(
    supernet: SuperSamModel,
    dataset,
    processor: SamProcessor | None = None,
    args: SearchArguments | None = None,
    data_args: DataArguments | None = None,
    *,
    output_dir: str | os.PathLike = "supersam_search",
    show_progress: bool = True,
    state=None,
    **keywords,
) -> SearchResult:
    """Search the supernet's subnets for the highest mIoU under budgets; write results, Pareto front and plot.

    Args:
        supernet: a trained `SuperSamModel` (load one with `supersam_hf.loading.load_supernet`).
        dataset: the search images: a `datasets.Dataset`, `SamSegmentationData` or `EvaluationData` (prepared
            once; every subnet is scored on the same images and prompts). Use a split held out from training.
        processor: the supernet's `SamProcessor` (needed unless `dataset` is an `EvaluationData`).
        args: the `SearchArguments` the CLI parses (`supersam search`'s flags; None: their defaults; `device` is
            where the CLI loads the supernet and is not read here).
        data_args: the `DataArguments` the CLI parses; read: `max_eval_images`, `dataset_name` /
            `eval_split_name` (recorded), and `image_column` / `mask_column` / `mask_kind` for a raw dataset.
        **keywords: conveniences for the fields of `args` / `data_args` (see `SEARCH_KEYWORDS` and
            `SEARCH_DATA_KEYWORDS`), e.g. `budget=20, max_params=..., prompt="point", max_images=8`; they override
            `args` / `data_args` (neither object is changed). An unknown keyword is refused. The fields:
        budget: number of mIoU evaluations (distinct subnets scored), the largest-subnet reference included.
            Infeasible proposals are rejected from their cheap costs and cost nothing; repeats hit the cache.
        max_params / max_macs: at most this many parameters / MACs (per image, one prompt) in the exported
            checkpoint. max_latency_ms: measured median latency of the extracted subnet (see `measure_latency`).
            min_size_reduction: at least this fraction fewer parameters than the largest subnet (0.5 = half).
        strategy: "opentuner" (OpenTuner's `technique`, default its AUC bandit over differential evolution,
            greedy mutation and Nelder-Mead) or "random" (uniform keep flags and widths, same budget and cache).
        seed: seed of the strategy (OpenTuner's random state / the random sampler).
        output_dir: where the files go; must not hold a previous search unless `resume`.
        resume: continue a search in `output_dir`: its scored subnets are reused (not re-scored) and the search is
            replayed from the start with the same seed, so it picks up where it stopped.
        prompt (prompt_type) / mask_selection / batch_size / max_images (max_eval_images) / eval_seed: how subnets are scored (`evaluate_model`);
            `eval_seed` fixes the prompts, so searches with different `seed`s score subnets identically.
        latency_repeats: timed forwards per latency measurement (only measured when `max_latency_ms` is set).
        latency_backend: what `max_latency_ms` bounds (`subnet_latency_ms`): "torch" (the extracted subnet's
            forward) or "onnxruntime" (the exported subnet's encoder in ONNX Runtime on this CPU; cached per subnet
            in `output_dir/ort_latency_cache.json`; needs the `[onnx]` extra).
        technique: OpenTuner technique name (`--technique`).
        dataset_name / split (eval_split_name): recorded in search_results.json's settings (and checked on resume).
        max_proposals: stop after this many proposals even if the budget is not spent (default max(100, 25 ×
            budget)); reached when the feasible space is smaller than the budget.
        state: accelerate's `PartialState` of a multi-process run (every process calls with the same arguments):
            every process runs the same search (the same OpenTuner proposals, from the same seed and answers), each
            subnet's images are split across the processes and the statistics gathered (`evaluate_model`), a
            latency is measured by the main process and shared, and only the main process writes. Every process
            returns the same `SearchResult`, equal to the one-process search's.

    Raises `ValueError` before searching when no subnet can meet a budget (naming the smallest achievable value).
    The largest subnet is always scored first, as the reference, and marked so (feasible or not).
    """
    args, data_fields = with_keywords(args, SearchArguments, keywords, SEARCH_KEYWORDS, "search_subnets", data_args,
                                      SEARCH_DATA_KEYWORDS)
    strategy, budget, seed, technique, resume = args.strategy, args.budget, args.seed, args.technique, args.resume
    prompt, mask_selection, batch_size, eval_seed = args.prompt_type, args.mask_selection, args.batch_size, args.eval_seed
    max_params, max_macs, max_latency_ms, min_size_reduction = (args.max_params, args.max_macs, args.max_latency_ms,
                                                                args.min_size_reduction)
    latency_repeats, latency_backend, max_proposals = args.latency_repeats, args.latency_backend, args.max_proposals
    max_images, split = data_fields["max_eval_images"], data_fields["eval_split_name"]
    if strategy not in STRATEGIES:
        raise SupersamError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}.")
    if budget < 1:
        raise SupersamError(f"budget must be >= 1 (the number of subnets to score), got {budget}.")
    if prompt not in PROMPTS or mask_selection not in MASK_SELECTIONS:
        raise SupersamError(f"prompt must be one of {PROMPTS} and mask_selection one of {MASK_SELECTIONS}.")
    constraints = Constraints(max_params, max_macs, max_latency_ms, min_size_reduction)
    constraints.check()
    if strategy == "opentuner":
        check_technique(technique)
    if not isinstance(supernet, SuperSamModel):
        raise SupersamError(f"search_subnets needs a SuperSamModel (a supernet), got {type(supernet).__name__}.")
    output = Path(output_dir)
    check_search_output(output, resume)
    ort_cache = _ort_cache(output, latency_backend, latency_repeats)  # a missing [onnx] extra fails here
    if ort_cache is not None and state is not None and not state.is_main_process:
        ort_cache = None  # latencies are measured (and cached in output_dir) by the main process only
    space = supernet.search_space
    costs = CheapCosts(supernet)
    check_cheap_budgets(space, costs, constraints)  # impossible budgets fail before anything is measured

    data = EvaluationData.prepare(
        dataset, processor, prompt=prompt, batch_size=batch_size, max_images=max_images, seed=eval_seed,
        image_column=data_fields["image_column"], mask_column=data_fields["mask_column"],
        mask_kind=data_fields["mask_kind"],
    )
    if data.prompt != prompt:
        raise SupersamError(f"The EvaluationData was prepared with prompt={data.prompt!r}, not {prompt!r}.")
    if max_latency_ms is not None:
        fastest, _ = cheapest_subnet(space, lambda c: costs(c)["macs"])
        latency = agreed(state, lambda: subnet_latency_ms(supernet, fastest, data, latency_backend, latency_repeats,
                                                          ort_cache))
        if latency > max_latency_ms:
            where = ("ONNX Runtime, CPU" if latency_backend == "onnxruntime"
                     else f"PyTorch on {next(supernet.parameters()).device}")
            raise SupersamError(
                f"max_latency_ms={max_latency_ms} is below the smallest subnet's measured {latency:.2f} ms "
                f"({fastest.name}, median of {latency_repeats} runs, {where})."
            )
    settings = {
        "dataset": data_fields["dataset_name"], "split": split, "prompt": prompt, "mask_selection": mask_selection,
        "eval_seed": data.seed, "num_images": data.num_images, "max_images": max_images,
        "search_space": space.to_dict(), "largest_params": int(costs.largest_params),
        "latency_backend": latency_backend if max_latency_ms is not None else None,
    }
    options = SearchOptions(strategy=strategy, seed=seed, budget=budget, technique=technique, prompt=prompt,
                            mask_selection=mask_selection, latency_repeats=latency_repeats, latency_backend=latency_backend,
                            max_proposals=max_proposals, show_progress=show_progress)
    search = SubnetSearch(supernet, data, processor, costs, constraints, output, options, settings, state=state)
    search.ort_cache = ort_cache
    if resume:
        search.resume()
    if search.is_main:
        output.mkdir(parents=True, exist_ok=True)
    search.run()
    return search.result()


__all__ = [
    "CheapCosts",
    "Constraints",
    "INFEASIBLE_PENALTY",
    "LATENCY_BACKENDS",
    "ORT_LATENCY_CACHE",
    "SearchOptions",
    "SubnetSearch",
    "agreed",
    "cheapest_subnet",
    "check_cheap_budgets",
    "measure_latency",
    "search_subnets",
    "subnet_latency_ms",
]

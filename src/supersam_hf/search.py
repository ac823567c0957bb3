"""Subnet search: the best subnet of a trained supernet under size / compute / latency budgets (OpenTuner).

The search space is the supernet's: one keep flag per elastic encoder layer and one MLP width per layer. OpenTuner
proposes configurations; each is turned into a `SubnetConfig`, its cheap costs (parameters and MACs of the
checkpoint export would write) are checked against the constraints first, and only a feasible subnet is scored
(mIoU on the search images, `evaluate_model`). OpenTuner minimises, so the objective is `1 - mIoU`; an infeasible
proposal gets a penalty of 10 plus its relative constraint violation, without any mIoU evaluation (the violation
term points the search back towards feasible subnets).

Semantics (documented in `search_subnets`):

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

import contextlib
import itertools
import json
import logging
import math
import os
import random
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from transformers import SamProcessor

from .data import load_segmentation_dataset
from .evaluation import MASK_SELECTIONS, PROMPTS, EvaluationData, evaluate_model, load_model, parse_subnet
from .modeling_supersam import SuperSamModel
from .search_space import SearchSpace, SubnetConfig

logger = logging.getLogger(__name__)

STRATEGIES = ("opentuner", "random")
RESULTS_FILE = "search_results.json"
PARETO_FILE = "pareto.json"
PARETO_PLOT = "pareto.png"
BEST_FILE = "best_subnet.json"
OPENTUNER_DB = "opentuner.db"
INFEASIBLE_PENALTY = 10.0


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SearchCandidate:
    """One scored subnet: `subnet` (its `SubnetConfig`), `metrics` (an `evaluate_model`-style dict: "miou",
    "per_image_miou", "mean_dice", "num_objects", "num_images", how it was measured — "prompt", "mask_selection",
    "resolution", "seed" — and its costs "params", "macs", "latency_ms", "size_reduction"; what an export's
    model card shows) and `entry` (its full record in search_results.json)."""

    subnet: SubnetConfig
    metrics: dict[str, Any]
    entry: dict[str, Any]


@dataclass
class SearchResult:
    """What `search_subnets` found (everything is also in `paths`' files).

    evaluations: every scored subnet in evaluation order (the largest-subnet reference first); each entry holds
        `name`, `kept_layers`, `mlp_dims`, `params`, `macs`, `latency_ms` (None unless a latency budget was set),
        `size_reduction`, `miou`, `per_image_miou`, `mean_dice`, `num_objects`, `feasible`, `violations`,
        `reference`.
    pareto: the feasible entries not dominated on (fewer params, higher mIoU), sorted by params.
    best: the feasible subnet with the highest mIoU (ties: fewer params) as a `SearchCandidate`, or None.
    reference: the largest subnet's entry (scored first, feasible or not).
    num_evaluated: scored subnets in total (resumed ones included); num_new_evaluations: scored by this call.
    num_proposals / num_rejected: configurations proposed by the strategy / subnets rejected by a constraint.
    paths: "results", "pareto", "plot", "best" (None when no subnet is feasible), "database" (opentuner only).
    """

    evaluations: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    best: SearchCandidate | None
    reference: dict[str, Any]
    num_evaluated: int
    num_new_evaluations: int
    num_proposals: int
    num_rejected: int
    paths: dict[str, str | None] = field(default_factory=dict)


def pareto_front(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feasible entries not dominated on (params ↓, mIoU ↑), sorted by params (ties: the higher mIoU kept)."""
    feasible = sorted((e for e in entries if e["feasible"]), key=lambda e: (e["params"], -e["miou"], e["name"]))
    front, best_miou = [], -math.inf
    for entry in feasible:
        if entry["miou"] > best_miou:
            front.append(entry)
            best_miou = entry["miou"]
    return front


def best_entry(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    feasible = [e for e in entries if e["feasible"]]
    return max(feasible, key=lambda e: (e["miou"], -e["params"]), default=None)


def load_pareto(search_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The Pareto front (`pareto.json`) written by `search_subnets` into `search_dir`, sorted by params."""
    path = Path(search_dir) / PARETO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {PARETO_FILE} in {str(search_dir)!r}; is it the output_dir of `supersam search`?")
    return json.loads(path.read_text())


def select_subnet(spec: str | os.PathLike | dict | SubnetConfig, search_dir: str | os.PathLike | None = None) -> SubnetConfig:
    """A subnet named by `spec`: "best" (the search's best feasible subnet), "pareto:N" (entry N of the Pareto
    front, sorted by params, 0 = smallest), or a JSON file / inline JSON / dict with `kept_layers` and `mlp_dims`.
    "best" and "pareto:N" read `search_dir` (the search's output_dir)."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec).strip()
        if text == "best" or text.startswith("pareto:"):
            if search_dir is None:
                raise ValueError(f"Subnet {text!r} refers to a search: pass the search's output folder as search_dir.")
            if text == "best":
                path = Path(search_dir) / BEST_FILE
                if not path.is_file():
                    raise FileNotFoundError(
                        f"No {BEST_FILE} in {str(search_dir)!r}: not a search output folder, or the search found no "
                        "subnet that meets its budget."
                    )
                return parse_subnet(path)
            front = load_pareto(search_dir)
            index_text = text.split(":", 1)[1]
            valid = f"pareto:0 … pareto:{len(front) - 1}" if front else "none (the front is empty)"
            try:
                index = int(index_text)
            except ValueError:
                raise ValueError(f"{text!r}: the index must be an integer; valid: {valid}.") from None
            if not 0 <= index < len(front):
                raise ValueError(
                    f"{text!r} is out of range: the Pareto front in {str(search_dir)!r} has {len(front)} subnet(s); "
                    f"valid: {valid}."
                )
            return parse_subnet(front[index])
    return parse_subnet(spec)


# ----------------------------------------------------------------------------------------------------------------
# Costs and constraints
# ----------------------------------------------------------------------------------------------------------------


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


def repair(space: SearchSpace, keep: dict[int, bool], widths: dict[int, int]) -> SubnetConfig:
    """A subnet from per-layer keep flags (elastic layers) and widths (every layer). Keeping fewer than
    `min_layers` is repaired: dropped elastic layers with the lowest drop probability (ties: lower index) are
    restored first."""
    dropped = [i for i in space.elastic_layers if not keep.get(i, True)]
    shortfall = space.min_layers - (space.num_layers - len(dropped))
    if shortfall > 0:
        prob = dict(zip(space.elastic_layers, space.layer_drop_probs))
        restored = set(sorted(dropped, key=lambda i: (prob[i], i))[:shortfall])
        dropped = [i for i in dropped if i not in restored]
    kept = tuple(i for i in range(space.num_layers) if i not in set(dropped))
    return SubnetConfig(kept, tuple(widths[i] for i in kept))


def _narrowest_all_kept(space: SearchSpace) -> SubnetConfig:
    kept = tuple(range(space.num_layers))
    return SubnetConfig(kept, tuple(space.mlp_dim_choices[i][0] for i in kept))


def cheapest_subnet(space: SearchSpace, cost: Callable[[SubnetConfig], float]) -> tuple[SubnetConfig, float]:
    """The cheapest subnet under `cost` among `space.smallest()` and a greedy candidate (narrowest widths, drop
    the elastic layers whose removal saves the most). Exact when every layer has the same width choices (costs
    are then sums over kept layers); a close upper bound otherwise."""
    full = _narrowest_all_kept(space)
    base = cost(full)
    savings = []
    for i in space.elastic_layers:
        kept = tuple(j for j in full.kept_layers if j != i)
        savings.append((base - cost(SubnetConfig(kept, tuple(space.mlp_dim_choices[j][0] for j in kept))), -i, i))
    num_drop = space.num_layers - space.min_layers
    dropped = {i for _, _, i in sorted(savings, reverse=True)[:num_drop]}
    kept = tuple(i for i in range(space.num_layers) if i not in dropped)
    candidates = [space.smallest(), SubnetConfig(kept, tuple(space.mlp_dim_choices[i][0] for i in kept))]
    return min(((c, cost(c)) for c in candidates), key=lambda item: item[1])


# ----------------------------------------------------------------------------------------------------------------
# OpenTuner, driven in-process
# ----------------------------------------------------------------------------------------------------------------


def _import_opentuner():
    """Import opentuner without its process-wide side effects, and make it work with SQLAlchemy 2.

    * opentuner replaces `logging.Formatter` at import (relativeCreated in seconds for every formatter of the
      process): the original class is put back.
    * `TuningRunMain` calls `init_logging()`, which adds handlers to the root logger and writes `opentuner.log`
      into the working directory: replaced by a no-op (opentuner itself does that after the first call); its
      loggers then follow the application's logging configuration.
    * its SQLAlchemy 1.x idioms (declarative_base, Query.get) raise deprecation warnings under SQLAlchemy 2: they
      are silenced for opentuner's modules only.
    * its DifferentialEvolution iterates a set of objects hashed by address: made reproducible (see
      `_make_differential_evolution_deterministic`).
    * SQLAlchemy 2 removed cascade_backrefs, so a `DesiredResult(tuning_run=...)` is no longer added to the
      session by the backref: the search driver's flush then misses it ("SAWarning: Object of type
      <DesiredResult> not in session") and its duplicate detection never fires. An `init` listener adds every new
      DesiredResult to its tuning run's session, restoring the 1.x behaviour opentuner was written for.
    """
    original_formatter = logging.Formatter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="opentuner")  # SQLAlchemy 2 deprecation notes about its models
        import opentuner  # noqa: F401
        from opentuner import tuningrunmain
        from opentuner.resultsdb.models import DesiredResult
    from sqlalchemy import event

    logging.Formatter = original_formatter
    tuningrunmain.init_logging = lambda: None
    _make_differential_evolution_deterministic()
    if not event.contains(DesiredResult, "init", _add_desired_result_to_session):
        event.listen(DesiredResult, "init", _add_desired_result_to_session)
    return opentuner


_DE_MEMBER_COUNTER = [itertools.count()]


def _make_differential_evolution_deterministic() -> None:
    """opentuner's DifferentialEvolution picks parents from `list(set(population) - {parent})`, a set of objects
    hashed by memory address, so the same seed gives different searches from run to run. Hashing each population
    member by its creation number (restarted for every search) makes that order, and so the search, reproducible;
    nothing else about the technique changes."""
    from opentuner.search import differentialevolution

    member = differentialevolution.PopulationMember
    if getattr(member, "_supersam_deterministic_hash", False):
        return
    original_init = member.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._creation_number = next(_DE_MEMBER_COUNTER[0])

    member.__init__ = __init__
    member.__hash__ = lambda self: self._creation_number
    member._supersam_deterministic_hash = True


def _add_desired_result_to_session(target, args, kwargs) -> None:
    from sqlalchemy.orm import object_session

    run = kwargs.get("tuning_run")
    session = object_session(run) if run is not None else None
    if session is not None:
        session.add(target)


class _IsolatedRandom:
    """A private `random` / `numpy.random` state for OpenTuner (which uses the global modules): swapped in around
    every OpenTuner call, so its proposals depend only on the seed and on the results it is told, not on whatever
    else draws random numbers in between (and the caller's global state is left alone)."""

    def __init__(self, seed: int):
        outer = (random.getstate(), np.random.get_state())
        random.seed(seed)
        np.random.seed(seed % 2**32)
        self.state = (random.getstate(), np.random.get_state())
        random.setstate(outer[0])
        np.random.set_state(outer[1])

    @contextlib.contextmanager
    def active(self):
        outer = (random.getstate(), np.random.get_state())
        random.setstate(self.state[0])
        np.random.set_state(self.state[1])
        try:
            yield
        finally:
            self.state = (random.getstate(), np.random.get_state())
            random.setstate(outer[0])
            np.random.set_state(outer[1])


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.WARNING):
    log = logging.getLogger(name)
    previous = log.level
    if log.getEffectiveLevel() < level:
        log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)


def _make_interface(opentuner, space: SearchSpace, args):
    """The `MeasurementInterface` over `space`: a BooleanParameter `keep_<i>` per elastic layer and an
    IntegerParameter `width_<i>` (index into the layer's sorted width choices, so neighbours are similar widths)
    per layer with more than one choice. Measurements are made by `search_subnets`' loop (TuningRunManager)."""
    from opentuner.search.manipulator import BooleanParameter, ConfigurationManipulator, IntegerParameter

    class SubnetSearchInterface(opentuner.MeasurementInterface):
        def manipulator(self):
            manipulator = ConfigurationManipulator()
            for i in space.elastic_layers:
                manipulator.add_parameter(BooleanParameter(f"keep_{i}"))
            for i, choices in enumerate(space.mlp_dim_choices):
                if len(choices) > 1:
                    manipulator.add_parameter(IntegerParameter(f"width_{i}", 0, len(choices) - 1))
            return manipulator

        def seed_configurations(self):
            largest = {f"keep_{i}": True for i in space.elastic_layers}
            largest.update({f"width_{i}": len(c) - 1 for i, c in enumerate(space.mlp_dim_choices) if len(c) > 1})
            return [largest]

        def run(self, desired_result, input, limit):  # noqa: A002 - opentuner's signature
            raise NotImplementedError("measurements are reported by search_subnets through TuningRunManager")

        def save_final_config(self, configuration):
            pass  # search_subnets writes its own result files

    return SubnetSearchInterface(args=args, project_name="supersam_hf", program_name="subnet_search", program_version="1")


def decode_opentuner_config(space: SearchSpace, data: dict[str, Any]) -> SubnetConfig:
    keep = {i: bool(data.get(f"keep_{i}", True)) for i in space.elastic_layers}
    widths = {}
    for i, choices in enumerate(space.mlp_dim_choices):
        widths[i] = choices[int(data[f"width_{i}"])] if len(choices) > 1 else choices[0]
    return repair(space, keep, widths)


def check_technique(technique: str) -> None:
    """Raise `ValueError` unless `technique` names a registered OpenTuner technique."""
    _import_opentuner()
    from opentuner.search.technique import all_techniques

    names = sorted(t.name for t in all_techniques()[0])
    if technique not in names:
        raise ValueError(f"Unknown OpenTuner technique {technique!r}; registered techniques: {', '.join(names)}.")


def _opentuner_proposals(space: SearchSpace, seed: int, technique: str, database: Path):
    """Generator of subnets proposed by OpenTuner; send it each proposal's objective (minimised)."""
    opentuner = _import_opentuner()
    from opentuner.api import TuningRunManager
    from opentuner.resultsdb.models import Result

    argv = ["--database", f"sqlite:///{database.resolve()}", "--no-dups", "--technique", technique, "--label", "supersam_search"]
    args = opentuner.default_argparser().parse_args(argv)
    rng = _IsolatedRandom(seed)
    _DE_MEMBER_COUNTER[0] = itertools.count()  # see _make_differential_evolution_deterministic
    with rng.active():
        api = TuningRunManager(_make_interface(opentuner, space, args), args)
    try:
        while True:
            with rng.active():
                desired = api.get_next_desired_result()
            if desired is None:
                yield None  # nothing new this generation; counts as a proposal
                continue
            value = yield decode_opentuner_config(space, desired.configuration.data)
            with rng.active():
                api.report_result(desired, Result(time=float(value)))
    finally:
        with rng.active():
            if api.get_best_result() is not None:
                api.finish()
            else:
                api.session.close()
        api.engine.dispose()


def _random_proposals(space: SearchSpace, seed: int):
    """Generator of uniformly random subnets: each elastic layer kept with probability 1/2, each width uniform
    over its choices, repaired to `min_layers` like OpenTuner's proposals."""
    rng = np.random.default_rng(seed)
    while True:
        keep = {i: bool(rng.random() < 0.5) for i in space.elastic_layers}
        widths = {i: c[int(rng.integers(len(c)))] for i, c in enumerate(space.mlp_dim_choices)}
        yield repair(space, keep, widths)


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    """Atomic write (temp file + rename), so an interrupted search never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def plot_pareto(
    entries: list[dict[str, Any]],
    front: list[dict[str, Any]],
    path: Path,
    constraints: Constraints,
    largest_params: int,
    title: str = "",
) -> None:
    """params vs mIoU: every scored subnet, the feasible Pareto front, the largest subnet and the params budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale, unit = (1e6, "M") if largest_params >= 1e6 else (1e3, "K")
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    feasible = [e for e in entries if e["feasible"] and not e["reference"]]
    infeasible = [e for e in entries if not e["feasible"] and not e["reference"]]
    if feasible:
        ax.scatter([e["params"] / scale for e in feasible], [e["miou"] for e in feasible], s=18, c="tab:blue",
                   alpha=0.6, label="feasible subnets")
    if infeasible:
        ax.scatter([e["params"] / scale for e in infeasible], [e["miou"] for e in infeasible], s=22, c="tab:gray",
                   marker="x", alpha=0.7, label="over budget")
    if front:
        ax.plot([e["params"] / scale for e in front], [e["miou"] for e in front], "-o", c="tab:red", ms=6,
                label="Pareto front")
    for e in entries:
        if e["reference"]:
            ax.scatter([e["params"] / scale], [e["miou"]], s=140, marker="*", c="black", zorder=5,
                       label="largest subnet" + ("" if e["feasible"] else " (over budget)"))
    limits = []
    if constraints.max_params is not None:
        limits.append((constraints.max_params, "max_params"))
    if constraints.min_size_reduction is not None:
        limits.append(((1.0 - constraints.min_size_reduction) * largest_params, "min_size_reduction"))
    for value, name in limits:
        ax.axvline(value / scale, ls="--", c="tab:green", label=f"budget ({name})")
    ax.set_xlabel(f"parameters ({unit})")
    ax.set_ylabel("mIoU (search images)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------------


def load_supernet(path: str | os.PathLike, device: str | torch.device | None = None) -> SuperSamModel:
    """A saved supernet folder → `SuperSamModel`; a clear error for a plain SAM checkpoint or anything else."""
    model = load_model(path, device)  # rejects missing, corrupt and foreign folders
    if not isinstance(model, SuperSamModel):
        raise ValueError(
            f"{str(path)!r} is a plain SAM checkpoint, not a supernet: run `supersam convert` (and `supersam "
            "train`) first, and search the supernet it writes."
        )
    return model


def search_subnets(
    supernet: SuperSamModel | str | os.PathLike,
    dataset,
    processor: SamProcessor | None = None,
    budget: int = 40,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_latency_ms: float | None = None,
    min_size_reduction: float | None = None,
    strategy: str = "opentuner",
    seed: int = 0,
    output_dir: str | os.PathLike = "supersam_search",
    resume: bool = False,
    prompt: str = "point",
    max_images: int | None = None,
    latency_repeats: int = 5,
    show_progress: bool = True,
    mask_selection: str = "single",
    batch_size: int = 4,
    eval_seed: int = 0,
    technique: str = "AUCBanditMetaTechniqueA",
    max_proposals: int | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    mask_kind: str | None = None,
    dataset_name: str | None = None,
    split: str | None = None,
) -> SearchResult:
    """Search the supernet's subnets for the highest mIoU under budgets; write results, Pareto front and plot.

    Args:
        supernet: a `SuperSamModel` (trained) or its saved folder.
        dataset: the search images: a `datasets.Dataset`, `SamSegmentationData` or `EvaluationData` (prepared
            once; every subnet is scored on the same images and prompts). Use a split held out from training.
        processor: the supernet's `SamProcessor` (default: loaded from the supernet folder).
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
        prompt / mask_selection / batch_size / max_images / eval_seed: how subnets are scored (`evaluate_model`);
            `eval_seed` fixes the prompts, so searches with different `seed`s score subnets identically.
        latency_repeats: timed forwards per latency measurement (only measured when `max_latency_ms` is set).
        technique: OpenTuner technique name (`--technique`).
        dataset_name / split: recorded in search_results.json's settings (and checked on resume).
        max_proposals: stop after this many proposals even if the budget is not spent (default max(100, 25 ×
            budget)); reached when the feasible space is smaller than the budget.

    Raises `ValueError` before searching when no subnet can meet a budget (naming the smallest achievable value).
    The largest subnet is always scored first, as the reference, and marked so (feasible or not).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}.")
    if budget < 1:
        raise ValueError(f"budget must be >= 1 (the number of subnets to score), got {budget}.")
    if prompt not in PROMPTS or mask_selection not in MASK_SELECTIONS:
        raise ValueError(f"prompt must be one of {PROMPTS} and mask_selection one of {MASK_SELECTIONS}.")
    if min_size_reduction is not None and not 0.0 <= min_size_reduction < 1.0:
        raise ValueError(f"min_size_reduction must be in [0, 1), got {min_size_reduction}.")
    for name, value in (("max_params", max_params), ("max_macs", max_macs), ("max_latency_ms", max_latency_ms)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}.")

    if strategy == "opentuner":
        check_technique(technique)
    if isinstance(supernet, (str, os.PathLike)):
        if processor is None:
            processor = SamProcessor.from_pretrained(supernet)
        supernet = load_supernet(supernet)
    if not isinstance(supernet, SuperSamModel):
        raise ValueError(f"search_subnets needs a SuperSamModel (a supernet), got {type(supernet).__name__}.")
    space = supernet.search_space
    constraints = Constraints(max_params, max_macs, max_latency_ms, min_size_reduction)
    output = Path(output_dir)
    results_path = output / RESULTS_FILE
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output_dir {str(output)!r} exists and is not a folder.")
    if results_path.exists() and not resume:
        raise FileExistsError(
            f"{str(output)!r} already holds a search ({RESULTS_FILE}); pass resume=True (--resume) to continue it, "
            "or choose a new output_dir."
        )

    largest = space.largest()
    largest_params = supernet.count_parameters(largest)
    cheap_cache: dict[SubnetConfig, dict[str, Any]] = {}

    def cheap_cost(cfg: SubnetConfig) -> dict[str, Any]:
        if cfg not in cheap_cache:
            params = supernet.count_parameters(cfg)
            cheap_cache[cfg] = {
                "params": int(params),
                "macs": int(supernet.count_macs(cfg)),
                "size_reduction": 1.0 - params / largest_params,
            }
        return cheap_cache[cfg]

    # Impossible budgets fail before anything is measured.
    if max_params is not None or min_size_reduction is not None:
        _, fewest = cheapest_subnet(space, lambda c: cheap_cost(c)["params"])
        if max_params is not None and fewest > max_params:
            raise ValueError(f"max_params={max_params:,} is below the smallest subnet's {int(fewest):,} parameters.")
        if min_size_reduction is not None and 1.0 - fewest / largest_params < min_size_reduction:
            raise ValueError(
                f"min_size_reduction={min_size_reduction} is above the largest achievable reduction "
                f"{1.0 - fewest / largest_params:.4f} (the smallest subnet has {int(fewest):,} of {largest_params:,} "
                "parameters)."
            )
    if max_macs is not None:
        _, fewest_macs = cheapest_subnet(space, lambda c: cheap_cost(c)["macs"])
        if fewest_macs > max_macs:
            raise ValueError(f"max_macs={max_macs:,} is below the smallest subnet's {int(fewest_macs):,} MACs.")

    data = EvaluationData.prepare(
        dataset, processor, prompt=prompt, batch_size=batch_size, max_images=max_images, seed=eval_seed,
        image_column=image_column, mask_column=mask_column, mask_kind=mask_kind,
    )
    if data.prompt != prompt:
        raise ValueError(f"The EvaluationData was prepared with prompt={data.prompt!r}, not {prompt!r}.")
    if max_latency_ms is not None:
        fastest, _ = cheapest_subnet(space, lambda c: cheap_cost(c)["macs"])
        latency = measure_latency(supernet, fastest, data, latency_repeats)
        if latency > max_latency_ms:
            raise ValueError(
                f"max_latency_ms={max_latency_ms} is below the smallest subnet's measured {latency:.2f} ms "
                f"({fastest.name}, median of {latency_repeats} forwards on {next(supernet.parameters()).device})."
            )

    settings = {
        "dataset": dataset_name,
        "split": split,
        "prompt": prompt,
        "mask_selection": mask_selection,
        "eval_seed": data.seed,
        "num_images": data.num_images,
        "max_images": max_images,
        "search_space": space.to_dict(),
        "largest_params": int(largest_params),
    }
    evaluated: dict[SubnetConfig, dict[str, Any]] = {}  # scored subnets, in order
    rejected: dict[SubnetConfig, dict[str, Any]] = {}  # costs of subnets never scored (over a budget)
    if resume and results_path.exists():
        previous = json.loads(results_path.read_text())
        before = previous.get("settings", {})
        optional = ("dataset", "split")  # only recorded when known (the CLI records them)
        differing = [
            k for k, v in settings.items()
            if before.get(k) != v and not (k in optional and (v is None or before.get(k) is None))
        ]
        if differing:
            raise ValueError(
                f"Cannot resume the search in {str(output)!r}: it was measured with different "
                + ", ".join(f"{k} ({before.get(k)!r} vs now {settings[k]!r})" for k in differing)
                + ". Use the same settings, or a new output_dir."
            )
        for entry in previous.get("evaluations", []):
            evaluated[SubnetConfig.from_dict(entry)] = entry
        for entry in previous.get("rejected", []):
            rejected[SubnetConfig.from_dict(entry)] = entry
        for cfg, entry in [*evaluated.items(), *rejected.items()]:
            cheap_cache[cfg] = {k: entry[k] for k in ("params", "macs", "size_reduction")}
        if max_latency_ms is not None:  # a latency budget new to this search: time what was scored without one
            for cfg, entry in evaluated.items():
                if entry.get("latency_ms") is None and not constraints.violations(entry):
                    entry["latency_ms"] = measure_latency(supernet, cfg, data, latency_repeats)
        logger.info("Resuming the search in %s: %d subnets already scored.", output, len(evaluated))
    elif resume:
        logger.info("Nothing to resume in %s; starting a new search.", output)
    output.mkdir(parents=True, exist_ok=True)

    def full_cost(cfg: SubnetConfig, force_latency: bool = False) -> dict[str, Any]:
        cost = dict(cheap_cost(cfg))
        known = evaluated.get(cfg) or rejected.get(cfg)
        cost["latency_ms"] = known.get("latency_ms") if known else None
        if max_latency_ms is not None and cost["latency_ms"] is None:
            if force_latency or not constraints.violations(cost):  # time only what passes the cheap checks
                cost["latency_ms"] = measure_latency(supernet, cfg, data, latency_repeats)
        return cost

    def entry_for(cfg: SubnetConfig, cost: dict[str, Any]) -> dict[str, Any]:
        violations = constraints.violations(cost)
        return {
            "name": cfg.name,
            **cfg.to_dict(),
            **cost,
            "feasible": not violations,
            "violations": sorted(violations),
            "reference": cfg == largest,
        }

    def save() -> None:
        for table in (evaluated, rejected):  # feasibility under *these* constraints (a resume may change them)
            for cfg, entry in table.items():
                violations = constraints.violations(entry)
                entry["feasible"], entry["violations"] = not violations, sorted(violations)
        evaluations = list(evaluated.values())
        best = best_entry(evaluations)
        _write_json(
            results_path,
            {
                "settings": settings,
                "constraints": constraints.to_dict(),
                "strategy": strategy,
                "seed": seed,
                "budget": budget,
                "best": best["name"] if best else None,
                "evaluations": evaluations,
                "rejected": list(rejected.values()),
            },
        )

    num_new = 0
    from tqdm.auto import tqdm

    progress = tqdm(total=budget, initial=min(len(evaluated), budget), desc=f"search ({strategy})", unit="subnet",
                    disable=not show_progress)

    def score(cfg: SubnetConfig, cost: dict[str, Any]) -> dict[str, Any]:
        nonlocal num_new
        if cfg in evaluated:
            return evaluated[cfg]
        metrics = evaluate_model(supernet, data, processor, subnet=cfg, prompt=prompt, mask_selection=mask_selection,
                                 show_progress=False)
        entry = entry_for(cfg, cost)
        entry.update({k: metrics[k] for k in ("miou", "per_image_miou", "mean_dice", "num_objects")})
        evaluated[cfg] = entry
        rejected.pop(cfg, None)
        num_new += 1
        save()
        best = best_entry(list(evaluated.values()))
        progress.update(1)
        progress.set_postfix(best_miou=f"{best['miou']:.4f}" if best else "-", last=cfg.name)
        return entry

    def objective(cfg: SubnetConfig) -> float:
        """1 - mIoU of a feasible subnet; INFEASIBLE_PENALTY + relative violation (no mIoU) otherwise."""
        cost = full_cost(cfg)
        violations = constraints.violations(cost)
        if violations:
            if cfg not in evaluated and cfg not in rejected:
                rejected[cfg] = entry_for(cfg, cost)
                save()
            return INFEASIBLE_PENALTY + min(sum(violations.values()), 1e3)
        return 1.0 - score(cfg, cost)["miou"]

    was_training = supernet.training
    supernet.eval()
    max_proposals = max_proposals or max(100, 25 * budget)
    num_proposals = 0
    try:
        score(largest, full_cost(largest, force_latency=True))  # the reference, feasible or not
        if strategy == "opentuner":
            database = output / OPENTUNER_DB
            if database.exists():
                database.unlink()  # the search is replayed from the start (answers come from the cache)
            proposals = _opentuner_proposals(space, seed, technique, database)
        else:
            proposals = _random_proposals(space, seed)
        with _quiet_logger("opentuner"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="opentuner")
            try:
                cfg = next(proposals)
                while len(evaluated) < budget and num_proposals < max_proposals:
                    num_proposals += 1
                    value = objective(cfg) if cfg is not None else None
                    cfg = proposals.send(value) if cfg is not None else next(proposals)
            finally:
                proposals.close()
        if len(evaluated) < budget:
            logger.warning(
                "The search stopped after %d proposals with %d of %d subnets scored: the feasible space is smaller "
                "than the budget, or the constraints reject nearly everything.", num_proposals, len(evaluated), budget
            )
    finally:
        progress.close()
        supernet.train(was_training)
        if evaluated:
            save()

    evaluations = list(evaluated.values())
    front = pareto_front(evaluations)
    best = best_entry(evaluations)
    _write_json(output / PARETO_FILE, front)
    best_path = output / BEST_FILE
    if best is not None:
        _write_json(best_path, best)
    elif best_path.exists():
        best_path.unlink()
    title = f"{strategy} search, {len(evaluations)} subnets scored" + (
        f", best feasible mIoU {best['miou']:.4f}" if best else ", no feasible subnet"
    )
    plot_pareto(evaluations, front, output / PARETO_PLOT, constraints, largest_params, title)
    candidate = None
    if best is not None:
        metrics = {k: best.get(k) for k in ("miou", "per_image_miou", "mean_dice", "num_objects")}
        metrics.update(num_images=data.num_images, prompt=prompt, mask_selection=mask_selection, resolution="original",
                       seed=data.seed, subnet=best["name"], subnet_config=SubnetConfig.from_dict(best).to_dict())
        metrics.update({k: best.get(k) for k in ("params", "macs", "latency_ms", "size_reduction")})
        candidate = SearchCandidate(subnet=SubnetConfig.from_dict(best), metrics=metrics, entry=best)
    return SearchResult(
        evaluations=evaluations,
        pareto=front,
        best=candidate,
        reference=evaluated[largest],
        num_evaluated=len(evaluations),
        num_new_evaluations=num_new,
        num_proposals=num_proposals,
        num_rejected=len(rejected),
        paths={
            "results": str(results_path),
            "pareto": str(output / PARETO_FILE),
            "plot": str(output / PARETO_PLOT),
            "best": str(best_path) if best else None,
            "database": str(output / OPENTUNER_DB) if strategy == "opentuner" else None,
        },
    )


# ----------------------------------------------------------------------------------------------------------------
# Command line: `supersam search` / examples/search.py
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SearchArguments:
    """Arguments of `supersam search` / `examples/search.py`."""

    supernet: str = field(metadata={"help": "Trained supernet folder (written by `supersam train` or `supersam convert`)."})
    dataset: str = field(metadata={"help": "Search images: a save_to_disk folder, local data files, or a Hub dataset name."})
    output_dir: str = field(
        metadata={"help": "Folder for search_results.json, pareto.json, pareto.png and best_subnet.json."}
    )
    split: str | None = field(
        default=None, metadata={"help": "Dataset split to search on, held out from training (default: train, or the only split)."}
    )
    processor: str | None = field(default=None, metadata={"help": "SamProcessor folder (default: the supernet folder)."})
    budget: int = field(default=40, metadata={"help": "Subnets to score (mIoU evaluations), the largest-subnet reference included."})
    max_params: int | None = field(default=None, metadata={"help": "Parameter budget of the exported checkpoint."})
    max_macs: int | None = field(default=None, metadata={"help": "MAC budget per image (one prompt)."})
    max_latency_ms: float | None = field(
        default=None, metadata={"help": "Latency budget: median ms of a forward of the extracted subnet on one image."}
    )
    min_size_reduction: float | None = field(
        default=None, metadata={"help": "At least this fraction fewer parameters than the largest subnet (0.5 = half)."}
    )
    strategy: Literal["opentuner", "random"] = field(
        default="opentuner", metadata={"help": "opentuner, or random (uniform sampling, for comparison)."}
    )
    technique: str = field(default="AUCBanditMetaTechniqueA", metadata={"help": "OpenTuner technique (--technique)."})
    seed: int = field(default=0, metadata={"help": "Seed of the search strategy."})
    resume: bool = field(default=False, metadata={"help": "Continue the search in --output_dir, reusing its scored subnets."})
    prompt: Literal["point", "box"] = field(default="point", metadata={"help": "Prompt per instance when scoring."})
    mask_selection: Literal["single", "oracle"] = field(
        default="single", metadata={"help": "single (highest predicted IoU) or oracle (best of three vs ground truth)."}
    )
    max_images: int | None = field(default=None, metadata={"help": "Score subnets on the first N images only."})
    batch_size: int = field(default=4, metadata={"help": "Images per forward when scoring."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the evaluation prompts."})
    latency_repeats: int = field(default=5, metadata={"help": "Timed forwards per latency measurement."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: auto-detect)."})
    mask_column: str | None = field(default=None, metadata={"help": "Mask column (default: auto-detect)."})
    mask_kind: str | None = field(default=None, metadata={"help": "instance, masks or semantic (default: auto-detect)."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})


def format_search(result: SearchResult) -> str:
    ref, best = result.reference, (result.best.entry if result.best else None)
    lines = [
        f"scored {result.num_evaluated} subnets ({result.num_new_evaluations} new), {result.num_proposals} proposals, "
        f"{result.num_rejected} rejected by the budget",
        f"reference (largest) {ref['name']}: mIoU {ref['miou']:.4f}, {ref['params']:,} params"
        + ("" if ref["feasible"] else " (over budget)"),
        (f"best feasible       {best['name']}: mIoU {best['miou']:.4f}, {best['params']:,} params "
         f"({best['size_reduction']:.1%} smaller)") if best else "best feasible       none",
        "Pareto front (params ↑):",
    ]
    for k, e in enumerate(result.pareto):
        lines.append(f"  pareto:{k:<3} {e['params']:>14,}  mIoU {e['miou']:.4f}  {e['name']}")
    lines += [f"{name}: {path}" for name, path in result.paths.items() if path]
    return "\n".join(lines)


def run_search(args: SearchArguments) -> SearchResult:
    """Load supernet, processor and data from the arguments, search, print a summary."""
    supernet = load_supernet(args.supernet, args.device)
    processor = SamProcessor.from_pretrained(args.processor or args.supernet)
    dataset = load_segmentation_dataset(args.dataset, split=args.split)
    result = search_subnets(
        supernet,
        dataset,
        processor,
        budget=args.budget,
        max_params=args.max_params,
        max_macs=args.max_macs,
        max_latency_ms=args.max_latency_ms,
        min_size_reduction=args.min_size_reduction,
        strategy=args.strategy,
        seed=args.seed,
        output_dir=args.output_dir,
        resume=args.resume,
        prompt=args.prompt,
        max_images=args.max_images,
        latency_repeats=args.latency_repeats,
        mask_selection=args.mask_selection,
        batch_size=args.batch_size,
        eval_seed=args.eval_seed,
        technique=args.technique,
        image_column=args.image_column,
        mask_column=args.mask_column,
        mask_kind=args.mask_kind,
        dataset_name=args.dataset,
        split=args.split,
    )
    print(f"supersam search: {args.supernet} on {args.dataset}" + (f" [{args.split}]" if args.split else ""))
    print(format_search(result))
    return result


__all__ = [
    "SearchArguments",
    "SearchCandidate",
    "SearchResult",
    "load_pareto",
    "load_supernet",
    "pareto_front",
    "run_search",
    "search_subnets",
    "select_subnet",
]

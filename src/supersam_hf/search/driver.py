"""The search driver: the best subnet of a trained supernet under size / compute / latency budgets.

The search space is the supernet's: one keep flag per elastic encoder layer, one MLP width per layer, the encoder's
embedding width (uniform across layers) and the input resolution. A proposal strategy (`search.proposals`: OpenTuner's
`technique`, by default its AUC bandit over differential evolution, greedy mutation and Nelder-Mead; or random:
uniform keep flags and widths, same budget and cache) proposes subnets; each one's cheap costs (parameters and MACs
of the checkpoint export would write) are checked against the constraints first, and only a feasible subnet is
scored (mIoU on the search images, `evaluate_model`).
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
* scoring: every subnet is scored on the same images and prompts (`eval_seed` fixes the prompts), so searches with
  different `seed`s score a subnet identically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import SamProcessor

from ..arguments import DataArguments, SearchArguments, with_keywords
from ..checks import is_finite_metric
from ..errors import SupersamError, interrupt_checkpoints
from ..evaluation import MASK_SELECTIONS, PROMPTS, EvaluationData, evaluate_model
from ..modeling_supersam import SuperSamModel
from ..outputs import read_json_file, record_tool_outputs, remove_tool_outputs
from ..search_space import SubnetConfig
from .budgets import (LATENCY_BACKENDS, LATENCY_LABELS, ORT_LATENCY_CACHE, CheapCosts, Constraints, agreed,
                      cheapest_subnet, check_cheap_budgets, check_latency_budget, open_ort_cache, ort_latency_key,
                      subnet_latency_ms)
from .opentuner_compat import check_technique, quiet_opentuner
from .proposals import STRATEGIES, make_proposals
from .results import (BEST_FILE, OPENTUNER_DB, PARETO_FILE, PARETO_PLOT, RESULTS_FILE, SCORE_KEYS, SearchResult,
                      best_entry, check_search_output, plot_pareto, write_json)

logger = logging.getLogger(__name__)

INFEASIBLE_PENALTY = 10.0
TOOL = "supersam search"
# A search's recorded settings, named as the flags that set them (a resume with other values is refused, named).
RESUME_SETTING_FLAGS = {"dataset": "--dataset_name", "split": "--eval_split_name", "prompt": "--prompt_type",
                        "mask_selection": "--mask_selection", "eval_seed": "--eval_seed",
                        "num_images": "the number of images (--max_eval_images)", "max_images": "--max_eval_images",
                        "search_space": "the supernet's search space", "largest_params": "the supernet's size",
                        "latency_backend": "--latency_backend"}


class SubnetSearch:
    """One search: the scored and rejected subnets (the cache a resume reloads), the objective and the loop."""

    def __init__(self, supernet: SuperSamModel, data: EvaluationData, processor: SamProcessor, costs: CheapCosts,
                 constraints: Constraints, output: Path, args: SearchArguments, settings: dict[str, Any],
                 state=None, show_progress: bool = True, ort_cache=None) -> None:
        self.supernet, self.data, self.processor = supernet, data, processor
        # accelerate's PartialState of a multi-process search (None: one process): every process runs the same loop,
        # each scores its share of the images, and only the main process writes.
        self.state = state
        self.costs, self.constraints, self.output, self.args, self.settings = costs, constraints, output, args, settings
        self.show_progress = show_progress
        self.largest = supernet.search_space.largest()
        self.evaluated: dict[SubnetConfig, dict[str, Any]] = {}  # scored subnets, in order
        self.rejected: dict[SubnetConfig, dict[str, Any]] = {}  # costs of subnets never scored (over a budget)
        self.num_new = 0
        self.num_proposals = 0
        self.progress = None
        self.ort_cache = ort_cache  # onnx_export.OrtLatencyCache of output_dir, with latency_backend="onnxruntime"

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
                                                               self.args.latency_backend,
                                                               self.args.latency_repeats, self.ort_cache))
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
        metrics = evaluate_model(self.supernet, self.data, self.processor, subnet=cfg, prompt=self.args.prompt_type,
                                 mask_selection=self.args.mask_selection, show_progress=False, state=self.state)
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

    def report(self) -> SearchResult:
        """The search so far, as `search_results.json` holds it."""
        return SearchResult(settings=self.settings, constraints=self.constraints.to_dict(), strategy=self.args.strategy,
                            seed=self.args.seed, budget=self.args.budget, evaluations=list(self.evaluated.values()),
                            rejected=list(self.rejected.values()), num_new_evaluations=self.num_new,
                            num_proposals=self.num_proposals)

    def save(self) -> None:
        """Write search_results.json (atomically, main process); feasibility is re-judged under *these* constraints."""
        for table in (self.evaluated, self.rejected):
            for entry in table.values():
                violations = self.constraints.violations(entry)
                entry["feasible"], entry["violations"] = not violations, sorted(violations)
        if self.is_main:
            self._record(self.report().save(self.output))

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Score the largest subnet (the reference), then answer proposals until the budget is spent."""
        budget = self.args.budget
        was_training = self.supernet.training
        self.supernet.eval()
        self.progress = tqdm(total=budget, initial=min(len(self.evaluated), budget), desc=f"search ({self.args.strategy})",
                             unit="subnet", disable=not (self.show_progress and self.is_main))
        # Other processes replay the same OpenTuner run (same seed, same answers) in a database of their own.
        scratch = None if self.is_main else Path(tempfile.mkdtemp(prefix="supersam_search_"))
        try:
            self.score(self.largest, self.full_cost(self.largest, force_latency=True))  # feasible or not
            self._answer_proposals(scratch or self.output)
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

    def _answer_proposals(self, folder: Path) -> None:
        """Answer the strategy's proposals until the budget (or `max_proposals`) is spent. OpenTuner's database is
        written in `folder` under a temporary name and becomes opentuner.db when the search ends (a resume replays
        the search from its cache, so a killed run's database is never needed)."""
        args = self.args
        max_proposals = args.max_proposals or max(100, 25 * args.budget)
        database = folder / f".{OPENTUNER_DB}.tmp-{os.getpid()}"
        proposals = make_proposals(args.strategy, self.supernet.search_space, args.seed, args.technique, database)
        completed = False
        with quiet_opentuner(), interrupt_checkpoints() as interrupts:
            try:
                cfg = next(proposals)
                while len(self.evaluated) < args.budget and self.num_proposals < max_proposals:
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

    def result(self) -> SearchResult:
        """Write pareto.json, best_subnet.json and pareto.png (main process); the `SearchResult` (every process)."""
        result = self.report()
        best = best_entry(result.evaluations)
        if self.is_main:
            self._write_result_files(result.evaluations, result.pareto, best)
        result.paths = {
            "results": str(self.results_path),
            "pareto": str(self.output / PARETO_FILE),
            "plot": str(self.output / PARETO_PLOT),
            "best": str(self.output / BEST_FILE) if best else None,
            "database": str(self.output / OPENTUNER_DB) if self.args.strategy == "opentuner" else None,
        }
        return result

    def _write_result_files(self, evaluations: list[dict[str, Any]], front: list[dict[str, Any]],
                            best: dict[str, Any] | None) -> None:
        write_json(self.output / PARETO_FILE, front)
        best_path = self.output / BEST_FILE
        if best is not None:
            write_json(best_path, best)
        else:  # an earlier best of this search (never a file this tool did not write, or one changed since)
            remove_tool_outputs(self.output, within=BEST_FILE)
        title = f"{self.args.strategy} search, {len(evaluations)} subnets scored" + (
            f", best feasible mIoU {best['miou']:.4f}" if best else ", no feasible subnet"
        )
        plot_pareto(evaluations, front, self.output / PARETO_PLOT, self.constraints, self.costs.largest_params, title,
                    latency_label=LATENCY_LABELS[self.args.latency_backend])
        self._record(self.output / PARETO_FILE, best_path, self.output / PARETO_PLOT)


# search_subnets' keyword conveniences: keyword -> its SearchArguments field (the library's older names included:
# `prompt` is --prompt_type), and keyword -> its DataArguments field (`max_images` is --max_eval_images).
SEARCH_KEYWORDS = {name: name for name in (
    "budget", "max_params", "max_macs", "max_latency_ms", "min_size_reduction", "strategy", "seed", "resume",
    "prompt_type", "latency_repeats", "mask_selection", "batch_size", "eval_seed", "technique", "max_proposals",
    "latency_backend")} | {"prompt": "prompt_type"}
SEARCH_DATA_KEYWORDS = {"max_images": "max_eval_images", "max_eval_images": "max_eval_images",
                        "image_column": "image_column", "mask_column": "mask_column", "mask_kind": "mask_kind",
                        "dataset_name": "dataset_name", "split": "eval_split_name", "eval_split_name": "eval_split_name"}


def check_search_arguments(supernet: SuperSamModel, args: SearchArguments) -> Constraints:
    """Refuse, before any work, a wrong strategy, budget, prompt, constraint, technique or model; the constraints."""
    if args.strategy not in STRATEGIES:
        raise SupersamError(f"Unknown strategy {args.strategy!r}; choose one of {STRATEGIES}.")
    if args.budget < 1:
        raise SupersamError(f"budget must be >= 1 (the number of subnets to score), got {args.budget}.")
    if args.prompt_type not in PROMPTS or args.mask_selection not in MASK_SELECTIONS:
        raise SupersamError(f"prompt must be one of {PROMPTS} and mask_selection one of {MASK_SELECTIONS}.")
    constraints = Constraints.from_args(args)
    constraints.check()
    if args.strategy == "opentuner":
        check_technique(args.technique)
    if not isinstance(supernet, SuperSamModel):
        raise SupersamError(f"search_subnets needs a SuperSamModel (a supernet), got {type(supernet).__name__}.")
    return constraints


def search_data(dataset, processor: SamProcessor | None, args: SearchArguments, data_fields: dict[str, Any]
                ) -> EvaluationData:
    """The search images and prompts, prepared once (every subnet is scored on them)."""
    data = EvaluationData.prepare(
        dataset, processor, prompt=args.prompt_type, batch_size=args.batch_size, seed=args.eval_seed,
        max_images=data_fields["max_eval_images"], image_column=data_fields["image_column"],
        mask_column=data_fields["mask_column"], mask_kind=data_fields["mask_kind"],
    )
    if data.prompt != args.prompt_type:
        raise SupersamError(f"The EvaluationData was prepared with prompt={data.prompt!r}, not {args.prompt_type!r}.")
    return data


def search_settings(supernet: SuperSamModel, data: EvaluationData, costs: CheapCosts, args: SearchArguments,
                    data_fields: dict[str, Any]) -> dict[str, Any]:
    """How subnets are scored, as search_results.json records it (a resume must match: `RESUME_SETTING_FLAGS`)."""
    return {
        "dataset": data_fields["dataset_name"], "split": data_fields["eval_split_name"], "prompt": args.prompt_type,
        "mask_selection": args.mask_selection, "eval_seed": data.seed, "num_images": data.num_images,
        "max_images": data_fields["max_eval_images"], "search_space": supernet.search_space.to_dict(),
        "largest_params": int(costs.largest_params),
        "latency_backend": args.latency_backend if args.max_latency_ms is not None else None,
    }


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
        args: the `SearchArguments` the CLI parses (`supersam search`'s flags, each field's help says what it
            does; None: their defaults); `device` is where the CLI loads the supernet and is not read here.
        data_args: the `DataArguments` the CLI parses; read: `max_eval_images`, `dataset_name` / `eval_split_name`
            (recorded in search_results.json, checked on resume), `image_column` / `mask_column` / `mask_kind`.
        output_dir: where the files go; must not hold a previous search unless `resume`.
        state: accelerate's `PartialState` of a multi-process run (every process calls with the same arguments):
            every process runs the same search (the same proposals, from the same seed and answers), each subnet's
            images are split across the processes and the statistics gathered (`evaluate_model`), a latency is
            measured by the main process and shared, and only the main process writes. Every process returns the
            same `SearchResult`, equal to the one-process search's.
        **keywords: conveniences for the fields of `args` / `data_args` (`SEARCH_KEYWORDS`, `SEARCH_DATA_KEYWORDS`;
            `prompt` is `prompt_type`, `max_images` / `split` are `max_eval_images` / `eval_split_name`), e.g.
            `budget=20, max_params=..., prompt="point", max_images=8`; they override `args` / `data_args` (neither
            object is changed). An unknown keyword is refused.

    Budget, caching, repair and resume mean what the module docstring says. A budget no subnet can meet is refused
    before searching, naming the smallest achievable value. The largest subnet is scored first, as the reference.
    """
    args, data_fields = with_keywords(args, SearchArguments, keywords, SEARCH_KEYWORDS, "search_subnets", data_args,
                                      SEARCH_DATA_KEYWORDS)
    constraints = check_search_arguments(supernet, args)
    output = Path(output_dir)
    check_search_output(output, args.resume)
    ort_cache = open_ort_cache(output, args.latency_backend, args.latency_repeats)  # a missing [onnx] extra fails here
    if ort_cache is not None and state is not None and not state.is_main_process:
        ort_cache = None  # latencies are measured (and cached in output_dir) by the main process only
    costs = CheapCosts(supernet)
    check_cheap_budgets(supernet.search_space, costs, constraints)  # impossible budgets fail before anything is measured
    data = search_data(dataset, processor, args, data_fields)
    if args.max_latency_ms is not None:
        check_latency_budget(supernet, data, costs, args, ort_cache, state)
    settings = search_settings(supernet, data, costs, args, data_fields)
    search = SubnetSearch(supernet, data, processor, costs, constraints, output, args, settings, state=state,
                          show_progress=show_progress, ort_cache=ort_cache)
    if args.resume:
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
    "SubnetSearch",
    "agreed",
    "cheapest_subnet",
    "check_cheap_budgets",
    "check_search_arguments",
    "check_search_output",
    "ort_latency_key",
    "search_subnets",
    "subnet_latency_ms",
]

"""Search results: the Pareto front, the best subnet, the result files and the plot, and picking a subnet by name.

Kept apart from the search driver so that commands (evaluate, export) read a search's output without importing
the search machinery.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..errors import OutputFolderError, SupersamError
from ..checks import is_finite_metric
from ..evaluation import parse_subnet
from ..outputs import process_alive, unverified_files
from ..results import _Result
from ..search_space import SubnetConfig

RESULTS_FILE = "search_results.json"
PARETO_FILE = "pareto.json"
PARETO_PLOT = "pareto.png"
BEST_FILE = "best_subnet.json"
OPENTUNER_DB = "opentuner.db"
ORT_LATENCY_CACHE = "ort_latency_cache.json"
# What a search writes in its output_dir (a resume replaces them, an overwrite removes them): only this tool's.
SEARCH_FILES = (RESULTS_FILE, PARETO_FILE, PARETO_PLOT, BEST_FILE, OPENTUNER_DB, ORT_LATENCY_CACHE)
SCORE_KEYS = ("miou", "per_image_miou", "mean_dice", "num_objects")  # what a scored entry adds to its costs


@dataclass
class SearchCandidate:
    """One scored subnet: `subnet` (its `SubnetConfig`), `metrics` (an `evaluate_model`-style dict: "miou",
    "per_image_miou", "mean_dice", "num_objects", "num_images", how it was measured — "prompt", "mask_selection",
    "resolution", "seed" — and its costs "params", "macs", "latency_ms", "size_reduction"; what an export's
    model card shows) and `entry` (its full record in search_results.json)."""

    subnet: SubnetConfig
    metrics: dict[str, Any]
    entry: dict[str, Any]


@dataclass(eq=False)
class SearchResult(_Result):
    """What `search_subnets` found: `to_dict()` is `search_results.json` (`save(folder)` writes it atomically,
    `load(folder)` reads it back); the Pareto front, best subnet and plot are in `paths`' other files.

    settings: how subnets were scored (dataset, split, prompt, mask_selection, eval_seed, num_images, max_images,
        search_space, largest_params, latency_backend); a resume must match them. constraints: the budgets.
    strategy / seed / budget: the proposal strategy, its seed and the number of subnets to score.
    evaluations: every scored subnet in evaluation order (the largest-subnet reference first); each entry holds
        `name`, `kept_layers`, `mlp_dims`, `params`, `macs`, `latency_ms` (None unless a latency budget was set),
        `size_reduction`, `miou`, `per_image_miou`, `mean_dice`, `num_objects`, `feasible`, `violations`,
        `reference`. rejected: the entries of subnets over a budget, never scored.
    num_new_evaluations: scored by this call; num_proposals: configurations proposed by the strategy (neither is
        in the file). paths: "results", "pareto", "plot", "best" (None when no subnet is feasible), "database"
        (opentuner only).
    Derived: `pareto`, `best` (a `SearchCandidate`), `reference`, `num_evaluated`, `num_rejected`.
    """

    FILE: ClassVar[str] = RESULTS_FILE

    settings: dict[str, Any]
    constraints: dict[str, Any]
    strategy: str
    seed: int
    budget: int
    evaluations: list[dict[str, Any]]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    num_new_evaluations: int = 0
    num_proposals: int = 0
    paths: dict[str, str | None] = field(default_factory=dict)

    @property
    def pareto(self) -> list[dict[str, Any]]:
        """The feasible entries not dominated on (fewer params, higher mIoU), sorted by params."""
        return pareto_front(self.evaluations)

    @property
    def best(self) -> SearchCandidate | None:
        """The feasible subnet with the highest mIoU (ties: fewer params), with its metrics as measured; or None."""
        entry = best_entry(self.evaluations)
        if entry is None:
            return None
        subnet = SubnetConfig.from_dict(entry)
        settings = self.settings
        metrics = {k: entry.get(k) for k in SCORE_KEYS}
        metrics.update(num_images=settings["num_images"], prompt=settings["prompt"],
                       mask_selection=settings["mask_selection"], resolution="original", seed=settings["eval_seed"],
                       subnet=entry["name"], subnet_config=subnet.to_dict())
        metrics.update({k: entry.get(k) for k in ("params", "macs", "latency_ms", "size_reduction")})
        return SearchCandidate(subnet=subnet, metrics=metrics, entry=entry)

    @property
    def reference(self) -> dict[str, Any]:
        """The largest subnet's entry (scored first, feasible or not)."""
        return next(e for e in self.evaluations if e["reference"])

    @property
    def num_evaluated(self) -> int:
        """Scored subnets in total (resumed ones included)."""
        return len(self.evaluations)

    @property
    def num_rejected(self) -> int:
        return len(self.rejected)

    def to_dict(self) -> dict[str, Any]:
        best = best_entry(self.evaluations)
        return {"settings": self.settings, "constraints": self.constraints, "strategy": self.strategy,
                "seed": self.seed, "budget": self.budget, "best": best["name"] if best else None,
                "evaluations": self.evaluations, "rejected": self.rejected}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `search_results.json` atomically (a search saves it after every subnet; a kill never leaves half)."""
        path = Path(folder) / self.FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SearchResult":
        """The `search_results.json` of the search output folder `folder`."""
        data = cls.read(folder)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def pareto_front(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feasible entries not dominated on (params ↓, mIoU ↑), sorted by params (ties: the higher mIoU kept).
    An entry whose mIoU is NaN/inf (a broken model or data) is never on the front."""
    feasible = sorted((e for e in entries if e["feasible"] and is_finite_metric(e.get("miou"))), key=lambda e: (e["params"], -e["miou"], e["name"]))
    front, best_miou = [], -math.inf
    for entry in feasible:
        if entry["miou"] > best_miou:
            front.append(entry)
            best_miou = entry["miou"]
    return front


def best_entry(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The feasible entry with the highest finite mIoU (ties: fewer params); NaN/inf scores are never ranked."""
    feasible = [e for e in entries if e["feasible"] and is_finite_metric(e.get("miou"))]
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
                raise SupersamError(f"Subnet {text!r} refers to a search: pass the search's output folder as search_dir.")
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
                raise SupersamError(f"{text!r}: the index must be an integer; valid: {valid}.") from None
            if not 0 <= index < len(front):
                raise SupersamError(
                    f"{text!r} is out of range: the Pareto front in {str(search_dir)!r} has {len(front)} subnet(s); "
                    f"valid: {valid}."
                )
            return parse_subnet(front[index])
    return parse_subnet(spec)


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


def write_json(path: Path, data: Any) -> None:
    """Atomic write (temp file + rename), so an interrupted search never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def plot_pareto(
    entries: list[dict[str, Any]],
    front: list[dict[str, Any]],
    path: Path,
    constraints: Any,
    largest_params: int,
    title: str = "",
    latency_label: str | None = None,
) -> None:
    """params vs mIoU: every scored subnet, the feasible Pareto front, the largest subnet and the params budget.

    When the entries carry measured latencies (`latency_ms`), a second panel plots mIoU against latency, its axis
    labelled `latency_label` (which backend timed it), with the latency budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale, unit = (1e6, "M") if largest_params >= 1e6 else (1e3, "K")
    timed = [e for e in entries if isinstance(e.get("latency_ms"), (int, float))]
    fig = Figure(figsize=(11.8 if timed else 6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if timed else 1, 1)
    if timed:
        _plot_latency(fig.add_subplot(1, 2, 2), timed, front, constraints, latency_label or "latency, ms")
    _scatter_subnets(ax, entries, lambda e: e["params"] / scale)
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
    ax.set_title(title, fontsize=10)
    _finish(ax, f"parameters ({unit})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_latency(ax, timed: list[dict[str, Any]], front: list[dict[str, Any]], constraints: Any, label: str) -> None:
    """mIoU against measured latency: feasible and over-budget subnets, the (params) Pareto front, the budget."""
    _scatter_subnets(ax, timed, lambda e: e["latency_ms"])
    timed_front = [e for e in front if isinstance(e.get("latency_ms"), (int, float))]
    if timed_front:
        ax.scatter([e["latency_ms"] for e in timed_front], [e["miou"] for e in timed_front], s=40, facecolors="none",
                   edgecolors="tab:red", label="Pareto front (params)")
    for e in timed:
        if e["reference"]:
            ax.scatter([e["latency_ms"]], [e["miou"]], s=140, marker="*", c="black", zorder=5, label="largest subnet")
    if getattr(constraints, "max_latency_ms", None) is not None:
        ax.axvline(constraints.max_latency_ms, ls="--", c="tab:green", label="budget (max_latency_ms)")
    _finish(ax, label)


def _scatter_subnets(ax, entries: list[dict[str, Any]], x: Callable[[dict[str, Any]], float]) -> None:
    """The scored subnets but the reference, feasible and over budget, at `x(entry)` against their mIoU."""
    for feasible, style in ((True, dict(s=18, c="tab:blue", alpha=0.6, label="feasible subnets")),
                            (False, dict(s=22, c="tab:gray", marker="x", alpha=0.7, label="over budget"))):
        points = [e for e in entries if e["feasible"] == feasible and not e["reference"]]
        if points:
            ax.scatter([x(e) for e in points], [e["miou"] for e in points], **style)


def _finish(ax, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mIoU (search images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def subnet_metrics(search_dir: str | os.PathLike | None, subnet: SubnetConfig) -> dict | None:
    """How a search measured `subnet`: its entry in search_results.json (with the search's settings: prompt, mask
    selection, images) or, failing that, in pareto.json / best_subnet.json. None if it was not scored there."""
    if not search_dir or not Path(search_dir).is_dir():
        return None
    settings: dict = {}
    entries: list[dict] = []
    for name in (RESULTS_FILE, PARETO_FILE, BEST_FILE):
        try:
            data = json.loads((Path(search_dir) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("evaluations"), list):  # search_results.json
            settings = data.get("settings") or {}
            entries += data["evaluations"]
        elif isinstance(data, list):  # pareto.json
            entries += data
        elif isinstance(data, dict):  # best_subnet.json
            entries.append(data)
    scored = [e for e in entries if isinstance(e, dict) and isinstance(e.get("miou"), (int, float))]
    entry = next((e for e in scored if _entry_subnet(e) == subnet), None)
    if entry is None:
        return None
    metrics = {k: float(entry[k]) for k in ("miou", "per_image_miou", "mean_dice") if isinstance(entry.get(k), (int, float))}
    reference = next((e for e in scored if e.get("reference")), None)
    if reference is not None and reference is not entry:
        metrics["largest_subnet_miou"] = float(reference["miou"])
    if isinstance(entry.get("latency_ms"), (int, float)):
        metrics["latency_ms"] = float(entry["latency_ms"])
    for key in ("dataset", "split", "prompt", "mask_selection", "num_images", "max_images", "eval_seed",
                "latency_backend"):
        if settings.get(key) is not None:
            metrics[key] = settings[key]
    metrics["measured_by"] = f"supersam search ({RESULTS_FILE if settings else PARETO_FILE}), on the supernet's weights"
    return metrics


def _entry_subnet(entry: dict) -> SubnetConfig | None:
    try:
        return parse_subnet(entry)
    except ValueError:
        return None


__all__ = [
    "BEST_FILE",
    "OPENTUNER_DB",
    "ORT_LATENCY_CACHE",
    "PARETO_FILE",
    "PARETO_PLOT",
    "RESULTS_FILE",
    "SCORE_KEYS",
    "SEARCH_FILES",
    "SearchCandidate",
    "SearchResult",
    "best_entry",
    "check_search_output",
    "load_pareto",
    "pareto_front",
    "plot_pareto",
    "select_subnet",
    "subnet_metrics",
    "write_json",
]

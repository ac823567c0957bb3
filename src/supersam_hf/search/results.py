"""Search results: the Pareto front, the best subnet, the result files and the plot, and picking a subnet by name.

Kept apart from the search driver so that commands (evaluate, export) read a search's output without importing
the search machinery.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SupersamError
from ..checks import is_finite_metric
from ..evaluation import parse_subnet
from ..search_space import SubnetConfig

RESULTS_FILE = "search_results.json"
PARETO_FILE = "pareto.json"
PARETO_PLOT = "pareto.png"
BEST_FILE = "best_subnet.json"
OPENTUNER_DB = "opentuner.db"


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


def _plot_latency(ax, timed: list[dict[str, Any]], front: list[dict[str, Any]], constraints: Any, label: str) -> None:
    """mIoU against measured latency: feasible and over-budget subnets, the (params) Pareto front, the budget."""
    for feasible, style in ((True, dict(s=18, c="tab:blue", alpha=0.6, label="feasible subnets")),
                            (False, dict(s=22, c="tab:gray", marker="x", alpha=0.7, label="over budget"))):
        points = [e for e in timed if e["feasible"] == feasible and not e["reference"]]
        if points:
            ax.scatter([e["latency_ms"] for e in points], [e["miou"] for e in points], **style)
    timed_front = [e for e in front if isinstance(e.get("latency_ms"), (int, float))]
    if timed_front:
        ax.scatter([e["latency_ms"] for e in timed_front], [e["miou"] for e in timed_front], s=40, facecolors="none",
                   edgecolors="tab:red", label="Pareto front (params)")
    for e in timed:
        if e["reference"]:
            ax.scatter([e["latency_ms"]], [e["miou"]], s=140, marker="*", c="black", zorder=5, label="largest subnet")
    if getattr(constraints, "max_latency_ms", None) is not None:
        ax.axvline(constraints.max_latency_ms, ls="--", c="tab:green", label="budget (max_latency_ms)")
    ax.set_xlabel(label)
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
    "PARETO_FILE",
    "PARETO_PLOT",
    "RESULTS_FILE",
    "SearchCandidate",
    "SearchResult",
    "best_entry",
    "load_pareto",
    "pareto_front",
    "plot_pareto",
    "select_subnet",
    "subnet_metrics",
    "write_json",
]

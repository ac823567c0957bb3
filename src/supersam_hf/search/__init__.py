"""Subnet search: a small driver (`SubnetSearch`), proposal strategies, OpenTuner compatibility, result files."""

from .budgets import Constraints, cheapest_subnet, measure_latency
from .driver import SubnetSearch, search_subnets
from .proposals import STRATEGIES, repair
from .results import (
    BEST_FILE,
    PARETO_FILE,
    PARETO_PLOT,
    RESULTS_FILE,
    SearchCandidate,
    SearchResult,
    best_entry,
    load_pareto,
    pareto_front,
    select_subnet,
    subnet_metrics,
)

__all__ = [
    "BEST_FILE",
    "Constraints",
    "PARETO_FILE",
    "PARETO_PLOT",
    "RESULTS_FILE",
    "STRATEGIES",
    "SearchCandidate",
    "SearchResult",
    "SubnetSearch",
    "best_entry",
    "cheapest_subnet",
    "load_pareto",
    "measure_latency",
    "pareto_front",
    "repair",
    "search_subnets",
    "select_subnet",
    "subnet_metrics",
]

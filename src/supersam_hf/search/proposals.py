"""Subnet proposals behind one generator interface: OpenTuner's techniques, or uniform random sampling.

A proposal generator yields `SubnetConfig`s (or None: "nothing new this round", which still counts as a proposal);
the driver sends back each proposal's objective (minimised). Both strategies cover the whole space: which elastic
layers are kept, each layer's MLP width, the encoder's embedding width (uniform across layers) and the input
resolution; both repair a
proposal keeping fewer than `min_layers` layers the same way (`repair`).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SupersamError, interrupts_deferred
from ..search_space import SearchSpace, SubnetConfig
from ..types import SearchStrategy
from .opentuner_compat import HIDDEN_PARAMETER, IMAGE_PARAMETER, IsolatedRandom, import_opentuner, make_interface, reset_member_counter

STRATEGIES = SearchStrategy.values()


def repair(
    space: SearchSpace, keep: dict[int, bool], widths: dict[int, int], hidden_size: int | None = None,
    image_size: int | None = None,
) -> SubnetConfig:
    """A subnet from per-layer keep flags (elastic layers), widths (every layer), the embedding width
    (`hidden_size`, None or the full width = full) and the input resolution (`image_size`, likewise). Keeping fewer than `min_layers` is repaired: dropped elastic
    layers with the lowest drop probability (ties: lower index) are restored first."""
    dropped = [i for i in space.elastic_layers if not keep.get(i, True)]
    shortfall = space.min_layers - (space.num_layers - len(dropped))
    if shortfall > 0:
        prob = dict(zip(space.elastic_layers, space.layer_drop_probs))
        restored = set(sorted(dropped, key=lambda i: (prob[i], i))[:shortfall])
        dropped = [i for i in dropped if i not in restored]
    kept = tuple(i for i in range(space.num_layers) if i not in set(dropped))
    return space.canonical(SubnetConfig(kept, tuple(widths[i] for i in kept), hidden_size, image_size))


def decode_opentuner_config(space: SearchSpace, data: dict[str, Any]) -> SubnetConfig:
    """The subnet of an OpenTuner configuration (`opentuner_compat.make_interface`'s parameters): keep flags,
    per-layer width indices, the embedding-width and resolution indices (absent when the space has a single one)."""
    keep = {i: bool(data.get(f"keep_{i}", True)) for i in space.elastic_layers}
    widths = {}
    for i, choices in enumerate(space.mlp_dim_choices):
        widths[i] = choices[int(data[f"width_{i}"])] if len(choices) > 1 else choices[0]
    hidden = space.hidden_size_choices[int(data[HIDDEN_PARAMETER])] if len(space.hidden_size_choices) > 1 else None
    image = space.image_size_choices[int(data[IMAGE_PARAMETER])] if len(space.image_size_choices) > 1 else None
    return repair(space, keep, widths, hidden, image)


def opentuner_proposals(space: SearchSpace, seed: int, technique: str, database: Path):
    """Generator of subnets proposed by OpenTuner; send it each proposal's objective (minimised)."""
    opentuner = import_opentuner()
    from opentuner.api import TuningRunManager
    from opentuner.resultsdb.models import Result

    argv = ["--database", f"sqlite:///{database.resolve()}", "--no-dups", "--technique", technique, "--label", "supersam_search"]
    args = opentuner.default_argparser().parse_args(argv)
    rng = IsolatedRandom(seed)
    reset_member_counter()
    # Every call into OpenTuner (its SQLAlchemy database) runs with Ctrl-C deferred to the call's end: a
    # KeyboardInterrupt inside the database layer can be swallowed there (the search would run on) or leave its
    # session half-done; deferred, it is raised here, between calls, and the search ends (exit 130).
    with rng.active(), interrupts_deferred():
        api = TuningRunManager(make_interface(opentuner, space, args), args)
    try:
        while True:
            with rng.active(), interrupts_deferred():
                desired = api.get_next_desired_result()
            if desired is None:
                yield None  # nothing new this generation; counts as a proposal
                continue
            value = yield decode_opentuner_config(space, desired.configuration.data)
            with rng.active(), interrupts_deferred():
                api.report_result(desired, Result(time=float(value)))
    finally:
        with rng.active(), interrupts_deferred():
            try:
                if api.get_best_result() is not None:
                    api.finish()
                else:
                    api.session.close()
            finally:
                api.engine.dispose()


def random_proposals(space: SearchSpace, seed: int):
    """Generator of uniformly random subnets: each elastic layer kept with probability 1/2, each MLP width uniform
    over its choices, the embedding width uniform over `hidden_size_choices`, the resolution uniform over
    `image_size_choices`, repaired to `min_layers` like
    OpenTuner's proposals."""
    rng = np.random.default_rng(seed)
    hidden_choices = space.hidden_size_choices
    while True:
        keep = {i: bool(rng.random() < 0.5) for i in space.elastic_layers}
        widths = {i: c[int(rng.integers(len(c)))] for i, c in enumerate(space.mlp_dim_choices)}
        hidden = hidden_choices[int(rng.integers(len(hidden_choices)))] if len(hidden_choices) > 1 else None
        images = space.image_size_choices
        image = images[int(rng.integers(len(images)))] if len(images) > 1 else None
        yield repair(space, keep, widths, hidden, image)


def make_proposals(
    strategy: str, space: SearchSpace, seed: int, technique: str, database: Path
) -> Generator[SubnetConfig | None, Any, None]:
    """The proposal generator of `strategy`; OpenTuner's database starts afresh (a resume replays from the start,
    its answers come from the driver's cache)."""
    if strategy not in STRATEGIES:
        raise SupersamError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}.")
    if strategy == "random":
        return random_proposals(space, seed)
    if database.exists():
        database.unlink()
    return opentuner_proposals(space, seed, technique, database)


__all__ = ["STRATEGIES", "decode_opentuner_config", "make_proposals", "opentuner_proposals", "random_proposals", "repair"]

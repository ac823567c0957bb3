"""Every OpenTuner workaround in one place: import side effects, SQLAlchemy 2, reproducibility, quiet logs.

OpenTuner is driven in-process (`TuningRunManager`); `search.proposals` turns it into a generator of subnets.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import warnings
from typing import Any

import numpy as np

from ..errors import SupersamError
from ..search_space import SearchSpace, SubnetConfig


def import_opentuner():
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


class IsolatedRandom:
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


HIDDEN_PARAMETER = "hidden_size"  # OpenTuner parameter of the embedding width (an index into hidden_size_choices)
IMAGE_PARAMETER = "image_size"  # OpenTuner parameter of the input resolution (an index into image_size_choices)


def seed_configuration(space: SearchSpace, cfg: SubnetConfig) -> dict[str, Any]:
    """The OpenTuner configuration (`make_interface`'s parameters) of the subnet `cfg`: the inverse of
    `proposals.decode_opentuner_config` (widths of dropped layers are set to their widest choice)."""
    space.validate(cfg)
    plan = space.layer_plan(cfg)
    data: dict[str, Any] = {f"keep_{i}": plan[i] is not None for i in space.elastic_layers}
    for i, choices in enumerate(space.mlp_dim_choices):
        if len(choices) > 1:
            data[f"width_{i}"] = choices.index(plan[i]) if plan[i] is not None else len(choices) - 1
    if len(space.hidden_size_choices) > 1:
        data[HIDDEN_PARAMETER] = space.hidden_size_choices.index(plan.hidden_size)
    if len(space.image_size_choices) > 1:
        data[IMAGE_PARAMETER] = space.image_size_choices.index(plan.image_size)
    return data


def make_interface(opentuner, space: SearchSpace, args):
    """The `MeasurementInterface` over `space`: a BooleanParameter `keep_<i>` per elastic layer, an
    IntegerParameter `width_<i>` (index into the layer's sorted width choices, so neighbours are similar widths)
    per layer with more than one choice, and an IntegerParameter `hidden_size` (index into the sorted embedding
    widths) when the space has more than one, and likewise `image_size` for the input resolutions. The search starts from the largest subnet (its seed
    configuration). Measurements are made by the search driver's loop (TuningRunManager)."""
    from opentuner.search.manipulator import BooleanParameter, ConfigurationManipulator, IntegerParameter

    class SubnetSearchInterface(opentuner.MeasurementInterface):
        def manipulator(self):
            manipulator = ConfigurationManipulator()
            for i in space.elastic_layers:
                manipulator.add_parameter(BooleanParameter(f"keep_{i}"))
            for i, choices in enumerate(space.mlp_dim_choices):
                if len(choices) > 1:
                    manipulator.add_parameter(IntegerParameter(f"width_{i}", 0, len(choices) - 1))
            if len(space.hidden_size_choices) > 1:
                manipulator.add_parameter(IntegerParameter(HIDDEN_PARAMETER, 0, len(space.hidden_size_choices) - 1))
            if len(space.image_size_choices) > 1:
                manipulator.add_parameter(IntegerParameter(IMAGE_PARAMETER, 0, len(space.image_size_choices) - 1))
            return manipulator

        def seed_configurations(self):
            return [seed_configuration(space, space.largest())]

        def run(self, desired_result, input, limit):  # noqa: A002 - opentuner's signature
            raise NotImplementedError("measurements are reported by the search driver through TuningRunManager")

        def save_final_config(self, configuration):
            pass  # search_subnets writes its own result files

    return SubnetSearchInterface(args=args, project_name="supersam_hf", program_name="subnet_search", program_version="1")


def check_technique(technique: str) -> None:
    """Raise `ValueError` unless `technique` names a registered OpenTuner technique."""
    import_opentuner()
    from opentuner.search.technique import all_techniques

    names = sorted(t.name for t in all_techniques()[0])
    if technique not in names:
        raise SupersamError(f"Unknown OpenTuner technique {technique!r}; registered techniques: {', '.join(names)}.")


@contextlib.contextmanager
def quiet_opentuner():
    """OpenTuner's info logs and SQLAlchemy deprecation warnings stay out of the search's output."""
    with _quiet_logger("opentuner"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="opentuner")
        yield


__all__ = [
    "HIDDEN_PARAMETER",
    "IMAGE_PARAMETER",
    "IsolatedRandom",
    "check_technique",
    "import_opentuner",
    "make_interface",
    "quiet_opentuner",
    "reset_member_counter",
    "seed_configuration",
]


def reset_member_counter() -> None:
    """Restart DifferentialEvolution's member numbering (see `_make_differential_evolution_deterministic`)."""
    _DE_MEMBER_COUNTER[0] = itertools.count()

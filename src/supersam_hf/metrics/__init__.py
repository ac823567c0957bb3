"""`evaluate` metrics shipped with supersam_hf, loadable offline from their folder."""

from __future__ import annotations

import os

SAM_MIOU_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sam_miou")
"""Absolute path of the `sam_miou` metric folder (`evaluate.load(SAM_MIOU_PATH)`); shipped as package data."""


def load_sam_miou(**kwargs):
    """The `sam_miou` metric (`evaluate.EvaluationModule`) loaded from the installed package, no network needed.

    `kwargs` go to `evaluate.load` (e.g. `experiment_id`, `keep_in_memory`, `num_process`/`process_id`).
    """
    import evaluate

    return evaluate.load(SAM_MIOU_PATH, **kwargs)


__all__ = ["SAM_MIOU_PATH", "load_sam_miou"]

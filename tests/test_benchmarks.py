"""Every script in benchmarks/ runs end to end in its `--smoke` mode (the real code path at the tiniest sizes), so a
broken import or a renamed API fails here rather than when someone next measures; no smoke run touches
benchmarks/ (its committed results above all), and each writes its report, <script>.md as in benchmarks/results/,
into a temporary folder.

The scripts run in this process (`main(["--smoke"])`: one torch import for all of them); what they change globally
(torch threads, the working folder, sys.path, temporary folders, modules imported from benchmarks/) is put back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Every benchmark script; modules starting with "_" are shared helpers (benchmarks/_common.py), not benchmarks.
SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_"))

pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `folder` (bytecode caches aside)."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and "__pycache__" not in path.parts}


def _run_smoke(script: Path) -> None:
    """`main(["--smoke"])` of `script`, loaded as a fresh module; a script without the flag fails with a clear line."""
    name = f"benchmarks/{script.name}"
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        pytest.fail(f"{name} has no main(argv): give it one that parses argv, with a --smoke flag")
    try:
        module.main(["--smoke"])
    except SystemExit as exit_:  # argparse: "unrecognized arguments: --smoke" (or the script's own parser.error)
        if exit_.code not in (0, None):
            pytest.fail(f"{name} --smoke exited with status {exit_.code}: every benchmark needs a --smoke mode that runs "
                        "its real code path at the tiniest sizes in seconds and writes to a temporary folder "
                        "(see SMOKE_HELP in benchmarks/_common.py)")


def test_the_benchmarks_are_found():
    assert len(SCRIPTS) >= 14 and BENCHMARKS / "onnx_latency.py" in SCRIPTS
    assert BENCHMARKS / "_common.py" not in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_benchmark_runs_in_smoke_mode(script, tmp_path, monkeypatch):
    before = _snapshot(BENCHMARKS)
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # `from _common import ...`, `from reorder_gain import ...`
    monkeypatch.chdir(tmp_path)  # relative default folders (runs/...) would land here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # smoke folders and temporary folders, this process
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # and child processes
    modules, threads = set(sys.modules), torch.get_num_threads()
    try:
        _run_smoke(script)
    finally:
        torch.set_num_threads(threads)
        for name in set(sys.modules) - modules:  # benchmarks/ modules imported by the script: fresh for the next one
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(BENCHMARKS)):
                del sys.modules[name]
    after = _snapshot(BENCHMARKS)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not changed, f"benchmarks/{script.name} --smoke changed files in benchmarks/: {changed}"
    reports = [path for path in tmp_path.rglob(f"{script.stem}.md") if path.stat().st_size > 0]
    assert reports, f"benchmarks/{script.name} --smoke wrote no report {script.stem}.md into its temporary folder"

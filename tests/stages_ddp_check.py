"""Run by tests/test_engines.py under `accelerate launch` (2 CPU processes, gloo): `supersam` stages in turn.

    stages_ddp_check.py '<json list of argv lists>'

Each argv list is one `supersam` command line (`supersam_hf.commands.cli.main`); the first failing one ends the
process with its exit status. One launch runs several stages, so the test pays for one process group only.
"""

from __future__ import annotations

import json
import sys

from supersam_hf.commands.cli import main

if __name__ == "__main__":
    for argv in json.loads(sys.argv[1]):
        status = main(argv)
        if status:
            sys.exit(status)

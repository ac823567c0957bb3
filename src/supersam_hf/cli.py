"""`python -m supersam_hf.cli` → `supersam_hf.commands.cli` (the `supersam` console script)."""

import sys

from .commands.cli import main, parse_stage_arguments

__all__ = ["main", "parse_stage_arguments"]

if __name__ == "__main__":
    sys.exit(main())

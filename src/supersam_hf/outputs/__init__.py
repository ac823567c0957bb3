"""Output folders that never lose a user's file, and state files that say which file is broken.

Every stage writes its results through this package:

* `prepare_output_dir` checks, before any long work, that the output is not one of the inputs (or inside / around
  one), that it can be written, and that an existing non-empty folder is only reused with `--overwrite_output_dir`.
* `atomic_output_dir` lets a stage write a whole folder into a temporary sibling (`.<name>.tmp-<pid>`) and moves it
  into place only when it is complete, so a crash or a full disk leaves the target exactly as it was.
* A manifest (`.supersam-manifest.json`) in each output folder lists the files this tool wrote there. Overwriting
  removes only those files (`remove_tool_outputs`); a user's own files in the folder are never deleted or replaced.
  Stages that write incrementally (training checkpoints) add what they write with `record_tool_outputs`.
* `repair_jsonl` and `read_json_file` turn torn or corrupt state files into a repair or an error naming the file.

Modules: `folders` (the checks, the atomic writes), `manifest` (what was written, the one removal routine), `swap`
(the journaled move into place and its recovery), `jsonfiles` (state files).
"""

from .folders import OutputDirError, atomic_output_dir, atomic_update, prepare_output_dir, write_failure
from .jsonfiles import read_json_file, repair_jsonl
from .manifest import (MANIFEST_NAME, read_manifest, read_manifest_entries, record_tool_outputs, remove_tool_outputs,
                       unverified_files)
from .swap import process_alive, recover_interrupted_swap

__all__ = [
    "MANIFEST_NAME", "OutputDirError", "atomic_output_dir", "atomic_update", "prepare_output_dir", "process_alive",
    "read_json_file", "read_manifest", "read_manifest_entries", "record_tool_outputs", "recover_interrupted_swap",
    "remove_tool_outputs", "repair_jsonl", "unverified_files", "write_failure",
]

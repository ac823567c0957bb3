"""Every user error is one line with exit code 2; a traceback only with the debug switch."""

from __future__ import annotations

import errno
import io

from supersam_hf.checks import check_positive
from supersam_hf.errors import DEBUG_ENV, debug_enabled, format_error_line, run_stage
from supersam_hf.outputs import read_json_file


def _run(entry, *args, debug=None):
    stream = io.StringIO()
    code = run_stage("evaluate", entry, *args, debug=debug, stderr=stream)
    return code, stream.getvalue()


def test_user_error_is_one_line_with_exit_code_2(monkeypatch, tmp_path):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, text = _run(check_positive, "batch_size", 0)
    assert code == 2
    assert text == "supersam evaluate: error: --batch_size must be a positive integer, got 0.\n"
    (tmp_path / "training_state.json").write_text("{garbage")
    code, text = _run(read_json_file, tmp_path / "training_state.json", "training state")
    assert code == 2 and text.count("\n") == 1
    assert text.startswith("supersam evaluate: error: training state ") and "training_state.json is corrupt" in text


def test_os_errors_are_words_not_errno(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")

    code, text = _run(full_disk)
    assert code == 2
    assert text == (
        "supersam evaluate: error: No space left on device: /data/out/model.safetensors; free space or write to "
        "another folder (the partial output was removed)\n"
    )
    assert "[Errno" not in format_error_line("export", FileExistsError(errno.EEXIST, "File exists", "/x"))


def test_bug_is_one_line_pointing_to_the_debug_switch(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def bug():
        raise TypeError("unsupported operand\ntype(s)")

    code, text = _run(bug)
    assert code == 1
    assert text == (
        f"supersam evaluate: internal error (TypeError: unsupported operand type(s)); rerun with {DEBUG_ENV}=1 for "
        "the traceback and report it.\n"
    )


def test_debug_switch_shows_the_traceback(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert debug_enabled()
    code, text = _run(check_positive, "batch_size", 0)
    assert code == 2 and "Traceback" in text and "SupersamError: --batch_size must be a positive integer" in text
    assert text.endswith("supersam evaluate: error: --batch_size must be a positive integer, got 0.\n")
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert not debug_enabled() and debug_enabled(True)
    code, text = _run(check_positive, "batch_size", 0, debug=True)
    assert code == 2 and "Traceback" in text
    code, text = _run(check_positive, "batch_size", 0)
    assert code == 2 and "Traceback" not in text


def test_success_and_interrupt(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert _run(lambda: None) == (0, "")

    def interrupted():
        raise KeyboardInterrupt

    assert _run(interrupted) == (130, "supersam evaluate: interrupted; the output folder was left as it was; rerun "
                                      "the command to start again\n")
    code = run_stage("search", interrupted, stderr=(stream := io.StringIO()))
    assert code == 130 and stream.getvalue() == ("supersam search: interrupted; rerun with --resume to continue from the "
                                                 "subnets already scored\n")


def test_output_folder_errors_are_one_line(monkeypatch, tmp_path):
    from supersam_hf.outputs import prepare_output_dir

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    supernet = tmp_path / "supernet"
    supernet.mkdir()
    (supernet / "config.json").write_text("{}")
    code, text = _run(lambda: prepare_output_dir(supernet, overwrite=True, inputs=[supernet]))
    assert code == 2 and text.count("\n") == 1
    assert text.startswith(f"supersam evaluate: error: the output {supernet.resolve()} is the input")
    code, text = _run(lambda: prepare_output_dir(supernet, overwrite=False))
    assert code == 2 and "[Errno" not in text and "pass --overwrite_output_dir" in text


def test_errors_by_type_a_bare_library_error_is_a_bug(monkeypatch):
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError
    from PIL import Image

    from supersam_hf.errors import DataError, ModelFileError, OutputFolderError, is_user_error

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    users = [DataError("x"), ModelFileError("x"), OutputFolderError("x"), FileNotFoundError("x"), PermissionError("x"),
             OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EFBIG, "File too large"),
             LocalEntryNotFoundError("x"), DatasetNotFoundError("x"), Image.DecompressionBombError("x"),
             ModuleNotFoundError("onnxruntime")]
    bugs = [ValueError("x"), OSError(errno.EIO, "I/O error"), OSError("no errno"), RuntimeError("x"), KeyError("x"),
            TypeError("x"), IndexError("x")]
    assert [is_user_error(e) for e in users] == [True] * len(users)
    assert [is_user_error(e) for e in bugs] == [False] * len(bugs)

    def numpy_bug():
        import numpy as np

        np.reshape(np.zeros(3), (2, 2))  # a ValueError from a library: our bug, not the user's

    code, text = _run(numpy_bug)
    assert code == 1 and text.startswith("supersam evaluate: internal error (ValueError: ") and DEBUG_ENV in text
    code, text = _run(lambda: (_ for _ in ()).throw(OSError(errno.EFBIG, "File too large", "/out/model.bin")))
    assert code == 2 and "file-size limit (ulimit -f)" in text


def test_a_check_of_the_dataset_module_is_still_the_users(monkeypatch, tmp_path):
    """data/dataset.py's checks raise DataError / SupersamError: a user error, one line."""
    from supersam_hf.data import load_segmentation_dataset

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    (tmp_path / "not_a_dataset.xyz").write_text("?")
    code, text = _run(load_segmentation_dataset, str(tmp_path / "not_a_dataset.xyz"))
    assert code == 2 and text.startswith("supersam evaluate: error: ") and text.count("\n") == 1


def test_the_error_line_is_one_write_with_its_newline():
    """The processes of a multi-process launch share one stderr and fail together: `print` writes a line and its
    newline apart, which let two processes' lines interleave into one (seen under `accelerate launch`)."""

    class Writes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.calls = []

        def write(self, text):
            self.calls.append(text)
            return super().write(text)

    stream = Writes()
    assert run_stage("train", check_positive, "batch_size", 0, stderr=stream) == 2
    assert stream.calls == ["supersam train: error: --batch_size must be a positive integer, got 0.\n"]

"""Output folders: a user's file is never deleted or replaced, failures leave no half folder, state files are named."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from supersam_hf import outputs
from supersam_hf.outputs import swap
from supersam_hf.errors import OutputFolderError
from supersam_hf.outputs import (
    MANIFEST_NAME,
    OutputDirError,
    atomic_output_dir,
    atomic_update,
    prepare_output_dir,
    read_json_file,
    read_manifest,
    record_tool_outputs,
    remove_tool_outputs,
    repair_jsonl,
)


def _write_export(folder, files: dict[str, str], overwrite: bool = False, inputs=()):
    with atomic_output_dir(folder, overwrite=overwrite, inputs=inputs, tool="supersam export") as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_atomic_write_creates_folder_with_manifest(tmp_path):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "{}", "model.safetensors": "w", "onnx/vision_encoder.onnx": "o"})
    assert sorted(read_manifest(out)) == ["config.json", "model.safetensors", "onnx/vision_encoder.onnx"]
    assert (out / "onnx" / "vision_encoder.onnx").read_text() == "o"
    assert _siblings(out) == []  # no temporary sibling left


def test_overwrite_keeps_foreign_files_and_removes_only_old_outputs(tmp_path):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "old", "model-00001.safetensors": "old shard", "onnx/a.onnx": "old"})
    (out / "my_weights.safetensors").write_text("user")
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("user")
    (out / "onnx" / "mine.onnx").write_text("user")
    _write_export(out, {"config.json": "new", "model.safetensors": "new"}, overwrite=True)
    assert (out / "config.json").read_text() == "new"
    assert (out / "model.safetensors").read_text() == "new"
    assert not (out / "model-00001.safetensors").exists()  # stale output of this tool removed
    assert not (out / "onnx" / "a.onnx").exists()
    assert (out / "my_weights.safetensors").read_text() == "user"
    assert (out / "notes" / "todo.txt").read_text() == "user"
    assert (out / "onnx" / "mine.onnx").read_text() == "user"
    assert sorted(read_manifest(out)) == ["config.json", "model.safetensors"]


def test_new_file_never_replaces_a_foreign_file(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("user readme")
    with pytest.raises(OutputFolderError, match=r"README\.md \(not written by this tool\)"):
        _write_export(out, {"README.md": "card", "config.json": "{}"}, overwrite=True)
    assert (out / "README.md").read_text() == "user readme"
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]
    assert _siblings(out) == []


def test_non_empty_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.txt").write_text("user")
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        prepare_output_dir(out, overwrite=False)
    assert (out / "data.txt").read_text() == "user"


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_output_overlapping_an_input_is_refused(tmp_path, where):
    supernet = tmp_path / "supernet"
    supernet.mkdir()
    (supernet / "config.json").write_text('{"model_type": "supersam"}')
    output = {"same": supernet, "inside": supernet / "export", "contains": tmp_path}[where]
    with pytest.raises(OutputDirError, match="input") as error:
        _write_export(output, {"config.json": '{"model_type": "sam"}'}, overwrite=True, inputs=[str(supernet)])
    assert str(supernet) in str(error.value)
    assert (supernet / "config.json").read_text() == '{"model_type": "supersam"}'
    assert not (supernet / "export").exists()


def test_hub_ids_and_missing_inputs_are_not_folders(tmp_path):
    assert prepare_output_dir(tmp_path / "out", overwrite=False, inputs=["facebook/sam-vit-base", None]) == (
        tmp_path / "out"
    ).resolve()


def _failing_open(path_part, error_number):
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if path_part in os.fspath(path):
            raise OSError(error_number, os.strerror(error_number), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    return fake_open


@pytest.mark.parametrize("error_number", [errno.EACCES, errno.ENOSPC])
def test_unwritable_output_found_before_work(tmp_path, monkeypatch, error_number):
    # Tests run as root, where chmod does not block writes: simulate the refusal at the system call.
    monkeypatch.setattr(os, "open", _failing_open("supersam-write-probe", error_number))
    work_done = []
    with pytest.raises(OutputDirError, match="cannot write to") as error:
        with atomic_output_dir(tmp_path / "out", overwrite=False, tool="supersam export"):
            work_done.append(True)
    assert work_done == []
    assert ("no space left" in str(error.value)) == (error_number == errno.ENOSPC)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_disk_full_mid_write_leaves_target_untouched(tmp_path):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "old", "model.safetensors": "old"})
    (out / "user.txt").write_text("user")
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OSError) as error:
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "config.json").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert error.value.errno == errno.ENOSPC
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert _siblings(out) == []


def test_disk_full_on_first_write_leaves_no_folder(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(OSError):
        with atomic_output_dir(out, overwrite=False) as tmp:
            (tmp / "config.json").write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # neither a half `export` nor its temporary sibling


def test_failure_while_moving_into_place_restores_old_files(tmp_path, monkeypatch):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "old", "model.safetensors": "old"})
    (out / "user.txt").write_text("user")
    real_replace = os.replace
    failures = []

    def flaky_replace(source, destination):  # the first move of a new weight file into place fails, once
        if ".tmp-" in str(source) and str(destination).endswith("model.safetensors") and not failures:
            failures.append(destination)
            raise OSError(errno.EIO, "I/O error")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="I/O error"):
        _write_export(out, {"config.json": "new", "model.safetensors": "new"}, overwrite=True)
    monkeypatch.undo()
    assert failures
    assert (out / "config.json").read_text() == "old"
    assert (out / "model.safetensors").read_text() == "old"
    assert (out / "user.txt").read_text() == "user"
    assert sorted(read_manifest(out)) == ["config.json", "model.safetensors"]
    assert _siblings(out) == []


def test_stale_temporary_sibling_of_a_dead_process_is_cleaned(tmp_path):
    out = tmp_path / "export"
    stale = tmp_path / ".export.tmp-999999999"
    stale.mkdir()
    (stale / "config.json").write_text("half")
    _write_export(out, {"config.json": "{}"})
    assert not stale.exists()


def test_remove_tool_outputs_spares_other_tools_checkpoints(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "checkpoints" / "step_2" / "model.safetensors").write_text("ours")
    (run / "metrics.jsonl").write_text("{}\n")
    record_tool_outputs(run, ["checkpoints/step_2", run / "metrics.jsonl"], tool="supersam train")
    (run / "checkpoints" / "other_tool").mkdir()
    (run / "checkpoints" / "other_tool" / "state.pt").write_text("theirs")
    (run / "keep.txt").write_text("user")
    removed = remove_tool_outputs(run)
    assert sorted(p.name for p in removed) == ["metrics.jsonl", "model.safetensors"]
    assert not (run / "checkpoints" / "step_2").exists()
    assert (run / "checkpoints" / "other_tool" / "state.pt").read_text() == "theirs"
    assert (run / "keep.txt").read_text() == "user"
    assert not (run / MANIFEST_NAME).exists()


def test_atomic_update_adds_files_next_to_earlier_outputs(tmp_path):
    run = prepare_output_dir(tmp_path / "run", overwrite=False)
    (run / "checkpoints" / "step_1").mkdir(parents=True)
    (run / "checkpoints" / "step_1" / "model.safetensors").write_text("ckpt")
    record_tool_outputs(run, ["checkpoints/step_1"])
    (run / "user.txt").write_text("user")
    with atomic_update(run) as tmp:
        (tmp / "config.json").write_text("v1")
        (tmp / "model.safetensors").write_text("v1")
    with atomic_update(run) as tmp:  # a second final save replaces our files of the same name only
        (tmp / "model.safetensors").write_text("v2")
    assert (run / "config.json").read_text() == "v1" and (run / "model.safetensors").read_text() == "v2"
    assert (run / "checkpoints" / "step_1" / "model.safetensors").read_text() == "ckpt"
    assert sorted(read_manifest(run)) == ["checkpoints/step_1/model.safetensors", "config.json", "model.safetensors"]
    with pytest.raises(OutputFolderError, match="user.txt"):
        with atomic_update(run) as tmp:
            (tmp / "user.txt").write_text("ours")
    with pytest.raises(OSError):
        with atomic_update(run) as tmp:
            (tmp / "model.safetensors").write_text("v3")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (run / "model.safetensors").read_text() == "v2" and (run / "user.txt").read_text() == "user"
    assert _siblings(run) == []
    remove_tool_outputs(run)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == ["user.txt"]


def test_manifest_entries_outside_the_folder_are_ignored(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("user")
    (run / MANIFEST_NAME).write_text(json.dumps({"files": ["../victim.txt"]}))
    assert remove_tool_outputs(run) == []
    assert victim.read_text() == "user"
    with pytest.raises(ValueError, match="not inside the output folder"):
        record_tool_outputs(run, [victim])


def test_corrupt_manifest_is_named(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=r"output manifest .*\.supersam-manifest\.json is corrupt"):
        remove_tool_outputs(tmp_path)


def test_torn_jsonl_is_cut_back_to_the_last_complete_record(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="supersam_hf.outputs"):
        assert repair_jsonl(path) == 1
    assert "torn last line" in caplog.text and "metrics.jsonl" in caplog.text
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert repair_jsonl(path) == 0  # idempotent
    with path.open("a") as handle:  # appending after a repair gives whole lines
        handle.write('{"step": 3}\n')
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')
    assert repair_jsonl(path) == 0
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_corrupt_middle_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is corrupt"):
        repair_jsonl(path)


@pytest.mark.parametrize("content", ["{garbage", "\xff\xfe", "[1, 2]"])
def test_corrupt_json_state_file_is_named_with_the_way_out(tmp_path, content):
    path = tmp_path / "training_state.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match=r"training state .*training_state\.json is corrupt.*previous checkpoint"):
        read_json_file(path, what="training state", expect=dict)


def test_missing_json_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"search results .*search_results\.json does not exist"):
        read_json_file(tmp_path / "search_results.json", what="search results")


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, so a full disk is real where the platform allows mounting one (root, no sandbox)."""
    import shutil
    import subprocess

    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_real_full_disk_mid_write_leaves_target_untouched(small_disk):
    out = small_disk / "export"
    _write_export(out, {"config.json": "old", "model.safetensors": "old"})
    (out / "user.txt").write_text("user")
    with pytest.raises(OSError) as error:
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "config.json").write_text("new")
            (tmp / "model.safetensors").write_bytes(b"\0" * (256 * 1024))  # larger than the disk
    assert error.value.errno == errno.ENOSPC
    assert (out / "config.json").read_text() == "old" and (out / "user.txt").read_text() == "user"
    assert sorted(p.name for p in small_disk.iterdir()) == ["export"]


def test_real_full_disk_is_found_before_work(small_disk):
    filler = small_disk / "filler.bin"
    with pytest.raises(OSError):
        with filler.open("wb") as handle:
            handle.write(b"\0" * (256 * 1024))
    with pytest.raises(OutputDirError, match="no space left"):
        prepare_output_dir(small_disk / "export", overwrite=False)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]


def _tree(folder):
    """Every file and link below `folder` (links not followed) with its content or target."""
    found = {}
    for directory, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(directory, name)
            key = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[key] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                found[key] = open(path, "rb").read()
    return found


def test_symlinked_subfolder_survives_overwrite_with_its_targets_files(tmp_path, caplog):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "old", "onnx/vision_encoder.onnx": "ours", "onnx/decoder.onnx": "ours"})
    storage = tmp_path / "big_disk" / "onnx"  # the user moved onnx/ to other storage and linked it back
    storage.parent.mkdir()
    os.replace(out / "onnx", storage)
    os.symlink(storage, out / "onnx")
    (storage / "decoder.onnx").write_text("user edited")
    before = _tree(storage)
    with caplog.at_level(logging.WARNING, logger="supersam_hf.outputs"):
        _write_export(out, {"config.json": "new"}, overwrite=True)
    assert _tree(storage) == before and os.path.islink(out / "onnx")
    assert (out / "config.json").read_text() == "new"
    assert "onnx/vision_encoder.onnx (behind a symbolic link" in caplog.text
    with pytest.raises(OutputFolderError, match=r"onnx/vision_encoder\.onnx \(behind a symbolic link"):
        _write_export(out, {"config.json": "newer", "onnx/vision_encoder.onnx": "new"}, overwrite=True)
    assert _tree(storage) == before and (out / "config.json").read_text() == "new"
    assert _siblings(out) == ["big_disk"]


def test_manifest_entry_through_a_symlink_never_removes_outside_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("user")
    (run / "sub").mkdir()
    (run / "sub" / "victim.txt").write_text("user")
    record_tool_outputs(run, ["sub/victim.txt"])  # recorded content equals the outside file's, even
    shutil_rmtree(run / "sub")
    os.symlink(outside, run / "sub")
    assert remove_tool_outputs(run) == []
    assert (outside / "victim.txt").read_text() == "user"
    os.symlink(outside / "victim.txt", run / "link.txt")
    (run / MANIFEST_NAME).write_text(json.dumps({"version": 2, "files": {"link.txt": {"size": 4, "sha256": "x"}}}))
    assert remove_tool_outputs(run) == [run.resolve() / "link.txt"]  # the link goes, never its target
    assert (outside / "victim.txt").read_text() == "user"


def shutil_rmtree(path):
    import shutil

    shutil.rmtree(path)


def test_file_the_user_edited_survives_overwrite_and_is_named(tmp_path, caplog):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "old", "model.safetensors": "weights", "notes.md": "card"})
    (out / "notes.md").write_text("card, with the user's notes")
    with caplog.at_level(logging.WARNING, logger="supersam_hf.outputs"):
        _write_export(out, {"config.json": "new", "model.safetensors": "new"}, overwrite=True)
    assert (out / "notes.md").read_text() == "card, with the user's notes"
    assert "notes.md (changed since this tool wrote it)" in caplog.text
    assert sorted(read_manifest(out)) == ["config.json", "model.safetensors"]  # no longer the tool's to remove
    (out / "model.safetensors").write_text("fine-tuned by the user")
    with pytest.raises(OutputFolderError, match=r"model\.safetensors \(changed since this tool wrote it\)"):
        _write_export(out, {"config.json": "newer", "model.safetensors": "newer"}, overwrite=True)
    assert (out / "model.safetensors").read_text() == "fine-tuned by the user"
    removed = remove_tool_outputs(out)
    assert [p.name for p in removed] == ["config.json"]
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "notes.md"]


def _killed_swap(out, kill_at: int) -> int:
    """Overwrite `out` in a child process that dies (os._exit, no cleanup) at swap step `kill_at`; the steps done."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count the renames of the swap and die at one of them
        os.close(read_end)
        steps = [0]
        real_step = swap._step

        def dying_step(source, destination):
            if steps[0] == kill_at:
                os.write(write_end, str(steps[0]).encode())
                os._exit(9)
            steps[0] += 1
            real_step(source, destination)

        swap._step = dying_step
        try:
            _write_export(out, {"config.json": "new", "model.safetensors": "new", "onnx/a.onnx": "new"}, overwrite=True)
        finally:
            os.write(write_end, str(steps[0]).encode())
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    done = int(os.read(read_end, 16) or b"-1")
    os.close(read_end)
    return done


@pytest.mark.parametrize("kill_at", range(9))
def test_kill_between_the_swap_steps_is_recovered_by_the_next_run(tmp_path, caplog, kill_at):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "old", "model.safetensors": "old", "old_shard.bin": "old"})
    (out / "user.txt").write_text("user")
    old_tree = _tree(out)
    done = _killed_swap(out, kill_at)
    # 3 old files set aside, 3 new moved in, then the manifest (the commit point): 7 steps; beyond that, no kill
    assert done == min(kill_at, 7)
    assert (out / MANIFEST_NAME).is_file()  # never a folder without a manifest
    with caplog.at_level(logging.WARNING, logger="supersam_hf.outputs"):
        prepare_output_dir(out, overwrite=True)  # the next run of any stage starts here
    if kill_at < 7:
        assert "rolled it back (the earlier output is restored)" in caplog.text
        assert _tree(out) == old_tree
    else:
        assert "an earlier run was killed" not in caplog.text  # the swap completed
    if kill_at >= 7:
        assert (out / "config.json").read_text() == "new" and (out / "onnx" / "a.onnx").read_text() == "new"
        assert not (out / "old_shard.bin").exists() and (out / "user.txt").read_text() == "user"
        assert sorted(read_manifest(out)) == ["config.json", "model.safetensors", "onnx/a.onnx"]
    assert _siblings(out) == []
    assert outputs.recover_interrupted_swap(out) is None  # idempotent


def test_kill_after_the_commit_point_is_finished_by_the_next_run(tmp_path, caplog, monkeypatch):
    out = tmp_path / "export"
    _write_export(out, {"config.json": "old", "stale.bin": "old"})
    monkeypatch.setattr(swap, "_recover", lambda *args, **kwargs: None)  # dies before cleaning up
    _write_export(out, {"config.json": "new"}, overwrite=True)
    monkeypatch.undo()
    assert any(name.startswith(".export.swap-") for name in _siblings(out))
    with caplog.at_level(logging.WARNING, logger="supersam_hf.outputs"):
        _write_export(out, {"other.json": "x"}, overwrite=True)  # the next run finishes it first
    assert "finished it (the new output is complete)" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "other.json"] and _siblings(out) == []

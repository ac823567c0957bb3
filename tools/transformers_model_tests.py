"""Run transformers' own common model tests (`ModelTesterMixin`) on `SamModel` and on `SuperSamModel`, side by side.

`SuperSamModel` subclasses `SamModel`; a user expects it to behave as one wherever transformers' machinery touches
it (save / load, dtype and device moves, attention back-ends, output recording, tied weights, ...). transformers'
test suite is the contract. This tool runs the same tiny SAM configuration through every common test twice, once
per class, and compares the outcomes test by test: SuperSamModel must pass every test SamModel passes.

transformers' tests do not ship in its wheel; its source distribution on PyPI carries the common test mixins
(`tests/test_modeling_common.py`), so this needs either that archive or the network to fetch it:

    pip install parameterized   # the common tests import it
    python tools/transformers_model_tests.py                        # pip-downloads the installed version's sdist
    python tools/transformers_model_tests.py --sdist transformers-5.25.0.tar.gz --report out.md

A few helper modules the common tests import are not in the sdist (exporters, generation mixins); they are replaced
by empty mixins here, which only removes those (generation / torch.export) tests, for both classes alike.
Exit status: 0 when SuperSamModel's outcome equals SamModel's on every test, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import transformers

STUBS = {  # modules test_modeling_common imports that the sdist does not carry
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}

TEST_MODULE = '''
import unittest

from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from supersam_hf import SuperSamConfig, SuperSamModel
from tests.test_modeling_common import ModelTesterMixin, floats_tensor


class TinySam:
    """The shape transformers' SAM tests use: 24 px, patch 2, 2 encoder layers of width 36."""

    def __init__(self, parent, config_class):
        self.parent, self.config_class = parent, config_class
        self.batch_size, self.num_hidden_layers, self.hidden_size, self.num_attention_heads = 2, 2, 36, 4
        self.seq_length, self.is_training = 145, False

    def get_config(self):
        vision = SamVisionConfig(image_size=24, patch_size=2, hidden_size=36, projection_dim=62, output_channels=32,
                                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=72, window_size=14,
                                 global_attn_indexes=[1], num_pos_feats=16, mlp_dim=72)
        prompt = SamPromptEncoderConfig(image_size=24, patch_size=2, hidden_size=32, mask_input_channels=4)
        decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                       iou_head_hidden_dim=32)
        return self.config_class(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), {"pixel_values": floats_tensor([self.batch_size, 3, 24, 24])}


class Common(ModelTesterMixin):
    test_resize_embeddings = False
    test_torchscript = False
    _is_composite = True

    def setUp(self):
        self.model_tester = TinySam(self, self.config_class)


class SamCommonTest(Common, unittest.TestCase):
    all_model_classes, config_class = (SamModel,), SamConfig


class SuperSamCommonTest(Common, unittest.TestCase):
    all_model_classes, config_class = (SuperSamModel,), SuperSamConfig
'''


def fetch_sdist(folder: Path) -> Path:
    version = transformers.__version__
    print(f"downloading transformers {version}'s source distribution from PyPI ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"transformers=={version}", "-d", str(folder)], check=True)
    return next(folder.glob("transformers-*.tar.gz"))


def prepare(sdist: Path, root: Path) -> None:
    """`root/tests/` = the sdist's tests (plus stubs for what it lacks) and our test module."""
    if sdist.is_dir():
        shutil.copytree(sdist / "tests", root / "tests")
    else:
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.split("/")[1:2] == ["tests"]]
            archive.extractall(root / "unpacked", members=members, filter="data")
        shutil.move(next((root / "unpacked").glob("*/tests")), root / "tests")
    for name, text in STUBS.items():
        path = root / "tests" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
    for folder in [root / "tests", *(p.parent for p in (root / "tests").glob("*/*.py"))]:
        (folder / "__init__.py").touch()
    (root / "tests" / "test_supersam_common.py").write_text(TEST_MODULE)


def outcomes(junit: Path) -> dict[str, dict[str, str]]:
    """{test name: {class: passed | failure | error | skipped}} from pytest's JUnit XML."""
    table: dict[str, dict[str, str]] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        status = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        table.setdefault(case.get("name"), {})[case.get("classname").rsplit(".", 1)[-1]] = status
    return table


def report(table: dict[str, dict[str, str]]) -> tuple[str, int]:
    sam = Counter(row.get("SamCommonTest") for row in table.values())
    supersam = Counter(row.get("SuperSamCommonTest") for row in table.values())
    differ = {name: row for name, row in sorted(table.items())
              if row.get("SamCommonTest") != row.get("SuperSamCommonTest")}
    lines = [f"transformers {transformers.__version__}: {len(table)} common model tests (ModelTesterMixin), "
             "tiny SAM (24 px, 2 layers)", "",
             "| class | passed | skipped | failed |", "|---|---|---|---|"]
    for name, counts in (("SamModel", sam), ("SuperSamModel", supersam)):
        lines.append(f"| {name} | {counts['passed']} | {counts['skipped']} | {counts['failure'] + counts['error']} |")
    lines += ["", f"Tests whose outcome differs: {len(differ)}"]
    lines += [f"- {name}: SamModel {row.get('SamCommonTest')}, SuperSamModel {row.get('SuperSamCommonTest')}"
              for name, row in differ.items()]
    failing = sorted(name for name, row in table.items() if row.get("SamCommonTest") in ("failure", "error"))
    if failing:
        lines += ["", "Failing on SamModel itself (SAM's own test file overrides or skips these): " + ", ".join(failing)]
    return "\n".join(lines) + "\n", len(differ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help="transformers-X.tar.gz or its unpacked folder (default: download)")
    parser.add_argument("--report", type=Path, help="also write the markdown report to this file")
    parser.add_argument("-k", default=None, help="pytest -k expression, to run a subset")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(args.sdist or fetch_sdist(root), root)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_supersam_common.py",
                   f"--junitxml={root / 'junit.xml'}"] + (["-k", args.k] if args.k else [])
        print("running", " ".join(command[2:]), flush=True)
        subprocess.run(command, cwd=root)
        text, differ = report(outcomes(root / "junit.xml"))
    print(text)
    if args.report:
        args.report.write_text(text)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

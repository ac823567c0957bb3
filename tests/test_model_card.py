"""The exported model card: every code block runs as written against the exported folder (Python, ONNX Runtime,
transformers.js), the README shows the same snippets, measured metrics reach `model-index` from the Python API
and the CLI, and no path of the exporting machine appears in it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import JS_MODULES, node_with_transformers_js, tiny_processor, tiny_supernet
from huggingface_hub import ModelCard

from supersam_hf import SubnetConfig
from supersam_hf.cli import main as cli_main
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.evaluation import EvaluationData, evaluate_model
from supersam_hf.export import export_subnet

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")]

SUBNET = SubnetConfig(kept_layers=(0, 1, 3), mlp_dims=(64, 96, 64))
README = Path(__file__).parent.parent / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def code_blocks(text: str) -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in FENCE.findall(text)]


@pytest.fixture(scope="module")
def supernet():
    return tiny_supernet(num_layers=4, image_size=64)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_shapes(3, image_size=64, seed=3)


@pytest.fixture(scope="module")
def exported(supernet, data, tmp_path_factory):
    """An export with ONNX files, scored on local data through the Python API, named like the README's."""
    root = tmp_path_factory.mktemp("cards")
    processor = tiny_processor()
    eval_data = EvaluationData.prepare(data, processor, prompt="point")
    out = export_subnet(supernet, SUBNET, root / "sam-small", processor=processor, onnx=True, eval_data=eval_data,
                        datasets=["user/shapes"])
    return out, eval_data


def run_python_block(code: str, cwd: Path, monkeypatch) -> None:
    monkeypatch.chdir(cwd)
    exec(compile(code, "<card snippet>", "exec"), {"__name__": "__snippet__"})


def run_js_block(code: str, cwd: Path, tmp_path: Path) -> str:
    node = node_with_transformers_js("the card's transformers.js snippet")
    script = tmp_path / "snippet.mjs"
    script.write_text(code)
    (tmp_path / "node_modules").symlink_to(JS_MODULES)  # resolve @huggingface/transformers from tests/js
    result = subprocess.run([node, str(script)], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_every_card_snippet_runs_as_written(exported, tmp_path, monkeypatch, capsys):
    out, _ = exported
    text = (out / "README.md").read_text()
    blocks = code_blocks(text)
    assert [lang for lang, _ in blocks] == ["json", "python", "python", "js"]
    assert SubnetConfig.from_json(blocks[0][1]) == SUBNET
    for lang, code in blocks[1:3]:
        assert 'from_pretrained("./sam-small")' in code or 'folder = "./sam-small"' in code
        run_python_block(code, out.parent, monkeypatch)  # run from the folder holding the export
    printed = capsys.readouterr().out
    assert "masks" in printed and "torch.Size([1, 3, 480, 640])" in printed  # 3 masks at the image's size
    js = run_js_block(blocks[3][1], out.parent, tmp_path)
    assert "[ 1, 3, 480, 640 ]" in js


def test_readme_shows_the_card_snippets(exported):
    """README's "use the exported model" snippets are the card's (so the test above runs them too)."""
    out, _ = exported
    card = [code for lang, code in code_blocks((out / "README.md").read_text()) if lang in ("python", "js")]
    readme = README.read_text()
    section = readme[readme.index("### Use the exported model"):]
    section = re.split(r"\n##+ ", section[4:], maxsplit=1)[0]
    assert [code for lang, code in code_blocks(section)] == card


def test_no_machine_path_in_the_card(exported):
    out, _ = exported
    text = (out / "README.md").read_text()
    assert str(out.parent) not in text and "/tmp" not in text and os.path.expanduser("~") + "/" not in text


def test_python_api_with_eval_data_measures_and_writes_model_index(exported, supernet, data):
    out, eval_data = exported
    card = ModelCard.load(out / "README.md")
    expected = evaluate_model(supernet, eval_data, tiny_processor(), subnet=SUBNET, prompt="point",
                              show_progress=False)
    (result,) = card.data.eval_results
    assert result.metric_value == pytest.approx(expected["miou"], abs=1e-6)
    assert result.metric_name == "mIoU (point prompt)" and result.dataset_name == "local data"
    assert "Not evaluated" not in card.text and f"{expected['miou']:.4f}" in card.text
    record = json.loads((out / "subnet.json").read_text())
    assert record["metrics"]["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert record["metrics"]["dataset"] == "local data"
    # ONNX measured on the same data (--onnx): the same figure through ONNX Runtime
    assert record["onnx"]["pytorch_miou"] == pytest.approx(expected["miou"], abs=1e-6)


def test_cli_export_with_a_dataset_and_no_onnx_evaluates_pytorch(supernet, data, tmp_path, capsys):
    supernet.save_pretrained(tmp_path / "supernet")
    tiny_processor().save_pretrained(tmp_path / "supernet")
    data.save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "exported"
    argv = ["export", "--model_name_or_path", str(tmp_path / "supernet"), "--subnet", json.dumps(SUBNET.to_dict()),
            "--output_dir", str(out), "--dataset_name", str(tmp_path / "data"), "--prompt_type", "box"]
    assert cli_main(argv) == 0
    card = ModelCard.load(out / "README.md")
    (result,) = card.data.eval_results
    expected = evaluate_model(supernet, EvaluationData.prepare(data, tiny_processor(), prompt="box"), tiny_processor(),
                              subnet=SUBNET, prompt="box", show_progress=False)
    assert result.metric_value == pytest.approx(expected["miou"], abs=1e-6)
    assert result.metric_name == "mIoU (box prompt)" and result.dataset_name == "local data"
    assert f"mIoU {expected['miou']:.4f}" in capsys.readouterr().out
    assert not (out / "onnx").exists() and str(tmp_path) not in card.content


def test_hub_dataset_is_recorded_by_name(supernet, data, tmp_path):
    eval_data = EvaluationData.prepare(data, tiny_processor(), prompt="box")
    out = export_subnet(supernet, SUBNET, tmp_path / "out", processor=tiny_processor(), eval_data=eval_data,
                        eval_dataset="user/shapes", eval_split="test")
    (result,) = ModelCard.load(out / "README.md").data.eval_results
    assert result.dataset_name == result.dataset_type == "user/shapes" and result.dataset_split == "test"


def test_metrics_without_a_dataset_still_give_model_index(supernet, tmp_path):
    metrics = {"miou": 0.5, "prompt": "point", "num_images": 3, "dataset": str(tmp_path / "my-data"),
               "annotations": str(tmp_path / "my-data" / "labels.json")}
    out = export_subnet(supernet, SUBNET, tmp_path / "out", metrics=metrics)
    card = ModelCard.load(out / "README.md")
    (result,) = card.data.eval_results
    assert result.metric_value == 0.5 and result.dataset_name == "local data"
    assert str(tmp_path) not in card.content and "`annotations`: labels.json" in card.content


def test_pushed_card_snippets_name_the_repo_and_run_against_the_hub(supernet, tmp_path, local_hub, monkeypatch):
    out = export_subnet(supernet, SUBNET, tmp_path / "local-name", processor=tiny_processor(), onnx=True,
                        push_to_hub=True, repo_id="user/sam-small", token=local_hub.token)
    text = (out / "README.md").read_text()
    assert str(tmp_path) not in text and "./local-name" not in text
    blocks = [code for lang, code in code_blocks(text) if lang == "python"]
    assert len(blocks) == 2 and all('"user/sam-small"' in code for code in blocks)
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    for code in blocks:  # downloaded from the (local) Hub, as a visitor of the repo would
        run_python_block(code, tmp_path, monkeypatch)
    assert {"onnx/vision_encoder.onnx", "onnx/prompt_encoder_mask_decoder.onnx"} <= set(local_hub.files("user/sam-small"))

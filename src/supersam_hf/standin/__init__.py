"""The pretrained stand-in SAM shipped with the package: a small `SamModel` trained once on synthetic shapes.

No real SAM checkpoint can be downloaded offline, so `supersam demo` starts from this one, placed in the HF cache
layout under `STANDIN_REPO_ID` and loaded with `from_pretrained` exactly as a Hub checkpoint is
(`place_in_hf_cache`). It is trained by `benchmarks/train_standin.py` on `make_hard_shapes` domain A; its model card
(README.md in this folder) says what it is and is not, and the figures on it are `score_standin` on `heldout_a`.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

STANDIN_DIR = Path(__file__).parent
STANDIN_REPO_ID = "supersam-hf/sam-standin-shapes"
# The files of the checkpoint (model + processor); README.md is the card. This __init__.py is not part of it.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "processor_config.json")
CARD_FILE = "README.md"
SCORES_FILE = "standin_scores.json"
HELDOUT_SEED = 777  # never trained on (train_standin.py trains on seeds 1000 + N)
HELDOUT_IMAGES = 32


def heldout_a(image_size: int = 128, num_images: int = HELDOUT_IMAGES):
    """The fixed held-out domain-A set the stand-in is scored on (its card's figures, and the test that checks them)."""
    from ..data import make_hard_shapes

    return make_hard_shapes(num_images, image_size, seed=HELDOUT_SEED, domain="A")


def score_standin(model, processor, dataset=None) -> dict[str, Any]:
    """Box and point mIoU of `model` on `dataset` (default: `heldout_a`), one prompt per object, next to the box
    reference: box and point with the model's own choice of its three outputs ("single"), and box through
    `multimask_output=False` ("single_output")."""
    from ..evaluation import evaluate_model

    dataset = heldout_a(processor.image_processor.size["longest_edge"]) if dataset is None else dataset
    box = evaluate_model(model, dataset, processor, prompt="box", mask_selection="single", seed=0,
                         show_progress=False, box_reference=True)
    point = evaluate_model(model, dataset, processor, prompt="point", mask_selection="single", seed=0,
                           show_progress=False)
    box_single = evaluate_model(model, dataset, processor, prompt="box", mask_selection="single_output", seed=0,
                                show_progress=False)
    return {"box_miou": round(box["miou"], 4), "point_miou": round(point["miou"], 4),
            "box_single_output_miou": round(box_single["miou"], 4),
            "box_reference_miou": round(box["box_reference_miou"], 4), "num_objects": box["num_objects"],
            "num_images": box["num_images"]}


def shipped_scores() -> dict[str, Any]:
    """The figures recorded on the shipped stand-in's card (`standin_scores.json`)."""
    return json.loads((STANDIN_DIR / SCORES_FILE).read_text())


def write_model_card(target: Path, record: dict[str, Any]) -> None:
    """README.md (the model card) and standin_scores.json for a stand-in trained by benchmarks/train_standin.py."""
    target = Path(target)
    size_mb = (target / "model.safetensors").stat().st_size / 1e6
    train, model = record["train"], record["model"]
    scores = {key: record[key] for key in ("box_miou", "point_miou", "box_single_output_miou", "box_reference_miou",
                                           "num_objects", "num_images")}
    earlier = record.get("earlier_phases", [])  # the phases it continues, oldest first (each a run record)
    (target / SCORES_FILE).write_text(json.dumps({**scores, "seed": record["seed"], "steps": sum(
        r["train"]["max_steps"] for r in earlier) + train["max_steps"]}, indent=2) + "\n")
    stopped = (f" (stopped at step {train['max_steps']} of a {train['schedule_steps']}-step cosine schedule, whose "
               f"learning rate was then {0.5 * (1 + math.cos(math.pi * train['max_steps'] / train['schedule_steps'])):.0%} "
               "of its peak)" if train.get("schedule_steps", train["max_steps"]) != train["max_steps"] else "")
    phases = ", ".join(f"{r['train']['max_steps']} steps{' from scratch' if i == 0 else ''} (lr {r['train']['learning_rate']}, "
                       f"{r['train']['point_fraction']:.0%} point prompts{_iou_weight(r['train'])}, box {r['box_miou']:.3f} / "
                       f"point {r['point_miou']:.3f} on the held-out set below)" for i, r in enumerate(earlier))
    phases = f", continuing earlier phases on other images: {phases}" if earlier else ""
    card = f"""---
library_name: transformers
pipeline_tag: mask-generation
tags: [sam, supersam, synthetic, stand-in]
---

# {STANDIN_REPO_ID}: a stand-in SAM trained on synthetic shapes

**What it is.** A small `SamModel` (transformers' SAM architecture, {size_mb:.1f} MB of float32 safetensors:
{model['image_size']} px images, patch {model['patch_size']}, {model['num_hidden_layers']} encoder layers of width
{model['hidden_size']}, window {model['window_size']}, a {model['output_channels']}-channel prompt encoder and mask
decoder) trained {'further' if earlier else 'from scratch'} for {train['max_steps']} steps{stopped} on {record['num_train_images']} synthetic images of
`supersam_hf.data.make_hard_shapes` domain A (rings, crescents, stars, L-shapes, crosses, thin bars and small
shapes on smooth gradients), with one point ({train['point_fraction']:.0%} of the micro-batches) or a box per
object, seed {record['seed']} (`benchmarks/train_standin.py`){phases}. It ships with `supersam_hf` so that `supersam demo` starts, as a real user does,
from a pretrained checkpoint loaded with `from_pretrained` from the HF cache, offline.

**What it is not.** It is not SAM and not a distillation of SAM: it has never seen a natural image and segments
only shapes like those of domain A (on the visually different domain B it scores near zero zero-shot, which is what
the demo's fine-tuning and SuperSAM training then fix). Do not use it for real images.

## Evaluation (held-out domain A)

{scores['num_images']} held-out images of domain A (`supersam_hf.standin.heldout_a`, seed {HELDOUT_SEED}, never
trained on), {scores['num_objects']} objects, one prompt per object, masks compared at the original image size:

| prompt | output | mIoU |
|---|---|---|
| box | the model's own choice of its three outputs (`multimask_output=True`, highest predicted IoU) | {scores['box_miou']:.3f} |
| box | the single-mask output (`multimask_output=False`) | {scores['box_single_output_miou']:.3f} |
| one point | the model's own choice of its three outputs | {scores['point_miou']:.3f} |
| box | reference: the box itself, filled, as the mask | {scores['box_reference_miou']:.3f} |

Training: {train['max_steps']} steps of {train['per_device_train_batch_size']} images, AdamW lr
{train['learning_rate']} ({train['lr_scheduler_type']}, {train['warmup_fraction']:.0%} warm-up), {train['loss_type']}
loss on the best of the three outputs plus, for box prompts, on the single-mask output (SAM's recipe), IoU-head
MSE{_iou_weight(train)}; {_minutes(record)} on {record['threads']} CPU thread of a 2-core machine shared with other jobs (an upper bound).
"""
    (target / CARD_FILE).write_text(card)


def _iou_weight(train: dict[str, Any]) -> str:
    return f", IoU-head loss weight {train['iou_loss_weight']:g}" if train.get("iou_loss_weight", 1.0) != 1.0 else ""


def _minutes(record: dict[str, Any]) -> str:
    return f"{record['train_seconds'] / 60:.0f} min" if record.get("train_seconds") else "time not recorded"


# ----------------------------------------------------------------------------------------------------------------
# The HF cache layout
# ----------------------------------------------------------------------------------------------------------------


def _revision(folder: Path = STANDIN_DIR) -> str:
    """A content hash of a stand-in's checkpoint files (default: the shipped ones): the snapshot's folder name (40 hex
    digits, like a commit)."""
    digest = hashlib.sha1()
    for name in CHECKPOINT_FILES + (CARD_FILE,):
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def _placed_by_supersam(snapshot: Path) -> bool:
    """Whether `snapshot` is an earlier stand-in placed by `place_in_hf_cache` (its name is the content hash of its
    files), not a download or a user's folder."""
    files = CHECKPOINT_FILES + (CARD_FILE,)
    return snapshot.is_dir() and all((snapshot / n).is_file() for n in files) and _revision(snapshot) == snapshot.name


def place_in_hf_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Place the shipped stand-in in the HF hub cache as `STANDIN_REPO_ID` (models--supersam-hf--sam-standin-shapes/
    snapshots/<revision>/ and refs/main) and return the snapshot folder.

    Only that entry is written: nothing else of the cache is touched. The snapshot's name is a content hash of the
    shipped files: one already there with identical files is reused; one with other content is refused (a user's
    files are never overwritten). refs/main is written where the entry has none, and moved on from an earlier
    stand-in that an earlier supersam_hf placed (its snapshot stays), as a Hub download of a newer main would; any
    other refs/main is left alone (`load_standin` loads by the revision itself). Files are copied into a temporary
    folder inside the entry and renamed into place, so a kill never leaves a half-written snapshot.
    """
    from huggingface_hub.constants import HF_HUB_CACHE

    from ..errors import ModelFileError

    cache = Path(cache_dir if cache_dir is not None else HF_HUB_CACHE).expanduser()
    entry = cache / ("models--" + STANDIN_REPO_ID.replace("/", "--"))
    revision = _revision()
    snapshot = entry / "snapshots" / revision
    files = CHECKPOINT_FILES + (CARD_FILE,)
    if snapshot.exists():
        different = [n for n in files if not (snapshot / n).is_file()
                     or not filecmp.cmp(snapshot / n, STANDIN_DIR / n, shallow=False)]
        if different:
            raise ModelFileError(
                f"{snapshot} exists but its {', '.join(different)} differ from the stand-in shipped with supersam_hf; "
                f"move that folder away (it is not overwritten) or pass --model_name_or_path.")
        return _add_main(entry, revision, snapshot)
    try:
        (entry / "snapshots").mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry / "snapshots"))
        try:
            for name in files:
                shutil.copyfile(STANDIN_DIR / name, staging / name)
            try:
                os.replace(staging, snapshot)
            except OSError:
                if not snapshot.is_dir():  # else another process placed the same snapshot meanwhile: checked below
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    except OSError as error:
        raise ModelFileError(f"Cannot place the stand-in SAM in the HF cache at {cache} ({error.strerror or error}); "
                             "set HF_HUB_CACHE (or HF_HOME) to a writable folder, or pass --model_name_or_path.") from None
    return place_in_hf_cache(cache)  # checks what is there now, and adds refs/main


def _add_main(entry: Path, revision: str, snapshot: Path) -> Path:
    """refs/main -> `revision` where the entry has no refs/main yet, or one naming an earlier stand-in placed by
    supersam_hf (written to a temporary file and renamed)."""
    refs = entry / "refs"
    refs.mkdir(exist_ok=True)
    main = refs / "main"
    earlier = main.is_file() and main.read_text().strip() != revision and _placed_by_supersam(
        entry / "snapshots" / main.read_text().strip())
    if not main.exists() or earlier:
        temporary = refs / f".main.tmp-{os.getpid()}"
        temporary.write_text(revision)
        os.replace(temporary, refs / "main")
    return snapshot


@contextlib.contextmanager
def hub_offline():
    """`HF_HUB_OFFLINE=1` within the block (the environment variable and huggingface_hub's copy of it, which
    transformers' `from_pretrained` reads), restored afterwards: loads resolve from the HF cache, never the network."""
    from huggingface_hub import constants

    saved_env, saved = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def load_standin(cache_dir: str | os.PathLike | None = None, device: str = "cpu"):
    """(model, processor, snapshot folder): the shipped stand-in placed in the HF cache (`place_in_hf_cache`) and
    loaded from it by its repo id (at the shipped revision) with `from_pretrained` under `HF_HUB_OFFLINE=1`, as a
    cached Hub checkpoint is."""
    from ..loading import load_processor, load_sam_model

    snapshot = place_in_hf_cache(cache_dir)
    with hub_offline():
        if cache_dir is None:
            model = load_sam_model(STANDIN_REPO_ID, revision=snapshot.name, device=device)
            processor = load_processor(STANDIN_REPO_ID, revision=snapshot.name)
        else:  # an explicit cache: transformers' own loaders, pointed at it
            from transformers import SamModel, SamProcessor

            model = SamModel.from_pretrained(STANDIN_REPO_ID, revision=snapshot.name, cache_dir=cache_dir).to(device)
            processor = SamProcessor.from_pretrained(STANDIN_REPO_ID, revision=snapshot.name, cache_dir=cache_dir)
    return model.eval(), processor, snapshot


__all__ = ["CHECKPOINT_FILES", "hub_offline", "load_standin", "HELDOUT_SEED", "STANDIN_DIR", "STANDIN_REPO_ID", "heldout_a", "place_in_hf_cache",
           "score_standin", "shipped_scores", "write_model_card"]

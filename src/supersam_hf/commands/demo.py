"""`supersam demo`: the whole SuperSAM pipeline end to end, offline, on two synthetic domains.

1. Data: synthetic shapes that fill their box poorly (`make_hard_shapes`: rings, stars, thin bars, ...) of domain A
   and of a visually different domain B (train / search / test splits).
2. Base model: no pretrained SAM can be downloaded offline, so a small SAM is first trained on domain A as the
   stand-in "pretrained" checkpoint (skipped with `--model_name_or_path`, e.g. facebook/sam-vit-base).
3. Baselines on B's test split: the base zero-shot, and the base fine-tuned on B for as many steps as the supernet.
4. convert + prioritize on B, sandwich-train the supernet on B, search under three size budgets (30 / 50 / 70 %
   fewer parameters than the base), export each winner as a standard SAM checkpoint, reload it with vanilla
   `SamModel` and evaluate it on B's test split.
5. Report: a table (printed and in `summary.md`), `pareto.png`, the exported folders.

Each stage records its result in `<output_dir>/demo_state.json`; `--resume` skips finished stages.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import SamModel

from ..arguments import prompt_type_field
from ..configuration_supersam import build_sam_config
from ..data import SamSegmentationData, build_sam_processor, load_segmentation_dataset, make_hard_shapes
from ..evaluation import box_reference_miou, evaluate_model
from ..export import export_subnet
from ..loading import load_config_dict, load_processor, load_sam_model, load_supernet
from ..modeling_supersam import SuperSamModel
from ..prioritization import prioritize
from ..search import search_subnets
from ..training import SupernetTrainingArguments, train_supernet

logger = logging.getLogger(__name__)

STATE_FILE = "demo_state.json"
SIZE_REDUCTIONS = (0.3, 0.5, 0.7)  # the demo's budgets: at least this fraction fewer parameters than the base


@dataclass(kw_only=True)
class DemoArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "Folder for every artifact of the run."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A SAM checkpoint: Hub id (e.g. facebook/sam-vit-base), cached Hub snapshot or folder. "
                  "Default: train a small stand-in base on domain A."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "An HF segmentation dataset (save_to_disk folder, local files or Hub name) used as domain B. "
                  "Default: synthetic domain B."},
    )
    quick: bool = field(default=False, metadata={"help": "Smaller everything: finishes within ~5 minutes on 2 CPU cores."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete an earlier demo run in --output_dir and start afresh."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue an earlier run in --output_dir, skipping finished stages."})
    seed: int = field(default=0, metadata={"help": "Seed of data, training and search."})
    prompt_type: str = prompt_type_field("point, box or mixed (training; evaluation uses box for mixed)")
    # Sizes. Defaults depend on --quick (None = preset); tests set tiny values.
    image_size: int | None = field(default=None, metadata={"help": "Image size of the stand-in base."})
    patch_size: int | None = field(default=None, metadata={"help": "Patch size of the stand-in base (token grid = image / patch)."})
    window_size: int | None = field(default=None, metadata={"help": "Attention window (in tokens) of the stand-in base."})
    hidden_size: int | None = field(default=None, metadata={"help": "Encoder width of the stand-in base."})
    num_layers: int | None = field(default=None, metadata={"help": "Encoder layers of the stand-in base."})
    num_train_images: int | None = field(default=None, metadata={"help": "Training images per domain."})
    num_eval_images: int | None = field(default=None, metadata={"help": "Images of B's search and test splits (each)."})
    base_steps: int | None = field(default=None, metadata={"help": "Steps of stand-in base training on A."})
    train_steps: int | None = field(default=None, metadata={"help": "Steps of supernet training (and of the fine-tuning baseline) on B."})
    search_budget: int | None = field(default=None, metadata={"help": "Subnets evaluated per search."})
    decoder_channels: int = field(default=64, metadata={"help": "Image-embedding / mask-decoder width of the stand-in base."})
    batch_size: int = field(default=4, metadata={"help": "Images per training step."})
    size_reductions: list[float] = field(
        default_factory=lambda: list(SIZE_REDUCTIONS),
        metadata={"help": "Search budgets: at least this fraction fewer parameters (or MACs, see --size_metric) than the base."},
    )
    size_metric: str = field(default="params", metadata={"help": "What --size_reductions reduce: params or macs."})


# The stand-in base's recipe (benchmarks/results/base_recipe.md): patch 8 (a 16x16 token grid and 64x64 masks at
# 128 px), 4 layers, mixed point/box prompts, lr 1e-3 with cosine decay; steps are what limits its point mIoU.
# A step costs 1.38x the earlier patch-16 / 8-layer base's, so 2000 base steps (not the recipe's 2400) keep the
# default demo at ~12 min on 2 idle cores (estimate: the earlier default took 7 min), inside its 15-min budget.
PRESETS = {
    "default": dict(image_size=128, patch_size=8, window_size=8, hidden_size=128, num_layers=4, num_train_images=1500,
                    num_eval_images=32, base_steps=2000, train_steps=400, search_budget=24),
    "quick": dict(image_size=128, patch_size=8, window_size=8, hidden_size=128, num_layers=4, num_train_images=400,
                  num_eval_images=16, base_steps=900, train_steps=150, search_budget=10),
}
BASE_LEARNING_RATE = 1e-3
BASE_PROMPT_TYPE = "mixed"  # a base trained on boxes alone never learns to follow a single point


def _shapes(num_images: int, image_size: int, seed: int, domain: str):
    # Shapes the box does not answer (box filling scores ~0.38 mIoU on them), so the table says whether models segment.
    return make_hard_shapes(num_images, image_size, seed=seed, domain=domain)


def _resolve_sizes(args: DemoArguments) -> dict:
    sizes = dict(PRESETS["quick" if args.quick else "default"])
    for key in sizes:
        value = getattr(args, key)
        if value is not None:
            sizes[key] = value
    return sizes


class DemoState:
    """The stages finished so far and their results, persisted after each stage (for --resume)."""

    def __init__(self, output: Path):
        self.path = output / STATE_FILE
        self.stages: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def record(self, stage: str, result: dict) -> dict:
        self.stages[stage] = result
        self.path.write_text(json.dumps(self.stages, indent=2))
        return result


def _prepare_output(args: DemoArguments) -> Path:
    output = Path(args.output_dir)
    if args.overwrite_output_dir and args.resume:
        raise ValueError("--overwrite_output_dir and --resume contradict each other; pass one of them.")
    if output.exists() and any(output.iterdir()):
        is_demo_run = (output / STATE_FILE).exists()
        if args.resume and is_demo_run:
            return output
        if args.overwrite_output_dir and is_demo_run:
            shutil.rmtree(output)
        elif args.overwrite_output_dir or args.resume:
            raise ValueError(f"{output} is not empty and holds no earlier demo run ({STATE_FILE} missing); "
                             "choose another --output_dir so nothing in it is lost.")
        else:
            raise ValueError(f"{output} already holds an earlier run; pass --resume to continue it, "
                             "--overwrite_output_dir to start afresh, or another --output_dir.")
    output.mkdir(parents=True, exist_ok=True)
    return output


def _print(message: str) -> None:
    print(f"[supersam demo] {message}", flush=True)


def _train(output_dir: Path, model_path: Path | str, data_dir: Path, steps: int, args: DemoArguments,
           largest_only: bool, learning_rate: float, prompt_type: str | None = None) -> None:
    training_args = SupernetTrainingArguments(
        model_name_or_path=str(model_path),
        dataset_name=str(data_dir),
        train_split_name="train",
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, steps // 20),
        num_random_subnets=0 if largest_only else 2,
        largest_only=largest_only,
        prompt_type=prompt_type or args.prompt_type,
        # dice + BCE: the stand-in base learns from scratch, where SAM's 20:1 focal weighting stalls at empty masks.
        loss_type="dice_bce",
        save_steps=steps,
        eval_steps=0,
        seed=args.seed,
    )
    train_supernet(training_args)


def _evaluate(model, data, processor, prompt: str, seed: int) -> dict:
    """mIoU as the summary reports it: one prompt per object, the model's own mask choice."""
    return evaluate_model(model, data, processor, prompt=prompt, mask_selection="single", seed=seed, show_progress=False)


@dataclass
class _DemoRun:
    """What every stage of one demo run shares."""

    args: DemoArguments
    sizes: dict
    processor: object
    output: Path
    state: DemoState
    eval_prompt: str

    @property
    def data_a(self) -> Path:
        return self.output / "data" / "domain_A"

    @property
    def data_b(self) -> Path:
        return self.output / "data" / "domain_B"

    def evaluate(self, model, data) -> dict:
        return _evaluate(model, data, self.processor, self.eval_prompt, self.args.seed)


def run_demo(args: DemoArguments) -> dict:
    """Run (or resume) the demo; returns the summary rows."""
    if args.prompt_type not in ("point", "box", "mixed"):
        raise ValueError(f"--prompt_type must be point, box or mixed, got {args.prompt_type!r}.")
    if args.size_metric not in ("params", "macs"):
        raise ValueError(f"--size_metric must be params or macs, got {args.size_metric!r}.")
    if args.model_name_or_path is not None:
        load_config_dict(args.model_name_or_path)  # refuse anything but a SAM checkpoint before anything runs
    sizes = _resolve_sizes(args)
    processor = (load_processor(args.model_name_or_path) if args.model_name_or_path
                 else build_sam_processor(sizes["image_size"], sizes["patch_size"]))
    if args.dataset_name is not None:
        # Fail before anything is written if the dataset has no usable masks (SamSegmentationData says why).
        SamSegmentationData(load_segmentation_dataset(args.dataset_name), processor)
    output = _prepare_output(args)
    torch.manual_seed(args.seed)
    started = time.time()
    run = _DemoRun(args, sizes, processor, output, DemoState(output),
                   eval_prompt="box" if args.prompt_type == "mixed" else args.prompt_type)
    _stage_data(run)
    b_search, b_test = (load_segmentation_dataset(run.data_b, split=s) for s in ("search", "test"))
    base_dir = _stage_base(run)
    base_params = load_supernet(base_dir, device="cpu").count_parameters()
    _stage_baselines(run, base_dir, b_test)
    supernet = _stage_supernet(run, base_dir)
    for reduction in args.size_reductions:
        _stage_search(run, supernet, reduction, base_dir, base_params, b_search, b_test)
    summary = _write_summary(output, run.state, supernet, base_params, args.size_reductions, run.eval_prompt, started)
    note = _quick_note(run, b_test) if args.quick else None
    if note:
        print(note)
        with (output / "summary.md").open("a") as handle:
            handle.write(f"\n{note}\n")
    return summary


def _quick_note(run: _DemoRun, b_test) -> str | None:
    """One line when --quick's stand-in base misses the bars (box >= reference + 0.15 and point >= 0.6 on A)."""
    base = run.state.stages.get("base")
    if base is None or "point_miou_domain_A" not in base or run.eval_prompt != "box":
        return None
    if base["miou_domain_A"] >= base["box_reference_domain_A"] + 0.15 and base["point_miou_domain_A"] >= 0.6:
        return None
    reference_b = box_reference_miou(b_test, run.processor, seed=run.args.seed)["miou"]
    best_b = max(run.state.stages[f"search_{int(r * 100)}"]["test"]["miou"] for r in run.args.size_reductions)
    gap = max(base["miou_domain_A"] - base["box_reference_domain_A"], best_b - reference_b)
    near = "below" if gap < 0 else "near" if gap < 0.15 else "above"
    return (f"Quick mode shows the mechanics, not the accuracy: its models are {near} the box reference (base on A: box "
            f"{base['miou_domain_A']:.3f} vs box-as-mask {base['box_reference_domain_A']:.3f}, point "
            f"{base['point_miou_domain_A']:.3f}; best winner on B: box {best_b:.3f} vs box-as-mask {reference_b:.3f}); "
            "run without --quick for the full recipe.")


def _stage_data(run: _DemoRun) -> None:
    """1. Domain B (train / search / test; synthetic, or carved from --dataset_name) and, for the stand-in, A."""
    args, sizes, state = run.args, run.sizes, run.state
    if state.done("data"):
        return
    _print("building the datasets")
    n_eval = sizes["num_eval_images"]
    if args.dataset_name is None:
        split_b = {
            "train": _shapes(sizes["num_train_images"], sizes["image_size"], args.seed + 1, "B"),
            "search": _shapes(n_eval, sizes["image_size"], args.seed + 2, "B"),
            "test": _shapes(n_eval, sizes["image_size"], args.seed + 3, "B"),
        }
    else:
        full = load_segmentation_dataset(args.dataset_name).shuffle(seed=args.seed)
        if len(full) < 3:
            raise ValueError(f"--dataset_name {args.dataset_name!r} has {len(full)} rows; the demo needs at least 3.")
        n_eval = min(n_eval, max(1, len(full) // 5))
        split_b = {"search": full.select(range(n_eval)), "test": full.select(range(n_eval, 2 * n_eval)),
                   "train": full.select(range(2 * n_eval, len(full)))}
    datasets.DatasetDict(split_b).save_to_disk(run.data_b)
    if args.model_name_or_path is None:
        datasets.DatasetDict({
            "train": _shapes(sizes["num_train_images"], sizes["image_size"], args.seed + 4, "A"),
            "test": _shapes(n_eval, sizes["image_size"], args.seed + 5, "A"),
        }).save_to_disk(run.data_a)
    state.record("data", {"domain_B": str(run.data_b),
                          "domain_A": str(run.data_a) if args.model_name_or_path is None else None})


def _stage_base(run: _DemoRun) -> str | Path:
    """2. The base SAM: --model_name_or_path, or a small stand-in trained here on domain A."""
    args, sizes, state, output = run.args, run.sizes, run.state, run.output
    if args.model_name_or_path is not None:
        return args.model_name_or_path
    base_dir = output / "base"
    if not state.done("base"):
        _print(f"no pretrained SAM offline: training a small stand-in base on domain A ({sizes['base_steps']} steps)")
        init_dir = output / "base_init"
        config = build_sam_config(image_size=sizes["image_size"], patch_size=sizes["patch_size"],
                                  hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_layers"],
                                  num_attention_heads=4, window_size=sizes["window_size"],
                                  output_channels=args.decoder_channels)
        SamModel(config).save_pretrained(init_dir)
        run.processor.save_pretrained(init_dir)
        _train(output / "base_training", init_dir, run.data_a, sizes["base_steps"], args, largest_only=True,
               learning_rate=BASE_LEARNING_RATE, prompt_type=BASE_PROMPT_TYPE)
        trained = load_supernet(output / "base_training", device="cpu")
        trained.extract_subnet().save_pretrained(base_dir)
        run.processor.save_pretrained(base_dir)
        shutil.rmtree(init_dir)
        base, a_test = load_sam_model(base_dir), load_segmentation_dataset(run.data_a, split="test")
        state.record("base", {"path": str(base_dir), "miou_domain_A": run.evaluate(base, a_test)["miou"],
                              "point_miou_domain_A": _evaluate(base, a_test, run.processor, "point", args.seed)["miou"],
                              "box_reference_domain_A": box_reference_miou(a_test, run.processor, seed=args.seed)["miou"]})
    _print(f"stand-in base reaches mIoU {state.stages['base']['miou_domain_A']:.3f} on domain A ({run.eval_prompt} prompts)")
    return base_dir


def _stage_baselines(run: _DemoRun, base_dir: str | Path, b_test) -> None:
    """3. The base zero-shot on B, and the base fine-tuned on B for as many steps as the supernet."""
    if not run.state.done("zero_shot"):
        _print("evaluating the base zero-shot on domain B")
        run.state.record("zero_shot", run.evaluate(load_sam_model(base_dir), b_test))
    if not run.state.done("finetuned"):
        steps = run.sizes["train_steps"]
        _print(f"fine-tuning the base on domain B ({steps} steps, full model only)")
        _train(run.output / "finetuned", base_dir, run.data_b, steps, run.args, largest_only=True, learning_rate=2e-4)
        ft = load_supernet(run.output / "finetuned", device="cpu")
        run.state.record("finetuned", run.evaluate(ft.extract_subnet(), b_test))


def _stage_supernet(run: _DemoRun, base_dir: str | Path) -> SuperSamModel:
    """4. Convert + prioritize the base on B, then sandwich-train the supernet on B."""
    supernet_init, supernet_dir = run.output / "supernet_init", run.output / "supernet"
    if not run.state.done("convert"):
        _print("converting the base into a supernet and prioritizing it on domain B")
        supernet = load_supernet(base_dir, device="cpu")
        report = prioritize(supernet, load_segmentation_dataset(run.data_b, split="train"), run.processor,
                            num_images=min(32, run.sizes["num_train_images"]), seed=run.args.seed,
                            # All but two layers elastic, so a 70 %-smaller subnet exists.
                            num_elastic_layers=max(1, supernet.config.vision_config.num_hidden_layers - 2))
        supernet.save_pretrained(supernet_init)
        run.processor.save_pretrained(supernet_init)
        report.save(supernet_init)
        run.state.record("convert", {"elastic_layers": report.elastic_layers, "layer_drop_probs": report.layer_drop_probs})
    if not run.state.done("train"):
        steps = run.sizes["train_steps"]
        _print(f"sandwich-rule training of the supernet on domain B ({steps} steps)")
        _train(supernet_dir, supernet_init, run.data_b, steps, run.args, largest_only=False, learning_rate=2e-4)
        run.state.record("train", {"path": str(supernet_dir)})
    return load_supernet(supernet_dir, device="cpu")


def _stage_search(run: _DemoRun, supernet: SuperSamModel, reduction: float, base_dir: str | Path, base_params: int,
                  b_search, b_test) -> None:
    """5. Search under one size budget, export the winner, reload it with vanilla SamModel and evaluate it."""
    stage = f"search_{int(reduction * 100)}"
    if run.state.done(stage):
        return
    unit, base_cost = ("parameters", base_params) if run.args.size_metric == "params" else ("MACs", supernet.count_macs())
    _print(f"searching subnets with at least {reduction:.0%} fewer {unit} than the base")
    limit = {"max_params" if run.args.size_metric == "params" else "max_macs": int(base_cost * (1 - reduction))}
    result = search_subnets(supernet, b_search, run.processor, budget=run.sizes["search_budget"],
                            **limit, strategy="opentuner", seed=run.args.seed,
                            output_dir=run.output / "search" / stage, prompt=run.eval_prompt, show_progress=True)
    best = result.best
    if best is None:
        raise ValueError(f"The search found no subnet with {reduction:.0%} fewer {unit} within its budget; "
                         "raise --search_budget or drop this entry of --size_reductions.")
    folder = run.output / "exports" / f"supersam-{int(reduction * 100)}pct-smaller"
    export_subnet(supernet, best.subnet, folder, processor=run.processor, metrics=best.metrics, overwrite=True,
                  base_model=str(base_dir))
    reloaded = SamModel.from_pretrained(folder)  # vanilla transformers, as a user would load it
    run.state.record(stage, {"folder": str(folder), "subnet": best.subnet.to_dict(),
                             "params": supernet.count_parameters(best.subnet), "macs": supernet.count_macs(best.subnet),
                             "search_miou": best.metrics["miou"], "test": run.evaluate(reloaded, b_test)})


def _write_summary(output: Path, state: DemoState, supernet: SuperSamModel, base_params: int,
                   size_reductions: list[float], prompt: str, started: float) -> dict:
    base_macs = supernet.count_macs()
    rows = [
        ("base, zero-shot on B", base_params, base_macs, state.stages["zero_shot"]["miou"]),
        ("base fine-tuned on B (same steps)", base_params, base_macs, state.stages["finetuned"]["miou"]),
    ]
    for reduction in size_reductions:
        s = state.stages[f"search_{int(reduction * 100)}"]
        rows.append((f"SuperSAM, ≥{reduction:.0%} smaller ({Path(s['folder']).name})", s["params"], s["macs"], s["test"]["miou"]))
    measured = (f"mIoU over objects of domain B's held-out test split, one {prompt} prompt per object, the model's own "
                "mask choice (highest predicted IoU), masks compared at the original image size")
    lines = ["| model | params | MACs | mIoU on B |", "|---|---|---|---|"]
    for name, params, macs, miou in rows:
        lines.append(f"| {name} | {params:,} ({params / base_params:.0%}) | {macs / 1e6:,.1f} M | {miou:.3f} |")
    table = "\n".join(lines)
    base_note = ""
    if "base" in state.stages:
        base_note = (f"The base is a small SAM trained here on synthetic domain A (mIoU {state.stages['base']['miou_domain_A']:.3f} "
                     "on A), a stand-in for a pretrained checkpoint, which cannot be downloaded offline.\n\n")
    summary = f"# SuperSAM demo\n\n{base_note}{table}\n\nMeasured: {measured}.\n\nExported checkpoints: `{output / 'exports'}`.\n"
    (output / "summary.md").write_text(summary)
    search_plot = output / "search" / f"search_{int(min(size_reductions) * 100)}" / "pareto.png"
    if search_plot.exists():
        shutil.copy(search_plot, output / "pareto.png")
    print("\n" + table + f"\n\nMeasured: {measured}.\nWritten: {output / 'summary.md'}, {output / 'pareto.png'}, "
          f"{output / 'exports'}/ (total {time.time() - started:.0f} s)")
    return state.record("summary", {"base_params": base_params, "base_macs": base_macs, "measured": measured,
                                    "rows": [dict(zip(("model", "params", "macs", "miou"), row)) for row in rows]})


ARGUMENTS = (DemoArguments,)
run = run_demo

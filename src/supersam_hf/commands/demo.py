"""`supersam demo`: the whole SuperSAM pipeline end to end, offline, on two synthetic domains (or your model / data).

1. Data: synthetic shapes that fill their box poorly (`make_hard_shapes`: rings, stars, thin bars, ...) of domain A and of a visually different domain B (train / search / test splits); with
   `--dataset_name` the dataset is domain B and its own splits are used (train; validation for the search; test),
   carved from train only where one is missing.
2. Base model: no pretrained SAM can be downloaded offline, so the demo starts from the stand-in SAM shipped with the
   package (`supersam_hf.standin`: a small SAM trained once on domain A), placed in the HF cache as
   `supersam-hf/sam-standin-shapes` and loaded from it with `from_pretrained` offline, as a Hub checkpoint is; its
   box and point mIoU on A are printed next to the box reference. `--model_name_or_path` (e.g.
   facebook/sam-vit-base) takes any other, for which the run is sized to the machine first (see `demo_plan`);
   `--train_base` trains a small base from scratch on A instead, as earlier versions did.
3. Baselines on B's test split: the base zero-shot, and the base fine-tuned on B for as many steps as the supernet.
4. convert + prioritize on B (convert's default elastic layers), sandwich-train the supernet on B, search under
   three size budgets (30 / 50 / 70 % fewer parameters than the base), export each winner as a standard SAM
   checkpoint (its card with box and point mIoU), reload it with vanilla `SamModel`.
5. Report: a table (printed and in `summary.md`) with box- and point-prompt mIoU of every model and the "box itself
   as the mask" reference, `pareto.png`, the exported folders.

Each stage records its result in `<output_dir>/demo_state.json`; `--resume` skips finished stages and continues an
interrupted one (training from its last checkpoint, a search from its scored subnets).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import SamModel, SamVisionConfig

from ..arguments import ConvertArguments, EvaluateArguments, SearchArguments
from ..data import SamSegmentationData, build_sam_processor, load_segmentation_dataset, make_hard_shapes
from ..elastic import RESOLUTION
from ..errors import DataError, OutputFolderError, SupersamError
from ..evaluation import evaluate_model
from ..export import export_subnet
from ..loading import load_config_dict, load_processor, load_sam_model, load_supernet
from ..modeling_supersam import SuperSamModel
from ..outputs import prepare_output_dir, record_tool_outputs, remove_tool_outputs
from ..prioritization import default_num_elastic_layers, prioritize
from ..results import ExportResult
from ..search import RESULTS_FILE, search_subnets
from ..search.budgets import cheapest_subnet
from ..search_space import check_image_size_choices
from ..standin import STANDIN_DIR, STANDIN_REPO_ID, load_standin, shipped_scores
from ..training import train_supernet
from ..training.checkpoints import find_latest_checkpoint
from ..types import PromptType
from .demo_arguments import SIZE_REDUCTIONS, DemoArguments, base_source, check_arguments
from .demo_plan import (BASE_LEARNING_RATE, BASE_POINT_FRACTION, BASE_PROMPT_TYPE, PRESETS, DemoPlan, describe,
                        make_plan, pick_num_threads, stage_training_arguments, stand_in_config, target_learning_rate)
from .demo_summary import EVAL_PROMPTS, write_summary

STATE_FILE = "demo_state.json"
DEMO_OUTPUTS = ("data", "base", "base_init", "base_training", "finetuned", "supernet_init", "supernet", "search",
                "exports", "summary.md", "pareto.png", STATE_FILE)
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")


def _shapes(num_images: int, image_size: int, seed: int, domain: str):
    # Shapes the box does not answer (box filling scores ~0.38 mIoU on them), so the table says whether models segment.
    return make_hard_shapes(num_images, image_size, seed=seed, domain=domain)


class DemoState:
    """The stages finished so far and their results, persisted after each stage (for --resume)."""

    def __init__(self, output: Path):
        self.path = output / STATE_FILE
        self.stages: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def record(self, stage: str, result: dict) -> dict:
        """Store a stage's result; written to a temporary file and renamed, so a kill never leaves torn JSON."""
        self.stages[stage] = result
        temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(self.stages, indent=2))
        os.replace(temporary, self.path)
        folder = self.path.parent.resolve()
        outputs = [folder / name for name in DEMO_OUTPUTS if (folder / name).exists()]
        record_tool_outputs(folder, outputs, tool="supersam demo")  # what --overwrite_output_dir removes
        return result


def _prepare_output(args: DemoArguments) -> Path:
    output = Path(args.output_dir)
    if args.overwrite_output_dir and args.resume:
        raise SupersamError("--overwrite_output_dir and --resume contradict each other; pass one of them.")
    if output.exists() and any(output.iterdir()):
        is_demo_run = (output / STATE_FILE).exists()
        if args.resume and is_demo_run:
            return output
        if args.overwrite_output_dir and is_demo_run:
            remove_tool_outputs(output)  # only what an earlier demo wrote; the user's files stay
        elif args.overwrite_output_dir or args.resume:
            raise OutputFolderError(f"{output} is not empty and holds no earlier demo run ({STATE_FILE} missing); "
                             "choose another --output_dir so nothing in it is lost.")
        else:
            raise OutputFolderError(f"{output} already holds an earlier run; pass --resume to continue it, "
                             "--overwrite_output_dir to start afresh, or another --output_dir.")
    output.mkdir(parents=True, exist_ok=True)
    return output


def _print(message: str) -> None:
    print(f"[supersam demo] {message}", flush=True)


def _train(output_dir: Path, model_path: Path | str, data_dir: Path, steps: int, run: "_DemoRun",
           largest_only: bool, learning_rate: float, prompt_type: str | None = None, point_fraction: float = 0.5) -> None:
    """One training run; an interrupted one (a checkpoint in output_dir) continues from its last checkpoint."""
    resume = "latest" if find_latest_checkpoint(output_dir) is not None else None
    if resume:
        _print(f"  continuing {output_dir.name} from {find_latest_checkpoint(output_dir).name}")
    train_supernet(stage_training_arguments(
        output_dir, model_path, data_dir, steps, run.plan.sizes, largest_only, learning_rate,
        prompt_type or run.args.prompt_type, run.args.seed, point_fraction, run.args.gradient_checkpointing, resume))


@dataclass
class _DemoRun:
    """What every stage of one demo run shares."""

    args: DemoArguments
    plan: DemoPlan
    processor: object
    output: Path
    state: DemoState
    search_prompt: str

    @property
    def data_a(self) -> Path:
        return self.output / "data" / "domain_A"

    @property
    def data_b(self) -> Path:
        return self.output / "data" / "domain_B"

    def evaluate(self, model, data, processor=None) -> dict:
        """mIoU as the summary reports it: one prompt per object, the model's own mask choice, box and point
        (`processor`: the model's own, default the run's).

        The search's prompt type is the primary result (its keys at the top level, as before); `by_prompt` holds
        both, and the box result carries `box_reference_miou` (the box itself as the mask, same pass)."""
        by_prompt = {  # plain dicts: the demo's state file records them
            prompt: evaluate_model(model, data, processor or self.processor,
                                   EvaluateArguments(prompt_type=prompt, mask_selection="single", seed=self.args.seed),
                                   show_progress=False, box_reference=prompt == "box").to_dict()
            for prompt in EVAL_PROMPTS
        }
        return {**by_prompt[self.search_prompt], "by_prompt": by_prompt}


def run_demo(args: DemoArguments) -> dict:
    """Run (or resume) the demo; returns the summary rows. torch's thread count is chosen for the run
    (`pick_num_threads`) and restored afterwards."""
    threads = torch.get_num_threads()
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(threads)


def _base_processor(args: DemoArguments):
    """The base's `SamProcessor`: the shipped stand-in's (placed in the HF cache, only its own entry, and loaded
    offline), the given model's, or one for a base trained here."""
    if base_source(args) == "shipped":
        return load_standin(device="cpu")[1]
    if args.model_name_or_path:
        return load_processor(args.model_name_or_path)
    return build_sam_processor(args.image_size or PRESETS["default"]["image_size"],
                               args.patch_size or PRESETS["default"]["patch_size"])


BASE_NAMES = {"trained": None, "shipped": f"{STANDIN_REPO_ID} (shipped with supersam_hf, from the HF cache)"}


def _run_demo(args: DemoArguments) -> dict:
    check_arguments(args)
    threads = pick_num_threads(small_model=args.model_name_or_path is None)
    torch.set_num_threads(threads.count)
    processor = _base_processor(args)
    if args.dataset_name is not None:
        # Fail before anything is written if the dataset has no usable masks (SamSegmentationData says why).
        SamSegmentationData(load_segmentation_dataset(args.dataset_name), processor)
    prepare_output_dir(args.output_dir, overwrite=True, inputs=[args.model_name_or_path, args.dataset_name])
    output = _prepare_output(args)
    started = time.time()
    state = DemoState(output)
    if not state.done("plan"):
        state.record("plan", make_plan(args, processor).to_dict())
    plan = DemoPlan.from_dict(state.stages["plan"])
    _print(describe(plan, BASE_NAMES.get(base_source(args), args.model_name_or_path), len(args.size_reductions),
                    args.gradient_checkpointing, threads=threads.reason))
    torch.manual_seed(args.seed)
    run = _DemoRun(args, plan, processor, output, state,
                   search_prompt="box" if args.prompt_type == PromptType.MIXED else args.prompt_type)
    check_image_size_choices_flag(run)  # before the data is built or anything trains
    _stage_data(run)
    b_search, b_test = (load_segmentation_dataset(run.data_b, split=s) for s in ("search", "test"))
    base_dir = _stage_base(run)
    base_params = load_supernet(base_dir, device="cpu").count_parameters()
    _stage_baselines(run, base_dir, b_test)
    supernet = _stage_supernet(run, base_dir)
    check_budgets_reachable(supernet, args)  # again: a resumed run may bring other --size_reductions
    for reduction in args.size_reductions:
        _stage_search(run, supernet, reduction, base_dir, base_params, b_search, b_test)
    return write_summary(run, supernet, base_params, started)


# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------


def _stage_data(run: _DemoRun) -> None:
    """1. Domain B (train / search / test: synthetic, or the dataset's own splits) and, for the stand-in, A."""
    args, sizes, state = run.args, run.plan.sizes, run.state
    if state.done("data"):
        for line in state.stages["data"].get("splits", []):
            _print(line)
        return
    _print("building the datasets")
    n_eval = sizes["num_eval_images"]
    if args.dataset_name is None:
        split_b = {
            "train": _shapes(sizes["num_train_images"], sizes["image_size"], args.seed + 1, "B"),
            "search": _shapes(n_eval, sizes["image_size"], args.seed + 2, "B"),
            "test": _shapes(n_eval, sizes["image_size"], args.seed + 3, "B"),
        }
        notes = [f"domain B: synthetic shapes (train {sizes['num_train_images']}, search {n_eval}, test {n_eval} images)"]
    else:
        split_b, notes = dataset_splits(args.dataset_name, run.processor, n_eval, args.seed)
    for line in notes:
        _print(line)
    datasets.DatasetDict(split_b).save_to_disk(run.data_b)
    if base_source(args) == "trained":
        datasets.DatasetDict({
            "train": _shapes(sizes["num_train_images"], sizes["image_size"], args.seed + 4, "A"),
            "test": _shapes(n_eval, sizes["image_size"], args.seed + 5, "A"),
        }).save_to_disk(run.data_a)
    elif base_source(args) == "shipped":  # only to show the stand-in on its own domain (it trained on other images)
        datasets.DatasetDict({"test": _shapes(n_eval, sizes["image_size"], args.seed + 5, "A")}).save_to_disk(run.data_a)
    state.record("data", {"domain_B": str(run.data_b), "splits": notes,
                          "domain_A": str(run.data_a) if args.model_name_or_path is None else None})


def _usable_split(name: str, split: str, processor) -> tuple[datasets.Dataset | None, str | None]:
    """The split, or None with the reason it cannot serve (missing, or no usable masks, e.g. an unlabelled test)."""
    try:
        data = load_segmentation_dataset(name, split=split)
    except ValueError:
        return None, None  # the dataset has no such split
    try:
        SamSegmentationData(data, processor)
    except ValueError as error:
        return None, f"its {split!r} split has no usable masks ({str(error).split(';')[0]})"
    return data, None


def dataset_splits(name: str, processor, n_eval: int, seed: int) -> tuple[dict, list[str]]:
    """Domain B from `name`: its train split; its validation split for the search and its test split for the test
    (at most `n_eval` images each, a seeded sample); a missing (or unlabelled) one is carved from train. Returns
    the splits and one line per role saying where it came from."""
    train = load_segmentation_dataset(name)  # "train", or the only split
    found, notes, missing = {}, [], {}
    for role, candidates in (("search", VALIDATION_SPLITS), ("test", ("test",))):
        for split in candidates:
            data, problem = _usable_split(name, split, processor)
            if data is not None:
                found[role] = (split, data)
                break
            if problem:
                missing[role] = problem
        missing.setdefault(role, f"it has no {' / '.join(repr(c) for c in candidates)} split")
    carve = [role for role in ("search", "test") if role not in found]
    if carve:
        if len(train) < len(carve) + 1:
            raise DataError(f"--dataset_name {name!r} has {len(train)} training rows and no {' or '.join(carve)} split; "
                             "the demo needs at least one image per split it carves.")
        train = train.shuffle(seed=seed)
        take = min(n_eval, max(1, len(train) // 5))
        for k, role in enumerate(carve):
            found[role] = (None, train.select(range(k * take, (k + 1) * take)))
        train = train.select(range(len(carve) * take, len(train)))
    splits = {"train": train}
    notes = [f"domain B = {name}: train <- its train split ({len(train)} images"
             + (", after carving)" if carve else ")")]
    for role in ("search", "test"):
        split, data = found[role]
        if split is not None:
            data = data.shuffle(seed=seed).select(range(min(n_eval, len(data))))
            notes.append(f"domain B {role} <- its {split!r} split ({len(data)} images)")
        else:
            notes.append(f"domain B {role} <- {len(data)} images carved from train ({missing[role]})")
        splits[role] = data
    return splits, notes

def _score_base(run: _DemoRun, model, path: str | Path, **extra) -> None:
    """Score the base on domain A's test split (box and point) and record it as the "base" stage."""
    result = run.evaluate(model, load_segmentation_dataset(run.data_a, split="test"))
    on_a = result["by_prompt"]
    run.state.record("base", {"path": str(path), **extra, "miou_domain_A": result["miou"], "domain_A": on_a,
                              "point_miou_domain_A": on_a["point"]["miou"],
                              "box_reference_domain_A": on_a["box"]["box_reference_miou"]})


def _stage_base(run: _DemoRun) -> str | Path:
    """2. The base SAM: --model_name_or_path, the shipped stand-in, or a small stand-in trained here on domain A."""
    args, sizes, state, output = run.args, run.plan.sizes, run.state, run.output
    if args.model_name_or_path is not None:
        return args.model_name_or_path
    if base_source(args) == "shipped":
        return _stage_shipped_base(run)
    base_dir = output / "base"
    if not state.done("base"):
        _print(f"no pretrained SAM offline: training a small stand-in base on domain A ({sizes['base_steps']} steps)")
        init_dir = output / "base_init"
        if not (init_dir / "config.json").is_file():
            torch.manual_seed(args.seed)
            SamModel(stand_in_config(args, sizes)).save_pretrained(init_dir)
            run.processor.save_pretrained(init_dir)
            record_tool_outputs(output, [init_dir.absolute()], tool="supersam demo")
        _train(output / "base_training", init_dir, run.data_a, sizes["base_steps"], run, largest_only=True,
               learning_rate=BASE_LEARNING_RATE, prompt_type=BASE_PROMPT_TYPE, point_fraction=BASE_POINT_FRACTION)
        trained = load_supernet(output / "base_training", device="cpu")
        trained.extract_subnet().save_pretrained(base_dir)
        run.processor.save_pretrained(base_dir)
        remove_tool_outputs(output, within=init_dir.name)  # only what this demo wrote there (the one removal rule)
        _score_base(run, load_sam_model(base_dir), base_dir)
    on_a = state.stages["base"].get("domain_A", {})
    figures = ", ".join(f"{p} {r['miou']:.3f}" for p, r in on_a.items()) or f"{state.stages['base']['miou_domain_A']:.3f}"
    reference = on_a.get("box", {}).get("box_reference_miou")
    _print(f"stand-in base mIoU on domain A: {figures}"
           + (f" (the box itself as the mask: {reference:.3f})" if reference is not None else ""))
    return base_dir


def _stage_shipped_base(run: _DemoRun) -> Path:
    """2. The stand-in shipped with supersam_hf, placed in the HF cache and loaded from it offline; scored on A."""
    model, _, snapshot = load_standin(device="cpu")  # (again on --resume: placing is idempotent)
    if not run.state.done("base"):
        _print(f"base: {STANDIN_REPO_ID}, the stand-in SAM shipped with supersam_hf (trained on synthetic domain A, "
               f"not SAM), loaded with from_pretrained from the HF cache offline ({snapshot})")
        _score_base(run, model, snapshot, repo_id=STANDIN_REPO_ID, card=shipped_scores())
    base = run.state.stages["base"]
    _print(f"stand-in base mIoU on domain A ({base['domain_A']['box']['num_images']} images of this run): box "
           f"{base['domain_A']['box']['miou']:.3f}, point {base['point_miou_domain_A']:.3f} (the box itself as the mask: "
           f"{base['box_reference_domain_A']:.3f}); its card, on {base['card']['num_images']} held-out images: box "
           f"{base['card']['box_miou']:.3f}, point {base['card']['point_miou']:.3f} (box reference "
           f"{base['card']['box_reference_miou']:.3f})")
    return snapshot


def _stage_baselines(run: _DemoRun, base_dir: str | Path, b_test) -> None:
    """3. The base zero-shot on B, and the base fine-tuned on B for as many steps as the supernet."""
    if not run.state.done("zero_shot"):
        _print("evaluating the base zero-shot on domain B (box and point prompts)")
        run.state.record("zero_shot", run.evaluate(load_sam_model(base_dir), b_test))
    if not run.state.done("finetuned"):
        steps = run.plan.sizes["train_steps"]
        _print(f"fine-tuning the base on domain B ({steps} steps, full model only)")
        _train(run.output / "finetuned", base_dir, run.data_b, steps, run, largest_only=True,
               learning_rate=target_learning_rate(run.args))
        ft = load_supernet(run.output / "finetuned", device="cpu")
        run.state.record("finetuned", run.evaluate(ft.extract_subnet(), b_test))


def _stage_supernet(run: _DemoRun, base_dir: str | Path) -> SuperSamModel:
    """4. Convert + prioritize the base on B (convert's default elastic layers), then sandwich-train it on B."""
    supernet_init, supernet_dir = run.output / "supernet_init", run.output / "supernet"
    if not run.state.done("convert"):
        images = run.plan.sizes["num_calibration_images"]
        supernet = load_supernet(base_dir, device="cpu")
        layers = supernet.config.vision_config.num_hidden_layers
        _print(f"converting the base into a supernet and prioritizing it on domain B ({images} calibration images; "
               f"{default_num_elastic_layers(layers)} of {layers} layers elastic, `supersam convert`'s default)")
        report = prioritize(supernet, load_segmentation_dataset(run.data_b, split="train"), run.processor,
                            ConvertArguments(num_calibration_images=images, seed=run.args.seed,
                                             image_size_choices=run.args.image_size_choices))
        supernet.save_pretrained(supernet_init)
        run.processor.save_pretrained(supernet_init)
        report.save(supernet_init)
        run.state.record("convert", {"elastic_layers": report.elastic_layers, "layer_drop_probs": report.layer_drop_probs,
                                     "num_images": report.num_images})
    if not run.state.done("train"):
        check_budgets_reachable(load_supernet(supernet_init, device="cpu"), run.args)  # before the long training
        steps = run.plan.sizes["train_steps"]
        _print(f"sandwich-rule training of the supernet on domain B ({steps} steps)")
        _train(supernet_dir, supernet_init, run.data_b, steps, run, largest_only=False,
               learning_rate=target_learning_rate(run.args))
        run.state.record("train", {"path": str(supernet_dir)})
    return load_supernet(supernet_dir, device="cpu")


def check_image_size_choices_flag(run: _DemoRun) -> None:
    """One line when --image_size_choices does not fit the base (whole patches, its own resolution among them), or
    differs from the input resolutions of a resumed run's converted supernet."""
    choices = run.args.image_size_choices
    if choices is None:
        return
    if base_source(run.args) == "trained":
        vision = stand_in_config(run.args, run.plan.sizes).vision_config
    else:
        config = load_config_dict(run.args.model_name_or_path or STANDIN_DIR)
        vision = SamVisionConfig(**config.get("vision_config", {}))
    check_image_size_choices(vision.image_size, [int(s) for s in choices], vision.patch_size)
    if run.state.done("convert"):
        converted = load_config_dict(run.output / "supernet_init")["image_size_choices"]
        if sorted(int(s) for s in choices) != list(converted):
            raise SupersamError(
                f"--image_size_choices {' '.join(map(str, choices))}: this run's supernet was converted with input "
                f"resolutions {' '.join(map(str, converted))}; resume with those, or start a new run in another "
                "--output_dir.")


def size_budget(full: int, reduction: float) -> int:
    """The search's budget (max_params or max_macs) for "at least `reduction` fewer than `full`"."""
    return int(full * (1 - reduction))


def check_budgets_reachable(supernet: SuperSamModel, args: DemoArguments) -> None:
    """One line naming the --size_reductions that no subnet of `supernet` meets (its cheapest subnet costs more than
    the budget the search would get), before any search or the supernet's training runs."""
    unit = "parameters" if args.size_metric == "params" else "MACs"
    cost = supernet.count_parameters if args.size_metric == "params" else supernet.count_macs
    full, (_, fewest) = cost(), cheapest_subnet(supernet.search_space, cost)
    too_far = [r for r in args.size_reductions if size_budget(full, r) < fewest]
    if too_far:
        raise SupersamError(
            f"--size_reductions {' '.join(f'{r:g}' for r in too_far)}: this supernet's smallest subnet keeps "
            f"{fewest / full:.1%} of the base's {unit}, so at most {1 - fewest / full:.1%} fewer are reachable; drop "
            f"{'that budget' if len(too_far) == 1 else 'those budgets'} or lower {'it' if len(too_far) == 1 else 'them'}, "
            "then rerun with --resume (finished stages are kept).")


def _stage_search(run: _DemoRun, supernet: SuperSamModel, reduction: float, base_dir: str | Path, base_params: int,
                  b_search, b_test) -> None:
    """5. Search under one size budget, export the winner with its test mIoU (box and point) on the card, and check
    that vanilla `SamModel` loads exactly the evaluated weights."""
    stage = f"search_{int(reduction * 100)}"
    if run.state.done(stage):
        return
    search_dir = run.output / "search" / stage
    resume = (search_dir / RESULTS_FILE).is_file()  # an interrupted search continues from its scored subnets
    metric = "params" if run.args.size_metric == "params" else "macs"
    unit, base_cost = ("parameters", base_params) if metric == "params" else ("MACs", supernet.count_macs())
    _print(f"searching subnets with at least {reduction:.0%} fewer {unit} than the base ({run.search_prompt} prompts)"
           + (" (continuing)" if resume else ""))
    search_args = SearchArguments(budget=run.plan.sizes["search_budget"], strategy="opentuner", seed=run.args.seed,
                                  resume=resume, prompt_type=run.search_prompt,
                                  **{f"max_{metric}": size_budget(base_cost, reduction)})
    best = search_subnets(supernet, b_search, run.processor, search_args, output_dir=search_dir,
                          show_progress=True).best
    if best is None:
        raise SupersamError(f"The search found no subnet with {reduction:.0%} fewer {unit} within its budget; "
                            "raise --search_budget or drop this entry of --size_reductions.")
    extracted = supernet.extract_subnet(best.subnet)  # exactly what export writes
    # The export's own processor (a smaller-input subnet takes its images at its resolution), as a user would run it.
    test = run.evaluate(extracted, b_test, RESOLUTION.export_processor(run.processor, supernet.search_space.layer_plan(best.subnet)))
    card_metrics = {p: {**r, "dataset": "domain B", "split": "test"} for p, r in test["by_prompt"].items()}
    folder = run.output / "exports" / f"supersam-{int(reduction * 100)}pct-smaller"
    export_subnet(supernet, best.subnet, folder, processor=run.processor, metrics=card_metrics, overwrite=True,
                  base_model=run.state.stages.get("base", {}).get("repo_id") or str(base_dir))
    reloaded = SamModel.from_pretrained(folder)  # vanilla transformers, as a user would load it
    for name, tensor in extracted.state_dict().items():
        if not torch.equal(reloaded.state_dict()[name], tensor):
            raise RuntimeError(f"The export in {folder} does not reload to the evaluated weights ({name}).")
    exported = ExportResult.load(folder)  # its subnet.json
    run.state.record(stage, {"folder": str(folder), "subnet": exported.subnet.to_dict(),
                             "params": exported.params, "macs": exported.macs,
                             "search_miou": best.metrics["miou"], "test": test})


ARGUMENTS = (DemoArguments,)
run = run_demo
__all__ = ["DemoArguments", "DemoState", "SIZE_REDUCTIONS", "dataset_splits", "run_demo", "stage_training_arguments"]

"""The accelerate training loop of the sandwich rule (+ in-place distillation, resume, LoRA through PEFT).

Every optimizer step trains several subnets of the weight-sharing supernet on the same mini-batch: the largest,
the smallest and `num_random_subnets` sampled ones (the "sandwich rule" of BigNAS, used by SuperSAM). Their
gradients accumulate in the shared weights and one optimizer step follows (`sandwich.sandwich_backward`).

The loop has the shape of accelerate's examples: `prepare`, then for each step a sandwich step, logging,
evaluation and a checkpoint (`save_state` / `load_state`, `checkpoints.py`) when due. `Accelerator` handles
devices, DDP, mixed precision and trackers. Everything random that shapes a run is a function of (seed, step): the
data order (a per-epoch seeded permutation), the prompts (seeded per row and epoch), the prompt kind of "mixed", and
the subnets of each sandwich slot. So a resumed run reproduces the straight run (exactly, on CPU).

    accelerate launch examples/train_supernet.py --model_name_or_path sam_or_supernet --dataset_name data \\
        --output_dir out --max_steps 1000
    supersam train --model_name_or_path ... --dataset_name ... --output_dir ...        # same function
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import SamProcessor, get_scheduler

from ..data import SamStreamingData
from ..distributed import check_engine_request, check_launch, engine_info, engine_line
from ..errors import SupersamError
from ..hub import push_folder, resolve_token
from ..loading import load_processor, load_supernet, recorded_base_model
from ..model_card import write_supernet_card
from ..modeling_supersam import SuperSamModel
from ..outputs import atomic_update
from ..results import TrainingResult
from .arguments import LORA_TARGETS, PART_PREFIXES, SupernetTrainingArguments
from .checkpoints import TOOL, MetricsLog, check_output_dir, remove_previous_run, save_tied_weights_once
from .run import StepDone, TrainingRun
from .sandwich import (
    SandwichCollator,
    SeededEpochSampler,
    batch_model_inputs,
    prompt_kind,
    sandwich_backward,
    sandwich_subnets,
    unwrap_supernet,
)
from .splits import build_datasets

logger = get_logger(__name__)


def train_supernet(
    args: SupernetTrainingArguments,
    model: SuperSamModel | None = None,
    processor: SamProcessor | None = None,
    train_dataset=None,
    eval_dataset=None,
    *,
    return_result: bool = False,
) -> SuperSamModel | tuple[SuperSamModel, TrainingResult]:
    """Train a supernet with the sandwich rule; save it (search space included, LoRA merged) and its processor.

    `model`, `processor` and `train_dataset` / `eval_dataset` (a `datasets.Dataset`) are loaded from
    `args.model_name_or_path` / `args.dataset_name` (`supersam_hf.loading`) unless given.

    Writes into `args.output_dir`: the trained supernet (`SuperSamModel.from_pretrained` loads it), the processor,
    `checkpoints/step_N` (accelerate `save_state` + training_state.json) every `save_steps` and at the end,
    `metrics.jsonl` and `training_summary.json`. Returns the trained, unwrapped supernet (eval mode); with
    `return_result=True` the pair `(supernet, TrainingResult)`, as `from_pretrained(..., output_loading_info=True)`
    adds its loading info (`TrainingResult.load(output_dir)` reads the same result back later).
    Bad input (arguments, columns, data, checkpoints, an output_dir holding another run) raises before anything is
    written; a NaN/inf loss raises `NonFiniteLossError` naming the step and subnet, leaving earlier checkpoints.
    """
    args.validate()
    # The engine first (an unsupported one is refused before accelerate builds it), then the process group: a
    # launch of N processes that formed a one-process state stops here, before anything is written.
    check_engine_request()
    accelerator = _accelerator(args)
    check_launch(accelerator.state)
    engine = engine_info(accelerator.state, accelerator.mixed_precision)
    logger.info(engine_line(engine), main_process_only=True)
    output_dir, resume_dir, previous = check_output_dir(args)
    if args.push_to_hub:  # no token: say so before training, not after it
        resolve_token(args.token, output_dir, args.hub_model_id)
    set_seed(args.seed)

    # Everything that can fail on bad input happens here, before a single file is written.
    if model is None:
        model = load_supernet(args.model_name_or_path, revision=args.revision, token=args.token, device="cpu")
    if processor is None:
        processor = load_processor(args.model_name_or_path, args.processor_name_or_path, recorded_base_model(model),
                                   revision=args.revision, token=args.token)
    train_data, eval_data = build_datasets(args, processor, train_dataset, eval_dataset)
    run = _prepare(args, accelerator, model, processor, train_data, eval_data, output_dir)

    if args.overwrite_output_dir and resume_dir is None and previous and accelerator.is_main_process:
        remove_previous_run(output_dir)
    accelerator.wait_for_everyone()
    output_dir.mkdir(parents=True, exist_ok=True)
    start_step = run.resume(resume_dir) if resume_dir is not None else 0
    _init_trackers(accelerator, args, output_dir)
    result = _train_loop(run, start_step)
    result.engine = engine
    supernet = _finish(run, result)
    return (supernet, result) if return_result else supernet


def _train_loop(run: TrainingRun, start_step: int) -> TrainingResult:
    """Steps start_step … max_steps: a sandwich step, then logging, evaluation and a checkpoint when due."""
    args = run.args
    _log_plan(run)
    batches = run.micro_batches(start_step * args.gradient_accumulation_steps)
    step_done: StepDone | None = None
    last_eval = None
    started = time.perf_counter()
    with tqdm(initial=start_step, total=args.max_steps, desc="fine-tune" if args.largest_only else "sandwich",
              disable=not run.accelerator.is_local_main_process) as progress:
        for step in range(start_step, args.max_steps):
            step_done = _sandwich_step(run, step, batches)
            global_step = step + 1
            progress.update(1)
            progress.set_postfix({_short(name): f"{value:.3f}" for name, value in step_done.losses.items()})
            if args.logging_steps and (_due(args.logging_steps, global_step) or global_step == args.max_steps):
                run.log(global_step, step_done)
            if global_step == args.max_steps:
                break  # the final evaluation and checkpoint follow
            if run.eval_data is not None and _due(args.eval_steps, global_step):
                last_eval = run.evaluate(global_step)
            if _due(args.save_steps, global_step):
                run.save(global_step)
    runtime = time.perf_counter() - started
    final_step = max(start_step, args.max_steps)
    if run.eval_data is not None and final_step > start_step:
        last_eval = run.evaluate(final_step)
    if final_step > start_step or run.last_checkpoint is None:
        run.save(final_step)
    return TrainingResult(
        global_step=final_step,
        start_step=start_step,
        train_runtime_s=round(runtime, 3),
        steps_per_second=round((final_step - start_step) / runtime, 4) if runtime > 0 else None,
        num_processes=run.accelerator.num_processes,
        subnets_per_step=_subnets_per_step(args),
        trainable_parameters=sum(p.numel() for p in run.trainable),
        lora=args.uses_lora(),
        final_loss=step_done.losses if step_done is not None else {},
        max_instances_per_image=args.max_instances_per_image,
        instances_left_out=None if run.streaming else run.train_data.num_instances_left_out,
        streaming=run.streaming,
        final_eval=last_eval,
        last_checkpoint=str(run.last_checkpoint),
    )


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def _sandwich_step(run: TrainingRun, step: int, batches) -> StepDone:
    """One optimizer step: ga micro-batches × the sandwich's slots, mean losses checked finite, clip, step.

    Gradient accumulation by hand rather than `accelerator.accumulate`: `accelerator.backward` divides each loss by
    ga, and every backward but the step's very last runs under `no_sync`."""
    args, accelerator, ga = run.args, run.accelerator, run.args.gradient_accumulation_steps
    slots = sandwich_subnets(run.supernet.search_space, args.seed, step, args.num_random_subnets)
    if args.largest_only:
        slots = slots[:1]  # plain fine-tuning of the full model
    totals = {name: torch.zeros((), device=accelerator.device) for name, _ in slots}
    distills = {name: torch.zeros((), device=accelerator.device) for name, _ in slots[1:]}
    epoch = 0
    for micro in range(ga):
        epoch, batch = next(batches)
        inputs = batch_model_inputs(batch, prompt_kind(args.prompt_type, args.seed, step, micro, args.point_fraction))
        results = sandwich_backward(
            accelerator, run.model, inputs, batch["labels"], batch["instance_mask"], slots,
            loss_type=args.loss_type, distill_weight=args.distill_weight, sync=micro == ga - 1,
            iou_weight=args.iou_loss_weight,
        )
        for name, record in results.items():
            totals[name] += record["loss"] / ga
            if "distill" in record:
                distills[name] += record["distill"] / ga
    # One small all-reduce per step: the mean losses, so every process sees a NaN and stops together.
    local = torch.stack(list(totals.values()))
    losses = dict(zip(totals, accelerator.reduce(local.clone(), reduction="mean").tolist()))
    grad_norm = run.check_and_clip(step, slots, losses)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return StepDone(slots, losses, local, distills, grad_norm, epoch)


def _accelerator(args: SupernetTrainingArguments) -> Accelerator:
    # DDP: subnets drop encoder layers, so a slot's graph misses parameters that others use; without
    # find_unused_parameters DDP would wait forever for their gradients (or raise).
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.trackers() or None,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir), logging_dir=str(Path(args.output_dir, "runs"))),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _prepare(args, accelerator, supernet, processor, train_data, eval_data, output_dir) -> TrainingRun:
    """The model to train (frozen parts, LoRA), its optimizer, data loader and schedule, through `accelerator.prepare`."""
    if args.gradient_checkpointing:
        # Non-reentrant: exact for every subnet (a layer is recomputed under the subnet that ran it: each slot's
        # backward runs before the next slot is activated), and it works with frozen inputs, LoRA and DDP.
        set_activation_checkpointing(supernet, True)
    supernet.train()
    model = configure_trainable(supernet, args)
    optimizer = _optimizer(model, args)
    collator = SandwichCollator(args.prompt_type)
    if isinstance(train_data, SamStreamingData):  # torchdata's loader collects the stream's state_dict() from its workers
        from torchdata.stateful_dataloader import StatefulDataLoader

        dataloader = StatefulDataLoader(train_data, batch_size=args.per_device_train_batch_size, collate_fn=collator,
                                        num_workers=args.dataloader_num_workers)
    else:
        dataloader = torch.utils.data.DataLoader(train_data, batch_size=args.per_device_train_batch_size,
                                                 sampler=SeededEpochSampler(len(train_data), args.seed),
                                                 collate_fn=collator, num_workers=args.dataloader_num_workers)
    # accelerate steps a prepared scheduler once per process per optimizer step (see AcceleratedScheduler), so the
    # schedule is stretched by num_processes, as in accelerate's and transformers' no_trainer examples.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_steps * accelerator.num_processes)
    if isinstance(train_data, SamStreamingData):  # split_dataset_by_node already gave this process its part
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    accelerator.register_save_state_pre_hook(save_tied_weights_once(supernet))
    return TrainingRun(args=args, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                       dataloader=dataloader, train_data=train_data, eval_data=eval_data, processor=processor,
                       output_dir=output_dir, metrics=MetricsLog(accelerator, output_dir),
                       trainable=[p for p in model.parameters() if p.requires_grad])


def configure_trainable(model: SuperSamModel, args: SupernetTrainingArguments) -> torch.nn.Module:
    """Freeze what does not train; with LoRA wrap the model in PEFT (adapters on the trainable parts' attention).

    Returns the module to train: `model` itself, or a `peft.PeftModel` around it (which freezes every base weight;
    a listed prompt encoder, which has no attention projection, is then trained fully).
    """
    parts = args.trainable_parts()
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for part in parts for prefix in PART_PREFIXES[part]))
    if not args.uses_lora():
        return model
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = "|".join(f"(?:{LORA_TARGETS[p]})" for p in parts if p in LORA_TARGETS)
    fields = args.lora_config_fields() or {"r": args.lora_r, "lora_alpha": args.lora_alpha,
                                           "lora_dropout": args.lora_dropout, "bias": "none"}
    try:
        config = LoraConfig(**{"target_modules": f"(?:{targets})", **fields})
        peft_model = get_peft_model(model, config)
    except (TypeError, ValueError) as error:  # a field of the wrong type or value, targets matching nothing
        source = f"--lora_config {args.lora_config}" if args.lora_config else "the LoRA flags"
        raise SupersamError(f"{source}: peft refuses this LoraConfig ({' '.join(str(error).split())[:300]}).") from None
    sliced = [name for name, module in peft_model.named_modules()
              if isinstance(module, BaseTunerLayer) and ".mlp.lin" in name and "vision_encoder" in name]
    if sliced:
        raise SupersamError(f"LoRA targets {sliced[0]}: the encoder MLPs are sliced for elastic width and cannot "
                            "carry adapters; leave lin1/lin2 of vision_encoder out of target_modules.")
    if "prompt_encoder" in parts:
        for name, param in model.named_parameters():
            if name.startswith(PART_PREFIXES["prompt_encoder"]):
                param.requires_grad_(True)
    return peft_model


def _optimizer(model: torch.nn.Module, args: SupernetTrainingArguments) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (biases, norm scales), as in transformers' Trainer."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise SupersamError(f"Nothing to train: trainable={args.trainable!r} selects no parameter.")
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.learning_rate)


def set_activation_checkpointing(model: SuperSamModel, enable: bool) -> None:
    """Turn gradient (activation) checkpointing of the encoder layers on or off, non-reentrant
    (`activation_checkpointing_enable` in recent transformers, `gradient_checkpointing_enable` before)."""
    if enable:
        method = getattr(model, "activation_checkpointing_enable", None)
        if method is not None:
            method(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def _init_trackers(accelerator: Accelerator, args: SupernetTrainingArguments, output_dir: Path) -> None:
    """The trackers of `report_to`, their hyperparameters the arguments (scalars only: TensorBoard's hparams refuse
    lists and None); the local files of every tracker under output_dir (wandb's would land in the working folder)."""
    if not args.trackers():
        return
    config = {k: ("None" if v is None else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
              for k, v in dataclasses.asdict(args).items() if k != "token"}
    accelerator.init_trackers("supersam_train", config=config, init_kwargs={"wandb": {"dir": str(output_dir)}})
    if not accelerator.trackers:  # "all" with none installed
        logger.warning("--report_to all: no tracker is installed (pip install 'supersam_hf[trackers]'); "
                       "losses go to metrics.jsonl only.", main_process_only=True)


def _subnets_per_step(args: SupernetTrainingArguments) -> int:
    return 1 if args.largest_only else 2 + args.num_random_subnets


def _log_plan(run: TrainingRun) -> None:
    args, data = run.args, run.train_data
    images = (f"streaming {args.dataset_name or 'dataset'} (shuffle blocks of {data.shuffle_buffer_size} rows)"
              if run.streaming else f"{len(data)} train images")
    logger.info(
        f"Sandwich training: {args.max_steps} steps x ({_subnets_per_step(args)} subnets x "
        f"{args.gradient_accumulation_steps} micro-batches of {args.per_device_train_batch_size} images x "
        f"{run.accelerator.num_processes} processes); {images}; {sum(p.numel() for p in run.trainable):,} trainable "
        f"parameters{' (LoRA)' if args.uses_lora() else ''}.", main_process_only=True)
    left_out = (" (the stream counts them as it goes)" if run.streaming else
                f": {data.num_instances_left_out} of {data.counts.instances + data.num_instances_left_out} instances "
                "are left out")
    logger.info(f"Training keeps at most max_instances_per_image={args.max_instances_per_image} instances (prompts) "
                f"per image, the largest, to bound memory{left_out}; validation scores every instance.",
                main_process_only=True)


def _finish(run: TrainingRun, result: TrainingResult) -> SuperSamModel:
    """Save the final artefact, a plain supernet (LoRA merged, full model active), its processor and the result."""
    accelerator, args = run.accelerator, run.args
    trained = accelerator.unwrap_model(run.model)
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    supernet = unwrap_supernet(trained)
    supernet.reset_subnet()
    supernet.eval()
    if args.gradient_checkpointing:
        set_activation_checkpointing(supernet, False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # all files at once (a full disk leaves the previous ones), recorded as ours
        with atomic_update(run.output_dir, tool=TOOL) as staging:
            supernet.save_pretrained(staging, save_function=accelerator.save)
            run.processor.save_pretrained(staging)
            result.save(staging)  # training_summary.json
            if args.push_to_hub:
                write_supernet_card(supernet, staging, repo_id=_hub_repo(args), summary=result,
                                    datasets=[args.dataset_name])
    logger.info(f"Training done: {json.dumps(result.to_dict())}", main_process_only=True)
    accelerator.wait_for_everyone()
    run.finish_trackers()
    if args.push_to_hub and accelerator.is_main_process:
        _push_supernet(run, supernet, result)
    accelerator.wait_for_everyone()
    return supernet


def _hub_repo(args: SupernetTrainingArguments) -> str:
    return args.hub_model_id or Path(args.output_dir).resolve().name


# The run's folder without what is local to the run: resumable checkpoints, wandb's offline files.
HUB_IGNORE = ["checkpoints/**", "wandb/**", "*.tmp-*"]


def _push_supernet(run: TrainingRun, supernet: SuperSamModel, result: TrainingResult) -> None:
    """Upload the trained supernet (weights, processor, summary, metrics, card) to `hub_model_id`."""
    args = run.args

    def rewrite_card(resolved: str) -> None:  # a name without namespace resolved to the user's
        if resolved != _hub_repo(args):
            write_supernet_card(supernet, run.output_dir, repo_id=resolved, summary=result, datasets=[args.dataset_name])

    push_folder(run.output_dir, _hub_repo(args), private=args.hub_private_repo or None, token=args.token,
                commit_message=f"Upload SuperSAM supernet (step {result.global_step})", ignore_patterns=HUB_IGNORE,
                on_repo=rewrite_card)


def _short(name: str) -> str:
    return {"largest": "L", "smallest": "S"}.get(name, name.replace("random_", "R"))


__all__ = ["build_datasets", "configure_trainable", "set_activation_checkpointing", "train_supernet"]

"""Which of accelerate's engines a launch asked for, which one accelerate formed, and the checks between the two.

`accelerate launch` describes the engine to the processes it starts through the environment (`WORLD_SIZE`,
`LOCAL_RANK`, `ACCELERATE_USE_FSDP`, `FSDP_VERSION`, `ACCELERATE_USE_DEEPSPEED`, ...); `Accelerator` /
`PartialState` then form a process group, or not. Every stage checks the two against each other before it writes
anything, so a launch can never silently become something else:

* a launch of N processes where accelerate formed a one-process state in each (e.g. `--multi_gpu` on a machine
  without GPUs and without `ACCELERATE_USE_CPU=true`): N independent runs that would all write the same `--output_dir`;
* FSDP version 1, FSDP version 2 and DeepSpeed: refused in one line that names the reason and what to use instead
  (on CPU accelerate would silently run DDP in their place; see the README's "Many GPUs" section for the details).

`engine_info` describes what runs (engine, processes, machines, mixed precision) for the training log's first line
and `training_summary.json`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, parse_flag_from_env

from .errors import UnsupportedSetupError

# The launcher's process count, as accelerate reads it (torchrun, MPI flavours).
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_TRUE = ("1", "true", "yes", "on")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """How many processes the launcher started (1 without a launcher)."""
    environ = os.environ if environ is None else environ
    for name in _WORLD_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def requested_engine(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The engine an `accelerate launch` configuration asked for, from the environment it sets: `kind` ("fsdp",
    "deepspeed" or "ddp" / "single process" by process count), `fsdp_version`, `zero_stage`, `world_size`."""
    environ = os.environ if environ is None else environ
    world = launched_world_size(environ)
    request: dict[str, Any] = {"kind": "ddp" if world > 1 else "single process", "world_size": world}
    if _flag(environ, "ACCELERATE_USE_DEEPSPEED"):
        stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
        request.update(kind="deepspeed", zero_stage=int(stage) if stage.isdigit() else None)
    elif _flag(environ, "ACCELERATE_USE_FSDP"):
        version = environ.get("FSDP_VERSION", "1").strip()
        request.update(kind="fsdp", fsdp_version=int(version) if version.isdigit() else 1)
    return request


def check_engine_request(environ: Mapping[str, str] | None = None, cuda_available: bool | None = None,
                         stage: str = "train") -> None:
    """Refuse, in one line naming the reason and what to use instead, an engine this tool does not run.

    Called before the `Accelerator` is built (FSDP version 1 on CPU already fails inside accelerate's constructor).
    Stages other than train (evaluate, search, convert) split their images across plain processes and never
    shard: under an FSDP or DeepSpeed launch they say so.
    """
    environ = os.environ if environ is None else environ
    request = requested_engine(environ)
    if stage != "train" and request["kind"] in ("fsdp", "deepspeed"):
        name = (f"FSDP version {request['fsdp_version']}" if request["kind"] == "fsdp"
                else f"DeepSpeed (ZeRO stage {request.get('zero_stage')})")
        raise UnsupportedSetupError(
            f"{name} launch: supersam {stage} splits its images across plain processes and shards nothing; launch it "
            "with `accelerate launch --multi_gpu` (with ACCELERATE_USE_CPU=true on a machine without GPUs) or without "
            "accelerate launch."
        )
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    on_cpu = _flag(environ, "ACCELERATE_USE_CPU") or not cuda
    ddp = ("use DDP instead (`accelerate launch --multi_gpu`, distributed_type: MULTI_GPU; on a machine without GPUs "
           "with ACCELERATE_USE_CPU=true or use_cpu: true)")
    memory = "--gradient_checkpointing or --lora_r to fit memory"
    if request["kind"] == "fsdp":
        if request["fsdp_version"] != 2:
            raise UnsupportedSetupError(
                f"FSDP version {request['fsdp_version']} (FullyShardedDataParallel) is not supported: torch and accelerate "
                "deprecate it for version 2 (fully_shard), and on CPU accelerate cannot initialise it (sync_module_states); "
                f"{ddp}, with {memory}."
            )
        where = ("on CPU accelerate ignores the FSDP settings and would run plain DDP; " if on_cpu else "")
        raise UnsupportedSetupError(
            f"FSDP version 2 (fully_shard) is not supported yet: {where}the sandwich step itself runs on sharded "
            "weights (README, 'Many GPUs / many processes'), but saving, checkpointing and evaluating a sharded supernet are not "
            f"implemented; {ddp}, with {memory}."
        )
    if request["kind"] == "deepspeed":
        stage = request.get("zero_stage")
        if on_cpu:
            raise UnsupportedSetupError(
                f"DeepSpeed (ZeRO stage {stage}) needs CUDA GPUs and this machine has none (accelerate would run plain "
                f"DDP in its place); {ddp}."
            )
        if stage == 3:
            raise UnsupportedSetupError(
                "DeepSpeed ZeRO stage 3 is not supported: it gathers a weight only while its own module runs, but the "
                f"supernet's elastic layers read their sub-modules' weights sliced; {ddp}, with {memory}."
            )
        raise UnsupportedSetupError(
            f"DeepSpeed ZeRO stage {stage} is not supported yet: DeepSpeed steps the optimizer inside the last backward "
            "of an accumulation window, while a sandwich step runs one backward per subnet and checks the losses "
            f"before its optimizer step; {ddp}, with {memory}."
        )


def check_launch(state: PartialState, environ: Mapping[str, str] | None = None) -> None:
    """Stop when the launcher started several processes but accelerate formed a state with another process count
    (each process would run alone, and all would write the same output folder)."""
    environ = os.environ if environ is None else environ
    world = launched_world_size(environ)
    if world == 1 and state.num_processes == 1 and _one_process_of_a_cpu_launch(environ):
        raise UnsupportedSetupError(
            "accelerate launch --cpu with several processes starts only one (accelerate's simple launcher: "
            f"MASTER_ADDR={environ.get('MASTER_ADDR')} set, no WORLD_SIZE); for N CPU processes use "
            "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N` (or use_cpu: true in the config)."
        )
    if world > 1 and state.num_processes != world:
        rank = environ.get("RANK", environ.get("LOCAL_RANK", "?"))
        raise UnsupportedSetupError(
            f"the launcher started {world} processes (WORLD_SIZE={world}, this is rank {rank}) but accelerate formed a "
            f"{state.num_processes}-process state (distributed type {state.distributed_type.value}), so each would run alone and write "
            "the same output; on a machine without GPUs set ACCELERATE_USE_CPU=true (or use_cpu: true in the accelerate "
            "config) and keep --multi_gpu, with GPUs check `accelerate env` and CUDA_VISIBLE_DEVICES."
        )


def _one_process_of_a_cpu_launch(environ: Mapping[str, str]) -> bool:
    """`accelerate launch --cpu --num_processes N>1` without an MPI host file: accelerate's simple launcher starts
    one process and marks it with ACCELERATE_USE_CPU, ACCELERATE_MIXED_PRECISION and (for N > 1 only) MASTER_ADDR."""
    return (_flag(environ, "ACCELERATE_USE_CPU") and "ACCELERATE_MIXED_PRECISION" in environ
            and bool(environ.get("MASTER_ADDR")) and "LOCAL_RANK" not in environ)


def process_state(stage: str = "train", environ: Mapping[str, str] | None = None) -> PartialState:
    """accelerate's `PartialState` of this process (forming the process group under `accelerate launch`, on CPU
    with gloo when `ACCELERATE_USE_CPU` is set), after `check_engine_request` and `check_launch`."""
    check_engine_request(environ, stage=stage)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_launch(state, environ)
    return state


def engine_info(state: PartialState, mixed_precision: str | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What runs: engine ("single process", "DDP", ...), processes, machines, backend, device, mixed precision."""
    environ = os.environ if environ is None else environ
    kind = state.distributed_type
    if kind == DistributedType.NO or state.num_processes == 1 and kind != DistributedType.FSDP:
        engine = "single process"
    elif kind == DistributedType.FSDP:
        engine = f"FSDP{getattr(getattr(state, 'fsdp_plugin', None), 'fsdp_version', '')}"
    elif kind == DistributedType.DEEPSPEED:
        plugin = getattr(state, "deepspeed_plugin", None)
        engine = f"DeepSpeed ZeRO-{getattr(plugin, 'zero_stage', '?')}"
    else:
        engine = "DDP"
    local = environ.get("LOCAL_WORLD_SIZE", "").strip()
    per_machine = int(local) if local.isdigit() and int(local) > 0 else state.num_processes
    return {
        "engine": engine,
        "distributed_type": kind.value,
        "num_processes": int(state.num_processes),
        "num_machines": max(1, -(-int(state.num_processes) // per_machine)),
        "backend": state.backend,
        "device": str(state.device),
        "mixed_precision": mixed_precision if mixed_precision is not None else "no",
    }


def engine_line(info: Mapping[str, Any]) -> str:
    """One line for a log: `Engine: DDP (gloo on cpu), 2 processes on 1 machine, mixed precision no.`"""
    processes, machines = info["num_processes"], info["num_machines"]
    backend = f"{info['backend']} on {info['device']}" if info.get("backend") else info["device"]
    return (f"Engine: {info['engine']} ({backend}), {processes} process{'es' if processes != 1 else ''} on {machines} "
            f"machine{'s' if machines != 1 else ''}, mixed precision {info['mixed_precision']}.")


def refuse_multi_process(stage: str, state: PartialState) -> None:
    """For stages that run in one process only: a one-line refusal under a multi-process launch."""
    if state.num_processes > 1:
        raise UnsupportedSetupError(
            f"supersam {stage} runs in one process; it was launched as {state.num_processes} (accelerate launch): "
            f"run `supersam {stage}` without accelerate launch."
        )


__all__ = [
    "check_engine_request",
    "check_launch",
    "engine_info",
    "engine_line",
    "launched_world_size",
    "process_state",
    "refuse_multi_process",
    "requested_engine",
]

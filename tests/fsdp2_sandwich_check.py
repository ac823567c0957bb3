"""Run by tests/test_engines.py under `accelerate launch` with 2 CPU processes (gloo).

Does the sandwich step work on FSDP version 2 (`fully_shard`) parameters? Every encoder layer and the whole model
are sharded over the processes with torch's `fully_shard` (accelerate itself applies FSDP only on GPUs), then one
sandwich step (largest, smallest and a sampled subnet: sliced weights, dropped layers) runs forward + backward on
each process's half of a 2-image batch. Process 0 compares the gathered gradients with the same step of the
unsharded model on the whole batch in one process and writes the largest differences to `<out>/fsdp2.json`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).parent))
from helpers import prompt_inputs, tiny_supernet  # noqa: E402

from supersam_hf.elastic import RESOLUTION  # noqa: E402
from supersam_hf.losses import sam_loss  # noqa: E402
from supersam_hf.training import sandwich_subnets  # noqa: E402


def sandwich_step(model, supernet, inputs, labels, slots) -> None:
    """Forward + backward of every slot's subnet; gradients accumulate (as `sandwich_backward` does, which also
    upsamples a smaller-input subnet's low-resolution masks to the targets' size)."""
    for _, cfg in slots:
        supernet.set_subnet(cfg)
        outputs = model(**inputs, multimask_output=True)
        outputs.pred_masks = RESOLUTION.masks_like(outputs.pred_masks, labels)
        instance_mask = torch.ones(outputs.pred_masks.shape[:2], dtype=torch.bool)
        sam_loss(outputs.pred_masks, outputs.iou_scores, labels, instance_mask)["loss"].backward()
    supernet.reset_subnet()


def main() -> None:
    out = Path(sys.argv[1])
    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    torch.manual_seed(0)
    supernet = tiny_supernet(num_layers=4, image_size=64, elastic_layers=[1, 2, 3], layer_drop_probs=[0.5, 0.5, 0.5], min_layers=2).train()
    slots = sandwich_subnets(supernet.search_space, seed=0, step=0, num_random=1)
    inputs = prompt_inputs("boxes", batch=world, prompts=1, image_size=64)
    labels = (torch.rand(world, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()

    reference = copy.deepcopy(supernet)  # one process, the whole batch
    sandwich_step(reference, reference, inputs, labels, slots)

    mesh = init_device_mesh("cpu", (world,))
    for layer in supernet.vision_encoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(supernet, mesh=mesh)
    sharded = [n for n, p in supernet.named_parameters() if type(p).__name__ == "DTensor"]
    mine = slice(rank, rank + 1)
    sandwich_step(supernet, supernet, {k: v[mine] for k, v in inputs.items()}, labels[mine], slots)

    expected = dict(reference.named_parameters())
    worst, scale, missing = 0.0, 0.0, []
    for name, param in supernet.named_parameters():
        grad = param.grad.full_tensor() if param.grad is not None else None  # collective: every process
        ref = expected[name].grad
        if (grad is None) != (ref is None):
            missing.append(name)
        elif grad is not None:
            worst = max(worst, float((grad - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    if rank == 0:
        (out / "fsdp2.json").write_text(json.dumps({
            "num_processes": world, "sharded_parameters": len(sharded), "parameters": len(expected),
            "max_abs_grad_difference": worst, "max_abs_grad": scale, "missing_gradients": missing,
            "slots": [cfg.name for _, cfg in slots],
        }))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()

"""Run by tests/test_training.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo).

Trains with the flags it is given, then every process writes its final weights to
`<output_dir>/weights_rank{r}.safetensors`, so the test can check that all processes end identical.
"""

from __future__ import annotations

import os

from accelerate import PartialState
from safetensors.torch import save_file
from transformers import HfArgumentParser

from supersam_hf.training import SupernetTrainingArguments, train_supernet


def main() -> None:
    args = HfArgumentParser(SupernetTrainingArguments).parse_args_into_dataclasses()[0]
    model = train_supernet(args)
    state = PartialState()
    # clone(): the model ties one positional table twice; safetensors refuses shared storage.
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, os.path.join(args.output_dir, f"weights_rank{state.process_index}.safetensors"))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()

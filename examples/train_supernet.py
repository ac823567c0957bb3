"""Train a SuperSAM supernet with the sandwich rule (the same code as `supersam train`).

Every optimizer step runs forward + backward on the largest subnet, the smallest and `--num_random_subnets`
sampled ones (same mini-batch, gradients accumulated), then steps once. Optional in-place distillation
(`--distill_weight`), LoRA (`--lora_r`), mixed precision, TensorBoard, resumable checkpoints. Single process or
multi-GPU through accelerate:

    python examples/train_supernet.py --model_name_or_path runs/supernet --dataset_name <dataset> \
        --output_dir runs/trained --max_steps 2000 --per_device_train_batch_size 4 --distill_weight 1.0
    accelerate launch --multi_gpu --num_processes 4 examples/train_supernet.py --model_name_or_path ... \
        --dataset_name ... --output_dir ...
    python examples/train_supernet.py args.yaml          # or args.json: the same fields as the flags
    python examples/train_supernet.py ... --resume_from_checkpoint latest     # continue an interrupted run

`--model_name_or_path`: a supernet from `examples/convert.py` or a plain SAM checkpoint (converted with the default
search space). `<dataset>`: a `save_to_disk` folder, local data files, or a Hub dataset name.
`python examples/train_supernet.py --help` lists every flag.
"""

import sys

from accelerate import PartialState

from supersam_hf.commands.cli import main as cli_main  # the same parser, loader and one-line errors as `supersam train`


def main(argv: list[str] | None = None) -> int:
    code = cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
    if PartialState._shared_state:  # an engine refused before accelerate started has no state to tidy
        PartialState().destroy_process_group()  # tidy end of a multi-process run (no-op with one process)
    return code


if __name__ == "__main__":
    sys.exit(main())

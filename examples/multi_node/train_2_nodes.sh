#!/usr/bin/env bash
# Sandwich-rule training on 2 machines x 4 GPUs (DDP, 8 processes), started by hand: run this script on both
# machines, with NODE_RANK=0 on the first one (it hosts the rendezvous) and NODE_RANK=1 on the second.
#
#   MAIN_ADDR=10.0.0.1 NODE_RANK=0 bash examples/multi_node/train_2_nodes.sh     # on machine 10.0.0.1
#   MAIN_ADDR=10.0.0.1 NODE_RANK=1 bash examples/multi_node/train_2_nodes.sh     # on the other machine
#
# Both machines need the same code, the same data path (or Hub dataset) and an OUTPUT_DIR on a shared file system:
# only the main process (rank 0) writes the trained supernet, metrics.jsonl and training_summary.json, and every
# process writes its own piece of each checkpoint (accelerate save_state), so a resume must see all of them.
# The first log line says what formed, e.g. "Engine: DDP (nccl on cuda:0), 8 processes on 2 machines, mixed
# precision bf16"; a launch that did not form the 8-process group stops at once with one line, before writing.
set -euo pipefail

MAIN_ADDR=${MAIN_ADDR:?set MAIN_ADDR to the address of the machine with NODE_RANK=0}
NODE_RANK=${NODE_RANK:?set NODE_RANK to 0 on the first machine and 1 on the second}
MAIN_PORT=${MAIN_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
NUM_NODES=2
MODEL=${MODEL:-runs/supernet}                     # `supersam convert` output (or a SAM checkpoint)
DATASET=${DATASET:-my/dataset}                    # save_to_disk folder, data files or a Hub dataset
OUTPUT_DIR=${OUTPUT_DIR:-/shared/runs/trained}    # on a file system both machines see

accelerate launch \
    --multi_gpu \
    --num_machines "$NUM_NODES" \
    --num_processes $((NUM_NODES * GPUS_PER_NODE)) \
    --machine_rank "$NODE_RANK" \
    --main_process_ip "$MAIN_ADDR" \
    --main_process_port "$MAIN_PORT" \
    --mixed_precision bf16 \
    --dynamo_backend no \
    examples/train_supernet.py \
    --model_name_or_path "$MODEL" \
    --dataset_name "$DATASET" \
    --output_dir "$OUTPUT_DIR" \
    --max_steps 2000 \
    --per_device_train_batch_size 1 \
    --gradient_accumulation_steps 2 \
    --gradient_checkpointing \
    --num_random_subnets 2 \
    --save_steps 500 \
    "$@"                                          # e.g. --resume_from_checkpoint latest after an interruption

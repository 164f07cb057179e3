#!/usr/bin/env bash
# Pretrain a model: bash launch/pretrain.sh [--key=value ...]
#
# With no arguments: the `tiny` preset on the built-in Shakespeare corpus, on whatever this machine has
# (one CPU process, or every local GPU), ending with a few samples. Every TrainConfig key can be given
# as --key=value (see `python -m fastgpt.pretrain --help`), e.g.
#   bash launch/pretrain.sh --preset=gpt2 --data='my/corpus/*.jsonl' --max_steps=20000 --zero=2
#   bash launch/pretrain.sh --zero=3 --offload=true --deepspeed_config=launch/deepspeed/zero3_offload.json
#
# Multi-GPU / multi-node through environment variables (torchrun):
#   NPROC_PER_NODE  processes per node (default: all GPUs, or 1 on CPU)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT  (defaults 1, 0, 127.0.0.1, 29500)
# Two nodes with 8 GPUs each: on node 0
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash launch/pretrain.sh --preset=gpt2 --zero=2
# and the same with NODE_RANK=1 on node 1. SLURM: see launch/slurm/pretrain.sbatch.
MODULE=fastgpt.pretrain
source "$(dirname "$0")/_torchrun.sh"

#!/usr/bin/env bash
# Pretrain a model: bash launch/pretrain.sh [--key=value ...]
#
# With no arguments: downloads the built-in Shakespeare corpus, trains a 4,096-token BPE tokenizer on it,
# tokenizes it into shards and trains the `tiny` preset for a fixed time budget on whatever this machine
# has (one CPU process, or every local GPU), writes out/pretrain/model and prints a few samples
# (about 10 minutes on 2 CPU cores). Every key of the config is a --key=value flag
# (`python -m fastgpt.pretrain --help`; docs/pretraining.md), for example:
#   bash launch/pretrain.sh --preset=gpt2 --data='my/corpus/*.jsonl' --max_steps=20000 --time_budget_s=0
#   bash launch/pretrain.sh --zero=2                  # DeepSpeed ZeRO-2 (launch/deepspeed/zero2.json)
#   bash launch/pretrain.sh --zero=3 --offload=true   # ZeRO-3 with CPU offload (zero3_offload.json)
#
# Processes and nodes (environment variables, read by launch/_torchrun.sh):
#   NPROC_PER_NODE  processes on this node (default: all GPUs, or 1 without GPUs)
#   NNODES          number of nodes (default 1)
#   NODE_RANK       this node's index 0..NNODES-1 (default 0)
#   MASTER_ADDR     address of node 0 (required when NNODES > 1)
#   MASTER_PORT     free port on node 0 (default 29500)
# Two nodes with 8 GPUs each; on node 0 (10.0.0.1):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash launch/pretrain.sh --preset=gpt2 --zero=2
# and the same with NODE_RANK=1 on node 1. out_dir must be on a filesystem both nodes see (checkpoints).
# SLURM: launch/slurm/pretrain.sbatch.
MODULE=fastgpt.pretrain
source "$(dirname "$0")/_torchrun.sh"

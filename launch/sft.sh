#!/usr/bin/env bash
# Supervised finetuning: bash launch/sft.sh [--key=value ...]
#
# With no arguments: finetunes the newest pretraining output (out/*/model, e.g. from
# `bash launch/pretrain.sh`) on the built-in mixture -- chatterbot-corpus small talk, identity,
# "I don't know" for made-up entities, calculator arithmetic, Python calls for counting and
# spelling -- for a few minutes, writes out/sft/model
# and prints replies to fixed prompts. Then: fastgpt chat --model out/sft/model
#   bash launch/sft.sh --model=out/pretrain/model --data=chatterbot,identity*2,arithmetic,my.jsonl
#   bash launch/sft.sh --assistant_name=Ada --assistant_maker="Acme Labs" --max_steps=500
# Every key: python -m fastgpt.sft --help (and docs/sft.md).
#
# Multi-GPU / multi-node through the same environment variables as launch/pretrain.sh
# (NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT); see launch/_torchrun.sh.
MODULE=fastgpt.sft
source "$(dirname "$0")/_torchrun.sh"

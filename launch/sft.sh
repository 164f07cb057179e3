#!/usr/bin/env bash
# Supervised finetuning under torchrun: turn a pretrained model into a chat assistant.
#
#   bash launch/sft.sh                                   # the latest out/*/model from pretraining
#   bash launch/sft.sh --model=out/pretrain/model --data=chatterbot,identity*2,arithmetic,my.jsonl
#   bash launch/sft.sh --help                            # every --key=value (see docs/sft.md)
#
# With no arguments: finetunes the newest pretraining output on the built-in mixture
# (chatterbot-corpus small talk, identity, "I don't know" for made-up entities, calculator arithmetic)
# for a few minutes on CPU and writes out/sft/model; chat with it: fastgpt chat --model out/sft/model
#
# Processes and nodes (environment variables, as for launch/pretrain.sh):
#   NPROC_PER_NODE  processes on this node (default: number of GPUs, or 1 without GPUs)
#   NNODES          number of nodes (default 1); NODE_RANK this node's rank (default 0)
#   MASTER_ADDR / MASTER_PORT   rendezvous address of node 0 (default 127.0.0.1:29501)
# Several processes train through DeepSpeed (ZeRO stage with --zero=0..3); see docs/pretraining.md.
set -euo pipefail

if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29501}

if [ "$NNODES" -gt 1 ]; then
  RDZV=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT")
else
  RDZV=(--standalone --nnodes=1)
fi

exec torchrun "${RDZV[@]}" --nproc_per_node="$NPROC_PER_NODE" -m fastgpt.sft "$@"

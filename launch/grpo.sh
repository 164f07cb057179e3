#!/usr/bin/env bash
# GRPO (RL on verifiable rewards): bash launch/grpo.sh --model=DIR [--key=value ...]
#
# Samples --group_size answers to each of --prompts_per_step problems of --task, rewards the correct
# ones, and updates the policy with the group-relative clipped objective (docs/rl.md). E.g.
#   bash launch/grpo.sh --model=out/sft/model --task=chain_sum_easy --max_steps=100
#   bash launch/grpo.sh --model=DIR --task=gsm_symbolic --group_size=16 --prompts_per_step=32 \
#       --max_new_tokens=256 --beta=0.04 --clip_high=0.28 --zero=2 --dtype=bf16
#   bash launch/grpo.sh --model=DIR --task=my_problems.jsonl --reward=my_module:my_reward
# Every key: python -m fastgpt.grpo --help. Writes --out_dir (default out/grpo): config.json,
# metrics.jsonl (reward_mean, accuracy, kl, ..., heldout_accuracy), checkpoints/, model/.
#
# Multi-GPU / multi-node through the environment variables of launch/_torchrun.sh (NPROC_PER_NODE,
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT); --prompts_per_step must be a multiple of the ranks.
MODULE=fastgpt.grpo
source "$(dirname "$0")/_torchrun.sh"

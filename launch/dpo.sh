#!/usr/bin/env bash
# DPO (offline preference optimisation): bash launch/dpo.sh --model=DIR [--key=value ...]
#
#   bash launch/dpo.sh --model=out/sft/model --data=gsm_symbolic_pairs --beta=0.1
#   bash launch/dpo.sh --model=DIR --data=dpo_en_demo,my_pairs.jsonl --loss_type=ipo --beta=0.5
# Reference log-probabilities are precomputed once (--precompute_ref=true), so no second model is kept.
# Every key: python -m fastgpt.dpo --help (and docs/rl.md). Writes --out_dir (default out/dpo).
# Multi-GPU / multi-node: the environment variables of launch/_torchrun.sh.
MODULE=fastgpt.dpo
source "$(dirname "$0")/_torchrun.sh"

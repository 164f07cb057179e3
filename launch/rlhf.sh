#!/usr/bin/env bash
# RLHF in two stages: a reward model on preference pairs, then PPO against it.
#
#   bash launch/rlhf.sh --model=out/sft/model [--out=out/rlhf] [--data=PAIRS] [--prompts=PROMPTS]
#
#   --model    the SFT model both stages start from (required)
#   --out      output root (default out/rlhf): reward/ and ppo/ run dirs
#   --data     preference pairs for the reward model (default gsm_symbolic_pairs; any fastgpt.reward --data)
#   --prompts  prompts PPO samples from (default: the same source as --data)
# Extra keys per stage through environment variables (appended last, so they win):
#   REWARD_ARGS="--max_steps=500 --lr=5e-6"   PPO_ARGS="--kl_coef=0.02 --zero=2 --critic=separate"
# Multi-GPU / multi-node: the environment variables of launch/_torchrun.sh (both stages use them).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MODEL="" OUT=out/rlhf DATA=gsm_symbolic_pairs PROMPTS=""
for arg in "$@"; do
  case "$arg" in
    --model=*) MODEL="${arg#*=}" ;;
    --out=*) OUT="${arg#*=}" ;;
    --data=*) DATA="${arg#*=}" ;;
    --prompts=*) PROMPTS="${arg#*=}" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "rlhf.sh: unknown argument $arg (expected --model=, --out=, --data=, --prompts=)" >&2; exit 2 ;;
  esac
done
if [ -z "$MODEL" ]; then echo "rlhf.sh: --model=DIR is required (an SFT model)" >&2; exit 2; fi
train() { ( MODULE="$1"; shift; source "$HERE/_torchrun.sh" "$@" ); }

# shellcheck disable=SC2086  # the *_ARGS variables are word lists on purpose
train fastgpt.reward --model="$MODEL" --data="$DATA" --out_dir="$OUT/reward" ${REWARD_ARGS:-}
# shellcheck disable=SC2086
train fastgpt.ppo --model="$MODEL" --reward_model="$OUT/reward/model" --prompts="${PROMPTS:-$DATA}" \
  --out_dir="$OUT/ppo" ${PPO_ARGS:-}
echo "rlhf.sh: reward model in $OUT/reward/model, PPO policy in $OUT/ppo/model"

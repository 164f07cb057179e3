#!/usr/bin/env bash
# RL that learns to use the Python tool on a jagged task (docs/jagged.md, "RL with the Python tool"):
#   SFT cold start (the task answered half through a Python call, half directly) -> GRPO with the
#   tools on and a plain correctness reward -> eval of the six jagged tasks without and with tools
#   -> report (held-out accuracy and the share of answers calling a tool, per GRPO step)
#
#   bash launch/jagged_rl.sh --model=out/speedrun/pretrain/model          # a pretrained tiny model
#   bash launch/jagged_rl.sh --model=DIR --task=jagged_letter_count --out=out/jagged_lc --overwrite
#
# --task: jagged_multiply (default, two-digit factors: --task_options) or another jagged task; the SFT
# data is that task's training problems only (held-out problems never appear in it).
# Extra settings per stage through SFT_ARGS, GRPO_ARGS, EVAL_ARGS (appended last, so they win).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

MODEL=out/speedrun/pretrain/model
TASK=jagged_multiply
OPTIONS='{"min_digits": 2, "max_digits": 2}'
OUT=out/jagged_rl
OVERWRITE=0
for arg in "$@"; do
  case "$arg" in
    --model=*) MODEL="${arg#*=}" ;;
    --task=*) TASK="${arg#*=}" ;;
    --task_options=*) OPTIONS="${arg#*=}" ;;
    --out=*) OUT="${arg#*=}" ;;
    --overwrite) OVERWRITE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "jagged_rl.sh: unknown argument $arg (expected --model=DIR, --task=NAME, --task_options=JSON, --out=DIR, --overwrite)" >&2; exit 2 ;;
  esac
done
if [ "$TASK" != jagged_multiply ] && [ "$OPTIONS" = '{"min_digits": 2, "max_digits": 2}' ]; then OPTIONS='{}'; fi
if [ ! -f "$MODEL/config.json" ]; then
  echo "jagged_rl.sh: --model=$MODEL holds no model (run bash launch/speedrun.sh or launch/pretrain.sh first)" >&2; exit 2
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  if [ "$OVERWRITE" = 1 ]; then rm -rf "$OUT"; else
    echo "jagged_rl.sh: $OUT already holds a run; pass --out=NEW_DIR or --overwrite" >&2; exit 2
  fi
fi
mkdir -p "$OUT"
# the SFT mixture: a little chat, identity and "I don't know", then the task three times over
cat > "$OUT/sft-mixture.yaml" <<YAML
datasets:
  - {name: chatterbot, epochs: 0.1}
  - {name: identity, epochs: 0.5}
  - {name: unknown, epochs: 0.5}
  - {name: jagged_python, epochs: 3, options: {n: 1500, tasks: $TASK, direct_fraction: 0.5, task_options: $OPTIONS}}
YAML
train() { ( MODULE="$1"; shift; source "$HERE/_torchrun.sh" "$@" ); }

# shellcheck disable=SC2086  # the *_ARGS variables are word lists on purpose
train fastgpt.sft --model="$MODEL" --data="$OUT/sft-mixture.yaml" --max_steps=150 --optimizer=muon --lr=3e-3 \
  --warmup_steps=10 --eval_every=50 --out_dir="$OUT/sft" --progress=false ${SFT_ARGS:-}
train fastgpt.grpo --model="$OUT/sft/model" --task="$TASK" "--task_options=$OPTIONS" --tools=true --group_size=8 \
  --prompts_per_step=8 --max_new_tokens=48 --lr=1e-4 --max_steps=20 --eval_every=5 --eval_problems=100 \
  --log_every=1 --out_dir="$OUT/grpo" --progress=false ${GRPO_ARGS:-}
fastgpt eval --model "$OUT/grpo/model" --tasks jagged_letter_count,jagged_reverse,jagged_char_at,jagged_word_length,jagged_compare,jagged_multiply \
  --task_options "$OPTIONS" --problems 100 --max_new_tokens 64 --tools --out "$OUT/eval.json" ${EVAL_ARGS:-}
fastgpt report --runs "$OUT" --title "fastgpt: GRPO with the Python tool on $TASK"
echo "jagged_rl finished: $OUT/report.md"

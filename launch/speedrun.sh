#!/usr/bin/env bash
# The whole recipe in one command, on the built-in data:
#   tokenizer -> pretrain -> SFT -> GRPO -> eval -> report
#
#   bash launch/speedrun.sh                         # --preset=tiny: a 2-core CPU, about 30 minutes
#   bash launch/speedrun.sh --preset=gpt2           # GPUs (all local ones, through torchrun)
#   bash launch/speedrun.sh --out=out/run2 --overwrite
#
# Pretraining runs for a fixed wall-clock budget (--time_budget_s; the LR schedule follows it): a
# faster machine trains more tokens in the same time and gets a better model. On the tiny preset SFT
# and GRPO run fixed step counts instead, so that what the RL half shows (the held-out lift) does not
# depend on how busy the machine is; they take longer on a slower machine.
#
#   preset  model                    pretrain / SFT / GRPO               expected wall time
#   tiny    5.5M params, llama-style  480 s / 150 steps / 20 steps        ~25 min on 2 CPU cores (measured:
#                                                                       docs/example-report/)
#   gpt2    ~92M params, GPT-2 shape  1200 s / 300 s / 600 s             ~40 min on 8xH100 (ESTIMATE: the
#                                                                       budgets plus start-up, data
#                                                                       preparation and eval; not measured)
#
# Extra settings per stage go through environment variables (appended last, so they win):
#   TOKENIZER_ARGS  PRETRAIN_ARGS  SFT_ARGS  GRPO_ARGS  EVAL_ARGS     e.g. PRETRAIN_ARGS="--zero=2"
# and REPORT_NOTE adds a line to the report (what else the machine was doing, for instance).
# Multi-GPU / multi-node: the variables of launch/_torchrun.sh (NPROC_PER_NODE, NNODES, ...).
#
# Outputs in --out (default out/speedrun): tokenizer/, pretrain/, sft/, grpo/ (each a run dir with
# config.json, metrics.jsonl and model/), eval.json, timings.jsonl (wall time of every stage),
# report.md and plots/.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

PRESET=tiny
OUT=out/speedrun
OVERWRITE=0
for arg in "$@"; do
  case "$arg" in
    --preset=*) PRESET="${arg#*=}" ;;
    --out=*) OUT="${arg#*=}" ;;
    --overwrite) OVERWRITE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "speedrun.sh: unknown argument $arg (expected --preset=NAME, --out=DIR, --overwrite)" >&2; exit 2 ;;
  esac
done

JAGGED=jagged_letter_count,jagged_reverse,jagged_char_at,jagged_word_length,jagged_compare,jagged_multiply
case "$PRESET" in
  tiny)
    VOCAB=4096
    PRETRAIN=(--preset=tiny --time_budget_s=480 --eval_every=25 --eval_tokens=32768)
    # SFT: the chat sets plus 1,500 training problems of the RL task, half answered through the
    # calculator and half directly (launch/speedrun-sft-tiny.yaml); GRPO then discovers that the
    # calculator pays. Muon, as in pretraining: with AdamW the model needs 3-4x the steps to learn
    # to copy the expression into the call (docs/rl.md, "RL in the speedrun").
    SFT=(--max_steps=150 --optimizer=muon --lr=3e-3 --warmup_steps=10 --eval_every=25
         "--data=$HERE/speedrun-sft-tiny.yaml")
    GRPO=(--task=chain_sum_small --tools=true --group_size=8 --prompts_per_step=8 --max_new_tokens=32 --lr=1e-4
          --max_steps=20 --eval_every=5 --eval_problems=100)
    # bpb on the same validation slice as pretraining's val_bpb (32,768 tokens), so the two compare;
    # the jagged tasks (docs/jagged.md) are scored without and with the Python tool: the report's
    # "with tools" table (64 new tokens: a Python call and its output take ~50)
    EVAL=(--tasks=bpb,chain_sum_small,mc:shakespeare,mc:basics,$JAGGED --problems=100 --pass_k=4 --samples=4
          --max_new_tokens=64 --bpb_tokens=32768)
    ;;
  gpt2)
    VOCAB=8192
    PRETRAIN=(--preset=gpt2 --time_budget_s=1200 --batch_size=32 --seq_len=1024 --eval_every=250
              --eval_tokens=1048576 --dtype=bf16)
    SFT=(--time_budget_s=300 --batch_size=32 --seq_len=1024 --eval_every=100 --dtype=bf16)
    GRPO=(--task=chain_sum_easy --tools=true --group_size=16 --prompts_per_step=32 --max_new_tokens=128
          --time_budget_s=600 --eval_every=20 --eval_problems=200 --dtype=bf16)
    EVAL=(--tasks=bpb,chain_sum_easy,gsm_symbolic,mc:shakespeare,mc:basics,$JAGGED --problems=200 --pass_k=8
          --samples=8 --max_new_tokens=256 --bpb_tokens=1048576 --batch_size=64)
    ;;
  *) echo "speedrun.sh: unknown --preset=$PRESET (expected tiny or gpt2)" >&2; exit 2 ;;
esac

if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  if [ "$OVERWRITE" = 1 ]; then rm -rf "$OUT"; else
    echo "speedrun.sh: $OUT already holds a run; pass --out=NEW_DIR or --overwrite" >&2; exit 2
  fi
fi
mkdir -p "$OUT"
TIMINGS="$OUT/timings.jsonl"
START=$(date +%s)

# stage NAME COMMAND...: run it, print its wall time, append {"stage", "wall_s", "load_5min"} to timings.jsonl
stage() {
  local name="$1"; shift
  local t0; t0=$(date +%s)
  echo "=== [$name] $*"
  "$@"
  local wall=$(( $(date +%s) - t0 ))
  # the 5-minute load average at the end of the stage: other work on the machine slows a stage down
  printf '{"stage": "%s", "wall_s": %d, "load_5min": %s}\n' "$name" "$wall" "$(cut -d' ' -f2 /proc/loadavg 2>/dev/null || echo null)" >> "$TIMINGS"
  echo "=== [$name] done in ${wall}s (total $(( $(date +%s) - START ))s)"
}
# a training module under torchrun (all local GPUs) or plain python (CPU), as launch/*.sh do
train() { ( MODULE="$1"; shift; source "$HERE/_torchrun.sh" "$@" ); }

# shellcheck disable=SC2086  # the *_ARGS variables are word lists on purpose
stage tokenizer fastgpt train-tokenizer --source shakespeare --vocab_size "$VOCAB" --out "$OUT/tokenizer" ${TOKENIZER_ARGS:-}
stage pretrain train fastgpt.pretrain "${PRETRAIN[@]}" --data=shakespeare --tokenizer="$OUT/tokenizer" \
  --out_dir="$OUT/pretrain" --progress=false ${PRETRAIN_ARGS:-}
stage sft train fastgpt.sft "${SFT[@]}" --model="$OUT/pretrain/model" --out_dir="$OUT/sft" --progress=false ${SFT_ARGS:-}
stage grpo train fastgpt.grpo "${GRPO[@]}" --model="$OUT/sft/model" --out_dir="$OUT/grpo" --progress=false ${GRPO_ARGS:-}
stage eval fastgpt eval --model "$OUT/grpo/model" "${EVAL[@]}" --tools --data shakespeare --out "$OUT/eval.json" ${EVAL_ARGS:-}
stage report fastgpt report --runs "$OUT" --title "fastgpt speedrun ($PRESET preset)" \
  --note "bash launch/speedrun.sh --preset=$PRESET on $(hostname): $(nproc --all) cores, $(python -c 'import torch; print(torch.cuda.device_count())') GPUs. ${REPORT_NOTE:-}"

echo "speedrun finished in $(( $(date +%s) - START ))s: $OUT/report.md"

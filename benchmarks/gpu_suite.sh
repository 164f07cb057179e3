#!/usr/bin/env bash
# Everything fastgpt checks on a GPU, as one short script for a lent machine (at most 10 minutes on one
# H100/H200). It installs nothing from the network: the machine's own torch/triton/transformers are used
# and fastgpt is installed from this tree without dependencies.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]      # default: benchmarks/results/gpu (or $OUT when set)
#   bash benchmarks/gpu_suite.sh --dry-run      # print the phases and their commands, run nothing
#
# The correctness phase (step 2) runs first: when a test fails the suite stops there, before any
# benchmark, with one line per failing test ("FAILED tests/...::test - reason").
#
# Steps, each with its own time limit so one slow step cannot eat the others:
#   1. the machine: nvidia-smi, torch/triton versions
#   2. the kernel tests natively on the GPU (FASTGPT_TEST_DEVICE=cuda: no interpreter, bf16 tl.dot real)
#   3. benchmarks/kernels.py --quick: every kernel vs torch eager / compile / SDPA / flash-attn / Liger;
#      attention dense causal and over packed documents (document lengths of shakespeare and c4-demo,
#      vs flash-attn varlen, SDPA with a mask and per document) at d128 T4096 in TFLOP/s with issue 13's
#      targets (fwd >= 470, fwd+bwd >= 340 on H100), on sm_90 the TMA and pointer builds side by side
#   3b. benchmarks/kernels.py --decode --quick: decode attention at batch 1/8/64, 1k and 32k cached
#       tokens, vs SDPA and flash-attn's flash_attn_with_kvcache: GB/s, % of HBM (target >= 70 %)
#   4. benchmarks/train_throughput.py: tokens/s and MFU of a training step, gpt2 and llama-1b presets
# Logs and tables go to OUT_DIR (kernels.csv/.md/.png, decode.csv/.md, train.csv, *.log).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out="${1:-${OUT:-benchmarks/results/gpu}}"
py=${PYTHON:-python3}
[ "$dry" -eq 1 ] || mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
status=0
last_rc=0
step() {  # step NAME SECONDS CMD...: run with a limit, log to $out/NAME.log, remember failures
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  if [ "$dry" -eq 1 ]; then return 0; fi
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc"
  last_rc=$rc
  [ "$rc" -eq 0 ] || status=1
}

step machine 60 bash -c "nvidia-smi; $py -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, torch.cuda.get_device_name())'"
if [ "$dry" -eq 0 ] && [ "$last_rc" -ne 0 ]; then
  echo "gpu suite: no usable GPU (torch cannot open a CUDA device, see $out/machine.log): nothing run"
  exit 1
fi
# fastgpt itself, without touching the machine's packages (no index: nothing can be fetched there)
[ "$dry" -eq 1 ] || $py -m pip install -q --no-deps --no-build-isolation --no-index -e . || status=1
# the tests import the kernels as fastgpt.kernels (setup.py maps kernels/ there): stop now, in one line, if
# that import does not reach this tree's kernels/ rather than with one collection error per test file
if [ "$dry" -eq 0 ] && ! $py -c 'import os, sys, fastgpt.kernels as k
sys.exit(os.path.realpath(k.__path__[0]) != os.path.realpath("kernels"))' >/dev/null 2>&1; then
  echo "gpu suite: fastgpt.kernels does not import from this tree's kernels/ (did 'pip install -e .' fail above?): nothing run"
  exit 1
fi

# pytest-xdist (when the machine has it) runs the tests in 8 processes: the first launches compile ~160
# kernel specialisations (counted by the launch recorder over these files), too many for one process in 180 s
xdist=""
[ "$dry" -eq 1 ] || ! $py -c 'import xdist' >/dev/null 2>&1 || xdist="-n 8"
tests_limit=180
step kernel_tests $tests_limit env FASTGPT_TEST_DEVICE=cuda COLUMNS=200 $py -m pytest -q -p no:cacheprovider --tb=line -rfE -m "not slow" \
  --continue-on-collection-errors $xdist \
  tests/test_kernel_norms.py tests/test_kernel_rope.py tests/test_kernel_activations.py \
  tests/test_kernel_attention.py tests/test_kernel_attention_docs.py tests/test_kernel_attention_decode.py \
  tests/test_kernel_cross_entropy.py tests/test_ops_attention_math.py \
  tests/test_kernel_launches.py tests/test_ops_compile.py tests/test_attention_tma.py
if [ "$dry" -eq 0 ] && [ "$last_rc" -ne 0 ]; then  # correctness first: no benchmark of a wrong kernel
  echo "gpu suite: correctness phase failed, benchmarks not run:"
  if [ "$last_rc" -eq 124 ]; then
    echo "TIMEOUT kernel_tests: stopped at its ${tests_limit}s limit before every test had run (log: $out/kernel_tests.log)"
  fi
  # pytest's summary line of a file that failed to import names no reason: take its "E   " line
  awk '/^_+ ERROR collecting / { path = $4; want = 1; next }
       want && /^E   / { sub(/^E +/, ""); reason[path] = $0; want = 0 }
       /^(FAILED|ERROR) / { n++; if ($1 == "ERROR" && index($0, " - ") == 0 && ($2 in reason)) print $0 " - " reason[$2]; else print }
       END { exit n == 0 }' "$out/kernel_tests.log" || [ "$last_rc" -eq 124 ] ||
    { reason=$(grep -E '^E   ' "$out/kernel_tests.log" | tail -n 1 | sed -E 's/^E +//')  # e.g. a conftest UsageError
      if [ -n "$reason" ]; then echo "ERROR pytest (exit $last_rc) - $reason"; else tail -n 5 "$out/kernel_tests.log"; fi; }
  exit 1
fi
step kernels_bench 160 $py benchmarks/kernels.py --quick --out "$out"
step decode_bench 50 $py benchmarks/kernels.py --decode --quick --out "$out"
step train_throughput 150 $py benchmarks/train_throughput.py --configs gpt2 llama-1b --batch 8 --seq 1024 \
  --dtype bf16 --compile true --reference false --device cuda --csv "$out/train.csv"
[ "$dry" -eq 0 ] || { echo "gpu suite: dry run, nothing was run"; exit 0; }
echo "gpu suite: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED) (logs in $out)"
exit $status

# Shared by the launch scripts (sourced, not run): starts `python -m $MODULE "$@"` under torchrun, one
# process per GPU (or NPROC_PER_NODE processes), on one node or several.
#
# Environment (all optional):
#   NPROC_PER_NODE  processes on this node (default: the number of GPUs, or 1 without GPUs)
#   NNODES          number of nodes (default 1)
#   NODE_RANK       this node's index, 0..NNODES-1 (default 0)
#   MASTER_ADDR     address of node 0, reachable from every node (multi-node only)
#   MASTER_PORT     a free TCP port on node 0 (multi-node only; default 29500)
#   OMP_NUM_THREADS CPU threads per process (default: the cores this job may use / NPROC_PER_NODE)
#   OMP_WAIT_POLICY default PASSIVE (see below)
#
# One process on one node (a CPU machine, or one GPU): plain `python -m $MODULE`.
# Several on one node: torchrun --standalone (it finds a free port itself, so two runs on one machine do not clash).
# Several nodes: every node runs the same command with its own NODE_RANK; node 0 hosts the rendezvous.
set -euo pipefail
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
# Checked here, in one line each: torchrun answers a bad value with a traceback (NPROC_PER_NODE=abc: a
# ValueError; 0: an AssertionError) or, for NODE_RANK >= NNODES, waits for the other nodes forever.
_launch_count() {  # NAME VALUE MIN: VALUE must be an integer >= MIN
  case "$2" in
    '' | *[!0-9]*) echo "launch: $1=$2: expected a whole number >= $3" >&2; exit 2 ;;
  esac
  if [ "$2" -lt "$3" ]; then echo "launch: $1=$2: expected a whole number >= $3" >&2; exit 2; fi
}
_launch_count NPROC_PER_NODE "$NPROC_PER_NODE" 1
_launch_count NNODES "$NNODES" 1
_launch_count NODE_RANK "$NODE_RANK" 0
if [ "$NODE_RANK" -ge "$NNODES" ]; then
  echo "launch: NODE_RANK=$NODE_RANK: expected 0..$((NNODES - 1)) for NNODES=$NNODES" >&2
  exit 2
fi
if [ -n "${MASTER_PORT:-}" ]; then _launch_count MASTER_PORT "$MASTER_PORT" 1; fi
# The cores this process may use (a SLURM task's or taskset's share), not all of the node's.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(python -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(); print(max(1, (n or 1) // $NPROC_PER_NODE))")}
# Idle OpenMP threads sleep instead of spinning: when another process holds a core, spinning threads
# made CPU training steps 3-4x slower here (measured: 583 vs 1668 tokens/s on 2 busy cores).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

if [ "$NNODES" = 1 ] && [ "$NPROC_PER_NODE" = 1 ]; then
  # One process needs no launcher (world size 1 is the default): a bad flag or path then ends with the
  # program's one error line and its exit status, not torchrun's ChildFailedError traceback report.
  exec python -m "$MODULE" "$@"
fi
if [ "$NNODES" = 1 ]; then
  exec torchrun --standalone --nnodes=1 --nproc_per_node="$NPROC_PER_NODE" -m "$MODULE" "$@"
fi
if [ -z "${MASTER_ADDR:-}" ]; then
  echo "launch: NNODES=$NNODES needs MASTER_ADDR (the address of node 0)" >&2
  exit 2
fi
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
  --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" -m "$MODULE" "$@"

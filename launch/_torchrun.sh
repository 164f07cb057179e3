# Shared by the launch scripts: runs `python -m $MODULE "$@"` under torchrun.
#
# Environment (all optional):
#   NPROC_PER_NODE  processes on this node (default: number of GPUs, or 1 without GPUs)
#   NNODES          number of nodes (default 1)
#   NODE_RANK       this node's index, 0..NNODES-1 (default 0)
#   MASTER_ADDR     address of node 0 (default 127.0.0.1)
#   MASTER_PORT     a free TCP port on node 0 (default 29500)
# Single node, single process: python runs directly (no torchrun), so a laptop needs nothing else.
set -euo pipefail
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(python -c "import os; print(max(1, (os.cpu_count() or 1) // $NPROC_PER_NODE))")}
if [ "$NNODES" = 1 ] && [ "$NPROC_PER_NODE" = 1 ]; then
  exec python -m "$MODULE" "$@"
fi
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m "$MODULE" "$@"

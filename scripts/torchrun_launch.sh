#!/usr/bin/env bash
# Launch a training script with torchrun, on one node or (run once per node) several.
#
#   scripts/torchrun_launch.sh SCRIPT [SCRIPT ARGS...]
#
# Environment (all optional):
#   NUM_PROCS    processes on this node: default every GPU, or 2 on a machine without one
#   NNODES       nodes in the job (default 1); run this script on each with its NODE_RANK
#   NODE_RANK    this node's rank (default 0)
#   MASTER_ADDR  the rank-0 node (default 127.0.0.1), MASTER_PORT (default 16666)
#   DRY_RUN=1    print the command instead of running it
# On CPU, OMP_NUM_THREADS defaults to cores / processes.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi

gpus=$("${PYTHON:-python3}" -c 'import torch; print(torch.cuda.device_count())')
procs=${NUM_PROCS:-$gpus}
if [[ $gpus -eq 0 ]]; then
    procs=${NUM_PROCS:-2}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / procs > 0 ? $(nproc) / procs : 1 ))}
fi
launch=(torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$procs"
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-16666}" "$@")

if [[ -n ${DRY_RUN:-} ]]; then
    echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-} ${launch[*]}"
else
    exec "${launch[@]}"
fi

#!/usr/bin/env bash
# Launch a training script with the DeepSpeed launcher: one node (all its GPUs, a few of them,
# or CPU processes) or several nodes listed in a hostfile.
#
#   scripts/ds_launch.sh SCRIPT [SCRIPT ARGS...]
#
# Environment (all optional):
#   NUM_GPUS     processes per node: default every GPU, or 2 on a machine without one
#   INCLUDE      GPUs to use, DeepSpeed's syntax (localhost:0,2 or node1:0@node2:1); replaces NUM_GPUS
#   HOSTFILE     several nodes: a hostfile ("host slots=N" lines, see scripts/hostfile) and
#                passwordless ssh between the nodes; NUM_NODES picks how many of them to use
#   MASTER_PORT  default 16666
#   DRY_RUN=1    print the command instead of running it
# On CPU, OMP_NUM_THREADS defaults to cores / processes (the launcher leaves it unset, and
# oversubscribed cores make training several times slower).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,15p' "$0" >&2
    exit 2
fi

gpus=$("${PYTHON:-python3}" -c 'import torch; print(torch.cuda.device_count())')
launch=(deepspeed --master_port "${MASTER_PORT:-16666}")
if [[ -n ${HOSTFILE:-} ]]; then
    launch+=(--hostfile "$HOSTFILE")
    if [[ -n ${NUM_NODES:-} ]]; then
        launch+=(--num_nodes "$NUM_NODES")
    fi
fi
if [[ -n ${INCLUDE:-} ]]; then
    launch+=(--include "$INCLUDE")
else
    procs=${NUM_GPUS:-$gpus}
    if [[ $gpus -eq 0 ]]; then
        procs=${NUM_GPUS:-2}
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / procs > 0 ? $(nproc) / procs : 1 ))}
    fi
    launch+=(--num_gpus "$procs")
fi
launch+=("$@")

if [[ -n ${DRY_RUN:-} ]]; then
    echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-} ${launch[*]}"
else
    exec "${launch[@]}"
fi

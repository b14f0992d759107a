# Sourced by the Slurm launchers: node list, head node, and `run_on NODE CMD` that runs CMD on NODE with
# srun, or only prints it when DRY_RUN=1 (printing the exact commands each node would run).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${SLURM_JOB_NODELIST:?run inside a Slurm allocation (sbatch/salloc), or set SLURM_* for a dry run}"
if command -v scontrol >/dev/null 2>&1 && [ "${DRY_RUN:-0}" != 1 ]; then
  mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
else
  mapfile -t NODES < <(python3 "$HERE/hostlist.py" "$SLURM_JOB_NODELIST")
fi
NNODES=${#NODES[@]}
HEAD=${NODES[0]}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-8}}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}  # "h100:8" -> 8
GPUS_PER_WORKER=${GPUS_PER_WORKER:-1}  # > 1: pass the same --gpus_per_worker to the run script
WORKERS_PER_NODE=$((GPUS_PER_NODE / GPUS_PER_WORKER))
HEAD_IP=$( { [ "${DRY_RUN:-0}" = 1 ] || ! command -v getent >/dev/null; } && echo "$HEAD" \
          || getent hosts "$HEAD" | awk '{print $1; exit}')
HEAD_IP=${HEAD_IP:-$HEAD}

run_on() {  # run_on NODE CMD... (background with &, as the caller decides)
  local node=$1; shift
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "[$node] $*"
  else
    srun --nodes=1 --ntasks=1 --overlap -w "$node" bash -c "$*"
  fi
}

bg() {  # like run_on, in the background when really running (in order when printing)
  if [ "${DRY_RUN:-0}" = 1 ]; then run_on "$@"; else run_on "$@" & fi
}

quote() { local q; q=$(printf '%q ' "$@"); echo "${q% }"; }

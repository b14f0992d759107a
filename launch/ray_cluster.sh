#!/usr/bin/env bash
# Start a Ray cluster over the Slurm allocation, run one command against it, tear it down.
#
#   bash launch/ray_cluster.sh python run_ruler.py -l 131072 -a star -nn 2 -np 8 --device cuda
#
# With `ray symmetric-run` (recent Ray): one srun starts Ray on every node and the head's copy runs the
# command; otherwise the classic way: `ray start --head` on the first node, `ray start --address` on the
# others, wait until the cluster has every GPU, run the command on the head with RAY_ADDRESS set, `ray stop`
# everywhere on exit or failure. DRY_RUN=1 prints the commands per node instead of running them.
# Env: GPUS_PER_NODE (default from Slurm, else 8), PORT (6379), RAY_MODE=auto|symmetric|classic,
# WAIT_S (600: how long to wait for every GPU).
set -euo pipefail
PORT=${PORT:-6379}
source "$(dirname "$0")/common.sh"
CMD=$(quote "$@")
[ -n "$CMD" ] || { echo "usage: ray_cluster.sh COMMAND..." >&2; exit 2; }
ADDR="$HEAD_IP:$PORT"
ORDER=$(IFS=,; echo "${NODES[*]}")
ENVS="RAY_ADDRESS=$ADDR STAR_RUNTIME_NODE_ORDER=$ORDER"
MODE=${RAY_MODE:-auto}
if [ "$MODE" = auto ]; then
  if ray symmetric-run --help >/dev/null 2>&1; then MODE=symmetric; else MODE=classic; fi
fi

if [ "$MODE" = symmetric ]; then
  # every node runs the same line; Ray starts the cluster, the head's copy runs the command
  for node in "${NODES[@]}"; do
    line="$ENVS ray symmetric-run --address $ADDR --min-nodes $NNODES --num-gpus $GPUS_PER_NODE -- $CMD"
    if [ "${DRY_RUN:-0}" = 1 ]; then run_on "$node" "$line"; fi
  done
  [ "${DRY_RUN:-0}" = 1 ] && exit 0
  exec srun --nodes="$NNODES" --ntasks-per-node=1 bash -c "$ENVS ray symmetric-run --address $ADDR \
    --min-nodes $NNODES --num-gpus $GPUS_PER_NODE -- $CMD"
fi

teardown() {
  for node in "${NODES[@]}"; do run_on "$node" "ray stop --force" || true; done
  jobs -p | xargs -r kill 2>/dev/null || true
}
[ "${DRY_RUN:-0}" = 1 ] || trap teardown EXIT

bg "$HEAD" "ray start --head --node-ip-address=$HEAD_IP --port=$PORT --num-gpus=$GPUS_PER_NODE --block"
[ "${DRY_RUN:-0}" = 1 ] || sleep 10
for node in "${NODES[@]:1}"; do
  bg "$node" "ray start --address=$ADDR --num-gpus=$GPUS_PER_NODE --block"
done
WANT=$((NNODES * GPUS_PER_NODE))
run_on "$HEAD" "RAY_ADDRESS=$ADDR python3 -c 'import ray,time,sys; ray.init(); t=time.time()
while ray.cluster_resources().get(\"GPU\",0) < $WANT:
    time.sleep(2)
    if time.time()-t > ${WAIT_S:-600}: sys.exit(\"Ray cluster has \"+str(ray.cluster_resources().get(\"GPU\",0))+\" of $WANT GPUs\")'"
run_on "$HEAD" "$ENVS $CMD"

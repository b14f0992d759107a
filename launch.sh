#!/usr/bin/env bash
# Run a benchmark with dense, ring and star attention, then gather one table and plot.
#
#   ./launch.sh [-b ruler|babilong] [-p MODEL_PATH] [-n NAME] [-c PROMPT_CONFIG] [-l "4096 8192"]
#               [-w WORKERS] [-s SAMPLES] [-t "TASKS"] [-d DATA_DIR] [-o OUTPUT_DIR] [-m "dense ring star"]
#
# With GPUs (nvidia-smi lists them): one worker per GPU (all of them unless -w), bf16, dense on one GPU.
# Without: the bundled SmolLM2 on 2 CPU workers. Star uses block = length / workers and anchor = block (the
# reference's setting); ring uses the same workers. Inside a Slurm allocation of several nodes, each run is
# started through launch/ray_cluster.sh. DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")"
BENCH=ruler MODEL="" NAME="" CONFIG="" LENGTHS="4096 8192" WORKERS="" SAMPLES=50 TASKS="" DATA="${STAR_RUNTIME_DATA:-../shared/data}"
OUT="" MODES="dense ring star"
while getopts "b:p:n:c:l:w:s:t:d:o:m:h" opt; do
  case $opt in
    b) BENCH=$OPTARG ;; p) MODEL=$OPTARG ;; n) NAME=$OPTARG ;; c) CONFIG=$OPTARG ;; l) LENGTHS=$OPTARG ;;
    w) WORKERS=$OPTARG ;; s) SAMPLES=$OPTARG ;; t) TASKS=$OPTARG ;; d) DATA=$OPTARG ;; o) OUT=$OPTARG ;;
    m) MODES=$OPTARG ;; h|*) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
case $BENCH in ruler|babilong) ;; *) echo "launch.sh: unknown benchmark $BENCH (ruler or babilong)" >&2; exit 2 ;; esac
GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if [ "$GPUS" -gt 0 ]; then
  DEVICE=cuda; WORKERS=${WORKERS:-$GPUS}
else
  DEVICE=cpu; WORKERS=${WORKERS:-2}
fi
NAME=${NAME:-$( [ -n "$MODEL" ] && basename "$MODEL" || echo smollm2-135m)}
CONFIG=${CONFIG:-$( [ -n "$MODEL" ] && echo base || echo smollm)}
OUT=${OUT:-results/$BENCH}
NODES=1
[ -n "${SLURM_JOB_NUM_NODES:-}" ] && NODES=$SLURM_JOB_NUM_NODES
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi
}
for mode in $MODES; do
  args=(run_$BENCH.py -n "$NAME" -pc "$CONFIG" -a "$mode" -l $LENGTHS --num_samples_per_task "$SAMPLES"
        --device "$DEVICE" --data_dir "$DATA" --output_dir "$OUT")
  [ -n "$MODEL" ] && args+=(-p "$MODEL")
  [ -n "$TASKS" ] && args+=(-t $TASKS)
  if [ "$mode" = dense ]; then
    args+=(-nn 1 -np 1)
  else
    args+=(-nn "$NODES" -np "$WORKERS")  # star: block -1 = length / workers, anchor = block
  fi
  if [ "$NODES" -gt 1 ] && [ "$mode" != dense ]; then
    run bash launch/ray_cluster.sh "$PY" "${args[@]}"
  else
    run "$PY" "${args[@]}"
  fi
done
run "$PY" "$BENCH/gather_results_$BENCH.py" -e "$OUT"

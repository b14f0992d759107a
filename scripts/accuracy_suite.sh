#!/usr/bin/env bash
# The accuracy measurements of docs/accuracy.md on a GPU machine, bundled model, bf16, greedy:
#   RULER, 13 tasks at 4K and 8K, and BABILong qa1-qa5 at 0K/2K/4K/8K, 50 samples per task, in dense,
#   ring and star (block = length / 4, anchor = block, on NGPU workers), and the block fine-tuning table
#   (RAG held-out accuracy before and after `finetune-block`).
#
#   scripts/accuracy_suite.sh PART...
#     ruler-dense babilong-dense     one GPU
#     ruler-star ruler-ring babilong-star   NGPU workers (torchrun, NCCL; Ray is not needed)
#     rag                            one GPU: eval-rag, finetune-block, eval-rag on the checkpoint
#     gather                         tables and plots
#   Parts resume: a finished sample is never run twice.
#
# env: RESULTS (results/accuracy), DATA (raw data; default $STAR_RUNTIME_DATA), PREGEN (samples written by
#      run_ruler.py / run_babilong.py --prepare_only, as PREGEN/ruler and PREGEN/babilong; optional),
#      NGPU (default: every visible GPU), SAMPLES (50), STEPS (800), RAG_SAMPLES (-1: the whole held-out
#      split), BATCH (16), PY (python3); for a small trial on CPU: DEVICE=cpu, RULER_LEN, BABI_LEN.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RESULTS=${RESULTS:-results/accuracy}
DATA=${DATA:-${STAR_RUNTIME_DATA:-}}
SAMPLES=${SAMPLES:-50}
STEPS=${STEPS:-800}
RAG_SAMPLES=${RAG_SAMPLES:--1}
BATCH=${BATCH:-16}
NGPU=${NGPU:-$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")}
data_flags=()
[ -n "$DATA" ] && data_flags=(--data_dir "$DATA")
pregen() { [ -n "${PREGEN:-}" ] && echo "-d $PREGEN/$1"; true; }
DEVICE=${DEVICE:-cuda}
common=(--device "$DEVICE" --batch_size "$BATCH" --num_samples_per_task "$SAMPLES" "${data_flags[@]}")
read -r -a RULER_LEN <<< "${RULER_LEN:-4096 8192}"
read -r -a BABI_LEN <<< "${BABI_LEN:-0 2k 4k 8k}"
multi() { "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NGPU" "$@" -np "$NGPU" --launcher torchrun; }

for part in "$@"; do
  echo "== $part ($(date +%T))"
  case $part in
    ruler-dense) "$PY" run_ruler.py -a dense -l "${RULER_LEN[@]}" $(pregen ruler) "${common[@]}" -o "$RESULTS/ruler" ;;
    ruler-star) multi run_ruler.py -a star -nb 4 -l "${RULER_LEN[@]}" $(pregen ruler) "${common[@]}" -o "$RESULTS/ruler" ;;
    ruler-ring) multi run_ruler.py -a ring -l "${RULER_LEN[@]}" $(pregen ruler) "${common[@]}" -o "$RESULTS/ruler" ;;
    babilong-dense) "$PY" run_babilong.py -a dense -l "${BABI_LEN[@]}" $(pregen babilong) "${common[@]}" \
                      -o "$RESULTS/babilong" ;;
    babilong-star) multi run_babilong.py -a star -nb 4 -l "${BABI_LEN[@]}" $(pregen babilong) "${common[@]}" \
                     -o "$RESULTS/babilong" ;;
    rag)  # fine-tune first: the tuned rows are the point of the table; every evaluation resumes
      [ -f "$RESULTS/rag/ckpt/block_finetune.json" ] ||
        "$PY" -m star_runtime.cli finetune-block --output_dir "$RESULTS/rag/ckpt" --steps "$STEPS" --device "$DEVICE" \
          "${data_flags[@]}"
      "$PY" -m star_runtime.cli eval-rag --model_path "$RESULTS/rag/ckpt" --output_dir "$RESULTS/rag/tuned" \
        --device "$DEVICE" --batch_size "$BATCH" --num_samples "$RAG_SAMPLES" "${data_flags[@]}"
      "$PY" -m star_runtime.cli eval-rag --output_dir "$RESULTS/rag/base" --device "$DEVICE" --batch_size "$BATCH" \
        --num_samples "$RAG_SAMPLES" "${data_flags[@]}" ;;
    gather)
      "$PY" ruler/gather_results_ruler.py -e "$RESULTS/ruler"
      "$PY" babilong/gather_results_babilong.py -e "$RESULTS/babilong" ;;
    *) echo "unknown part $part; see the top of $0" >&2; exit 2 ;;
  esac
done

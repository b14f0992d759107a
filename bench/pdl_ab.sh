#!/usr/bin/env bash
# Programmatic dependent launch (star_runtime/pdl.py) against serialized launches in the 8K cached-passage first
# token, one process per variant (bench/bench_block_ttft.py): the runtime's kernels with PDL and Inductor's
# (TORCHINDUCTOR_ENABLE_PDL), the skinny matmul prefetching 2 KB of each weight row into L2 before it waits, and
# the skinny kernel for every 64-row matmul of the 8B shape (PDL needs kernels that know it; cuBLASLt's do not).
# Then the PDL GPU tests, and the 8K / 32K bench with the variant whose graph ran fastest.
#   OUT=results_dir bash bench/pdl_ab.sh    (one GPU; writes log, pdl_ab.jsonl, block_ttft.jsonl, gpu_tests_pdl.log)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.:${PYTHONPATH:-}
L=$OUT/log; J=$OUT/pdl_ab.jsonl
T=star_runtime/models/skinny_tuned.json
cp $T /tmp/tuned.orig; trap 'cp /tmp/tuned.orig "$T"' EXIT  # the package's table as it was, however this ends
python - <<'PY'
import json, torch
t = json.load(open("star_runtime/models/skinny_tuned.json"))
c = t.setdefault(torch.cuda.get_device_name(0), dict(t["NVIDIA H200"]))
json.dump(t, open("/tmp/tuned.qkv", "w"), indent=1, sort_keys=True)
c["64,4096,4096"] = [32, 128, 1, 4, 6]; c["64,28672,4096"] = [64, 64, 1, 4, 3]; c["64,4096,14336"] = [32, 128, 1, 4, 6]
json.dump(t, open("/tmp/tuned.all", "w"), indent=1, sort_keys=True)
PY
run() { name=$1; tuned=$2; shift 2; rm -f /tmp/r.jsonl; cp /tmp/tuned.$tuned $T; echo "== $name $tuned $*" >> $L
  env "$@" python bench/bench_block_ttft.py --lengths 8192 --repeats 5 --out /tmp/r.jsonl >> $L 2>&1
  [ -f /tmp/r.jsonl ] && tail -1 /tmp/r.jsonl | python -c "import json,sys; r=json.loads(sys.stdin.read()); r['variant']='$name'; r['tuned']='$tuned'; r['env']='$*'; print(json.dumps(r))" >> $J; }
nvidia-smi -L >> $L
P="STAR_RUNTIME_PDL=1 TORCHINDUCTOR_ENABLE_PDL=1"
run base qkv X=1
run allskinny_pdl_pf2k all $P STAR_RUNTIME_PDL_PREFETCH=2048
run pdl_pf2k qkv $P STAR_RUNTIME_PDL_PREFETCH=2048
env $P STAR_RUNTIME_PDL_PREFETCH=2048 python -m pytest -q -m gpu tests/gpu/test_pdl_gpu.py tests/gpu/test_pages_gpu.py tests/gpu/test_table_step.py -p no:cacheprovider > $OUT/gpu_tests_pdl.log 2>&1; tail -2 $OUT/gpu_tests_pdl.log >> $L
python - > /tmp/best <<'PY'
import json, os
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/pdl_ab.jsonl")]
for r in rows:
    print(f"# {r['variant']:>22} ttft {r['warm_ttft_ms']:.3f} graph {r['final_graph_ms']:.3f} idle {r['final_graph_idle_ms']:.3f} floor {r['floor_ms']:.3f}")
b = min(rows, key=lambda r: r["final_graph_ms"])
print(f"BEST_TUNED={b['tuned']}; BEST_ENV='{b['env']}'; BEST={b['variant']}")
PY
cat /tmp/best >> $L; eval "$(grep '^BEST' /tmp/best)"; cp /tmp/tuned.$BEST_TUNED $T; cp $T $OUT/skinny_tuned_used.json
echo "== full bench with $BEST ($BEST_ENV)" >> $L
env $BEST_ENV python bench/bench_block_ttft.py --lengths 8192 32768 --repeats 9 --out $OUT/block_ttft.jsonl >> $L 2>&1

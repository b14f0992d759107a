"""Block-Attention TTFT: a prompt of cached passages vs a dense prefill of the same prompt, one GPU.

For each total length: passages of --passage tokens (random ids) and a final block of --final tokens.
Cold: the passages are encoded (misses) and cached. Warm: the same passages in a new order (so every block
is re-encoded to a new offset) hit the cache; the first token attends them where they lie (attention/pages.py);
timed after two such requests that are not (the page bucket's first call runs uncaptured, its second captures).
Beside it: the same requests with the context gathered into the arena first (the earlier path), and the time to
the second token (which waits for the deferred gather). Dense: an ordinary prefill of the whole prompt. TTFT = the
worker call's start to its first token on the host: phase 1, the host work after it, the final block's forward
(until 2026-12-03 evening phase 1 + the final block alone, which left out the ~0.1 ms between them; ``host_between_ms``
is that part now). Writes JSON lines to --out and prints a table.

  python bench/bench_block_ttft.py --lengths 4096 8192 16384 32768 --out block.jsonl [--profile 32768]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from floors import copy_bandwidth, kv_bytes_per_token, linear_floor_ms, weight_bytes  # noqa: E402

from star_runtime.config import add_flags, from_args  # noqa: E402
from star_runtime.kv.block_store import block_key  # noqa: E402
from star_runtime.modes.block import BlockSpec  # noqa: E402
from star_runtime.models.loader import resolve_model  # noqa: E402
from star_runtime.parallel.worker import Request, Worker  # noqa: E402


def block_request(passages, final, order, model_id, index=0, max_new=1):
    """A block-mode request of passages[i] for i in order (each a cached block on worker 0) + the final ids."""
    specs, off = [], 0
    for i in order:
        ids = passages[i]
        specs.append(BlockSpec(block_key(model_id, ids), tuple(ids), off, 0))
        off += len(ids)
    ctx = [t for s in specs for t in s.ids]
    return Request(index, ctx, final, max_new, mode="block", blocks=specs)


def run(worker, req):
    return worker.run_batch([req])[0]


def final_graph_ms(worker, passages: int, passage: int, final: int, repeats: int = 20) -> dict:
    """The final block's step (its CUDA graphs as the warm requests left them: the last request's tables)
    replayed alone: ``final_graph_ms``, the mean over back-to-back replays (each launched while the one before
    runs: its GPU work); ``final_graph_idle_ms``, the median from an idle GPU, from the replay's call to the end
    of its work (what a request waits: the launch's latency included; this column's meaning before 2026-12-03
    evening); ``graph_launch_ms``, the host's median time in the replay call."""
    from star_runtime.attention.pages import capacity_bucket, pages_needed
    from star_runtime.decode import query_bucket

    step = worker.arenas.steps.get((query_bucket(final), capacity_bucket(pages_needed([passage] * passages))))
    if step is None or step.graph is None:
        return {"final_graph_ms": float("nan")}
    idle, host = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        t = time.perf_counter()
        step.graph.replay()
        host.append(1000 * (time.perf_counter() - t))
        e.record()
        e.synchronize()
        idle.append(s.elapsed_time(e))
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(repeats):
        step.graph.replay()
    e.record()
    e.synchronize()
    return {"final_graph_ms": s.elapsed_time(e) / repeats, "final_graph_idle_ms": statistics.median(idle),
            "graph_launch_ms": statistics.median(host)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192, 16384, 32768])
    p.add_argument("--passage", type=int, default=512)
    p.add_argument("--final", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cache_gib", type=float, default=24.0)
    p.add_argument("--profile", type=int, nargs="*", default=[], help="profile one warm run at these lengths")
    p.add_argument("--trace", default=None,
                   help="with --profile: write each Chrome trace (gzip) to this prefix + _<length>.json.gz")
    p.add_argument("--host_profile", action="store_true",
                   help="cProfile the warm requests: where the host's time before and after the GPU work goes")
    p.add_argument("--host_trace", action="store_true",
                   help="stamp the functions of the warm request's path (bench/host_trace.py) and print a timeline")
    p.add_argument("--out", default=None)
    add_flags(p, exclude=("attn_type", "num_workers", "ignore_eos", "block_cache_gpu_gib", "block_cache_cpu_gib"),
              defaults={"model_path": "random:llama3-8b", "device": "cuda", "dtype": "bfloat16"},
              extra_flags={"model_path": ("--model",)})
    a = p.parse_args()
    a.model = a.model_path

    cfg = from_args(a, attn_type="block", block_cache_gpu_gib=a.cache_gib, block_cache_cpu_gib=0,
                    ignore_eos=True).validate()
    worker = Worker(cfg, resolve_model(a.model), 0, 1)
    card = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    bw = copy_bandwidth(worker.device) if a.device == "cuda" else float("nan")
    weights_ms = linear_floor_ms(worker.model, a.final) if a.device == "cuda" else float("nan")
    per_token = kv_bytes_per_token(worker.model)
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(100, 30000, (n,), generator=g).tolist()  # noqa: E731
    rows = []
    # warm-up (kernels, compile of the fused re-encoding)
    wp = [rand(a.passage) for _ in range(4)]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        run(worker, block_request(wp, rand(a.final), order, "warm"))
    run(worker, Request(0, rand(2048), rand(a.final), 1, mode="dense"))
    for length in a.lengths:
        n = length // a.passage
        passages = [rand(a.passage) for _ in range(n)]
        final = rand(a.final)
        mid = f"bench-{length}"
        cold = run(worker, block_request(passages, final, list(range(n)), mid))
        for _ in range(2):  # the page bucket's first call runs uncaptured, its second captures: not warm requests
            run(worker, block_request(passages, final, torch.randperm(n, generator=g).tolist(), mid))
        warm = []
        prof = cProfile.Profile() if a.host_profile else None
        for _ in range(a.repeats):
            order = torch.randperm(n, generator=g).tolist()
            req = block_request(passages, final, order, mid)
            with prof if prof is not None else contextlib.nullcontext():  # the request alone, not its making
                warm.append(run(worker, req))
        if prof is not None:
            import pstats

            print(f"[{length}] host profile of {a.repeats} warm requests (tottime, s)", flush=True)
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
            pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(40)
        assert all(w.cache["misses"] == 0 for w in warm)
        graph = final_graph_ms(worker, n, a.passage, a.final) if a.device == "cuda" else {"final_graph_ms": float("nan")}
        if a.host_trace:  # more warm requests, each function of the path stamped on entry and exit
            from host_trace import TTFT_TARGETS, HostTrace, format_timeline, median_timeline

            traces = []
            for _ in range(a.repeats):
                req = block_request(passages, final, torch.randperm(n, generator=g).tolist(), mid)
                with HostTrace(TTFT_TARGETS) as tr:
                    run(worker, req)
                traces.append(tr.timeline())
            print(f"[{length}] host timeline of a warm request (median of {len(traces)}: start, duration, "
                  f"function)\n" + format_timeline(median_timeline(traces)), flush=True)
        # the same warm requests with the context gathered before the first token (the path the in-place one
        # replaced), and two tokens: the second waits for the deferred gather
        orders = [torch.randperm(n, generator=g).tolist() for _ in range(a.repeats)]
        defers = worker.defers_context
        worker.defers_context = lambda: False
        gathered = [run(worker, block_request(passages, final, o, mid)) for o in orders]
        worker.defers_context = defers
        two = [run(worker, block_request(passages, final, o, mid, max_new=2)) for o in orders]
        dense = [run(worker, Request(0, [t for pp in passages for t in pp], final, 1, mode="dense"))
                 for _ in range(3)]
        # the call's start to the token: phase 1, the host work between, the final block
        ttft = lambda r: r.ttft_s  # noqa: E731
        row = {
            "context": n * a.passage + a.final, "passages": n, "passage_tokens": a.passage, "final_tokens": a.final,
            "warm_ttft_ms": 1000 * statistics.median(ttft(w) for w in warm),
            "warm_phase1_ms": 1000 * statistics.median(w.phase1_s for w in warm),
            "warm_final_block_ms": 1000 * statistics.median(w.first_token_s for w in warm),
            "host_between_ms": 1000 * statistics.median(w.ttft_s - w.phase1_s - w.first_token_s for w in warm),
            **graph,  # the final block's CUDA graphs alone: their GPU time, and from an idle GPU
            "gather_path_ttft_ms": 1000 * statistics.median(ttft(w) for w in gathered),
            "second_token_ms": 1000 * statistics.median(ttft(w) + w.decode_s for w in two),
            "cold_ttft_ms": 1000 * ttft(cold),
            "dense_ttft_ms": 1000 * statistics.median(ttft(d) for d in dense),
            "card": card, "model": a.model, "blas": cfg.blas, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "floor_weights_ms": weights_ms, "floor_kv_ms": 1000 * n * a.passage * per_token / bw,
        }
        row["floor_ms"] = row["floor_weights_ms"] + row["floor_kv_ms"]
        row["floor_bytes_ms"] = 1000 * weight_bytes(worker.model) / bw + row["floor_kv_ms"]  # every byte once
        row["warm_vs_floor"] = row["warm_ttft_ms"] / row["floor_ms"]
        row["speedup_vs_dense"] = row["dense_ttft_ms"] / row["warm_ttft_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        if length in a.profile:
            import gzip
            import shutil
            import tempfile

            from torch.profiler import ProfilerActivity, profile, record_function
            from trace_gaps import gaps, load, report

            order = torch.randperm(n, generator=g).tolist()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                with record_function("request"):
                    run(worker, block_request(passages, final, order, mid))
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "trace.json")
                prof.export_chrome_trace(path)
                print(f"[{length}] " + report(gaps(load(path), "request", 16)), flush=True)
                if a.trace:
                    with open(path, "rb") as src, gzip.open(f"{a.trace}_{length}.json.gz", "wb") as dst:
                        shutil.copyfileobj(src, dst)
    print(f"\n{'context':>8} {'warm TTFT ms':>12} {'(phase1':>8} {'final':>7} {'graph':>7} {'idle)':>7} {'floor ms':>9} {'/floor':>7} "
          f"{'gathered':>9} {'2nd tok':>8} {'cold ms':>8} {'dense ms':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['context']:>8} {r['warm_ttft_ms']:>12.2f} {r['warm_phase1_ms']:>8.2f} "
              f"{r['warm_final_block_ms']:>7.2f} {r['final_graph_ms']:>7.2f} {r.get('final_graph_idle_ms', float('nan')):>7.2f} {r['floor_ms']:>9.2f} {r['warm_vs_floor']:>6.2f}x "
              f"{r['gather_path_ttft_ms']:>9.2f} {r['second_token_ms']:>8.2f} "
              f"{r['cold_ttft_ms']:>8.1f} {r['dense_ttft_ms']:>9.1f} {r['speedup_vs_dense']:>7.1f}x")
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

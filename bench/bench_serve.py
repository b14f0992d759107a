"""A RAG load against `star-runtime serve`: a pool of passages of about --passage tokens, each request 16-64 of
them (drawn with reuse, as retrieval does) plus a question, --tokens out, Poisson arrivals at each --rates
value for --seconds; streamed, so TTFT and inter-token latency are measured at the client. The same load runs
against a block-mode server and a dense one (started here, one after the other, same flags otherwise).

Two views of the time to first token: at the client, the first chunk of visible text; at the server (the
usage's ``timing``), from the request's arrival (its tokenizing included) to its first token being decided.
They differ for random-weight models: such a model draws ids over its whole vocabulary (128K for the Llama-3
shape), of which the bundled tokenizer knows 49K, and an id it does not know decodes to no text, so no chunk
goes out for it -- the client's first text and its inter-token gaps then span several tokens. The server's
decode step time (its /metrics) is the inter-token latency a real model's client sees.

  python bench/bench_serve.py --model random:llama3-8b --device cuda --rates 0.5 1 2 --out serve.jsonl
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("river stone light north paper garden metal window signal orange winter market engine silver forest "
         "harbor ladder cotton valley rocket marble thunder candle island copper meadow bridge lantern").split()


def passage(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + ".\n\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(mode: str, a) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "star_runtime.cli", "serve", "--port", str(port), "--attn_type", mode,
           "--model_path", a.model, "--device", a.device, "--prefill_layers", a.prefill_layers,
           "--max_batch", str(a.max_batch), "--max_queue", "1000", "--block_cache_gpu_gib", "40"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"{mode} server exited")
    raise SystemExit("server did not start")


def one(url: str, model: str, docs: list[str], question: str, tokens: int) -> dict:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": tokens,
                       "stream": True, "stream_options": {"include_usage": True}, "documents": docs,
                       "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, times, use = None, [], None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            obj = json.loads(line[5:])
            if obj.get("usage"):
                use = obj["usage"]
            if obj.get("choices") and obj["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                times.append(now)
    itl = [b - a for a, b in zip(times, times[1:])]
    return {"ttft": (first or time.perf_counter()) - t0, "itl": statistics.median(itl) if itl else None,
            "done": time.perf_counter() - t0, "tokens": use["completion_tokens"] if use else 0,
            "server_ttft": (use.get("timing") or {}).get("ttft_s") if use else None,
            "prompt": use["prompt_tokens"] if use else 0, "cached": use["prompt_tokens_details"]["cached_tokens"]
            if use else 0}


def snapshot(url: str) -> dict:
    """The server's step and prefill histograms by path: {"<metric>{labels}": (count, sum)} from /metrics."""
    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    out = {}
    for name in ("star_runtime_decode_step_seconds", "star_runtime_prefill_seconds", "star_runtime_prepare_seconds",
                 "star_runtime_queue_wait_seconds", "star_runtime_time_to_first_token_seconds"):
        for m in re.finditer(rf"^{name}_(count|sum)(\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M):
            label = m.group(2) or ""
            c, s_ = out.get(name + label, (0.0, 0.0))
            out[name + label] = (float(m.group(3)), s_) if m.group(1) == "count" else (c, float(m.group(3)))
    return out


def where_time_went(before: dict, after: dict) -> dict:
    """Per path between two snapshots: how many steps / prefills ran and their mean milliseconds."""
    res = {}
    for key, (c, s_) in after.items():
        c0, s0 = before.get(key, (0.0, 0.0))
        if c > c0:
            short = key.replace("star_runtime_", "").replace("_seconds", "")
            res[short] = {"n": int(c - c0), "mean_ms": round(1000 * (s_ - s0) / (c - c0), 2)}
    return res


def load(url: str, model: str, rate: float, seconds: float, pool: list[str], a, seed: int) -> dict:
    rng = random.Random(seed)
    results, lock = [], threading.Lock()

    def run(docs, q):
        r = one(url, model, docs, q, a.tokens)
        with lock:
            results.append(r)

    t_end = time.perf_counter() + seconds
    with cf.ThreadPoolExecutor(256) as pool_x:
        futs = []
        while time.perf_counter() < t_end:
            k = rng.randint(16, 64)
            hot = pool[: len(pool) // 4]  # retrieval reuses popular passages
            docs = [rng.choice(hot) if rng.random() < 0.7 else rng.choice(pool) for _ in range(k)]
            futs.append(pool_x.submit(run, docs, f"Question {rng.randint(0, 10**6)}: which word comes first?"))
            time.sleep(rng.expovariate(rate))
        wall_start = time.perf_counter()
        for f in futs:
            f.result()
    ttft = sorted(r["ttft"] for r in results)
    server = sorted(r["server_ttft"] for r in results if r["server_ttft"] is not None)
    itl = [r["itl"] for r in results if r["itl"] is not None]
    total_s = seconds + (time.perf_counter() - wall_start)
    prompt = sum(r["prompt"] for r in results)
    return {"rate": rate, "requests": len(results), "ttft_p50_s": ttft[len(ttft) // 2],
            "ttft_p99_s": ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))],
            "server_ttft_p50_s": server[len(server) // 2] if server else None,
            "server_ttft_p99_s": server[min(len(server) - 1, int(len(server) * 0.99))] if server else None,
            "itl_p50_ms": 1000 * statistics.median(itl) if itl else None,
            "throughput_tokens_s": sum(r["tokens"] for r in results) / total_s,
            "hit_rate": sum(r["cached"] for r in results) / max(1, prompt),
            "mean_prompt_tokens": prompt / max(1, len(results))}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--prefill_layers", default="auto",
                   help="the servers' --prefill_layers (auto: compiled decoder layers on GPUs, the serve default)")
    p.add_argument("--rates", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--passages", type=int, default=256)
    p.add_argument("--passage_words", type=int, default=500, help="about 512 tokens")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--max_batch", type=int, default=16)
    p.add_argument("--modes", nargs="+", default=["block", "dense"])
    p.add_argument("--prewarm", action="store_true",
                   help="send every passage of the pool once before the load, so the load is warm-cache only")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rng = random.Random(0)
    pool = [passage(rng, a.passage_words) for _ in range(a.passages)]
    rows = []
    for mode in a.modes:
        proc, url = start(mode, a)
        try:
            with urllib.request.urlopen(url + "/v1/models") as r:
                model = json.loads(r.read())["data"][0]["id"]
            one(url, model, pool[:16], "warm up", 4)  # first compile and kernel choice out of the numbers
            if a.prewarm:
                for i in range(0, len(pool), 32):
                    one(url, model, pool[i:i + 32], "warm up", 1)
            for i, rate in enumerate(a.rates):
                before = snapshot(url)
                row = {"mode": mode, **load(url, model, rate, a.seconds, pool, a, seed=i), "model": a.model,
                       "prewarm": a.prewarm}
                row["server_paths"] = where_time_went(before, snapshot(url))
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(120)
    print("\n| mode | rate (req/s) | requests | TTFT p50 / p99 at the client (s) | server TTFT p50 / p99 (s) | "
          "ITL p50 at the client (ms) | server decode step (ms) | tokens/s | hit rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        step = next((v["mean_ms"] for k, v in r["server_paths"].items() if k.startswith("decode_step")), float("nan"))
        print(f"| {r['mode']} | {r['rate']} | {r['requests']} | {r['ttft_p50_s']:.3f} / {r['ttft_p99_s']:.3f} | "
              f"{r['server_ttft_p50_s'] or float('nan'):.3f} / {r['server_ttft_p99_s'] or float('nan'):.3f} | "
              f"{r['itl_p50_ms'] or float('nan'):.1f} | {step:.1f} | {r['throughput_tokens_s']:.0f} | "
              f"{r['hit_rate']:.2f} |")
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

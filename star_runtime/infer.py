"""The jsonl inference job behind run_star_attn_inference.py and `star-runtime infer`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tqdm import tqdm

from .config import ConfigError, RunConfig
from .engine import Engine, mean
from .io_jsonl import read_samples
from .parallel.launchers import writes_results
from .results import ResultFile

PASSTHROUGH = ("others", "truncation", "length")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every job (the reference's names, plus ours)."""
    p.add_argument("--model_path", default=None,
                   help="HF model folder, .gguf file or random:<name>; default: the bundled SmolLM2-135M-Instruct")
    p.add_argument("--attn_type", default="star", choices=["dense", "ring", "star", "block"])
    p.add_argument("--block_size", type=int, default=-1,
                   help="star context block size in tokens (-1: context length / workers)")
    p.add_argument("--anchor_block_size", type=int, default=-1, help="star anchor size (-1: the block size)")
    p.add_argument("--num_blocks", type=int, default=0,
                   help="star: cut each context into N blocks, block = ceil(length / N) (instead of --block_size)")
    p.add_argument("--tokens_to_generate", type=int, default=32)
    p.add_argument("--stop_words", default="",
                   help=r"comma-separated stop words; \, is a comma inside a stop word (e.g. 'Question:,\,')")
    p.add_argument("--num_workers", "-np", type=int, default=1, help="workers (one per GPU on cuda)")
    p.add_argument("--gpus_per_worker", type=int, default=1,
                   help="GPUs per worker: > 1 splits the model's layers over them (a model too big for one GPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat_template", action="store_true", help="wrap context + query in the model's chat template")
    p.add_argument("--block_delimiter", default="\n\n",
                   help="block mode: passages of input_context are cut at this text (default a blank line)")
    p.add_argument("--num_local_attention_blocks", type=int, default=-1,
                   help="block mode: first N blocks encoded alone, the rest folded into the final block "
                        "(full attention); -1 = all, 0 = dense")
    p.add_argument("--block_cache_gpu_gib", type=float, default=4.0, help="block KV cache, device tier, per worker")
    p.add_argument("--block_cache_cpu_gib", type=float, default=8.0, help="block KV cache, CPU tier, per worker")
    p.add_argument("--block_cache_disk_dir", default=None,
                   help="block KV cache, optional disk tier folder (entries written as they are made, verified "
                        "when read, kept across runs)")
    p.add_argument("--block_cache_disk_gib", type=float, default=None,
                   help="disk tier budget per worker, least recently used entries out first (default 32)")
    p.add_argument("--max_batch_tokens", type=int, default=0,
                   help="star: at most this many tokens per phase-1 batch of blocks (0: all of a worker's blocks)")
    p.add_argument("--decode", default="auto", choices=["auto", "eager", "static", "graph"],
                   help="decode steps: auto (a CUDA graph per batch on GPUs, eager on CPU), eager, static, graph")
    p.add_argument("--prefill_layers", default="auto", choices=["auto", "compiled", "eager"],
                   help="phase 1's decoder layers: auto (torch.compile'd on GPUs, about a minute to compile an "
                        "8B model once per process; eager on CPU), compiled, eager")
    p.add_argument("--launcher", default="ray", choices=["ray", "torchrun"],
                   help="ray actors (default) or this process is a torchrun/srun rank (env://)")
    p.add_argument("--ray_address", default=None, help="existing Ray cluster (default: start a local one)")
    p.add_argument("--stall_timeout_s", type=float, default=30.0,
                   help="a worker that sends no heartbeat, or makes no progress inside a step, for this long "
                        "ends the run naming it (0: off)")


def config_from_args(a) -> RunConfig:
    return RunConfig(
        model_path=a.model_path, attn_type=a.attn_type, block_size=a.block_size,
        anchor_block_size=a.anchor_block_size, num_blocks=a.num_blocks,
        tokens_to_generate=a.tokens_to_generate,
        stop_words=parse_stop_words(a.stop_words), num_workers=a.num_workers,
        gpus_per_worker=a.gpus_per_worker, device=a.device,
        dtype=a.dtype, temperature=a.temperature, top_p=a.top_p, seed=a.seed, chat_template=a.chat_template,
        launcher=a.launcher, ray_address=a.ray_address, block_delimiter=a.block_delimiter,
        num_local_attention_blocks=a.num_local_attention_blocks, block_cache_gpu_gib=a.block_cache_gpu_gib,
        block_cache_cpu_gib=a.block_cache_cpu_gib, block_cache_disk_dir=a.block_cache_disk_dir,
        block_cache_disk_gib=a.block_cache_disk_gib, decode=a.decode, max_batch_tokens=a.max_batch_tokens,
        prefill_layers=a.prefill_layers, stall_timeout_s=a.stall_timeout_s,
    )


def parse_stop_words(text: str) -> list[str]:
    r"""'a,b' -> ['a', 'b']; '\,' is a comma inside a stop word, '\\' a backslash; empty items are dropped."""
    words, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ",\\":
            cur += text[i + 1]
            i += 2
            continue
        if c == ",":
            words.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    words.append(cur)
    return [w for w in words if w]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run dense / ring / star attention inference over a jsonl file.")
    add_run_flags(p)
    p.add_argument("--input_path", required=True, help="jsonl: index?, input_context, input_query, output(s)?")
    p.add_argument("--output_path", required=True, help="jsonl predictions, one line per sample, flushed")
    p.add_argument("--num_samples", type=int, default=-1, help="first N samples only (-1: all)")
    p.add_argument("--use_cache", action="store_true", help="resume: keep finished samples, run the rest")
    p.add_argument("--batch_size", type=int, default=1,
                   help="samples decoded together (phase 1 runs per sample; decode steps are batched)")
    return p


def result_settings(cfg: RunConfig, max_new_tokens: int | None = None) -> dict:
    """The settings that change a run's answers (a result file records them and resume compares them).

    Settings that only change rounding or speed (device, kernels, decode path, batch size, worker count of an
    exact mode) are recorded beside them (``recorded_settings``) but not compared."""
    from .models.loader import resolve_dtype

    model = cfg.model_path or "bundled"
    if not model.startswith("random:") and model != "bundled" and os.path.exists(model):
        model = os.path.abspath(model)
    s = {"model": model, "attn_type": cfg.attn_type, "dtype": str(resolve_dtype(cfg.dtype, cfg.device)),
         "tokens_to_generate": max_new_tokens or cfg.tokens_to_generate, "stop_words": list(cfg.stop_words),
         "temperature": cfg.temperature, "chat_template": cfg.chat_template}
    if cfg.temperature > 0:
        s.update(top_p=cfg.top_p, seed=cfg.seed)
    if cfg.attn_type == "star":
        s.update(block_size=cfg.block_size, anchor_block_size=cfg.anchor_block_size, num_blocks=cfg.num_blocks)
        if cfg.block_size <= 0 and cfg.num_blocks <= 0:  # the block size follows the worker count
            s["num_workers"] = cfg.world_size
    if cfg.attn_type == "block":
        s.update(block_delimiter=cfg.block_delimiter, num_local_attention_blocks=cfg.num_local_attention_blocks)
    return s


def recorded_settings(cfg: RunConfig, batch_size: int) -> dict:
    return {"device": cfg.device, "num_workers": cfg.world_size, "decode": cfg.decode,
            "prefill_layers": cfg.prefill_layers, "batch_size": batch_size, "launcher": cfg.launcher}


def run_jsonl(cfg: RunConfig, input_path: str, output_path: str, num_samples: int = -1,
              use_cache: bool = False, engine: Engine | None = None, batch_size: int = 1,
              max_new_tokens: int | None = None) -> list[dict]:
    """Run every unfinished sample of ``input_path``; returns this call's records.

    The input and the output location are checked, the output locked and (use_cache) its finished rows
    read before any model or worker starts. max_new_tokens overrides --tokens_to_generate (benchmarks set it
    per task)."""
    cfg.validate()
    samples = read_samples(input_path, num_samples)
    settings = result_settings(cfg, max_new_tokens)
    writes = engine.is_writer if engine is not None else writes_results(cfg)
    result = None
    if writes:
        result = ResultFile(output_path, settings, samples, input_path, resume=use_cache,
                            recorded=recorded_settings(cfg, batch_size), notice=_notice)
    own = engine is None
    records = []
    try:
        engine = engine or Engine(cfg)
        done = set(result.done) if result is not None else None
        done = engine.share_from_host(done)  # torchrun: every rank runs the samples the writing host runs
        todo = [s for s in samples if s["index"] not in done]
        if done and writes:
            _notice(f"[star-runtime] resuming: {len(samples) - len(todo)} of {len(samples)} samples already in "
                    f"{output_path}")
        reqs = [engine.prepare(s["input_context"], s["input_query"], s["index"],
                               where=f"{input_path}:{s['_line']} (index {s['index']})", blocks=s.get("blocks"),
                               max_new_tokens=max_new_tokens)
                for s in todo]
        with tqdm(total=len(todo), desc=f"{cfg.attn_type} x{cfg.world_size}", disable=not writes,
                  unit="sample") as bar:
            for i in range(0, len(todo), batch_size):
                chunk = list(zip(todo[i:i + batch_size], reqs[i:i + batch_size]))
                replies = engine.run_batch([r for _, r in chunk])
                for (s, req), reply in zip(chunk, replies):
                    out = prediction_record(s, engine.record(req, reply))
                    if result is not None:
                        result.write(out)
                    records.append(out)
                bar.update(len(chunk))
    finally:
        if result is not None:
            result.close()
        if own and engine is not None:
            engine.close()
    return records


def result_rows(cfg: RunConfig, input_path: str, output_path: str, num_samples: int = -1,
                max_new_tokens: int | None = None) -> list[dict]:
    """The finished rows of ``output_path`` that answer the selected samples of ``input_path`` under these
    settings, in input order (what a benchmark scores)."""
    from .results import finished_rows

    samples = read_samples(input_path, num_samples)
    rows = finished_rows(output_path, result_settings(cfg, max_new_tokens), samples)
    return [rows[s["index"]] for s in samples if s["index"] in rows]


def _notice(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prediction_record(sample: dict, rec: dict) -> dict:
    """The reference's output fields, then ours."""
    return {
        "index": sample["index"], "pred": rec.pop("pred"),
        "input_context": sample["input_context"], "input_query": sample["input_query"],
        "outputs": sample["outputs"] if "outputs" in sample else ([sample["output"]] if "output" in sample else []),
        "others": sample.get("others", {}), "truncation": sample.get("truncation", -1),
        "length": sample.get("length", rec["context_tokens"] + rec["query_tokens"]),
        **rec,
    }


def summary_table(records: list[dict]) -> str:
    if not records:
        return "no new samples were run"
    rows = [
        ("samples", f"{len(records)}"),
        ("context tokens (mean)", f"{mean([r['context_tokens'] for r in records]):.0f}"),
        ("phase 1 s (mean)", f"{mean([r['phase1_s'] for r in records]):.3f}"),
        ("TTFT s (mean)", f"{mean([r['ttft_s'] for r in records]):.3f}"),
        ("decode ms/token (mean)", f"{mean([r['decode_ms_per_token'] for r in records]):.2f}"),
        ("decode tokens/s (mean)", f"{mean([r['decode_tokens_per_s'] for r in records]):.1f}"),
    ]
    caches = [r["block_cache"] for r in records if r.get("block_cache")]
    if caches:
        tot = {k: sum(c[k] for c in caches) for k in caches[0]}
        rate = tot["hit_tokens"] / max(1, tot["hit_tokens"] + tot["miss_tokens"])
        rows += [("block cache hits / misses", f"{tot['hits']} / {tot['misses']}"),
                 ("block cache hit tokens", f"{tot['hit_tokens']} ({100 * rate:.1f}%)"),
                 ("block cache evictions", f"{tot['evictions']}")]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    cfg = config_from_args(a)
    t0 = time.time()
    if a.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1 (got {a.batch_size})")
    records = run_jsonl(cfg, a.input_path, a.output_path, a.num_samples, a.use_cache, batch_size=a.batch_size)
    if records:
        print(summary_table(records))
        print(json.dumps({"output_path": a.output_path, "samples_run": len(records),
                          "wall_s": round(time.time() - t0, 2)}))
    return 0

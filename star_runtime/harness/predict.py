"""One jsonl file of samples through an engine, with resume: the job behind run_star_attn_inference.py and the
per-task step of every benchmark. Input and output are checked, the output locked and its finished rows read
(results.py) before any model or worker starts; each finished sample is one row, written as it finishes."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from ..config import RunConfig
from ..engine import Engine, mean
from ..modes import get_mode
from ..parallel.launchers import writes_results
from .inputs import read_samples
from .results import ResultFile, finished_rows

PASSTHROUGH = ("others", "truncation", "length")


def result_settings(cfg: RunConfig, max_new_tokens: int | None = None) -> dict:
    """The settings that change a run's answers (a result file records them and resume compares them).

    Settings that only change rounding or speed (device, kernels, decode path, batch size, worker count of an
    exact mode) are recorded beside them (``recorded_settings``) but not compared."""
    from ..models.loader import resolve_dtype

    model = cfg.model_path or "bundled"
    if not model.startswith("random:") and model != "bundled" and os.path.exists(model):
        model = os.path.realpath(model)
    s = {"model": model, "attn_type": cfg.attn_type, "dtype": str(resolve_dtype(cfg.dtype, cfg.device)),
         "tokens_to_generate": max_new_tokens or cfg.tokens_to_generate, "stop_words": list(cfg.stop_words),
         "temperature": cfg.temperature, "chat_template": cfg.chat_template, "ignore_eos": cfg.ignore_eos}
    if cfg.temperature > 0:
        s.update(top_p=cfg.top_p, seed=cfg.seed)
    s.update(get_mode(cfg.attn_type).settings(cfg))
    return s


def recorded_settings(cfg: RunConfig) -> dict:
    return {"device": cfg.device, "num_workers": cfg.world_size, "decode": cfg.decode,
            "prefill_layers": cfg.prefill_layers, "batch_size": cfg.batch_size, "launcher": cfg.launcher}


def run_jsonl(cfg: RunConfig, input_path: str, output_path: str, num_samples: int = -1,
              use_cache: bool = False, engine: Engine | None = None,
              max_new_tokens: int | None = None) -> list[dict]:
    """Run every unfinished sample of ``input_path``; returns this call's records. ``cfg.batch_size`` samples
    decode together.

    The input and the output location are checked, the output locked and (use_cache) its finished rows
    read before any model or worker starts. max_new_tokens overrides --tokens_to_generate (benchmarks set it
    per task); an ``engine`` already running is used as it is (benchmarks keep one across tasks)."""
    cfg.validate()
    samples = read_samples(input_path, num_samples)
    settings = result_settings(cfg, max_new_tokens)
    writes = engine.is_writer if engine is not None else writes_results(cfg)
    result = None
    if writes:
        result = ResultFile(output_path, settings, samples, input_path, resume=use_cache,
                            recorded=recorded_settings(cfg), notice=_notice)
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
            b = cfg.batch_size
            for i in range(0, len(todo), b):
                chunk = list(zip(todo[i:i + b], reqs[i:i + b]))
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

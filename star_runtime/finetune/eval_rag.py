"""RAG answer accuracy on the held-out split, in dense, block and star modes (RULER-style string match:
any reference answer in the prediction, case-insensitive). Writes predictions per mode, a JSON summary and
a table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import RunConfig, add_flags, from_args
from ..harness.predict import result_rows, run_jsonl
from ..harness.scoring import postprocess_pred, string_match_part
from .rag_data import build, write


RAG_SETS = ("attn_type", "tokens_to_generate", "stop_words")  # the evaluation sets these per mode


def evaluate(base: RunConfig, output_dir: str, data_dir: str | None = None, modes=("dense", "block", "star"),
             num_samples: int = -1, seed: int = 0) -> dict:
    """Accuracy of ``base``'s model in each mode over the held-out split. base: the run's settings (workers,
    device, star --block_size, chat template...); block mode runs on one worker."""
    out = Path(output_dir)
    files = write({"eval": build(data_dir, seed)["eval"]}, str(out / "data"))
    results = {}
    for mode in modes:
        cfg = base.replace(attn_type=mode, num_workers=1 if mode == "block" else base.num_workers,
                           block_size=base.block_size if mode == "star" else -1, tokens_to_generate=24,
                           stop_words=["\n", "<|im_end|>", "<|endoftext|>"]).validate()
        src = files["eval.blocks"] if mode == "block" else files["eval.plain"]
        preds = out / f"{mode}.jsonl"
        run_jsonl(cfg, src, str(preds), num_samples, use_cache=True)
        recs = result_rows(cfg, src, str(preds), num_samples)
        score = string_match_part([postprocess_pred(r["pred"]) for r in recs], [r["outputs"] for r in recs])
        results[mode] = {"accuracy": score, "samples": len(recs)}
    summary = {"model": base.model_path or "bundled", "results": results}
    (out / "eval_rag.json").write_text(json.dumps(summary, indent=1))
    print("| mode | accuracy | samples |\n|---|---|---|")
    for m, r in results.items():
        print(f"| {m} | {r['accuracy']:.1f} | {r['samples']} |")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="RAG accuracy on the held-out split in dense / block / star modes.")
    e = p.add_argument_group("evaluation")
    e.add_argument("--output_dir", required=True)
    e.add_argument("--data_dir", default=None)
    e.add_argument("--modes", nargs="+", default=["dense", "block", "star"], choices=["dense", "block", "star", "ring"])
    e.add_argument("--num_samples", type=int, default=-1)
    e.add_argument("--no_chat_template", dest="chat_template", action="store_false")
    add_flags(p, exclude=RAG_SETS + ("chat_template",), defaults={"block_size": 512})
    a = p.parse_args(argv)
    evaluate(from_args(a), a.output_dir, a.data_dir, a.modes, a.num_samples)
    return 0

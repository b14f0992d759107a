"""RAG answer accuracy on the held-out split, in dense, block and star modes (RULER-style string match:
any reference answer in the prediction, case-insensitive). Writes predictions per mode, a JSON summary and
a table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ruler.scoring import postprocess_pred, string_match_part

from ..config import RunConfig
from ..infer import run_jsonl
from .rag_data import build, write


def evaluate(model_path: str | None, output_dir: str, data_dir: str | None = None, modes=("dense", "block", "star"),
             num_samples: int = -1, num_workers: int = 1, device: str = "cpu", block_size: int = 512,
             seed: int = 0, chat_template: bool = True, batch_size: int = 1) -> dict:
    out = Path(output_dir)
    files = write({"eval": build(data_dir, seed)["eval"]}, str(out / "data"))
    results = {}
    for mode in modes:
        cfg = RunConfig(model_path=model_path, attn_type=mode, num_workers=1 if mode == "block" else num_workers,
                        device=device, block_size=block_size if mode == "star" else -1, tokens_to_generate=24,
                        chat_template=chat_template, stop_words=["\n", "<|im_end|>", "<|endoftext|>"]).validate()
        src = files["eval.blocks"] if mode == "block" else files["eval.plain"]
        preds = out / f"{mode}.jsonl"
        run_jsonl(cfg, src, str(preds), num_samples, use_cache=True, batch_size=batch_size)
        recs = [json.loads(l) for l in open(preds)]
        score = string_match_part([postprocess_pred(r["pred"]) for r in recs], [r["outputs"] for r in recs])
        results[mode] = {"accuracy": score, "samples": len(recs)}
    summary = {"model": model_path or "bundled", "results": results}
    (out / "eval_rag.json").write_text(json.dumps(summary, indent=1))
    print("| mode | accuracy | samples |\n|---|---|---|")
    for m, r in results.items():
        print(f"| {m} | {r['accuracy']:.1f} | {r['samples']} |")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="RAG accuracy on the held-out split in dense / block / star modes.")
    p.add_argument("--model_path", default=None)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--modes", nargs="+", default=["dense", "block", "star"], choices=["dense", "block", "star", "ring"])
    p.add_argument("--num_samples", type=int, default=-1)
    p.add_argument("--num_workers", "-np", type=int, default=1)
    p.add_argument("--block_size", type=int, default=512, help="star block size")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--no_chat_template", dest="chat_template", action="store_false")
    a = p.parse_args(argv)
    evaluate(a.model_path, a.output_dir, a.data_dir, a.modes, a.num_samples, a.num_workers, a.device,
             a.block_size, chat_template=a.chat_template, batch_size=a.batch_size)
    return 0

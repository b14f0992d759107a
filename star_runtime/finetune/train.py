"""Block fine-tuning: a short plain training loop with Block-Attention masks, mixed with full attention.

The stock transformers model (SDPA attention) trains on RAG samples; each sample uses the block mask with
probability --block_fraction, else ordinary causal attention (so the model keeps working in full attention,
as the method's authors train). Loss on the response only. bf16 autocast on GPU, fp32 on CPU. The result is
saved with save_pretrained and loads with --model_path.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import ConfigError
from ..models.loader import load_model, load_tokenizer, resolve_dtype, resolve_model
from .block_mask import collate, make_sequence
from .rag_data import build


def prepare_sequences(tokenizer, samples, chat_template: bool, max_tokens: int):
    eos = tokenizer.eos_token_id
    seqs = []
    for s in samples:
        seq = make_sequence(tokenizer, s["blocks"], s["input_query"], s["outputs"][0], chat_template, eos)
        if len(seq.ids) <= max_tokens:
            seqs.append(seq)
    return seqs


def train(model_path: str | None, output_dir: str, data_dir: str | None = None, steps: int = 800,
          lr: float = 2e-5, batch_size: int = 4, block_fraction: float = 0.5, max_tokens: int = 4096,
          train_samples: int = -1, chat_template: bool = True, device: str = "cpu", seed: int = 0,
          warmup: int = 20, log_every: int = 10, samples=None) -> dict:
    """Fine-tune and save; returns {"losses": [...], "output_dir": ...}."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("--steps, --batch_size and --lr must be positive")
    if not 0 <= block_fraction <= 1:
        raise ConfigError(f"--block_fraction must be in [0, 1] (got {block_fraction})")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    source = resolve_model(model_path)
    tokenizer = load_tokenizer(source)
    dev = torch.device(device)
    model = load_model(source, resolve_dtype("float32", device), dev)  # fp32 master weights
    model.set_attn_implementation("sdpa")
    model.requires_grad_(True)
    model.train()
    data = samples if samples is not None else build(data_dir, seed)["train"]
    if train_samples > 0:
        data = data[:train_samples]
    seqs = prepare_sequences(tokenizer, data, chat_template and bool(tokenizer.chat_template), max_tokens)
    if not seqs:
        raise ConfigError(f"no training sample fits --max_tokens {max_tokens}")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = []
    t0 = time.time()
    bar = tqdm(range(steps), desc="block fine-tuning", unit="step")
    for step in bar:
        batch = [seqs[rng.randrange(len(seqs))] for _ in range(batch_size)]
        modes = [rng.random() < block_fraction for _ in batch]
        ids, pos, mask, labels = (x.to(dev) for x in collate(batch, modes, pad))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = model(input_ids=ids, position_ids=pos, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if step % log_every == 0:
            bar.set_postfix(loss=f"{sum(losses[-log_every:]) / len(losses[-log_every:]):.3f}")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"steps": steps, "lr": lr, "batch_size": batch_size, "block_fraction": block_fraction,
            "train_sequences": len(seqs), "first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:]),
            "seconds": round(time.time() - t0, 1), "base_model": source.name, "device": device}
    (out_dir / "block_finetune.json").write_text(json.dumps({**info, "losses": losses}, indent=1))
    print(json.dumps(info))
    return {"losses": losses, "output_dir": str(out_dir), **info}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Teach a model Block-Attention (RAG data from the data folder).")
    p.add_argument("--model_path", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--data_dir", default=None, help="benchmark data folder (default $STAR_RUNTIME_DATA)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--block_fraction", type=float, default=0.5, help="share of samples trained with block masks")
    p.add_argument("--max_tokens", type=int, default=4096)
    p.add_argument("--train_samples", type=int, default=-1, help="data size (-1: all)")
    p.add_argument("--no_chat_template", dest="chat_template", action="store_false")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    train(a.model_path, a.output_dir, a.data_dir, a.steps, a.lr, a.batch_size, a.block_fraction, a.max_tokens,
          a.train_samples, a.chat_template, a.device, a.seed)
    return 0

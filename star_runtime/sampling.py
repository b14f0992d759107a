"""Next-token choice (greedy by default, temperature / top-p optional) and stop conditions."""

from __future__ import annotations

import torch


GREEDY_BELOW = 1e-5  # temperatures below this choose greedily (their softmax is a one-hot up to rounding)


class Sampler:
    """logits (V,) -> token id. temperature 0 = greedy; otherwise seeded so a run is repeatable."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.temperature < GREEDY_BELOW:  # 0, or so small that the scaled logits overflow: greedy
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if not torch.isfinite(probs).all():  # overflow at an extreme temperature: the limit is greedy
            return int(torch.argmax(logits))
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            drop = cum - sorted_p > self.top_p  # keep the smallest prefix whose mass reaches top_p
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))


class StopChecker:
    """True once the generated text contains a stop word (checked on the query host after each token)."""

    def __init__(self, tokenizer, stop_words: list[str]):
        self.tokenizer = tokenizer
        self.stop_words = [s for s in stop_words if s]

    def __call__(self, tokens: list[int]) -> bool:
        if not self.stop_words:
            return False
        text = self.tokenizer.decode(tokens[-64:], skip_special_tokens=True)
        return any(s in text for s in self.stop_words)


def eos_ids(model, tokenizer) -> set[int]:
    """Every end-of-sequence id the model's generation config or tokenizer declares."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if e is None:
            continue
        ids.update(e if isinstance(e, (list, tuple)) else [e])
    return {int(i) for i in ids}


def truncate_at_stop_words(text: str, stop_words: list[str]) -> str:
    """The reference's post-processing: cut at the first occurrence of each stop word, then strip."""
    for s in stop_words:
        if s:
            text = text.split(s)[0]
    return text.strip()

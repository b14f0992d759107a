"""Next-token choice (greedy by default, temperature / top-p optional) and stop conditions."""

from __future__ import annotations

import torch


GREEDY_BELOW = 1e-5  # temperatures below this choose greedily (their softmax is a one-hot up to rounding)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits (A, V), unit stride on V -> (A,) int64, equal to torch.argmax(logits, -1): the first index of each
    row's largest value (a NaN counts as the largest). In two passes -- the largest of each chunk of the row,
    then the first chunk holding the row's largest -- because one pass over a 128K vocabulary is one long
    reduction per row (34 us on an H200 for one row against a few for the two). Exact: both passes keep the
    first index among equals, and chunks are in row order."""
    a, v = logits.shape
    c = _chunk(v)
    if c is None or logits.stride(-1) != 1:
        return torch.argmax(logits, -1)
    vals, idx = logits.view(a, v // c, c).max(-1)  # (A, V / c): each chunk's largest and its first index
    j = vals.argmax(-1, keepdim=True)  # (A, 1): the first chunk holding the row's largest
    return (j * c + idx.gather(-1, j)).squeeze(-1)


_CHUNKS: dict = {}


def _chunk(v: int) -> int | None:
    """The divisor of v nearest its square root (passes of similar length), None below 4096 or without one
    >= 16."""
    if v not in _CHUNKS:
        best = None
        if v >= 4096:
            root = int(v ** 0.5)
            for c in range(16, v // 16 + 1):
                if v % c == 0 and (best is None or abs(c - root) < abs(best - root)):
                    best = c
        _CHUNKS[v] = best
    return _CHUNKS[v]


class Sampler:
    """logits (V,) -> token id. temperature 0 = greedy; otherwise seeded so a run is repeatable."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self._generator = None  # made at the first sampled token (a greedy request, most of them, never needs it)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def __call__(self, logits: torch.Tensor) -> int:
        if self.temperature < GREEDY_BELOW:  # 0, or so small that the scaled logits overflow: greedy
            return int(argmax_rows(logits.reshape(1, -1))[0])
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if not torch.isfinite(probs).all():  # overflow at an extreme temperature: the limit is greedy
            return int(argmax_rows(logits.reshape(1, -1))[0])
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

"""Fitting a generated sample to a token budget: the largest size (haystack words, sentences, documents) whose
prompt fits, by binary search. Shared by RULER and BABILong-style generators."""

from __future__ import annotations

import random
from typing import Callable


def fit_size(build: Callable[[int, random.Random], tuple[str, str, list]], count: Callable[[str, str], int],
             budget: int, lo: int, hi: int, seed: str) -> int:
    """Largest size in [lo, hi] whose sample (built with a fixed probe seed) fits ``budget`` tokens.

    Binary search: the token count grows with the size (haystack words, sentences, documents, words).
    """
    def fits(n):
        ctx, qry, _ = build(n, random.Random(seed + ":probe"))
        return count(ctx, qry) <= budget

    if not fits(lo):
        return lo
    while hi > lo:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo

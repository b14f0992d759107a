"""One registry from --attn_type to its mode; each mode is one file (base.py says what a mode is).

  dense.py  ordinary causal prefill on one worker
  ring.py   exact causal ring attention over every worker (zigzag split)
  star.py   blocks against [anchor ; themselves], anchor encoded once and broadcast
  apb.py    star whose blocks also see the tokens earlier blocks pass, chosen by the query
  block.py  Block-Attention: blocks encoded alone, cached by content, re-encoded to their offsets
"""

from __future__ import annotations

from ..errors import ConfigError
from .apb import ApbMode
from .base import Mode, Prompt, run_decoder
from .block import BlockMode
from .dense import DenseMode
from .ring import RingMode
from .star import StarMode

MODES: dict[str, Mode] = {m.name: m for m in (DenseMode(), RingMode(), StarMode(), ApbMode(), BlockMode())}


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"unknown --attn_type {name!r}; choose one of {', '.join(MODES)}") from None


__all__ = ["MODES", "Mode", "Prompt", "get_mode", "run_decoder"]

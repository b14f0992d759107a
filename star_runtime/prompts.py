"""Turn (context, query) text into token ids, with the model's chat template when asked.

Context and query are tokenized separately (as the reference does) with no special tokens added: the
prompt text (or the chat template) carries BOS and turn markers itself. With a chat template, the user turn
is ``context + query``; the template's head goes with the context, its tail (end of turn, assistant header)
with the query.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .config import ConfigError

_MARK = "\u2063\u2063STAR_RUNTIME_QUERY\u2063\u2063"


def chat_template_parts(tokenizer) -> tuple[str, str]:
    """The chat template's text before and after the user turn's content (head, tail)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--chat_template was given but this tokenizer has no chat template; drop the flag")
    return rendered(tokenizer, [{"role": "user", "content": _MARK}], _MARK)


def rendered(tokenizer, messages: list[dict], mark: str) -> tuple[str, str]:
    """The chat template of ``messages`` with a generation prompt, cut at ``mark`` (head, tail), remembered per
    template and messages: rendering a Jinja template takes ~0.1-0.3 ms, and a server renders the same
    conversation heads (a system prompt, a question turn) request after request."""
    parts = tuple((m["role"], m["content"]) for m in messages)
    key = (id(tokenizer), tokenizer.chat_template, mark, parts)
    out = _RENDERED.get(key)
    if out is None or out[0] is not tokenizer:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head, tail = text.split(mark, 1)
        if sum(len(c) for _, c in parts) > 16384:  # long conversations are not kept
            return head, tail
        if len(_RENDERED) > 4096:
            _RENDERED.clear()
        out = _RENDERED[key] = (tokenizer, (head, tail))
    return out[1]


_RENDERED: dict = {}  # key -> (tokenizer, (head, tail)): the tokenizer is held, so its id is not reused


def split_chat_template(tokenizer, context: str, query: str) -> tuple[str, str]:
    head, tail = chat_template_parts(tokenizer)
    return head + context, query + tail


def split_blocks(context: str, delimiter: str) -> list[str]:
    """Cut a context into blocks at ``delimiter``; each block keeps its trailing delimiter, so the blocks
    join back to the exact text. Whitespace-only pieces join the block before them."""
    parts = context.split(delimiter)
    pieces = [p + delimiter for p in parts[:-1]] + [parts[-1]]
    blocks: list[str] = []
    for piece in pieces:
        if blocks and not piece.strip():
            blocks[-1] += piece
        elif piece:
            blocks.append(piece)
    if len(blocks) > 1 and not blocks[0].strip():
        first = blocks.pop(0)
        blocks[0] = first + blocks[0]
    return blocks


def tokenize_prompt(tokenizer, context: str, query: str, chat_template: bool) -> tuple[list[int], list[int]]:
    if chat_template:
        context, query = split_chat_template(tokenizer, context, query)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    qry = tokenizer.encode(query, add_special_tokens=False)
    return ctx, qry


class TokenCache:
    """Token ids of block texts seen before (a server's passages recur across requests), least recently used
    out past ``max_tokens`` ids in all. The same text gives the same ids, so a hit is exactly a fresh encode."""

    def __init__(self, max_tokens: int = 20_000_000):
        self.max_tokens = max_tokens
        self.tokens = 0
        self.lock = threading.Lock()
        self.ids: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, tokenizer, texts: list[str]) -> list[list[int]]:
        with self.lock:
            out = [self.ids.get(t) for t in texts]
            for t, x in zip(texts, out):
                if x is not None:
                    self.ids.move_to_end(t)
        missing = list(dict.fromkeys(t for t, x in zip(texts, out) if x is None))
        if missing:
            fresh = dict(zip(missing, _encode(tokenizer, missing)))
            with self.lock:
                for t, ids in fresh.items():
                    if t not in self.ids:
                        self.ids[t] = np.asarray(ids, dtype=np.int32)
                        self.tokens += len(ids)
                while self.tokens > self.max_tokens and self.ids:
                    self.tokens -= len(self.ids.popitem(last=False)[1])
            out = [x if x is not None else fresh[t] for t, x in zip(texts, out)]
        return [x.tolist() if isinstance(x, np.ndarray) else list(x) for x in out]


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """One batch call: a fast tokenizer encodes the texts side by side (the same ids as one by one)."""
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def tokenize_blocks(tokenizer, blocks: list[str], query: str, chat_template: bool, cache: TokenCache | None = None
                    ) -> tuple[list[list[int]], list[int]]:
    """Block-mode tokenization, shared by inference and block fine-tuning so both see the same ids: every
    block on its own; with a chat template its head is a block of its own and its tail follows the query.
    cache: block texts seen before are not encoded again."""
    if chat_template:
        head, tail = chat_template_parts(tokenizer)
        blocks = [head] + list(blocks) if head else list(blocks)
        query = query + tail
    ids = cache.encode(tokenizer, list(blocks)) if cache is not None else _encode(tokenizer, list(blocks))
    return ids, tokenizer.encode(query, add_special_tokens=False)

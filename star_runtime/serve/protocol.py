"""OpenAI's request and response shapes: parsing with errors that name the field and the fix, prompts from
chat messages, and the JSON of responses and streamed chunks."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..prompts import rendered

SAMPLING = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream",
            "stream_options", "n"}
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
UNSUPPORTED = {"logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call", "response_format",
               "logit_bias", "best_of", "echo", "suffix", "presence_penalty", "frequency_penalty", "audio",
               "modalities", "prediction", "reasoning_effort", "web_search_options"}
COMMON = {"model", "documents", "attention"} | SAMPLING | IGNORED | UNSUPPORTED


class APIError(Exception):
    """An OpenAI-style error: status, message naming the field and the fix, type, param, code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Parsed:
    """What a request asks, checked: the prompt pieces (context, query, blocks or raw prompt), sampling."""

    kind: str  # chat | completion
    model: str
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    documents: list[str] | None
    attention: str | None
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""


def _type_error(name: str, want: str, got) -> APIError:
    return APIError(422, f"'{name}' must be {want} (got {type(got).__name__}); fix the request", param=name,
                    code="invalid_type")


def _number(body: dict, name: str, lo: float, hi: float, integer: bool = False):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise _type_error(name, "an integer" if integer else "a number", v)
    if not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be between {lo} and {hi} (got {v})", param=name, code="invalid_value")
    return v


def parse(body, kind: str) -> Parsed:
    """Check a /v1/chat/completions (kind chat) or /v1/completions (kind completion) body."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    own = {"messages"} if kind == "chat" else {"prompt"}
    for name in body:
        if name in UNSUPPORTED and body[name] not in (None, False, 0, [], {}):
            raise APIError(400, f"'{name}' is not supported by this server; drop it from the request", param=name,
                           code="unsupported_parameter")
        if name not in COMMON | own:
            raise APIError(400, f"unknown field '{name}'; see the OpenAI API reference for "
                                f"{'chat completions' if kind == 'chat' else 'completions'}", param=name,
                           code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required: the name GET /v1/models lists", param="model",
                       code="missing_required_parameter") if model is None else _type_error("model", "a string", model)
    n = body.get("n", 1)
    if n not in (1, None):
        raise APIError(400, f"'n' must be 1 (got {n}): this server returns one choice per request; send n "
                            "requests instead", param="n", code="unsupported_value")
    max_tokens = _number(body, "max_completion_tokens", 1, 1 << 30, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", -(1 << 30), 1 << 30, integer=True)
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, f"'max_tokens' must be at least 1 (got {max_tokens})", param="max_tokens",
                       code="invalid_value")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _type_error("stop", "a string or a list of strings", stop)
    if len(stop) > 4:
        raise APIError(400, f"'stop' takes at most 4 sequences (got {len(stop)})", param="stop", code="invalid_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _type_error("stream", "true or false", stream)
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise _type_error("stream_options", "an object", opts)
    docs = body.get("documents")
    if docs is not None and (not isinstance(docs, list) or not all(isinstance(d, str) for d in docs)):
        raise _type_error("documents", "a list of strings (the passages)", docs)
    attention = body.get("attention")
    if attention is not None and attention not in ("block", "full"):
        raise APIError(400, f"'attention' must be 'block' or 'full' (got {attention!r})", param="attention",
                       code="invalid_value")
    p = Parsed(kind, model, max_tokens, _number(body, "temperature", 0, 2), _number(body, "top_p", 0, 1),
               _number(body, "seed", -(1 << 62), 1 << 62, integer=True), [s for s in stop if s], stream,
               bool(opts.get("include_usage")), docs, attention)
    if p.top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0", param="top_p", code="invalid_value")
    if kind == "chat":
        msgs = body.get("messages")
        if msgs is None:
            raise APIError(400, "'messages' is required", param="messages", code="missing_required_parameter")
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "'messages' must be a non-empty list of {role, content}", param="messages",
                           code="invalid_value")
        p.messages = [_message(i, m) for i, m in enumerate(msgs)]
        if p.messages[-1]["role"] != "user":
            raise APIError(400, "the last message must be the user's (the question to answer)",
                           param=f"messages[{len(msgs) - 1}].role", code="invalid_value")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if prompt is None:
            raise APIError(400, "'prompt' is required", param="prompt", code="missing_required_parameter")
        if not isinstance(prompt, str):
            raise _type_error("prompt", "a string (or a list of one string)", prompt)
        if not prompt.strip():
            raise APIError(400, "'prompt' is empty; give the text to continue", param="prompt", code="invalid_value")
        p.prompt = prompt
    return p


def _message(i: int, m) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _type_error(where, "an object {role, content}", m)
    role, content = m.get("role"), m.get("content")
    if role not in ("system", "developer", "user", "assistant"):
        raise APIError(400, f"{where}.role must be system, user or assistant (got {role!r})", param=f"{where}.role",
                       code="invalid_value")
    if isinstance(content, list):  # [{type: text, text}]
        parts = []
        for j, c in enumerate(content):
            if not isinstance(c, dict) or c.get("type") != "text" or not isinstance(c.get("text"), str):
                raise APIError(400, f"{where}.content[{j}] must be a text part ({{\"type\": \"text\", \"text\": ...}}); "
                                    "this server takes text only", param=f"{where}.content", code="invalid_value")
            parts.append(c["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise _type_error(f"{where}.content", "a string", content)
    return {"role": "system" if role == "developer" else role, "content": content}


MARK = "\u2063\u2063STAR_RUNTIME_TURN\u2063\u2063"


def chat_pieces(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(head, question): the conversation rendered with the model's chat template, cut where the last user
    turn's text begins; the question is that text plus the template's tail (the assistant header)."""
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model has no chat template; use /v1/completions", code="no_chat_template")
    last = messages[-1]["content"]
    head, tail = rendered(tokenizer, messages[:-1] + [{"role": "user", "content": MARK}], MARK)
    return head, last + tail


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def cached_tokens(cache: dict | None) -> int:
    """Prompt tokens a request did not encode: block-cache hits and blocks repeated within the prompt."""
    return int(cache["hit_tokens"] + cache.get("repeat_tokens", 0)) if cache else 0


def usage(prompt_tokens: int, completion_tokens: int, cache: dict | None, timing: dict | None = None) -> dict:
    """OpenAI's usage, plus the block-cache counts of the request and (timing) the server's own seconds: its
    preparation (tokenizing, checks, placement) and from its arrival to its first token being decided."""
    u = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
         "total_tokens": prompt_tokens + completion_tokens,
         "prompt_tokens_details": {"cached_tokens": cached_tokens(cache)}}
    if cache:
        u["block_cache"] = {k: int(v) for k, v in cache.items()}
    if timing:
        u["timing"] = timing
    return u


def response(p: Parsed, rid: str, model: str, text: str, finish: str, use: dict) -> dict:
    created = int(time.time())
    if p.kind == "chat":
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                             "logprobs": None}], "usage": use}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}], "usage": use}


def chunk(p: Parsed, rid: str, model: str, text: str | None, finish: str | None, first: bool = False,
          use: dict | None = None) -> dict:
    """One streamed chunk; ``use`` alone (no text, no finish): the final usage chunk with empty choices."""
    created = int(time.time())
    if p.kind == "chat":
        out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}
        if use is None:
            delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
            out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    else:
        out = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": []}
        if use is None:
            out["choices"] = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
    if use is not None:
        out["usage"] = use
    return out

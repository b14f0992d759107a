"""Turn (context, query) text into token ids, with the model's chat template when asked.

Context and query are tokenized separately (as the reference does) with no special tokens added: the
prompt text (or the chat template) carries BOS and turn markers itself. With a chat template, the user turn
is ``context + query``; the template's head goes with the context, its tail (end of turn, assistant header)
with the query.
"""

from __future__ import annotations

_MARK = "\u2063\u2063STAR_RUNTIME_QUERY\u2063\u2063"


def split_chat_template(tokenizer, context: str, query: str) -> tuple[str, str]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat_template was given but this tokenizer has no chat template; drop the flag")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": context + _MARK + query}], tokenize=False, add_generation_prompt=True
    )
    head, tail = text.split(_MARK, 1)
    return head, tail


def tokenize_prompt(tokenizer, context: str, query: str, chat_template: bool) -> tuple[list[int], list[int]]:
    if chat_template:
        context, query = split_chat_template(tokenizer, context, query)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    qry = tokenizer.encode(query, add_special_tokens=False)
    return ctx, qry

"""Model prompt templates: where RULER/BABILong task text sits in a model's chat format, and its stop words.

As RULER does, the template is cut at ``{task_template}``: its head joins the context, its tail follows the
query (and answer prefix).
"""

from __future__ import annotations

PROMPT_TEMPLATES = {
    "base": {"template": "{task_template}", "stop_words": []},
    "llama3": {
        "template": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant."
                    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{task_template}"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "stop_words": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
    },
    "qwen": {  # chatml
        "template": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{task_template}"
                    "<|im_end|>\n<|im_start|>assistant\n",
        "stop_words": ["<|im_end|>", "<|endoftext|>"],
    },
    "smollm": {  # the bundled SmolLM2-Instruct's own chat template
        "template": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\n{task_template}<|im_end|>\n<|im_start|>assistant\n",
        "stop_words": ["<|im_end|>", "<|endoftext|>"],
    },
}


def split_template(name: str) -> tuple[str, str, list[str]]:
    """(head, tail, stop words) of a model template."""
    if name not in PROMPT_TEMPLATES:
        raise KeyError(name)
    t = PROMPT_TEMPLATES[name]
    head, tail = t["template"].split("{task_template}")
    return head, tail, list(t["stop_words"])

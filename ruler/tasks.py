"""RULER's 13 task configurations and the per-family prompt pieces (as in RULER's synthetic config)."""

from __future__ import annotations

TASKS = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
         "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2"]


def _niah(haystack, k, v, nk=1, nv=1, nq=1):
    return {"family": "niah", "args": dict(type_haystack=haystack, type_needle_k=k, type_needle_v=v,
                                           num_needle_k=nk, num_needle_v=nv, num_needle_q=nq)}


TASK_CONFIGS = {
    "niah_single_1": _niah("repeat", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", nk=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", nv=4),
    "niah_multiquery": _niah("essay", "words", "numbers", nq=4),
    "vt": {"family": "variable_tracking", "args": dict(num_chains=1, num_hops=4)},
    "cwe": {"family": "common_words_extraction", "args": dict(freq_cw=30, freq_ucw=3, num_cw=10)},
    "fwe": {"family": "freq_words_extraction", "args": dict(alpha=2.0)},
    "qa_1": {"family": "qa", "args": dict(dataset="squad")},
    "qa_2": {"family": "qa", "args": dict(dataset="hotpotqa")},
}

# Context template, query template, answer prefix and tokens to generate, per task family (RULER's text,
# typos included, so prompts match the benchmark's).
FAMILIES = {
    "niah": dict(
        tokens_to_generate=128,
        context="Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize "
                "it. I will quiz you about the {type_needle_v} afterwards.\n{context}\n",
        query="What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        answer_prefix=" The special magic {type_needle_v} for {query} mentioned in the provided text are",
        metric="string_match_all",
    ),
    "variable_tracking": dict(
        tokens_to_generate=30,
        context="Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n",
        query="Question: Find all variables that are assigned the value {query} in the text above.",
        answer_prefix=" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                      "are assgined the value {query}, they are: ",
        metric="string_match_all",
    ),
    "common_words_extraction": dict(
        tokens_to_generate=120,
        context="Below is a numbered list of words. In these words, some appear more often than others. Memorize "
                "the ones that appear most often.\n{context}\n",
        query="Question: What are the 10 most common words in the above list?",
        answer_prefix=" Answer: The top 10 words that appear most often in the list are:",
        metric="string_match_all",
    ),
    "freq_words_extraction": dict(
        tokens_to_generate=50,
        context="Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\n",
        query="Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
              "frequently appeared words in the above coded text?",
        answer_prefix=" Answer: According to the coded text above, the three most frequently appeared words are:",
        metric="string_match_all",
    ),
    "qa": dict(
        tokens_to_generate=32,
        context="Answer the question based on the given documents. Only give me the answer and do not output any "
                "other words.\n\nThe following are given documents.\n\n{context}\n\n",
        query="Answer the question based on the given documents. Only give me the answer and do not output any "
              "other words.\n\nQuestion: {query}",
        answer_prefix=" Answer:",
        metric="string_match_part",
    ),
}


def task_family(task: str) -> dict:
    if task not in TASK_CONFIGS:
        raise KeyError(task)
    return FAMILIES[TASK_CONFIGS[task]["family"]]

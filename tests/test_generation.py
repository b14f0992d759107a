"""Greedy / sampled choice, EOS and stop words end generation; chat template split."""

import pytest
import torch

from conftest import make_engine, random_ids, run_ids
from star_runtime.prompts import split_chat_template
from star_runtime.sampling import Sampler, argmax_rows, truncate_at_stop_words


def test_greedy_and_seeded_sampling():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert Sampler()(logits) == 1
    a = [Sampler(1.0, 0.9, seed=5)(logits) for _ in range(3)]
    b = [Sampler(1.0, 0.9, seed=5)(logits) for _ in range(3)]
    assert a == b
    # top_p small keeps only the best token
    assert {Sampler(1.0, 0.01, seed=s)(logits) for s in range(20)} == {1}


def test_truncate_at_stop_words():
    assert truncate_at_stop_words(" answer: 42\nQuestion: next", ["\n", "Question"]) == "answer: 42"
    assert truncate_at_stop_words("plain", []) == "plain"


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_stop_word_and_eos_end_generation(decode):
    ctx, query = random_ids(40, 1), random_ids(4, 2)
    with make_engine(attn_type="dense", decode=decode) as eng:
        full = run_ids(eng, ctx, query, 12)
    with make_engine(attn_type="dense", decode=decode, ignore_eos=False) as eng:
        # EOS: declare the 4th generated token an end-of-sequence id of the request
        cut = run_ids(eng, ctx, query, 12, extra_eos=[full.tokens[3]])
        n = len(cut.tokens)
        assert cut.stopped_by == "eos" and n <= 3 and cut.tokens == full.tokens[:n]
        dec = eng.tokenizer.decode
    # stop word: the text of a later token that does not occur earlier
    i = next(i for i in range(3, 12) if dec(full.tokens[i:i + 1]).strip()
             and dec(full.tokens[i:i + 1]).strip() not in dec(full.tokens[:i]))
    word = dec(full.tokens[i:i + 1]).strip()
    with make_engine(attn_type="dense", decode=decode, stop_words=[word]) as eng:
        rep = run_ids(eng, ctx, query, 12)
        assert rep.stopped_by == "stop_word" and len(rep.tokens) == i + 1
        assert eng.record(eng.prepare("x", "y"), rep)["pred"] == dec(full.tokens[:i], skip_special_tokens=True).strip()


def test_ignore_eos_is_a_run_option():
    ctx, query = random_ids(40, 1), random_ids(4, 2)
    with make_engine(attn_type="dense") as eng:
        full = run_ids(eng, ctx, query, 12)
    eos = full.tokens[2]
    with make_engine(attn_type="dense", ignore_eos=False) as eng:
        assert run_ids(eng, ctx, query, 12, extra_eos=[eos]).stopped_by == "eos"
    with make_engine(attn_type="dense", ignore_eos=True) as eng:
        past = run_ids(eng, ctx, query, 12, extra_eos=[eos])
    assert past.stopped_by == "length" and past.tokens == full.tokens


def test_chat_template_split_keeps_context_then_query():
    with make_engine(attn_type="dense") as eng:
        head, tail = split_chat_template(eng.tokenizer, "CONTEXT TEXT", " QUERY?")
    assert head.endswith("CONTEXT TEXT") and "<|im_start|>user" in head
    assert tail.startswith(" QUERY?") and tail.rstrip().endswith("<|im_start|>assistant")


@pytest.mark.parametrize("vocab", [128256, 49152, 151936, 8198, 1000])
def test_two_pass_argmax_equals_torch_argmax(vocab):
    """sampling.argmax_rows against torch.argmax: ties (the first index wins), NaNs (the first NaN wins), rows
    of a strided view (the last position of (A, T, V) logits), bf16 and fp32; vocabularies with and without a
    chunk divisor."""
    g = torch.Generator().manual_seed(vocab)
    for trial in range(12):
        x = torch.randint(-3, 3, (4, vocab), generator=g).float()
        if trial % 3 == 0:
            x[1, torch.randint(0, vocab, (3,), generator=g)] = float("nan")
        if trial % 4 == 0:
            x[2] = 1.0  # every index ties: index 0
        for t in (x, x.bfloat16(), torch.randn(2, 3, vocab, generator=g)[:, -1]):
            assert torch.equal(argmax_rows(t), torch.argmax(t, -1)), (vocab, trial, t.dtype)

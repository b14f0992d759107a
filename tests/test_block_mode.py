"""Block-Attention mode: cached, re-encoded blocks give exactly what a full forward with the block mask
gives; a cache hit equals a miss; tiny budgets evict and stay correct; placement follows the cache."""

import time

import pytest
import torch

from conftest import assert_same_steps, make_engine
from star_runtime.config import ConfigError
from star_runtime.finetune.block_mask import block_attention_mask

PASSAGES = [
    "The lighthouse keeper counted ships every night. ",
    "Copper turns green when it weathers in rain and salt air. ",
    "In the village market, apples cost three coins and pears cost five. ",
    "A short note. ",
]
QUERY = " Question: what do pears cost? Answer:"


def block_mask_reference(engine, blocks_ids, final_ids, new_tokens):
    """The stock model (SDPA) over the whole prompt with the Block-Attention mask, greedy, no cache:
    each local block sees only itself (causally); the final block and generated tokens see everything."""
    model = engine.launcher.worker.model
    seq = [t for b in blocks_ids for t in b] + list(final_ids)
    model.set_attn_implementation("sdpa")
    logits_all, out = [], []
    try:
        for _ in range(new_tokens):
            t = len(seq)
            mask = block_attention_mask([len(b) for b in blocks_ids], t)
            with torch.inference_mode():
                logits = model(torch.tensor([seq]), attention_mask=mask[None, None],
                               position_ids=torch.arange(t)[None]).logits[0, -1].float()
            logits_all.append(logits)
            tok = int(logits.argmax())
            out.append(tok)
            seq.append(tok)
    finally:
        model.set_attn_implementation("star_runtime")
    return out, logits_all


def run(engine, blocks, query=QUERY, n=6):
    req = engine.prepare("", query, blocks=blocks, keep_logits=True, max_new_tokens=n)
    return req, engine.run(req)


@pytest.mark.parametrize("model", ["random:tiny", "random:tiny-qwen2"])
def test_block_mode_equals_full_forward_with_block_mask(model):
    with make_engine(model, attn_type="block") as eng:
        req, rep = run(eng, PASSAGES)
        ids = [list(b.ids) for b in req.blocks]
        ref_tokens, ref_logits = block_mask_reference(eng, ids, req.query_ids, 6)
    assert [b.offset for b in req.blocks] == [0, len(ids[0]), len(ids[0]) + len(ids[1]),
                                              len(ids[0]) + len(ids[1]) + len(ids[2])]
    assert rep.tokens == ref_tokens
    assert_same_steps(rep.logits, ref_logits, 1e-4)


@pytest.mark.parametrize("model", ["random:tiny", "random:tiny-qwen2"])
def test_first_token_over_cached_blocks_in_place_equals_full_forward_with_block_mask(model):
    """Fixed-shape decode over an arena: phase 1 defers the gather, the query attends the cached entries where
    they lie (its query rotated by minus each block's offset, attention/pages.py), the context is gathered after
    the first token -- cold and warm at new offsets, each against the stock model with the block mask."""
    with make_engine(model, attn_type="block", decode="static") as eng:
        for order, misses in ((PASSAGES, 4), (PASSAGES[::-1], 0), (PASSAGES[1:] + PASSAGES[:1], 0)):
            t0 = time.perf_counter()
            req, rep = run(eng, order)
            wall = time.perf_counter() - t0
            assert rep.cache["misses"] == misses
            # TTFT counts from the worker call's start: phase 1, the work after it and the query prefill
            assert rep.phase1_s + rep.first_token_s <= rep.ttft_s < wall
            ids = [list(b.ids) for b in req.blocks]
            ref_tokens, ref_logits = block_mask_reference(eng, ids, req.query_ids, 6)
            assert rep.tokens == ref_tokens
            assert_same_steps(rep.logits, ref_logits, 1e-4)
        assert eng.launcher.worker.arenas.steps  # the in-place path ran (its query prefill steps)


def test_one_block_equals_dense():
    text = "".join(PASSAGES)
    with make_engine(attn_type="dense") as eng:
        dense = eng.run(eng.prepare(text, QUERY, keep_logits=True, max_new_tokens=6))
    with make_engine(attn_type="block") as eng:
        _, one = run(eng, [text])
        # N = 0: every block is folded into the final block, which is plain causal attention (dense) over
        # the blocks' tokens (each block tokenized on its own)
        eng.cfg.num_local_attention_blocks = 0
        req, folded = run(eng, PASSAGES)
        assert req.blocks == [] and len(req.query_ids) > 40
        ref_tokens, ref_logits = block_mask_reference(eng, [], req.query_ids, 6)
    assert one.tokens == dense.tokens
    assert_same_steps(one.logits, dense.logits, 1e-4)
    assert folded.tokens == ref_tokens
    assert_same_steps(folded.logits, ref_logits, 1e-4)


def test_seamless_switching_first_blocks_local_rest_global():
    with make_engine(attn_type="block", num_local_attention_blocks=2) as eng:
        req, rep = run(eng, PASSAGES)
        assert len(req.blocks) == 2
        ids = [list(b.ids) for b in req.blocks]
        ref_tokens, ref_logits = block_mask_reference(eng, ids, req.query_ids, 6)
    assert rep.tokens == ref_tokens
    assert torch.allclose(rep.logits[0], ref_logits[0], atol=1e-4)


def test_cache_hit_equals_miss_at_new_offsets():
    order = [PASSAGES[2], PASSAGES[0], PASSAGES[3], PASSAGES[1]]
    with make_engine(attn_type="block") as cold:
        _, miss = run(cold, order)
    assert miss.cache["misses"] == 4 and miss.cache["hits"] == 0
    with make_engine(attn_type="block") as warm:
        run(warm, PASSAGES)  # encodes every passage at other offsets
        _, hit = run(warm, order)
    assert hit.cache["hits"] == 4 and hit.cache["misses"] == 0
    assert hit.tokens == miss.tokens
    assert_same_steps(hit.logits, miss.logits, 1e-5)


@pytest.mark.parametrize("disk", [False, True])
def test_tiny_budget_evicts_and_stays_correct(tmp_path, disk):
    with make_engine(attn_type="block") as ref_eng:
        refs = [run(ref_eng, PASSAGES[i:] + PASSAGES[:i])[1] for i in range(4)]
    one_block = 2 * 2 * 2 * 20 * 16 * 4  # layers * (k, v) * heads * ~20 tokens * head_dim * fp32
    kw = dict(block_cache_gpu_gib=one_block / 2**30, block_cache_cpu_gib=one_block / 2**30)
    if disk:
        kw.update(block_cache_disk_dir=str(tmp_path / "blocks"), block_cache_disk_gib=1e-3)
    with make_engine(attn_type="block", **kw) as eng:
        got = [run(eng, PASSAGES[i:] + PASSAGES[:i])[1] for i in range(4)]
        again = run(eng, PASSAGES)[1]
        summary = eng.launcher.worker.cache_summary()
    ev = summary["evictions"]
    assert ev["device_to_cpu"] > 0
    assert (ev["cpu_to_disk"] > 0 and summary["hits"]["disk"] > 0) if disk else ev["dropped"] > 0
    for g, r in zip(got + [again], refs + [refs[0]]):
        assert g.tokens == r.tokens
        assert torch.allclose(g.logits[0], r.logits[0], atol=1e-5)


@pytest.mark.parametrize("blocks,message", [
    ([], "no blocks"),
    (["text ", "   "], "block 1 is empty"),
    (["word " * 9000], "block 0 has"),
])
def test_bad_block_input(blocks, message):
    with make_engine(attn_type="block") as eng:
        with pytest.raises(ConfigError, match=message):
            eng.prepare("", QUERY, blocks=blocks)


def test_delimiter_split_keeps_text_and_blocks():
    from star_runtime.prompts import split_blocks

    text = "\n\nFirst passage.\n\nSecond passage.\n\n\n\nThird."
    blocks = split_blocks(text, "\n\n")
    assert "".join(blocks) == text
    assert len(blocks) == 3 and all(b.strip() for b in blocks)


def test_two_workers_place_repeated_blocks_on_their_holder_and_match_one_worker(ray_session):

    first = PASSAGES[:3]
    second = [PASSAGES[3], PASSAGES[2], PASSAGES[0]]
    with make_engine(attn_type="block") as one:
        ref = run(one, second)[1]
    with make_engine(attn_type="block", num_workers=2) as eng:
        req1, rep1 = run(eng, first)
        homes = {b.key: b.rank for b in req1.blocks}
        assert set(homes.values()) == {0, 1}  # spread over both workers
        req2, rep2 = run(eng, second)
    for b in req2.blocks:
        if b.key in homes:
            assert b.rank == homes[b.key]
    assert rep2.cache["hits"] == 2 and rep2.cache["misses"] == 1
    assert rep2.tokens == ref.tokens
    assert_same_steps(rep2.logits, ref.logits, 1e-4)


def test_disk_tier_makes_the_next_run_start_warm(tmp_path):
    kw = dict(attn_type="block", block_cache_disk_dir=str(tmp_path / "blocks"), block_cache_disk_gib=0.01)
    with make_engine(**kw) as first:
        _, cold = run(first, PASSAGES)
    assert cold.cache["misses"] == 4
    with make_engine(**kw) as second:
        _, warm = run(second, PASSAGES[::-1])
        hits = second.launcher.worker.cache_summary()["hits"]
    assert warm.cache["hits"] == 4 and warm.cache["misses"] == 0 and hits["disk"] == 4


def test_token_cache_gives_fresh_ids_and_stays_within_its_budget():
    """Block texts seen before come from the cache with exactly the ids a fresh encode gives (in any order,
    repeated in one call); past the token budget the least recently used texts go."""
    from star_runtime.models.loader import load_tokenizer, resolve_model
    from star_runtime.prompts import TokenCache

    tok = load_tokenizer(resolve_model("random:tiny"))
    texts = [f"Passage {i}: copper turns green in the rain, {i * 7} times. " for i in range(6)]
    fresh = [tok.encode(t, add_special_tokens=False) for t in texts]
    cache = TokenCache(max_tokens=3 * max(map(len, fresh)))
    assert cache.encode(tok, texts[:3]) == fresh[:3]
    assert cache.encode(tok, [texts[2], texts[0], texts[2]]) == [fresh[2], fresh[0], fresh[2]]  # hits
    assert cache.encode(tok, texts[3:]) == fresh[3:]
    assert cache.tokens <= cache.max_tokens and len(cache.ids) <= 3 and texts[1] not in cache.ids
    assert cache.encode(tok, texts) == fresh


def test_a_block_repeated_in_one_prompt_counts_as_served_from_the_cache():
    """A passage twice in one prompt is looked up and encoded once; its second occurrence is counted in
    repeat_tokens (tokens not encoded), so a server's cached_tokens covers every token it did not encode."""
    with make_engine(attn_type="block") as eng:
        req, first = run(eng, [PASSAGES[0], PASSAGES[1], PASSAGES[0]])
    keys = [b.key for b in req.blocks]
    again = sum(len(b.ids) for i, b in enumerate(req.blocks) if b.key in keys[:i])
    assert first.cache["misses"] == len(set(keys)) and first.cache["hits"] == 0
    assert first.cache["repeat_tokens"] == again > 0  # PASSAGES[0] again: not encoded


def test_phase_1_of_device_tier_hits_queues_no_device_work():
    """A worker times phase 1 to the end of its device work and waits for it; a phase 1 whose blocks were all
    device-tier hits, left where they lie for the first token, queued none (no wait before the first token),
    while encoding a block or moving one up from the CPU tier is device work."""
    from star_runtime.attention.rope import RopeReencoder
    from star_runtime.kv.block_store import BlockStore, block_key
    from star_runtime.models.loader import head_dim, load_model, resolve_model
    from star_runtime.modes.block import BlockSpec, encode_blocks

    model = load_model(resolve_model("random:tiny"), torch.float32, torch.device("cpu"))
    cfg = model.config
    ids = [tuple(range(10 + 7 * i, 30 + 7 * i)) for i in range(3)]
    entry_bytes = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * 20 * head_dim(cfg) * 4

    def specs(order):
        out, off = [], 0
        for i in order:
            out.append(BlockSpec(block_key("m", list(ids[i])), ids[i], off, 0))
            off += len(ids[i])
        return out

    def phase1(store, order):
        rows = torch.zeros(cfg.num_hidden_layers, 2, 128, cfg.num_key_value_heads, head_dim(cfg))
        shard = encode_blocks(model, specs(order), 0, store, re, 70, rows=rows, defer=True)
        assert shard.blocks is not None  # the in-place first token's path
        return shard.device_work

    re = RopeReencoder(model)
    store = BlockStore(torch.device("cpu"), 10 * entry_bytes, 10 * entry_bytes)
    assert phase1(store, [0, 1, 2])  # three blocks encoded
    assert not phase1(store, [2, 0, 1])  # all device-tier hits
    small = BlockStore(torch.device("cpu"), 2 * entry_bytes, 10 * entry_bytes)
    assert phase1(small, [0, 1, 2])
    assert len(small.lru["cpu"]) == 1  # the first block went down to the CPU tier
    assert phase1(small, [0, 1, 2])  # a CPU-tier hit moves up to the device tier

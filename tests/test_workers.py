"""Several workers as real Ray actors on CPU (gloo): ring == dense, star over 2 workers == star on 1,
short samples, a needle found by SmolLM2, and a dying worker that stops the run without a hang."""

import threading
import time

import pytest
import torch

from conftest import assert_same_steps, make_engine, random_ids, run_ids
from star_runtime.errors import WorkerFailure

LENGTHS = [(100, 7), (37, 5), (3, 4)]  # (context, query) tokens; the last is shorter than the workers' chunks


def dense_replies(model, cases, new_tokens):
    with make_engine(model, attn_type="dense") as eng:
        return [run_ids(eng, c, q, new_tokens) for c, q in cases]




def cases_for(seed):
    return [(random_ids(c, seed + i), random_ids(q, seed + 10 + i)) for i, (c, q) in enumerate(LENGTHS)]


@pytest.mark.parametrize("model,world", [("random:tiny", 2), ("random:tiny", 3), ("random:tiny-qwen2", 2)])
def test_ring_equals_dense(ray_session, model, world):
    cases = cases_for(world)
    ref = dense_replies(model, cases, 8)
    with make_engine(model, attn_type="ring", num_workers=world) as eng:
        got = [run_ids(eng, c, q, 8) for c, q in cases]
    for r, g, (c, _) in zip(ref, got, cases):
        assert g.tokens == r.tokens
        assert sum(g.shard_tokens) == len(c)
        assert_same_steps(g.logits, r.logits, 1e-4)


def test_star_two_workers_equals_one_worker(ray_session):
    ctx, query = random_ids(130, 21), random_ids(6, 22)
    with make_engine(attn_type="star", block_size=32) as eng:
        one = run_ids(eng, ctx, query, 10)
    with make_engine(attn_type="star", block_size=32, num_workers=2) as eng:
        two = run_ids(eng, ctx, query, 10)
    assert two.shard_tokens == [96, 34]  # blocks 0-2 | 3-4, in order
    assert two.tokens == one.tokens
    assert_same_steps(two.logits, one.logits, 1e-4)


def test_short_sample_on_three_workers_equals_dense(ray_session, capsys):
    ctx, query = random_ids(20, 31), random_ids(5, 32)
    (ref,) = dense_replies("random:tiny", [(ctx, query)], 8)
    with make_engine(attn_type="star", block_size=64, num_workers=3) as eng:
        got = run_ids(eng, ctx, query, 8)
    assert got.shard_tokens == [20, 0, 0]
    assert got.tokens == ref.tokens
    assert_same_steps(got.logits, ref.logits, 1e-4)
    assert "2 worker(s) hold no context" in capsys.readouterr().err


def test_smollm2_star_two_workers_finds_needle(ray_session):
    from star_runtime.needle import needle_prompt

    with make_engine(None, attn_type="star", num_workers=2, chat_template=True, tokens_to_generate=24) as eng:
        context, query, answer = needle_prompt(eng.tokenizer, 2000, depth=0.3)
        rec = eng.generate(context, query)
    assert 1900 <= rec["context_tokens"] <= 2100
    assert rec["shard_tokens"][0] > 0 and rec["shard_tokens"][1] > 0
    assert answer in rec["pred"], rec["pred"]


def test_dead_worker_stops_the_run_with_a_clear_error(ray_session):
    import ray

    eng = make_engine(attn_type="star", num_workers=2, tokens_to_generate=4000)
    victim = eng.launcher.actors[0]
    timer = threading.Timer(1.5, lambda: ray.kill(victim, no_restart=True))  # well inside the 4000 tokens
    timer.start()
    t0 = time.time()
    try:
        with pytest.raises(WorkerFailure, match=r"worker 0 failed during sample 0"):
            run_ids(eng, random_ids(60, 41), random_ids(4, 42), 4000)
    finally:
        timer.cancel()
        eng.close()
    assert time.time() - t0 < 60


@pytest.mark.parametrize("mode,world", [("dense", 1), ("star", 2)])
def test_batched_decode_equals_one_at_a_time(ray_session, mode, world):
    cases = [(random_ids(n, 50 + n), random_ids(q, 60 + q)) for n, q in [(90, 5), (40, 9), (130, 3)]]
    with make_engine(attn_type=mode, num_workers=world, block_size=32) as eng:
        from star_runtime.parallel.worker import Request

        reqs = [Request(i, c, q, 6 + 2 * i, keep_logits=True) for i, (c, q) in enumerate(cases)]
        alone = [eng.run(r) for r in reqs]
        together = eng.run_batch(reqs)
    for a, t in zip(alone, together):
        assert t.tokens == a.tokens and len(t.tokens) == len(t.logits)
        assert t.shard_tokens == a.shard_tokens
        assert_same_steps(t.logits, a.logits, 1e-4)


@pytest.mark.parametrize("world", [1, 2])
def test_static_decode_equals_eager(ray_session, world):
    """Fixed-shape decode (the CUDA-graph path, run eagerly here) == the shrinking eager decode."""
    from star_runtime.parallel.worker import Request

    # 20 tokens = one block: on 2 workers the second holds no context for that sample
    cases = [(random_ids(n, 70 + n), random_ids(q, 80 + q)) for n, q in [(90, 5), (40, 9), (130, 3), (20, 4)]]
    out = {}
    for mode in ("eager", "static"):
        with make_engine(attn_type="star", num_workers=world, block_size=32, decode=mode) as eng:
            reqs = [Request(i, c, q, 4 + 3 * i, keep_logits=True) for i, (c, q) in enumerate(cases)]
            out[mode] = eng.run_batch(reqs)
    for e, s in zip(out["eager"], out["static"]):
        assert s.tokens == e.tokens and len(s.tokens) == len(s.logits)
        assert_same_steps(s.logits, e.logits, 1e-4)


def test_batched_static_decode_equals_per_sample():
    """The padded batch decode (one kernel sequence per layer) == attending sample by sample."""
    from star_runtime.parallel.worker import Options, Request

    cases = [(random_ids(n, 30 + n), random_ids(q, 40 + q)) for n, q in [(70, 6), (33, 2), (100, 4)]]
    out = {}
    for batched in (True, False):
        with make_engine(attn_type="star", block_size=32, decode="static") as eng:
            out[batched] = eng.run_batch([Request(i, c, q, 5 + i, keep_logits=True)
                                          for i, (c, q) in enumerate(cases)], Options(batched_kv=batched))
    for b, p in zip(out[True], out[False]):
        assert b.tokens == p.tokens
        assert_same_steps(b.logits, p.logits, 1e-4)


def test_star_blocks_in_several_batches_equal_one_batch():
    """Capping phase-1 batches (memory for very long contexts) changes nothing."""
    ctx, query = random_ids(300, 91), random_ids(5, 92)
    out = []
    for cap in (0, 64):
        with make_engine(attn_type="star", block_size=32, max_batch_tokens=cap) as eng:
            out.append(run_ids(eng, ctx, query, 6))
    assert out[0].tokens == out[1].tokens
    assert torch.allclose(out[0].logits[0], out[1].logits[0], atol=1e-5)


def test_one_request_at_a_time_over_kept_arenas_equals_eager():
    """One sample on one worker with fixed-shape steps runs over an Arena kept across requests (its query
    prefill and decode steps made once per bucket, re-armed per request): requests of one bucket and of
    another, in turn, give what the shrinking eager decode gives."""
    cases = [(random_ids(n, 7 + n), random_ids(q, 9 + q)) for n, q in [(90, 5), (200, 17), (60, 3), (300, 9)]]
    for mode, kw in [("dense", {}), ("star", {"block_size": 64}), ("block", {})]:
        out = {}
        for decode in ("eager", "static"):
            with make_engine(attn_type=mode, decode=decode, **kw) as eng:
                if mode == "block":
                    reqs = [eng.prepare("", f" Question {i}?", blocks=[f"Passage {i}.{j} with words. " * (j + 2)
                                                                        for j in range(3)], keep_logits=True,
                                        max_new_tokens=6 + i) for i in range(4)]
                else:
                    from star_runtime.parallel.worker import Request

                    reqs = [Request(i, c, q, 6 + i, keep_logits=True) for i, (c, q) in enumerate(cases)]
                out[decode] = [eng.run(r) for r in reqs + reqs[:1]]  # the first again: its arena is reused
                if decode == "static":
                    assert eng.launcher.worker.arenas.pool  # the runs went over arenas
        for e, s in zip(out["eager"], out["static"]):
            assert s.tokens == e.tokens
            assert_same_steps(s.logits, e.logits, 1e-4)


def test_served_newcomer_that_ends_at_its_first_token_leaves_no_gather_behind():
    """A block newcomer's first token reads its cached passages in place and its context is gathered into its
    arena only before the next step; one that ends at that first token is removed first, so its gather never
    runs, and the next request served over the same arena decodes exactly as the eager server does."""
    docs = [["Head text. ", "Copper turns green in rain. ", "Bread rises. "], ["Bread rises. ", "Head text. "]]
    out = {}
    for decode in ("eager", "static"):
        with make_engine(attn_type="block", decode=decode) as eng:
            a = eng.prepare("", " What is it?", 0, blocks=docs[0], max_new_tokens=1)
            b = eng.prepare("", " Where?", 1, blocks=docs[1], max_new_tokens=6)
            first = eng.serve_step([], [a], [])["new"][0][0]
            seqs = eng.launcher.worker.mode_state("serve", None)
            if decode == "static":
                assert list(seqs.unsettled) == [0]  # owed, not yet gathered
                arena_a = seqs.arenas[0]
            res = eng.serve_step([0], [b], [])  # a ends at its first token; b comes in
            if decode == "static":
                assert list(seqs.unsettled) == [1]
                assert seqs.arenas[1] is arena_a  # b over a's arena: a's gather would have overwritten b's context
            toks = [res["new"][0][0]]
            for _ in range(5):
                toks.append(eng.serve_step([], [], [1])["step"][0][0])
            if decode == "static":
                assert not seqs.unsettled and seqs.last_path == "table"
            eng.serve_step([1], [], [])
            out[decode] = (first, toks)
    assert out["static"] == out["eager"]


def test_served_sequence_alone_decodes_over_its_arena_and_joins_a_batch_exactly():
    """A server's newcomer into an empty batch (fixed-shape steps, one worker) is prefilled over an Arena and,
    while alone, decodes by the arena's own step; when another request joins, the tokens it wrote there
    become part of its shard and both decode together. Every token equals the eager server's."""
    docs = [["Head text. ", "Copper turns green in rain. ", "Bread rises. "], ["Head text. ", "Bread rises. "]]
    out = {}
    for decode in ("eager", "static"):
        with make_engine(attn_type="block", decode=decode) as eng:
            a = eng.prepare("", " What is it?", 0, blocks=docs[0], max_new_tokens=9)
            b = eng.prepare("", " Where?", 1, blocks=docs[1], max_new_tokens=6)
            toks = {0: [eng.serve_step([], [a], [])["new"][0][0]], 1: []}
            for _ in range(3):
                toks[0].append(eng.serve_step([], [], [0])["step"][0][0])
            seqs = eng.launcher.worker.mode_state("serve", None)
            if decode == "static":
                assert seqs.last_path == "table" and 0 in seqs.arenas  # in its arena, by the table step
            res = eng.serve_step([], [b], [0])
            toks[1].append(res["new"][0][0])
            toks[0].append(res["step"][0][0])
            for _ in range(4):
                rows = eng.serve_step([], [], [0, 1])["step"]
                toks[0].append(rows[0][0])
                toks[1].append(rows[1][0])
            if decode == "static":
                assert seqs.last_path == "table" and set(seqs.arenas) == {0, 1}  # together, one table step
            eng.serve_step([0, 1], [], [])
            assert not seqs.arenas and not any(x.busy for x in eng.launcher.worker.arenas.pool)
            out[decode] = toks
    assert out["static"] == out["eager"]


def test_a_sequence_that_decoded_eagerly_returns_to_table_steps_exactly():
    """A newcomer that gets no arena (none fits) decodes in the eager batch step, and so do the arena sequences
    beside it (their tokens go to their QueryCaches); once it leaves, those tokens move into the arenas and the
    others decode by table steps again. Every token equals the eager server's."""
    docs = [["Head text. ", "Copper turns green in rain. ", "Bread rises. "], ["Head text. ", "Bread rises. "]]
    out = {}
    for decode in ("eager", "static"):
        with make_engine(attn_type="block", decode=decode) as eng:
            w = eng.launcher.worker
            a = eng.prepare("", " What is it?", 0, blocks=docs[0], max_new_tokens=12)
            b = eng.prepare("", " Where?", 1, blocks=docs[1], max_new_tokens=3)
            toks = {0: [eng.serve_step([], [a], [])["new"][0][0]], 1: []}
            seqs = w.mode_state("serve", None)
            toks[0].append(eng.serve_step([], [], [0])["step"][0][0])
            keep = w.arenas.cpu_keep
            w.arenas.cpu_keep = len(w.arenas.pool)  # no room for another arena
            res = eng.serve_step([], [b], [0])
            w.arenas.cpu_keep = keep
            toks[1].append(res["new"][0][0])
            toks[0].append(res["step"][0][0])
            assert 1 not in seqs.arenas
            for _ in range(2):
                rows = eng.serve_step([], [], [0, 1])
                assert rows["step_path"] == "batch"
                toks[0].append(rows["step"][0][0])
                toks[1].append(rows["step"][1][0])
            paths = []
            for _ in range(5):
                r = eng.serve_step([1] if 1 in seqs.seqs else [], [], [0])
                paths.append(r["step_path"])
                toks[0].append(r["step"][0][0])
            if decode == "static":
                assert paths == ["table"] * 5, paths  # back on the table path, its eager tokens in its arena
                assert seqs.seqs[0].cache.length == 0
                # the steps' tables keep no arena alive: one the pool drops is freed
                assert all(x is None for st in seqs.steps.values() for x in st.table.buffers)
            out[decode] = toks
    assert out["static"] == out["eager"]


@pytest.mark.parametrize("model", ["random:tiny-phi3", "random:tiny-dynamic"])
def test_length_dependent_rope_takes_the_prompts_frequencies_on_every_path(model):
    """LongRoPE and dynamic NTK pick their frequencies from the length: a padded query bucket (17 tokens in a
    bucket of 32) must not move them (fixed-shape decode gives the eager tokens), and a request after a longer
    one gets the frequencies of its own prompt (the same answer as on a fresh engine)."""
    ctx, q = random_ids(100, 1), random_ids(17, 2)
    out = {}
    for decode in ("eager", "static"):
        with make_engine(model, attn_type="dense", decode=decode) as eng:
            out[decode] = run_ids(eng, ctx, q, 5)
    assert out["static"].tokens == out["eager"].tokens
    assert_same_steps(out["static"].logits, out["eager"].logits, 1e-4)
    with make_engine(model, attn_type="dense", decode="eager") as eng:
        run_ids(eng, random_ids(300, 5), q, 2)
        after = run_ids(eng, ctx, q, 5)
    assert after.tokens == out["eager"].tokens
    assert_same_steps(after.logits, out["eager"].logits, 1e-4)


def test_arenas_keep_the_most_recent_buckets_and_never_evict_a_busy_one():
    from star_runtime.decode import Arenas

    with make_engine("random:tiny", attn_type="dense") as eng:
        model, dev = eng.launcher.worker.model, torch.device("cpu")
        arenas = Arenas(cpu_keep=2)
        a = arenas.for_request(model, 1000, 5, 8, dev)
        b = arenas.for_request(model, 3000, 5, 8, dev)
        assert arenas.for_request(model, 1000, 5, 8, dev) is a  # a bucket seen before: the same arena
        a.busy = True
        c = arenas.for_request(model, 7000, 5, 8, dev)  # a third bucket: the least recent idle one (b) goes
        assert set(arenas.pool) == {a, c} and b not in arenas.pool
        c.busy = True  # both busy: a server's newcomer gets none (it prefills eagerly), a run gets a third
        assert arenas.for_request(model, 1000, 5, 8, dev, must=False) is None
        d = arenas.for_request(model, 1000, 5, 8, dev)
        assert d not in (a, c) and set(arenas.pool) == {a, c, d}
        assert a.capacity < c.capacity

"""The block cache's disk tier can be trusted: entries are verified on load (damaged, truncated, swapped or
foreign files are misses, recomputed and replaced, never wrong KV), written as they enter, left in place by a
hit, kept across kill -9 and SIGTERM, and evicted least-recently-used under a budget, never wiped."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_same_steps, make_engine
from star_runtime.cli import run_main
from star_runtime.infer import main as infer_main
from star_runtime.kv.block_store import BlockStore, DiskTier

ROOT = Path(__file__).resolve().parents[1]
PASSAGES = [
    "The lighthouse keeper counted ships every night. ",
    "Copper turns green when it weathers in rain and salt air. ",
    "In the village market, apples cost three coins and pears cost five. ",
    "A short note. ",
]
QUERY = " Question: what do pears cost? Answer:"


def run(engine, blocks, n=6):
    req = engine.prepare("", QUERY, blocks=blocks, keep_logits=True, max_new_tokens=n)
    return engine.run(req)


def entry_files(folder: Path) -> list[Path]:
    return sorted((folder / "rank0").glob("*.safetensors"))


def cold(blocks):
    with make_engine(attn_type="block") as eng:
        return run(eng, blocks)


def same(a, b):
    assert a.tokens == b.tokens
    assert len(a.logits) == len(b.logits) > 0
    assert_same_steps(a.logits, b.logits, 1e-5)


def _flip(files):
    data = bytearray(files[0].read_bytes())
    data[len(data) - 100] ^= 0xFF  # a byte of the KV payload
    files[0].write_bytes(bytes(data))
    return 1


def _truncate(files):
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    return 1


def _swap(files):
    a, b = files[0], files[2]
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    return 2


def _garbage(files):
    files[3].write_bytes(b"not a cache file")
    return 1


@pytest.mark.parametrize("damage", [_flip, _truncate, _swap, _garbage], ids=["flipped", "truncated", "swapped",
                                                                               "garbage"])
def test_damaged_entries_are_misses_and_are_replaced(tmp_path, capfd, damage):
    disk = tmp_path / "blocks"
    order = PASSAGES[::-1]
    ref = cold(order)
    with make_engine(attn_type="block", block_cache_disk_dir=str(disk)) as eng:
        run(eng, PASSAGES)
    files = entry_files(disk)
    assert len(files) == 4
    bad = damage(files)
    capfd.readouterr()
    with make_engine(attn_type="block", block_cache_disk_dir=str(disk)) as eng:
        got = run(eng, order)
    err = capfd.readouterr().err
    assert got.cache["misses"] == bad and got.cache["hits"] == 4 - bad
    assert err.count("is unusable") == bad and "recomputing that block" in err, err
    same(got, ref)  # never wrong KV: the same answer as a cold run
    with make_engine(attn_type="block", block_cache_disk_dir=str(disk)) as eng:
        again = run(eng, order)
        hits = eng.launcher.worker.cache_summary()["hits"]
    assert again.cache["hits"] == 4 and hits["disk"] == 4  # the recomputed entries replaced the bad files
    same(again, ref)


def test_disk_folder_alone_keeps_entries_with_the_default_budget(tmp_path):
    disk = tmp_path / "blocks"
    with make_engine(attn_type="block", block_cache_disk_dir=str(disk)) as eng:
        first = run(eng, PASSAGES)
    assert first.cache["misses"] == 4 and len(entry_files(disk)) == 4
    for _ in range(2):  # a hit leaves the file in place: every later run starts warm
        with make_engine(attn_type="block", block_cache_disk_dir=str(disk)) as eng:
            warm = run(eng, PASSAGES)
        assert warm.cache["hits"] == 4 and len(entry_files(disk)) == 4
        same(warm, first)


def test_entry_of_another_model_shape_is_a_miss(tmp_path, capfd):
    disk = tmp_path / "d"
    store = BlockStore(torch.device("cpu"), 1 << 20, 1 << 20, str(disk), 1 << 20, expect=(2, 2, 16),
                       dtype=torch.float32)
    store.put("k1", torch.randn(2, 2, 2, 5, 16), torch.ones(8))
    store.close()
    other = BlockStore(torch.device("cpu"), 1 << 20, 1 << 20, str(disk), 1 << 20, expect=(3, 2, 16),
                       dtype=torch.float32)
    assert other.get("k1", 5) is None
    assert "does not fit this model" in capfd.readouterr().err
    other.close()


def test_disk_budget_evicts_least_recently_used_never_wipes(tmp_path):
    kv = {k: torch.full((1, 2, 1, 64, 8), float(i)) for i, k in enumerate("abcd")}
    one = None
    tier = DiskTier(tmp_path, 10 ** 9, None, None, print)
    tier.put("a", kv["a"], torch.ones(4))
    tier.flush()
    one = (tmp_path / "a.safetensors").stat().st_size
    tier.close()
    tier = DiskTier(tmp_path, int(2.5 * one), None, None, print)  # room for two entries
    for k in "bc":
        tier.put(k, kv[k], torch.ones(4))
        tier.flush()
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == ["b", "c"]  # a, the oldest, went
    kv_b, _ = tier.load("b", 64)  # b is now the most recently used
    assert torch.equal(kv_b, kv["b"])
    tier.put("d", kv["d"], torch.ones(4))
    tier.flush()
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == ["b", "d"]
    tier.close()
    tier = DiskTier(tmp_path, int(2.5 * one), None, None, print)  # a restart keeps what fits, in LRU order
    assert tier.count() == 2 and torch.equal(tier.load("d", 64)[0], kv["d"])
    tier.close()


def _block_rows(n):
    return [{"index": i, "blocks": [f"Passage {i}.{j}: the value of item {i}{j} is {7 * i + j}. " for j in range(3)],
             "input_query": f" What is the value of item {i}1?"} for i in range(n)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_keeps_every_written_entry(tmp_path, sig):
    inp, out, disk = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "blocks"
    inp.write_text("".join(json.dumps(r) + "\n" for r in _block_rows(6)))
    cmd = [sys.executable, str(ROOT / "run_star_attn_inference.py"), "--model_path", "random:tiny", "--attn_type",
           "block", "--input_path", str(inp), "--output_path", str(out), "--tokens_to_generate", "300",
           "--block_cache_disk_dir", str(disk), "--use_cache"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(done) < 6
    on_disk = len(entry_files(disk))
    assert on_disk >= 3 * len(done)  # every finished sample's blocks are on disk
    assert not list((disk / "rank0").glob(".tmp-*")) or sig == signal.SIGKILL
    assert run_main(infer_main, cmd[2:]) == 0  # the same command line resumed, in this process
    rows = {r["index"]: r for r in (json.loads(line) for line in out.read_text().splitlines())}
    assert sorted(rows) == list(range(6))
    resumed = [rows[i] for i in sorted(rows) if i not in {r["index"] for r in done}]
    # every entry the killed run left is a hit now; only the others are encoded again
    assert sum(r["block_cache"]["misses"] for r in resumed) == 18 - on_disk
    assert len(entry_files(disk)) == 18


def test_a_server_step_tells_the_engine_which_blocks_its_workers_evicted():
    """Blocks dropped from every tier are reported back, and the engine's placement map forgets them (so
    they are placed by load next time, not sent back to a worker that no longer holds them)."""
    one_block = 2 * 2 * 2 * 20 * 16 * 4
    with make_engine(attn_type="block", block_cache_gpu_gib=one_block / 2**30,
                     block_cache_cpu_gib=one_block / 2**30) as eng:
        reqs = [eng.prepare("", QUERY, index=i, blocks=PASSAGES[i:i + 2] + PASSAGES[:i], max_new_tokens=2)
                for i in range(3)]
        placement = eng.mode_states["block"]
        gone = []
        for r in reqs:
            res = eng.serve_step([], [r], [])
            gone += res["gone"]
            eng.serve_step([r.index], [], [])
        assert gone, "the tiny budget evicts"
        assert not any(k in placement.home for k in gone)
        store = eng.launcher.worker.cache_summary()
        assert store["evictions"]["dropped"] >= len(gone)


def test_an_entry_larger_than_the_disk_budget_is_not_written_and_wipes_nothing(tmp_path, capfd):
    small = {k: torch.full((1, 2, 1, 64, 8), float(i)) for i, k in enumerate("ab")}
    tier = DiskTier(tmp_path, 10 ** 9, None, None, print)
    for k, kv in small.items():
        tier.put(k, kv, torch.ones(4))
    tier.flush()
    size = (tmp_path / "a.safetensors").stat().st_size
    tier.close()
    tier = DiskTier(tmp_path, int(2.5 * size), None, None, print)
    tier.put("huge", torch.zeros(1, 2, 1, 64 * 8, 8), torch.ones(4))  # 8x an entry: larger than the budget
    tier.flush()
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == ["a", "b"]
    (tmp_path / "a.safetensors").unlink()  # another process sharing the folder evicted it
    capfd.readouterr()
    assert tier.load("a", 64) is None and "unusable" not in capfd.readouterr().out
    assert torch.equal(tier.load("b", 64)[0], small["b"])
    tier.close()


def test_a_block_twice_in_one_prompt_is_looked_up_and_encoded_once():
    with make_engine(attn_type="block") as eng:
        rep = run(eng, [PASSAGES[0], PASSAGES[1], PASSAGES[0]])
    assert rep.cache["misses"] == 2 and rep.cache["hits"] == 0


def test_block_key_is_the_sha256_of_the_int64_ids_however_they_come():
    """The content address disk tiers were written under: sha256(model id + int64 ids) -- from a list, a tuple or
    an array alike."""
    import hashlib

    import numpy as np

    from star_runtime.kv.block_store import block_key

    ids = [0, 1, 49151, 128255, 7, 2 ** 40]
    h = hashlib.sha256(b"model|x")
    h.update(np.asarray(ids, dtype=np.int64).tobytes())
    want = h.hexdigest()[:32]
    assert block_key("model|x", ids) == block_key("model|x", tuple(ids)) == block_key("model|x", np.array(ids)) == want
    assert block_key("model|y", ids) != want and block_key("model|x", ids[:-1]) != want


def test_entries_are_kept_contiguous_in_every_tier(tmp_path):
    """The in-place first token reads device entries where they lie, as contiguous tensors: a block stored
    from a strided view (one block of a padded batch) comes back contiguous, with the same values, from the
    device tier, after a move down to the CPU tier and back, and from the disk tier."""
    batch = torch.randn(2, 2, 3, 4, 8, 16)  # (layers, 2, blocks, H_kv, L, D)
    view = batch[:, :, 1, :, :5]
    assert not view.is_contiguous()
    kv_bytes = view.numel() * view.element_size()
    store = BlockStore(torch.device("cpu"), kv_bytes, 4 * kv_bytes)
    store.put("a", view, torch.ones(8))
    kv, _ = store.get("a", 5)
    assert kv.is_contiguous() and torch.equal(kv, view)
    store.put("b", batch[:, :, 2, :, :5], torch.ones(8))  # pushes "a" down to the CPU tier
    assert "a" in store.lru["cpu"] and store.lru["cpu"]["a"].kv.is_contiguous()
    kv, _ = store.get("a", 5)  # back up
    assert kv.is_contiguous() and torch.equal(kv, view)
    disk = BlockStore(torch.device("cpu"), kv_bytes, 0, str(tmp_path), 16 * kv_bytes)
    disk.put("c", view, torch.ones(8))
    disk.put("d", batch[:, :, 2, :, :5], torch.ones(8))  # "c" leaves memory: on disk alone
    disk.flush()
    assert "c" not in disk.lru["device"] and "c" not in disk.lru["cpu"]
    kv, _ = disk.get("c", 5)
    assert kv.is_contiguous() and torch.equal(kv, view)
    disk.close()

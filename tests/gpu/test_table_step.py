"""On the GPU: the table kernels (attention/table.py) at Llama-3-8B head shapes against fp64 attention, and a
server's table steps (table_step.py) replayed from one CUDA graph over whichever arenas the table names equal
the same steps run uncaptured (the same kernels: bit for bit) and the torch twin (bf16 tolerance)."""

import pytest
import torch

from star_runtime.attention.table import KVTable


def fp64(q, buf, layer, base, scale):
    """q (Hq, T, D) over slots < base + t + 1 of buf (layers, 2, C, Hkv, D)."""
    hq, t, d = q.shape
    n = base + t
    k = buf[layer, 0, :n].transpose(0, 1).double().repeat_interleave(hq // buf.shape[3], 0)
    v = buf[layer, 1, :n].transpose(0, 1).double().repeat_interleave(hq // buf.shape[3], 0)
    s = torch.einsum("htd,hnd->htn", q.double(), k) * scale
    mask = torch.arange(n, device=q.device)[None, :] > (base + torch.arange(t, device=q.device))[:, None]
    s = s.masked_fill(mask[None], float("-inf"))
    return torch.einsum("htn,hnd->htd", torch.softmax(s, -1), v), torch.logsumexp(s, -1)


@pytest.mark.parametrize("t", [1, 50])
def test_table_attention_and_write_at_model_shapes_against_fp64(t):
    g = torch.Generator(device="cuda").manual_seed(t)
    layers, hkv, d, hq = 3, 8, 128, 32
    caps, bases = [2048, 40960, 8192], [1500, 33000, 0]
    bufs = [torch.randn(layers, 2, c, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g) for c in caps]
    tab = KVTable(4, layers, hkv, d, torch.bfloat16, "cuda")
    assert tab.kernel
    tab.set(bufs + [None])
    base = torch.tensor(bases + [0], device="cuda")
    k = torch.randn(4, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(4, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
    tab.write(2, k, v, base)
    for a, b in enumerate(bufs):
        assert torch.equal(b[2, 0, bases[a]:bases[a] + t], k[a].transpose(0, 1))
        assert torch.equal(b[2, 1, bases[a]:bases[a] + t], v[a].transpose(0, 1))
    q = torch.randn(4, hq, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
    out, lse = tab.attend(2, q, base, d ** -0.5)
    for a, b in enumerate(bufs):
        ref, ref_lse = fp64(q[a], b, 2, bases[a], d ** -0.5)
        assert (out[a].double() - ref).abs().max().item() < 2e-2, a
        assert (lse[a].double() - ref_lse).abs().max().item() < 2e-2, a


def test_table_steps_replay_over_changing_arenas_as_uncaptured_steps():
    from star_runtime.models.loader import resolve_model
    from star_runtime.config import RunConfig
    from star_runtime.decode import Arena
    from star_runtime.parallel.worker import Worker
    from star_runtime.table_step import TableStep

    cfg = RunConfig(model_path="random:llama3-8b-2l", device="cuda", dtype="bfloat16", attn_type="dense").validate()
    model = Worker(cfg, resolve_model(cfg.model_path), 0, 1).model
    g = torch.Generator(device="cuda").manual_seed(0)
    arenas = [Arena(2, cap, 8, 128, torch.bfloat16, torch.device("cuda")) for cap in (4096, 8192, 4096)]
    for x in arenas:
        x.rows.copy_(torch.randn(x.rows.shape, device="cuda", generator=g).to(torch.bfloat16))
    saved = [x.rows.clone() for x in arenas]
    captured, plain = TableStep(model, 4, 1, "eager", True), TableStep(model, 4, 1, "eager", False)
    captured.capture()
    assert captured.graph is not None
    for batch, starts in (([0, 1], [3000, 7000]), ([2, 0, 1], [100, 3001, 7001]), ([1], [7002])):
        tokens = [[101 + i] for i in batch]
        for x, s in zip(arenas, saved):
            x.rows.copy_(s)
        got = captured([arenas[i].rows for i in batch], tokens, starts, 0).clone()
        wrote = [x.rows.clone() for x in arenas]
        for x, s in zip(arenas, saved):
            x.rows.copy_(s)
        want = plain([arenas[i].rows for i in batch], tokens, starts, 0)
        assert torch.equal(got[: len(batch)], want[: len(batch)]), batch
        assert all(torch.equal(w, x.rows) for w, x in zip(wrote, arenas)), "the same KV written"
        plain.table.kernel = False  # the torch twin, row by row
        for x, s in zip(arenas, saved):
            x.rows.copy_(s)
        twin = plain([arenas[i].rows for i in batch], tokens, starts, 0)
        plain.table.kernel = True
        w = want[: len(batch)].float()
        assert (twin[: len(batch)].float() - w).abs().max().item() < 2e-2 * w.abs().max().item()


def test_decode_kv_write_kernel_equals_index_put():
    from star_runtime.attention.table import write_slots

    g = torch.Generator(device="cuda").manual_seed(1)
    for dt in (torch.bfloat16, torch.float32):
        rows = torch.randn(2, 4, 5000, 8, 128, device="cuda", generator=g).to(dt)
        want = rows.clone()
        k = torch.randn(4, 8, 1, 128, device="cuda", generator=g).to(dt)
        v = torch.randn(4, 8, 1, 128, device="cuda", generator=g).to(dt)
        slots, ids = torch.tensor([0, 4999, 17, 2500], device="cuda"), torch.arange(4, device="cuda")
        want[0, ids, slots] = k[:, :, 0]
        want[1, ids, slots] = v[:, :, 0]
        write_slots(k, v, rows[0], rows[1], slots, ids)
        assert torch.equal(rows, want), dt

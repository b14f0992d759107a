"""The split-KV attention kernel (attention/split_kv.py) on the CPU through Triton's interpreter, against fp64
attention: GQA folding (groups of 1, 3 and 4), queries of 1..13 tokens with the causal tail, rows of one batch
with different lengths, an empty row (lse -inf, out 0), forced split counts (splits that get no keys). The GPU
twin (tests/gpu/test_decode_kernel.py) runs the compiled kernel at model shapes."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

# every script: Triton's interpreter before any kernel is defined (tests/helpers/triton_cpu.py)
HEADER = """
import sys
sys.path.insert(0, "tests/helpers")
import triton_cpu  # noqa: F401
import torch
"""

SCRIPT = HEADER + r"""
from star_runtime.attention.split_kv import split_kv_attention

def fp64(q, k_rows, v_rows, base, scale):
    a, hq, tb, d = q.shape
    c, hkv = k_rows.shape[1], k_rows.shape[2]
    k = k_rows.transpose(1, 2).double().repeat_interleave(hq // hkv, 1)
    v = v_rows.transpose(1, 2).double().repeat_interleave(hq // hkv, 1)
    s = torch.einsum("ahtd,ahcd->ahtc", q.double(), k) * scale
    lim = (base.long()[:, None] + torch.arange(tb)[None] + 1).clamp(max=c)
    s = s.masked_fill(~(torch.arange(c)[None, None, :] < lim[:, :, None])[:, None], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0, lse)[..., None])
    return torch.einsum("ahtc,ahcd->ahtd", p, v), lse

torch.manual_seed(0)
cases = [(1, 8, 2, 1, 32, 300, [299], 4), (3, 4, 1, 1, 16, 200, [0, -1, 150], None),
         (1, 8, 2, 13, 32, 333, [250], 3), (1, 6, 2, 5, 64, 100, [90], 2), (2, 4, 4, 3, 16, 64, [10, 61], 8)]
for a, hq, hkv, tb, d, c, base, splits in cases:
    q, k, v = torch.randn(a, hq, tb, d), torch.randn(a, c, hkv, d), torch.randn(a, c, hkv, d)
    b = torch.tensor(base, dtype=torch.int32)
    out, lse = split_kv_attention(q, k, v, b, d ** -0.5, splits=splits, fp32_out=True)
    ref, ref_lse = fp64(q, k, v, b, d ** -0.5)
    assert out.shape == (a, hq, tb, d) and lse.shape == (a, hq, tb)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), (a, hq, tb)
    err = (out.double() - ref).abs().max().item()
    lerr = (lse.double() - ref_lse).nan_to_num(0.0, 0.0, 0.0).abs().max().item()
    assert err < 1e-5 and lerr < 1e-5, (a, hq, hkv, tb, err, lerr)
    print("ok", a, hq, hkv, tb, c, f"{err:.1e}", f"{lerr:.1e}")
"""


def run_interpreted(script: str, oks: int) -> None:
    """Run a kernel script in a fresh interpreter process; it must pass and print "ok" ``oks`` times."""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("ok") == oks, r.stdout


def test_split_kv_kernel_against_fp64_in_the_interpreter():
    run_interpreted(SCRIPT, 5)


TABLE_SCRIPT = HEADER + r"""
from star_runtime.attention.split_kv import split_kv_attention
from star_runtime.attention.table import KVTable

torch.manual_seed(0)
layers, hkv, d, hq = 2, 2, 16, 6
caps = [40, 72, 24]
bufs = [torch.randn(layers, 2, c, hkv, d) for c in caps]
tab = KVTable(4, layers, hkv, d, torch.float32, "cpu", spare_tokens=16)
tab.kernel = True  # the Triton kernels, through the interpreter
tab.set(bufs + [None])
base = torch.tensor([10, 60, 3, 0])
for t in (1, 5):
    k, v = torch.randn(4, hkv, t, d), torch.randn(4, hkv, t, d)
    want = [b.clone() for b in bufs]
    for a, b in enumerate(want):
        b[1, 0, base[a]:base[a] + t] = k[a].transpose(0, 1)
        b[1, 1, base[a]:base[a] + t] = v[a].transpose(0, 1)
    tab.write(1, k, v, base)
    assert all(torch.equal(w, b) for w, b in zip(want, bufs)), "table write"
    assert torch.equal(tab.spare[1, 0, :t], k[3].transpose(0, 1)), "a row without a buffer writes the spare"
    q = torch.randn(4, hq, t, d)
    out, lse = tab.attend(1, q, base, d ** -0.5)
    for a, b in enumerate(bufs):  # each row against the plain kernel over its own buffer
        ref, ref_lse = split_kv_attention(q[a:a + 1], b[1, 0].unsqueeze(0), b[1, 1].unsqueeze(0), base[a:a + 1],
                                          d ** -0.5)
        assert (out[a] - ref[0]).abs().max() < 1e-5 and (lse[a] - ref_lse[0]).abs().max() < 1e-5, (t, a)
    tab.kernel = False  # the torch twin: the same numbers
    out2, lse2 = tab.attend(1, q, base, d ** -0.5)
    tab.kernel = True
    assert (out - out2).abs().max() < 1e-5 and (lse - lse2).abs().max() < 1e-5
    print("ok", t)
"""


def test_table_kernels_read_and_write_each_rows_own_buffer_in_the_interpreter():
    """attention/table.py: rows whose KV lie in buffers of different capacities, named by a device table of
    addresses: the write kernel puts each row's new tokens at its own slots (a row without a buffer writes the
    spare), the paged split kernel gives what the plain kernel gives over each buffer alone, and the torch twin
    (the CPU path) the same numbers."""
    run_interpreted(TABLE_SCRIPT, 2)


SLOTS_SCRIPT = HEADER + r"""
import star_runtime.attention.table as table

torch.manual_seed(0)
a, c, hkv, d = 3, 50, 2, 16
for kernel in (True, False):
    rows = torch.randn(2, a, c, hkv, d)
    want = rows.clone()
    k, v = torch.randn(a, hkv, 1, d), torch.randn(a, hkv, 1, d)
    slots = torch.tensor([0, 17, 49])
    want[0, torch.arange(a), slots] = k[:, :, 0]
    want[1, torch.arange(a), slots] = v[:, :, 0]
    if kernel:  # the Triton kernel, through the interpreter
        table._slots_kernel()[(a, hkv)](k, v, rows[0], rows[1], slots, k.stride(0), k.stride(1), v.stride(0),
                                        v.stride(1), *rows[0].stride()[:3], *rows[1].stride()[:3], D=d)
    else:
        table.write_slots(k, v, rows[0], rows[1], slots, torch.arange(a))
    assert torch.equal(rows, want), kernel
    print("ok", kernel)
"""


def test_decode_kv_write_kernel_puts_each_rows_token_at_its_slot_in_the_interpreter():
    run_interpreted(SLOTS_SCRIPT, 2)

"""The skinny matmul kernel (models/skinny.py) on the CPU through Triton's interpreter against fp64 matmuls: rows
1..64 (masked to the 16 / 64 row tiles), biases, the input features split over 1-4 programs whose partials the
last arrival sums (fp32 here: the interpreter's bf16 dots are not trustworthy; bf16 on the GPU), every counter
back at 0 -- and the dispatch's choices (rows
above 64, shapes no tile divides, a card's tuned entries, torch's matmul off CUDA). The GPU twin
(tests/gpu/test_skinny_gpu.py) runs the compiled kernel at the 8B shapes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from star_runtime.models import skinny

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys
sys.path.insert(0, "tests/helpers")
import triton_cpu  # noqa: F401
import torch
from star_runtime.models import skinny

torch.manual_seed(0)
cases = [(1, 64, 128, (32, 128, 1, 4, 3), True), (5, 128, 256, (64, 64, 2, 4, 3), True),
         (16, 96, 192, (32, 64, 3, 4, 3), False), (17, 192, 384, (64, 64, 3, 4, 3), False),
         (64, 256, 512, (128, 64, 4, 4, 3), True)]
for m, n, k, c, bias in cases:
    x, w = torch.randn(m, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    y = skinny.run(x, w, b, c)
    again = skinny.run(x, w, b, c)
    ref = x.double() @ w.double().T + (b.double() if bias else 0)
    err = (y.double() - ref).abs().max().item()
    assert y.shape == (m, n) and err < 1e-4 * k ** 0.5, (m, n, k, c, err)
    assert torch.equal(y, again), (m, n, k, c)  # (the interpreter runs programs one by one: the GPU test replays
    # split launches from a graph, where arrival order varies)
    assert all(int(cnt.abs().sum()) == 0 for _, cnt in skinny._WORK.values())  # ready for the next launch
    print("ok", m, n, k, c, f"{err:.1e}")
"""


def test_kernel_against_fp64_in_the_interpreter():
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("ok") == 5, r.stdout


def test_run_refuses_tiles_that_do_not_divide_the_shape():
    with pytest.raises(ValueError, match="do not divide"):
        skinny.run(torch.randn(4, 192), torch.randn(100, 192), None, (64, 64, 1, 4, 3))
    with pytest.raises(ValueError, match="do not divide"):
        skinny.run(torch.randn(4, 192), torch.randn(128, 192), None, (64, 64, 2, 4, 3))


def test_dispatch_choices(monkeypatch):
    assert skinny.config(65, 4096, 4096, "cpu") is None  # compute-bound: torch's matmul
    monkeypatch.setitem(skinny._TUNED, "cpu", {(64, 4096, 4096): (32, 64, 4, 4, 3), (16, 4096, 4096): None})
    assert skinny.config(50, 4096, 4096, "cpu") == (32, 64, 4, 4, 3)
    assert skinny.config(1, 4096, 4096, "cpu") is None  # tuned slower than torch's: torch's
    assert skinny.config(64, 6144, 4096, "cpu") is None  # never tuned here: torch's
    x, w, b = torch.randn(3, 7, 64), torch.randn(32, 64), torch.randn(32)
    assert torch.equal(skinny.linear(x, w, b), F.linear(x, w, b))  # off CUDA: torch's matmul itself


def test_tuned_file_names_cards_and_valid_configurations():
    import json

    table = json.loads(skinny.TUNED_FILE.read_text())
    for card, entries in table.items():
        for key, c in entries.items():
            bm, n, k = (int(v) for v in key.split(","))
            assert bm in (16, 64), (card, key)
            if c is not None:
                bn, bk, s, warps, stages = c
                assert n % bn == 0 and k % (s * bk) == 0 and warps in (4, 8) and stages >= 1, (card, key, c)

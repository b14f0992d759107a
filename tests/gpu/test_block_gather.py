"""On the GPU: block mode's fused gather + RoPE re-encoding (the Triton kernel, kv/gather.py) writes what the
torch path writes (bf16: within one rounding of the fp32 rotation), for blocks of uneven lengths and partial
rotary dims; and block mode end to end (bf16, one worker, arena and CUDA graphs) gives the same tokens on a
cache hit as on a miss, in another passage order."""

import pytest
import torch

from conftest import make_engine
from star_runtime.kv import gather


@pytest.mark.parametrize("d,r", [(128, 128), (64, 32)])
def test_triton_gather_equals_the_torch_path(d, r):
    g = torch.Generator(device="cuda").manual_seed(d + r)
    lens = [512, 37, 300, 1, 129]
    entries = [torch.randn(4, 2, 8, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for n in lens]
    total = sum(lens)
    ang = torch.rand(total, r // 2, device="cuda", dtype=torch.float64, generator=g) * 1000
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
    ref = torch.full((4, 2, total + 7, 8, d), float("nan"), device="cuda", dtype=torch.bfloat16)
    out = ref.clone()
    gather._gather_rotate_torch(entries, ref, cos, sin)
    gather._gather_rotate_triton(entries, out, cos, sin)
    assert not out[:, :, :total].isnan().any()  # every slot written
    diff = (out[:, :, :total].float() - ref[:, :, :total].float()).abs()
    assert diff.max().item() <= 2 ** -6 * ref[:, :, :total].float().abs().max().item()


def test_block_mode_hit_equals_miss_on_the_gpu():
    passages = [f"Passage {i}: the value of item {i} is {7 * i + 3}. " * 20 for i in range(6)]
    order = [passages[i] for i in (3, 0, 5, 1, 4, 2)]
    kw = dict(attn_type="block", device="cuda", dtype="bfloat16", prefill_layers="eager")
    with make_engine("random:llama3-8b-2l", **kw) as eng:
        miss = eng.run(eng.prepare("", " Question: item 3?", blocks=order, max_new_tokens=8))
        assert miss.cache["misses"] == 6
        for _ in range(3):  # the bucket's graphs are captured at its second request and replayed after
            hit = eng.run(eng.prepare("", " Question: item 3?", blocks=order, max_new_tokens=8))
            assert hit.cache["hits"] == 6 and hit.tokens == miss.tokens

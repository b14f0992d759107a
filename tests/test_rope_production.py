"""RoPE re-encoding through the path production uses: block mode encodes each passage alone at positions
0..L-1, caches it and rotates its keys to the passage's offset (modes/block.py encode_blocks with the worker's
own model, BlockStore and RopeReencoder, captured inside an ordinary run). The keys of every layer in the resulting context shard must equal
the post-RoPE keys the stock model computes at the target positions in ONE full forward of the prompt under
the Block-Attention mask (captured with a temporarily registered attention function that records ``key`` per
layer and then runs the stock SDPA attention). fp32; tolerance 2e-5 relative to each layer's key scale.

RoPE types: default (tiny), llama3 (tiny-llama3rope), yarn (tiny-yarn, whose mscale must be carried once) and
dynamic NTK (tiny-dynamic: frequencies depend on the whole prompt's length once it is longer than
max_position_embeddings = 64; every piece of phase 1 runs with the prompt's frequencies, rope_frame).

Why the Engine's worker pieces and not hand-built ones: the shard then comes from the same model loading,
store configuration and re-encoder a block-mode run uses, and the prompts from Engine.prepare (block
tokenization, offsets, content keys); the RoPE variants are small random configs next to the others. The
dynamic branch needs one concession: the Engine's window is max_position_embeddings, which is exactly where
dynamic NTK starts to act, so no prompt that exercises it passes Engine.prepare; the test lifts the
engine's window for that model (see test_engine_window_hides_the_dynamic_branch).
"""

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from conftest import make_engine
from star_runtime.modes import get_mode
from star_runtime.modes.block import BlockWorkerState  # the internal entry points this file uses
from star_runtime.config import ConfigError

REL_TOL = 2e-5  # max |key difference| / max |key|, per layer

VARIANTS = {
    "default": "random:tiny",
    "llama3": "random:tiny-llama3rope",
    "yarn": "random:tiny-yarn",
    "dynamic": "random:tiny-dynamic",
}
DYNAMIC_WINDOW = 64

PASSAGES = [
    "The lighthouse keeper counted ships every night. ",
    "Copper turns green when it weathers in rain and salt air. ",
    "In the village market, apples cost three coins and pears cost five. ",
    "A short note. ",
    "Owls hunt at dusk over the wet meadows by the river. ",
    "The old bridge was rebuilt in stone after the flood of the spring. ",
]
# longer than the dynamic window on its own: encoded alone, it gets its own (dynamic) frequencies
LONG_PASSAGE = ("Rivers carve valleys over thousands of years, carrying silt from the mountains to the plains, "
                "where farmers grow wheat, barley and rye in the rich soil the floods leave behind them, year "
                "after year, while herons wait in the reeds and boats carry grain down to the harbour, and in "
                "the autumn the mills along the banks grind it into flour for the bakers of every town. ")
QUERY = " Question: what do pears cost? Answer:"

_CAPTURED: dict[int, torch.Tensor] = {}


def _capture(module, query, key, value, attention_mask, **kwargs):
    _CAPTURED[module.layer_idx] = key.detach().clone()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def stock_keys(model, block_lens, ids):
    """Post-RoPE keys (1, H_kv, T, D) of every layer, one full forward of ``ids`` (global positions 0..T-1)
    under the Block-Attention mask: a local block sees only itself causally, the final block everything."""
    t = len(ids)
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    start = 0
    for n in block_lens:
        mask[start:start + n, :start] = False
        start += n
    rotary = model.get_decoder().rotary_emb
    # dynamic RoPE keeps state across forwards; a one-token forward resets it to the original frequencies, so
    # the full forward below recomputes them for exactly T tokens (as a freshly loaded model would)
    rotary(torch.zeros(1), torch.zeros(1, 1, dtype=torch.long))
    AttentionInterface.register("capture", _capture)
    prev = model.config._attn_implementation
    model.set_attn_implementation("capture")
    _CAPTURED.clear()
    try:
        with torch.inference_mode():
            model(torch.tensor([ids]), attention_mask=mask[None, None], position_ids=torch.arange(t)[None])
    finally:
        model.set_attn_implementation(prev)
    return [_CAPTURED[i] for i in range(len(_CAPTURED))]


def block_state(worker):
    """The worker's block store and RoPE re-encoder."""
    return worker.mode_state("block", BlockWorkerState)


def block_engine(variant):
    eng = make_engine(VARIANTS[variant], attn_type="block")
    if variant == "dynamic":
        eng.window = 10_000  # see the module docstring
    return eng


def shard_keys(eng, req):
    """The keys of the context shard the worker's phase 1 builds for ``req``: captured from block mode's encode
    inside an ordinary run of the request (the production path, RoPE frame included)."""
    cls, captured = type(get_mode("block")), {}
    real = cls.encode

    def spy(self, worker, r, cfg):
        captured["shard"] = real(self, worker, r, cfg)
        return captured["shard"]

    cls.encode = spy
    try:
        eng.run(req)
    finally:
        cls.encode = real
    shard = captured["shard"]
    return [shard.get(layer)[0] for layer in range(eng.launcher.worker.model.config.num_hidden_layers)]


def layer_errors(eng, req):
    """Per layer: max |shard key - stock key| / max |stock key| over the context positions."""
    got = shard_keys(eng, req)
    ids = list(req.context_ids) + list(req.query_ids)
    ref = stock_keys(eng.launcher.worker.model, [len(b.ids) for b in req.blocks], ids)
    n = len(req.context_ids)
    errs = []
    for g, r in zip(got, ref):
        r = r[:, :, :n]
        assert g.shape == r.shape, (g.shape, r.shape)
        errs.append(((g - r).abs().max() / r.abs().max()).item())
    return errs


def check_layers(errs):
    for layer, e in enumerate(errs):
        assert e <= REL_TOL, f"layer {layer} keys off by {e:.3g} of the key scale (all: {errs})"


@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_blocks_reencoded_equal_stock_keys(variant):
    """Cold store: every passage is a miss, encoded in one padded batch, then rotated to its offset."""
    with block_engine(variant) as eng:
        req = eng.prepare("", QUERY, blocks=PASSAGES, max_new_tokens=4)
        total = len(req.context_ids) + len(req.query_ids)
        assert len(req.blocks) == len(PASSAGES) and req.blocks[-1].offset > 50 and total > DYNAMIC_WINDOW
        errs = layer_errors(eng, req)
    check_layers(errs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_blocks_after_a_run_equal_stock_keys_at_new_offsets(variant):
    """A real block-mode run fills the cache (and decodes); a second prompt with the passages in another order
    (new offsets, another length) gets a shard whose keys equal the stock model's: from cached entries for
    every RoPE type whose frequencies do not follow the length; dynamic NTK past its window encodes them
    again, since a passage's deeper layers depend on the prompt's frequencies (its cache key carries them)."""
    first = PASSAGES
    second = [PASSAGES[i] for i in (4, 2, 0, 5, 1)]
    with block_engine(variant) as eng:
        rep = eng.run(eng.prepare("", QUERY, blocks=first, keep_logits=True, max_new_tokens=8))
        assert rep.cache["misses"] == len(first) and len(rep.tokens) == 8
        req = eng.prepare("", QUERY, blocks=second, max_new_tokens=4)
        errs = layer_errors(eng, req)
        hits = block_state(eng.launcher.worker).store.stats.hits
    assert sum(hits.values()) == (0 if variant == "dynamic" else len(second))
    check_layers(errs)


def test_dynamic_blocks_are_reused_only_under_the_same_frequencies():
    """Past the window, a prompt's length sets its frequencies: the same passages in a prompt of the same
    length are hits, in a prompt of another length misses, and both shards equal the stock model's keys."""
    with block_engine("dynamic") as eng:
        w = eng.launcher.worker
        shard_keys(eng, eng.prepare("", QUERY, blocks=PASSAGES))  # caches every passage under this length
        before = sum(block_state(w).store.stats.hits.values())
        same = eng.prepare("", QUERY, blocks=PASSAGES[::-1])
        check_layers(layer_errors(eng, same))
        assert sum(block_state(w).store.stats.hits.values()) - before == len(PASSAGES)
        misses = block_state(w).store.stats.misses
        other = eng.prepare("", QUERY, blocks=[PASSAGES[3], LONG_PASSAGE, PASSAGES[0], PASSAGES[5]])
        assert len(other.blocks[1].ids) > DYNAMIC_WINDOW
        check_layers(layer_errors(eng, other))
        assert block_state(w).store.stats.misses - misses == 4


def test_dynamic_frequencies_follow_the_prompt_length():
    """The re-encoder asks the model's rotary module for the prompt's frequencies: the original ones up to the
    window, scaled ones (lower frequencies) beyond it, different for different lengths."""
    with block_engine("dynamic") as eng:
        re = block_state(eng.launcher.worker).reencoder
        short, at_window = re.inv_freq(40), re.inv_freq(DYNAMIC_WINDOW)
        longer, longest = re.inv_freq(100), re.inv_freq(200)
    assert torch.equal(short, at_window)
    assert (longer[1:] < at_window[1:]).all() and (longest[1:] < longer[1:]).all()
    assert longer[0] == at_window[0]  # the highest frequency (base**0) is never scaled


def test_dynamic_frequencies_do_not_depend_on_earlier_runs():
    """inv_freq(T) is the frequencies of a T-token forward whatever ran before (transformers' dynamic rotary
    module remembers its longest forward; the re-encoder computes them afresh)."""
    with block_engine("dynamic") as eng:
        w = eng.launcher.worker
        req = eng.prepare("", QUERY, blocks=PASSAGES[:5], max_new_tokens=4)
        t = len(req.context_ids) + len(req.query_ids)
        assert t > DYNAMIC_WINDOW
        before = block_state(w).reencoder.inv_freq(t)
        eng.run(eng.prepare("", QUERY, blocks=PASSAGES, max_new_tokens=8))  # a longer prompt, then decode
        after = block_state(w).reencoder.inv_freq(t)
    assert torch.equal(after, before)


def test_engine_window_hides_the_dynamic_branch():
    """Documents why the tests above lift the window: through Engine.prepare, a dynamic-NTK model never sees a
    prompt longer than max_position_embeddings, so its frequencies never leave the original ones."""
    with make_engine(VARIANTS["dynamic"], attn_type="block") as eng:
        assert eng.window == DYNAMIC_WINDOW
        with pytest.raises(ConfigError, match="exceeds the model window"):
            eng.prepare("", QUERY, blocks=PASSAGES, max_new_tokens=4)

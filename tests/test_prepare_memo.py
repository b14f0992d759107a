"""What a request's preparation remembers between requests (block keys by text, rendered chat templates, a
config's RoPE rule) gives exactly what computing it afresh gives."""

from __future__ import annotations

from transformers import LlamaConfig

from star_runtime.attention.rope import frame_tag
from star_runtime.config import RunConfig
from star_runtime.kv.block_store import block_key
from star_runtime.models.loader import load_tokenizer, model_config, resolve_model
from star_runtime.modes.block import BlockMode, BlockPlacement
from star_runtime.prompts import TokenCache, rendered
from star_runtime.serve.protocol import MARK, chat_pieces


def _placement():
    source = resolve_model("random:tiny")
    return load_tokenizer(source), BlockPlacement("model-x", 8192, model_config(source))


def test_remembered_block_keys_equal_fresh_ones_under_every_tag():
    tok, place = _placement()
    texts = ["The river ran north.\n", "A stone in the garden.\n", "The river ran north.\n"]
    ids = TokenCache().encode(tok, texts)
    for tag in ("", "|rope:long", "", "|rope:long"):  # the second round reads the memo
        specs = place.place(ids, 2, tag, texts)
        assert [s.key for s in specs] == [block_key("model-x" + tag, i) for i in ids]
        assert specs[0].key == specs[2].key and specs[0].rank == specs[2].rank
    assert place.place(ids, 2, "|rope:short", texts)[0].key != place.place(ids, 2, "", texts)[0].key
    assert [s.key for s in place.place(ids, 2, "")] == [block_key("model-x", i) for i in ids]  # without texts


def test_block_prompt_with_a_chat_template_keys_its_head_as_a_block():
    tok, place = _placement()
    cfg = RunConfig(model_path="random:tiny", attn_type="block", chat_template=True)
    for _ in range(2):  # fresh, then from the memo
        p = BlockMode().prompt(tok, cfg, "", "Which river?", "sample 0", ["The river ran north.\n", "Stone.\n"],
                               place)
        n = [len(s.ids) for s in p.blocks]
        assert len(p.blocks) == 3 and sum(n) == len(p.context_ids)
        assert [s.key for s in p.blocks] == [block_key("model-x", list(s.ids)) for s in p.blocks]


def test_rendered_templates_equal_a_fresh_render():
    tok, _ = _placement()
    convs = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is RoPE?"}],
             [{"role": "user", "content": "x" * 20000}]]  # long: rendered, not kept
    for _ in range(2):
        for msgs in convs:
            head, tail = chat_pieces(tok, msgs)
            text = tok.apply_chat_template(msgs[:-1] + [{"role": "user", "content": MARK}], tokenize=False,
                                           add_generation_prompt=True)
            assert (head, tail) == (text.split(MARK)[0], msgs[-1]["content"] + text.split(MARK)[1])
            assert rendered(tok, msgs, msgs[-1]["content"][:2]) == tuple(
                tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).split(
                    msgs[-1]["content"][:2], 1))


def test_frame_tag_reads_each_config_once_and_each_config_for_itself():
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=100, max_position_embeddings=256)
    plain = LlamaConfig(**base)
    dynamic = LlamaConfig(**base, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    for _ in range(2):
        assert frame_tag(plain, 1000) == ""
        assert frame_tag(dynamic, 200) == "" and frame_tag(dynamic, 300) == "|rope:dynamic300"

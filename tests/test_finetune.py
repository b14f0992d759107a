"""Block fine-tuning: the training mask computes exactly what block-mode inference computes; a few steps
lower the loss and the checkpoint loads; the RAG data splits without leakage and holds the answer passage."""


import pytest
import torch

from conftest import DATA, make_engine, needs_data
from star_runtime.finetune.block_mask import block_attention_mask, collate, make_sequence
from star_runtime.finetune.rag_data import build


BLOCKS = ["Document (A):\nThe red door opens at dawn.\n\n", "Document (B):\nOtters hold hands while sleeping.\n\n",
          "Document (C):\nThe bridge was painted blue in 1921.\n\n"]
QUERY = "Answer the question from the documents above in a few words.\nQuestion: When was the bridge painted?\nAnswer:"


def test_mask_shape():
    m = block_attention_mask([2, 3], 7)
    assert m[1].tolist() == [True, True, False, False, False, False, False]
    assert m[3].tolist() == [False, False, True, True, False, False, False]  # block 2 does not see block 1
    assert m[6].tolist() == [True] * 7  # the final block sees everything
    assert torch.equal(block_attention_mask([2, 3], 7, block_mode=False), torch.ones(7, 7, dtype=torch.bool).tril())


@pytest.mark.parametrize("model,chat", [("random:tiny", False), ("random:tiny-qwen2", False), (None, True)])
def test_training_mask_equals_block_mode_inference(model, chat):
    """Response logits under the training mask == logits block-mode inference produces (cached blocks
    re-encoded), teacher-forced, fp32."""
    with make_engine(model, attn_type="block", chat_template=chat) as eng:
        tok = eng.tokenizer
        seq = make_sequence(tok, BLOCKS, QUERY, "in 1921", chat, tok.eos_token_id)
        ids, pos, mask, _ = collate([seq], [True], 0)
        net = eng.launcher.worker.model
        net.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():
                train_logits = net(input_ids=ids, position_ids=pos, attention_mask=mask).logits[0].float()
        finally:
            net.set_attn_implementation("star_runtime")
        req = eng.prepare("", QUERY, blocks=BLOCKS, max_new_tokens=1)
        assert [len(b.ids) for b in req.blocks] == seq.block_lens
        response = seq.ids[seq.response_start:]
        req.query_ids = req.query_ids + response[:-1]
        req.prefill_logits = True
        rep = eng.run(req)
    n_ctx = sum(seq.block_lens)
    assert req.context_ids + req.query_ids == seq.ids[:-1]
    ours = rep.prefill_logits  # rows = query positions
    first = seq.response_start - 1 - n_ctx
    for i in range(len(response)):
        a, b = ours[first + i], train_logits[seq.response_start - 1 + i]
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (i, (a - b).abs().max())
    # the unmasked (full attention) forward differs: the mask matters
    with torch.inference_mode():
        net.set_attn_implementation("sdpa")
        full = net(input_ids=ids, position_ids=pos).logits[0].float()
        net.set_attn_implementation("star_runtime")
    assert not torch.allclose(full[seq.response_start - 1], train_logits[seq.response_start - 1], atol=1e-3)


def test_few_steps_lower_the_loss_and_checkpoint_loads(tmp_path):
    from star_runtime.finetune.train import train

    samples = [{"blocks": BLOCKS[i:] + BLOCKS[:i], "input_query": QUERY, "outputs": ["in 1921"]} for i in range(3)]
    res = train("random:tiny", str(tmp_path / "ckpt"), steps=30, lr=3e-3, batch_size=3, samples=samples,
                chat_template=False, warmup=1)
    first, last = sum(res["losses"][:5]) / 5, sum(res["losses"][-5:]) / 5
    assert last < 0.7 * first, (first, last)
    with make_engine(str(tmp_path / "ckpt"), attn_type="block", tokens_to_generate=4) as eng:
        out = eng.generate("", QUERY, blocks=BLOCKS)
    assert out["tokens_generated"] >= 1


@needs_data("ruler")
def test_rag_data_splits_without_leakage_and_holds_the_answer():
    d = build(str(DATA), seed=3)
    train, ev = d["train"], d["eval"]
    assert len(train) > 1000 and len(ev) > 100
    assert not {s["question"] for s in train} & {s["question"] for s in ev}
    squad_train = {s["article"] for s in train if s["source"] == "squad"}
    squad_eval = {s["article"] for s in ev if s["source"] == "squad"}
    assert squad_eval and not squad_train & squad_eval  # whole articles held out
    for s in train[:300] + ev[:300]:
        assert s["input_query"].rstrip().endswith("Answer:") and s["question"] in s["input_query"]
        if s["source"] == "squad":
            assert len(s["answer_blocks"]) == 1 and len(s["blocks"]) == 5
            assert any(a in s["blocks"][s["answer_blocks"][0]] for a in s["outputs"])
        else:
            assert len(s["blocks"]) >= 2  # 10 paragraphs, or the 2 answering ones where the record has only those
            if s["outputs"][0].lower() not in ("yes", "no"):
                assert s["answer_blocks"]
    assert build(str(DATA), seed=3)["eval"][:20] == ev[:20]  # seeded

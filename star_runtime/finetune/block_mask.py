"""The Block-Attention training mask and the tokenized training sequence it goes with.

Every block but the last attends only within itself (causally); the last block (question) and the response
attend to everything before them, causally. Position ids are the ordinary full-sequence ones: in inference
the cached blocks are re-encoded to exactly these positions, so training and inference compute the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..prompts import tokenize_blocks


@dataclass
class TrainingSequence:
    ids: list[int]  # blocks, then question, then response (+ EOS)
    block_lens: list[int]  # lengths of the local blocks
    response_start: int  # first response position


def make_sequence(tokenizer, blocks: list[str], query: str, answer: str, chat_template: bool,
                  eos_id: int | None) -> TrainingSequence:
    block_ids, query_ids = tokenize_blocks(tokenizer, blocks, query, chat_template)
    response = tokenizer.encode(" " + answer.strip(), add_special_tokens=False) + ([eos_id] if eos_id is not None else [])
    ids = [t for b in block_ids for t in b] + query_ids
    return TrainingSequence(ids + response, [len(b) for b in block_ids], len(ids))


def block_attention_mask(block_lens: list[int], total: int, block_mode: bool = True) -> torch.Tensor:
    """(total, total) bool, True = may attend. block_mode False: ordinary causal (full attention)."""
    mask = torch.ones(total, total, dtype=torch.bool).tril()
    if block_mode:
        start = 0
        for n in block_lens:
            end = start + n
            mask[start:end, :start] = False  # a block sees nothing before it
            start = end
    return mask


def collate(seqs: list[TrainingSequence], block_mode: list[bool], pad_id: int):
    """Right-padded batch: input_ids (B, T), position_ids (B, T), attention mask (B, 1, T, T) bool, labels
    (B, T) with -100 outside the response. Padding rows see only themselves."""
    t = max(len(s.ids) for s in seqs)
    b = len(seqs)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    mask = torch.eye(t, dtype=torch.bool).repeat(b, 1, 1, 1)
    for i, (s, blk) in enumerate(zip(seqs, block_mode)):
        n = len(s.ids)
        ids[i, :n] = torch.tensor(s.ids)
        labels[i, s.response_start:n] = torch.tensor(s.ids[s.response_start:])
        mask[i, 0, :n, :n] = block_attention_mask(s.block_lens, n, blk)
    pos = torch.arange(t).unsqueeze(0).expand(b, -1).contiguous()
    return ids, pos, mask, labels

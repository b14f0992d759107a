"""Serving's fixed-shape steps over a KVTable (attention/table.py): one forward of A rows x Tb tokens whose KV
lives in the rows' own Arenas -- the decode step of up to A sequences (Tb = 1) and the query prefill of one
newcomer (A = 1, Tb = its query bucket). Each step is captured once as a CUDA graph (over the table's spare
rows, so capturing writes nothing anyone reads) and replayed for whichever sequences run: the table names
their buffers, two small device buffers their tokens and positions. One worker only: a row's buffer holds all
of its KV, so the attention needs no merge.
"""

from __future__ import annotations

import numpy as np
import torch

from .attention.hooks import attention_state
from .attention.pages import PageTable
from .attention.table import KVTable
from .fused import compiled_layers
from .models.loader import head_dim, text_config
from .staging import Staging


class TableAttention:
    """q: (A, Hq, Tb, D); k, v: (A, Hkv, Tb, D) of the step's tokens. Writes them at slots pos[a] + t of row a
    and attends over its slots < pos[a] + t + 1 (its context, earlier tokens, itself). Returns (A, Hq, Tb, D)."""

    def __init__(self, table: KVTable, base: torch.Tensor):
        self.table, self.base = table, base

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        self.table.write(layer, k, v, self.base)
        out, _ = self.table.attend(layer, q, self.base, scale)
        return out.to(q.dtype)


class TablePagesAttention(TableAttention):
    """A newcomer's query (A = 1) whose context is still the cached blocks where they lie: its KV is written
    through the table as TableAttention writes it, and it attends the blocks in place and itself causally
    through a PageTable (attention/pages.py) whose offsets count from the table's spare buffer, so one graph
    serves every arena."""

    def __init__(self, table: KVTable, base: torch.Tensor, pages):
        super().__init__(table, base)
        self.pages = pages

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        self.table.write(layer, k, v, self.base)
        out, _ = self.pages.attend(layer, q, scale)
        return out.to(q.dtype)


class TableStep:
    """tokens (A, Tb) at positions start[a] + t of the rows a KVTable names -> logits (A, V) of each row's token
    ``keep`` (decode: its only one; a query prefill: its last real one)."""

    def __init__(self, model, rows: int, tb: int, layers: str, use_graph: bool, pages: int = 0):
        """pages: a query prefill (rows 1) over cached blocks in place, with a PageTable of that capacity."""
        cfg, hd = text_config(model.config), head_dim(model.config)
        dev = next(model.parameters()).device
        self.model, self.rows, self.tb, self.layers = model, rows, tb, layers
        self.table = KVTable(rows, cfg.num_hidden_layers, cfg.num_key_value_heads, hd, model.dtype, dev,
                             spare_tokens=max(128, 2 * tb))
        self.use_graph = use_graph and self.table.kernel  # the torch twin reads the buffers it saw: no graph
        n = rows * tb
        self.head = 2 * n + rows + 1
        # tokens (A, Tb), positions (A, Tb), each row's first slot (A,) and the kept token, then a pages step's
        # page table: one buffer, one copy per call
        buf = torch.zeros(self.head + ((pages + 1) * 7 if pages else 0), dtype=torch.long, device=dev)
        self.upload = Staging(buf)  # a pinned twin: no stream sync per call
        self.dev = buf[:self.head]
        self.ids, self.pos = self.dev[:n].view(rows, tb), self.dev[n:2 * n].view(rows, tb)
        self.keep = self.dev[2 * n + rows:]
        self.state = TableAttention(self.table, self.dev[2 * n:2 * n + rows])
        self.pages = None
        if pages:
            meta = (buf[self.head:].view(pages + 1, 7), self.upload.host[self.head:].view(pages + 1, 7))
            self.pages = PageTable(pages, cfg.num_key_value_heads, hd // 2, dev, self.table.kernel, meta=meta)
            self.state = TablePagesAttention(self.table, self.dev[2 * n:2 * n + rows], self.pages)
        self.graph = None
        self.calls = 0

    def _forward(self) -> torch.Tensor:
        with attention_state(self.state), compiled_layers(self.model, self.layers):
            return self.model(input_ids=self.ids, position_ids=self.pos, use_cache=False,
                              logits_to_keep=self.keep).logits[:, -1]

    def capture(self) -> None:
        """Record the step as a CUDA graph over the spare rows (positions 0). A Triton build or launch problem
        leaves the step uncaptured on the torch twin, with one notice."""
        if not self.use_graph or self.graph is not None:
            return
        self.table.set([None] * self.rows)
        self.upload.buffer().numpy()[:] = 0  # tokens and positions 0: the spare rows' first slots
        if self.pages is not None:  # no blocks, the spare rows as the query's own
            sp = self.table.spare
            self.pages.fill([], [], torch.zeros(self.pages.half), sp, 0, self.tb, origin=sp)
        self.upload.push()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: kernels chosen, compiled layers built
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.upload.copy()  # the step's inputs: uploaded by the replay itself, no copy call before it
                self.logits = self._forward()
        except Exception as e:  # noqa: BLE001 -- the twin computes the same, uncaptured
            import sys

            print(f"[star-runtime] table step not captured ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
                  "running it uncaptured over the torch path", file=sys.stderr)
            self.use_graph, self.table.kernel = False, False
            if self.pages is not None:
                self.pages.kernel = False
            return
        self.graph = graph
        self.table.release()

    @torch.inference_mode()
    def __call__(self, buffers: list, tokens: list[list[int]], starts: list[int], keep: int, blocks=None
                 ) -> torch.Tensor:
        """buffers: per row an Arena's rows or None (a spare row); tokens[a]: up to Tb ids (padded here);
        starts[a]: the position and slot of its first. blocks (a pages step): (entries, offsets, inv_freq) of
        the one row's context, not yet in its buffer (kv/shard.py). Returns logits (A, V)."""
        self.calls += 1
        if self.use_graph and self.graph is None and self.calls >= 2:  # a bucket's first call runs as it is
            self.capture()
        self.table.set(list(buffers) + [None] * (self.rows - len(buffers)))
        n, tb = self.rows * self.tb, self.tb
        h = self.upload.buffer().numpy()  # (the last upload out of it has finished: the page table's part too)
        h[:self.head] = 0
        for a, (ids, s) in enumerate(zip(tokens, starts)):
            h[a * tb: a * tb + len(ids)] = ids
            h[n + a * tb: n + (a + 1) * tb] = np.arange(s, s + tb)
            h[2 * n + a] = s
        h[self.head - 1] = keep
        try:
            if self.pages is not None:  # its rows into the same host buffer (its pages' angles, when new, apart)
                entries, offsets, inv_freq = blocks
                self.pages.fill(entries, offsets, inv_freq, buffers[0], starts[0], self.tb, origin=self.table.spare)
            if self.graph is None:
                self.upload.push()
                return self._forward()
            self.graph.replay()  # (its first node uploads the buffer)
            self.upload.mark()
            return self.logits
        finally:
            self.table.release()  # the arenas stay the pool's to keep or free
            if self.pages is not None:
                self.pages.parts = []

"""Phase 2, one file: the query and every generated token attend to all workers' KV exactly (every mode).

All workers run the same forwards (SPMD). Each computes the partial attention of the new tokens over its
context shard; the query host also over the query/generated tokens it alone stores (QueryCache). The
partials (out, lse) of the whole batch are packed into one fp32 tensor and all-gathered once per layer, then
merged in the same order on every worker (merge_over_workers), so all workers continue with the same hidden
states. The query host samples the next tokens and broadcasts them with stop flags, so every worker takes the
same path.

Several samples decode together: each sample's query is prefilled on its own (lengths differ), then every
unfinished sample adds one token per step. Three step kinds: eager (shapes shrink as samples finish), static
(fixed shapes, finished samples ride along, lengths on the device) and graph (static, replayed from a CUDA
graph). Counters have one owner each: the eager loop owns positions and QueryCache.length; a static step owns
its device-side positions and own-token lengths (StaticKV / QueryCache.len_t).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .attention.hooks import attention_state
from .attention.rope import DYNAMIC_TYPES, frame_groups, rope_frame, rotary_of
from .attention.table import kernels_ok, write_slots
from .fused import compiled_layers
from .attention.merge import merge_partials, merge_two, pack, unpack
from .attention.pages import capacity_bucket, pages_needed
from .attention.partial import (ROWS_SPLIT_TOKENS, decode_partial, empty_partial, masked_partial, partial_attention,
                                prefill_partial, rows_partial)
from .kv.shard import ContextShard
from .models.loader import head_dim, model_shape, num_layers
from .progress import tick
from .sampling import GREEDY_BELOW, argmax_rows
from .table_step import TableStep

EOS, STOP_WORD = 1, 2
PAGES_WARM = 256  # page capacities a block server captures its in-place query prefills for (contexts to ~128K)


# -- KV of the query and generated tokens (query host) ----------------------------------------------------
class QueryCache:
    """Static, preallocated KV of the query and generated tokens; only the query host has one.

    Per layer a (1, H_kv, capacity, D) buffer, allocated at the layer's first write; ``length`` tokens are
    valid. A forward writes its new tokens at [length, length + T) in every layer, then ``commit(T)``.
    """

    def __init__(self, num_layers: int, capacity: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.capacity = capacity
        self.length = 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (1, H_kv, T, D) of the new tokens."""
        t = k.shape[2]
        if self.length + t > self.capacity:
            raise RuntimeError(f"query cache full: {self.length} + {t} > {self.capacity}")
        if self.k[layer] is None:
            # zeros, not empty: static decode reads every slot (masked), and 0 * NaN of stale memory is NaN
            shape = (1, k.shape[1], self.capacity, k.shape[3])
            self.k[layer] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v[layer] = torch.zeros(shape, dtype=v.dtype, device=v.device)
        self.k[layer][:, :, self.length : self.length + t] = k
        self.v[layer][:, :, self.length : self.length + t] = v

    def view(self, layer: int, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of tokens [0, upto): (1, H_kv, upto, D)."""
        return self.k[layer][:, :, :upto], self.v[layer][:, :, :upto]

    def commit(self, t: int) -> None:
        self.length += t

    # -- static decode (fixed shapes, device-side length: CUDA-graph friendly) ---------------------------
    def make_static(self) -> None:
        """From now on one token per step is written at the device-side index ``len_t``, which the static step
        advances: it is the only length from here on (``length`` is retired so nothing reads a stale copy)."""
        dev = self.k[0].device
        self.len_t = torch.tensor([self.length], dtype=torch.long, device=dev)
        self.slots = torch.arange(self.capacity, device=dev)
        self.length = None

    def write_static(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (1, H_kv, 1, D) written at slot ``len_t``."""
        self.k[layer].index_copy_(2, self.len_t, k)
        self.v[layer].index_copy_(2, self.len_t, v)

    def valid_static(self) -> torch.Tensor:
        """(capacity,) bool: slots holding tokens, the one written this step included."""
        return self.slots <= self.len_t


class StaticKV:
    """Static decode KV of A samples, one buffer per layer, so a decode step attends for the whole batch with
    one kernel per layer (a varlen flash kernel on GPUs) and the step is capturable in a CUDA graph.

    Per layer k, v: (A, C, H_kv, D), row a = sample a: its context shard at slots [0, L_a), then (query host
    only) its query and generated tokens right after, so the valid slots of a row are one prefix. ``len_t``
    (A,) on the device is each row's filled length before this step; the step writes its new token at
    ``len_t`` (host), attends over ``used`` = len_t + 1 slots (host) or len_t (other workers); the step
    (DecodeStep) then advances len_t on the host: it is the only length from here on. The context KV is
    copied once (``nbytes``).
    """

    def __init__(self, shards: list[ContextShard], caches: list[QueryCache] | None):
        ref = _reference_tensor(shards, caches)
        dev, dt, hkv, d = ref.device, ref.dtype, ref.shape[1], ref.shape[3]
        lens = [len(sh) for sh in shards]
        own = [c.length for c in caches] if caches else [0] * len(shards)
        self.capacity = max(n + (c.capacity if caches else 0) for n, c in zip(lens, caches or [None] * len(lens)))
        a = len(shards)
        self.k, self.v = [], []
        for layer in range(len(shards[0].keys)):
            k = torch.zeros((a, self.capacity, hkv, d), dtype=dt, device=dev)
            v = torch.zeros_like(k)
            for i, sh in enumerate(shards):
                if lens[i]:
                    sk, sv = sh.get(layer)
                    k[i, : lens[i]] = sk[0].transpose(0, 1)
                    v[i, : lens[i]] = sv[0].transpose(0, 1)
                if caches and own[i]:
                    c = caches[i]
                    k[i, lens[i]: lens[i] + own[i]] = c.k[layer][0, :, : own[i]].transpose(0, 1)
                    v[i, lens[i]: lens[i] + own[i]] = c.v[layer][0, :, : own[i]].transpose(0, 1)
            self.k.append(k)
            self.v.append(v)
        self.has_own = caches is not None
        self.len_t = torch.tensor([n + o for n, o in zip(lens, own)], dtype=torch.long, device=dev)
        self.row_ids = torch.arange(a, device=dev)
        self.slots = torch.arange(self.capacity, device=dev)
        self.used = None

    @staticmethod
    def nbytes(shards: list[ContextShard], caches: list[QueryCache] | None) -> int:
        """Bytes of the copy; 0 when there is nothing to attend to (no context, no own tokens)."""
        ref = _reference_tensor(shards, caches)
        if ref is None:
            return 0
        cap = max(len(sh) + (c.capacity if caches else 0) for sh, c in zip(shards, caches or [None] * len(shards)))
        per_token = 2 * len(shards[0].keys) * ref.shape[1] * ref.shape[3] * ref.element_size()
        return len(shards) * cap * per_token

    def begin_step(self) -> None:
        """Once per step, before layer 0: the slots every layer attends to this step (int32, as kernels take),
        and the last one (the split kernel's base)."""
        self.used = (self.len_t + 1 if self.has_own else self.len_t).to(torch.int32)
        self.base = self.used - 1

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (A, H_kv, 1, D), each sample's new token, written at its slot len_t (one kernel for both)."""
        write_slots(k, v, self.k[layer], self.v[layer], self.len_t, self.row_ids)


def _reference_tensor(shards: list[ContextShard], caches: list[QueryCache] | None) -> torch.Tensor | None:
    """Any stored key tensor (device, dtype, heads, head dim), or None if the batch holds none."""
    for c in caches or []:
        if c.k[0] is not None:
            return c.k[0]
    for sh in shards:
        if len(sh):
            return sh.get(0)[0]
    return None


# -- phase-2 attention ------------------------------------------------------------------------------------
def merge_over_workers(group, out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """This worker's partial (out (A, Hq, T, D), lse (A, Hq, T)) -> the exact attention over every worker's
    KV: one packed all-gather (W, A, Hq, T, D + 1), merged in the same order on every worker. Returns out."""
    if group.world_size == 1:
        return out
    return merge_partials(*unpack(group.all_gather(pack(out, lse))))[0]


class GlobalAttention:
    """New tokens of A samples: q (A, Hq, T, D); k, v (A, Hkv, T, D). Returns (A, Hq, T, D).

    shards[a] is sample a's context shard on this worker; caches[a] its query/generated KV (query host
    only, else None). ``static``: decode with fixed shapes (one token per sample, cache length on the device),
    so the step can be captured in a CUDA graph.
    """

    def __init__(self, group, shards: list[ContextShard], caches: list[QueryCache] | None, static: bool = False):
        self.group = group
        self.shards = shards
        self.caches = caches
        self.static = static

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        outs, lses = [], []
        for a, shard in enumerate(self.shards):
            qa = q[a:a + 1]
            n = len(shard) if shard.rows is not None else 0
            if n:  # token-major rows: the split kernel reads them in place
                o, l = rows_partial(qa, shard.rows[layer, 0, :n].unsqueeze(0), shard.rows[layer, 1, :n].unsqueeze(0),
                                    shard.length_t(), scale)
            else:
                sk, sv = shard.get(layer)
                o, l = empty_partial(qa) if sk is None or sk.shape[2] == 0 else partial_attention(qa, sk, sv, scale)
            if self.caches is not None:
                own = _own_static if self.static else _own
                o, l = merge_two(o, l, *own(self.caches[a], layer, qa, k[a:a + 1], v[a:a + 1], scale))
            outs.append(o)
            lses.append(l)
        out, lse = (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))
        return merge_over_workers(self.group, out, lse).to(q.dtype)


class StaticAttention:
    """Static decode of A samples over one StaticKV: one write, one attention and (several workers) one
    collective per layer for the whole batch. Same math as GlobalAttention(static=True).

    q: (A, Hq, 1, D); k, v: (A, Hkv, 1, D). Returns (A, Hq, 1, D) in q's dtype. On one worker the kernel's
    output is the answer (no merge, no fp32 round trip); on several, out and lse are merged in fp32.
    """

    def __init__(self, group, kv: StaticKV):
        self.group = group
        self.kv = kv

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        if layer == 0:
            self.kv.begin_step()
        if self.kv.has_own:
            self.kv.write(layer, k, v)
        out, lse = decode_partial(q, self.kv.k[layer], self.kv.v[layer], self.kv.used, self.kv.slots, scale,
                                  native_out=self.group.world_size == 1, base=self.kv.base)
        if self.group.world_size == 1:
            return out.to(q.dtype)
        return merge_over_workers(self.group, out, lse).to(q.dtype)


def _own(cache: QueryCache, layer, q, k, v, scale):
    """Causal attention of the new tokens over the host's query/generated KV (earlier ones + themselves).

    q: (1, Hq, T, D); k, v: (1, Hkv, T, D).
    """
    t, prev = q.shape[2], cache.length
    cache.write(layer, k, v)
    if t == 1:  # decode: one token sees every earlier own token and itself, no mask
        ck, cv = cache.view(layer, prev + 1)
        return partial_attention(q, ck, cv, scale)
    o, l = partial_attention(q, k, v, scale, causal=True)
    if prev > 0:
        ck, cv = cache.view(layer, prev)
        o, l = merge_two(o, l, *partial_attention(q, ck, cv, scale))
    return o, l


def _own_static(cache: QueryCache, layer, q, k, v, scale):
    """Decode over the preallocated cache: write at the device-side slot, attend to the valid slots."""
    cache.write_static(layer, k, v)
    return masked_partial(q, cache.k[layer], cache.v[layer], scale, cache.valid_static())


# -- fixed-shape step (static / graph) ---------------------------------------------------------------------
def graph_capturable(model) -> bool:
    """Dynamic RoPE types choose their frequencies on the host from the positions: not capturable."""
    return getattr(rotary_of(model), "rope_type", "default") not in DYNAMIC_TYPES


def use_batched_kv(shards: list[ContextShard], caches: list[QueryCache] | None, device: torch.device,
                   choice: bool | None = None) -> bool:
    """Decode over one copy of the batch's KV with room for the new tokens (StaticKV: one kernel per layer)
    when it fits in half the free device memory; otherwise attend per sample over the shards where they lie
    (same math, more launches). choice: True / False forces one way (benchmarks compare them)."""
    if choice is not None:
        return choice and StaticKV.nbytes(shards, caches) > 0
    need = StaticKV.nbytes(shards, caches)
    if need == 0:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need <= free // 2
    return True


class DecodeStep:
    """tokens (A,) -> next-token logits (A, V) for the A samples, positions advancing by one per call.

    shards: each sample's context shard; caches: each sample's query/generated KV (query host) or None.
    Several samples attend together over a padded copy of their KV (one kernel sequence per layer for the
    batch) when it fits (use_batched_kv; ``batched_kv`` forces a choice), else sample by sample. The step owns
    the positions and own-token lengths, on the device, and advances them itself.
    """

    def __init__(self, model, group, shards: list[ContextShard], caches: list[QueryCache] | None,
                 tokens: list[int], positions: list[int], use_graph: bool, batched_kv: bool | None = None,
                 layers: str = "eager", kv: "StaticKV | Arena | None" = None):
        """kv: a KV to decode over as it is (an Arena: kept, with this step, across requests; rearm())."""
        dev = group.device
        self.model = model
        self.layers = layers  # --prefill_layers: compiled decoder layers fuse the step's elementwise work too
        self.ids = torch.tensor(tokens, dtype=torch.long, device=dev).view(-1, 1)
        self.pos = torch.tensor(positions, dtype=torch.long, device=dev).view(-1, 1)
        self.batched = kv is not None or use_batched_kv(shards, caches, dev, batched_kv)
        if self.batched:
            kv = kv if kv is not None else StaticKV(shards, caches)
            for c in caches or []:
                c.length = None  # the copy's len_t is the only length from here on
            self.state = StaticAttention(group, kv)
            self.counters = [kv.len_t] if kv.has_own else []
        else:
            for c in caches or []:
                c.make_static()
            self.state = GlobalAttention(group, shards, caches, static=True)
            self.counters = [c.len_t for c in caches or []]
        self.graph = None
        if use_graph:
            self.capture()

    def _forward(self) -> torch.Tensor:
        with attention_state(self.state), compiled_layers(self.model, self.layers):
            logits = self.model(input_ids=self.ids, position_ids=self.pos, use_cache=False,
                                logits_to_keep=1).logits[:, -1]
        for n in self.counters:
            n += 1
        self.pos += 1
        return logits

    def capture(self) -> None:
        """Record the step as a CUDA graph (positions and lengths are left as they were)."""
        saved_pos = self.pos.clone()
        saved_len = [n.clone() for n in self.counters]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: kernels chosen, fused ops compiled, communicators ready
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved_pos, saved_len)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = self._forward()
        self._restore(saved_pos, saved_len)  # capture records; make sure nothing moved

    def rearm(self, tokens: list[int], positions: list[int]) -> None:
        """A new request on the same KV (an Arena): its first tokens and positions (its lengths are the KV's)."""
        self.ids.copy_(torch.tensor(tokens, dtype=torch.long).view(-1, 1))
        self.pos.copy_(torch.tensor(positions, dtype=torch.long).view(-1, 1))

    def _restore(self, pos, lens) -> None:
        self.pos.copy_(pos)
        for n, saved in zip(self.counters, lens):
            n.copy_(saved)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (A,) long on the device, the previous step's tokens. Returns logits (A, V)."""
        self.ids.copy_(tokens.view(-1, 1))
        if self.graph is None:
            out = self._forward()
        else:
            self.graph.replay()
            out = self.logits
        return out


# -- one request on one worker, from CUDA graphs kept across requests ------------------------------------------
def bucket(n: int, step: int) -> int:
    return -(-n // step) * step


def query_bucket(t: int) -> int:
    """Query lengths share graphs in buckets: 16, 32, 64, ... tokens."""
    return max(16, 1 << (t - 1).bit_length())


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def batch_buckets(max_batch: int) -> list[int]:
    """The decode batch sizes a server captures steps for: powers of two up to max_batch's bucket."""
    return [b for b in BATCH_BUCKETS if b < max_batch] + [batch_bucket(max_batch)]


def batch_bucket(n: int) -> int:
    """Running batch sizes share decode steps in buckets 1, 2, 4, ... (rows past n are spare)."""
    return 1 << (n - 1).bit_length()


def context_bucket(need: int) -> int:
    """Arena capacities: multiples of 2048 tokens up to 8192, of 8192 beyond."""
    return bucket(need, 2048) if need <= 8192 else bucket(need, 8192)


def arena_path(world_size: int, samples: int, decode: str, model) -> bool:
    """One sample on one worker with fixed-shape steps and a RoPE whose frequencies do not follow the length
    (the arena's padded query would pick other ones): its query prefill and decode run over an Arena (the same
    choice phase 1 makes when it writes its KV into one)."""
    return world_size == 1 and samples == 1 and decode in ("static", "graph") and graph_capturable(model)


class Arena:
    """One sample's phase-2 KV on one worker, kept across requests: a token-major buffer of a capacity bucket,
    with the steps over it (query prefill per query-length bucket, decode) that capture their CUDA graphs once
    and are replayed by every later request of the bucket (a graph records addresses: the buffers stay).

    rows: (layers, 2, C, H_kv, D) -- the context at [0, L), then the query and generated tokens. As a StaticKV
    for StaticAttention: k[layer], v[layer] (1, C, H_kv, D), len_t (1,) (filled slots), has_own.
    """

    def __init__(self, num_layers: int, capacity: int, hkv: int, d: int, dtype, device):
        self.capacity = capacity
        self.rows = torch.zeros((num_layers, 2, capacity, hkv, d), dtype=dtype, device=device)
        self.k = [self.rows[layer, 0].unsqueeze(0) for layer in range(num_layers)]
        self.v = [self.rows[layer, 1].unsqueeze(0) for layer in range(num_layers)]
        self.len_t = torch.zeros(1, dtype=torch.long, device=device)
        self.row_ids = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(capacity, device=device)
        self.has_own = True
        self.used = None
        self.prefills: dict[int, PrefillStep] = {}
        self.step: DecodeStep | None = None
        self.busy = False  # a served sequence decodes over these rows (Sequences.adopt) until it leaves

    def load(self, shard: ContextShard) -> None:
        """This request's context: written here by phase 1 already (shard.rows), else copied in."""
        shard.settle()
        n = len(shard)
        if shard.rows is not self.rows:
            for layer in range(len(self.k)):
                k, v = shard.get(layer)
                if n:
                    self.rows[layer, 0, :n] = k[0].transpose(0, 1)
                    self.rows[layer, 1, :n] = v[0].transpose(0, 1)
        self.len_t.fill_(n)

    begin_step = StaticKV.begin_step
    write = StaticKV.write


class Arenas:
    """A worker's arenas, each with its CUDA graphs, kept across requests while they fit: on a GPU at most
    ``keep`` of them and a new one only while ``reserve`` of the card stays free after it (the least recently
    used idle ones go first), elsewhere the ``cpu_keep`` most recent. Requests of mixed lengths thus keep
    replaying their buckets' graphs instead of rebuilding them every time another bucket came between; a
    server's concurrent sequences each hold one (``busy``) until they leave."""

    def __init__(self, keep: int = 8, reserve: float = 0.2, cpu_keep: int = 2):
        self.keep, self.reserve, self.cpu_keep = keep, reserve, cpu_keep
        self.pool: list[Arena] = []  # least recently used first
        self.claimed = lambda: 0  # device bytes others may still take (a block store's unused budget)
        self.steps: dict[tuple[int, int], TableStep] = {}  # (query bucket, pages) -> in-place query prefill
        self.made = 0  # arenas made so far (a new one's zeros are device work)

    def prefill_in_place(self, model, arena: "Arena", shard: ContextShard, query: list[int], start: int,
                         use_graph: bool, layers: str) -> torch.Tensor:
        """The first token's logits (1, V) of a query (T ids, on the host: nothing read back from the device)
        whose context ``shard`` still lies in the block store (its gather deferred, shard.blocks): the TableStep
        of the query's bucket and the shard's page capacity (table_step.py; one CUDA graph for every arena)
        writes its KV at [start, start + T) of the arena and attends the blocks in place."""
        t = len(query)
        key = (query_bucket(t), capacity_bucket(pages_needed([e.shape[3] for e in shard.blocks[0]])))
        if key not in self.steps:
            self.steps[key] = TableStep(model, 1, key[0], layers, use_graph, key[1])
        logits = self.steps[key]([arena.rows], [query], [start], t - 1, shard.blocks)
        arena.len_t.fill_(start + t)
        return logits

    def _room(self, need: int, device) -> bool:
        """Whether ``need`` more bytes leave ``reserve`` of the device free (bytes the allocator holds unused
        count as free)."""
        if device.type != "cuda":
            return len(self.pool) < self.cpu_keep
        free, total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free - need - self.claimed() >= self.reserve * total

    def for_request(self, model, context: int, query: int, max_new: int, device, must: bool = True
                    ) -> "Arena | None":
        """An idle arena of the request's capacity bucket (the most recent), else a new one after idle ones
        went to make room. With ``must`` False: None when every arena is busy and no new one fits."""
        cap = context_bucket(context + query_bucket(query) + max_new + 1)
        pool = self.pool
        if pool and pool[-1].capacity == cap and not pool[-1].busy:  # the most recent (phase 1's, asked again)
            return pool[-1]
        layers, hkv, hd = model_shape(model.config)
        arena = next((x for x in reversed(pool) if x.capacity == cap and not x.busy), None)
        if arena is not None:
            self.pool.remove(arena)
        else:
            need = 2 * layers * cap * hkv * hd * model.dtype.itemsize
            device = torch.device(device)
            limit = self.keep if device.type == "cuda" else self.cpu_keep
            while len(self.pool) >= limit or not self._room(need, device):
                lru = next((x for x in self.pool if not x.busy), None)
                if lru is None:  # still no room and every arena busy
                    if not must:
                        return None
                    break
                self.pool.remove(lru)
            arena = Arena(layers, cap, hkv, hd, model.dtype, device)
            self.made += 1
        self.pool.append(arena)  # most recent last
        return arena


class PrefillAttention:
    """The query of one sample (T real tokens padded to Tb) over its Arena: write the Tb tokens' KV after the
    context, attend causally over context + the real query tokens (one varlen flash launch on GPUs).

    q: (1, Hq, Tb, D); k, v: (1, Hkv, Tb, D). Returns (1, Hq, Tb, D); rows past T are padding (never read).
    """

    def __init__(self, group, arena: Arena, step: "PrefillStep"):
        self.group, self.arena, self.step = group, arena, step
        self.used = None

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        a, st = self.arena, self.step
        if layer == 0:
            self.used = (a.len_t + st.tq).to(torch.int32)
            self.slots = a.len_t + st.offsets
        a.rows[layer, 0].index_copy_(0, self.slots, k[0].transpose(0, 1))
        a.rows[layer, 1].index_copy_(0, self.slots, v[0].transpose(0, 1))
        out, lse = prefill_partial(q, a.k[layer], a.v[layer], self.used, st.cu_q, a.slots, scale, native_out=True)
        return out.to(q.dtype)


class PrefillStep:
    """The query prefill of one sample over an Arena for query bucket Tb, fixed shapes (lengths, the real
    query length and the kept logit's index on the device): replayed from a CUDA graph (graph=True, captured at
    the bucket's second request, so a first one costs what an eager prefill costs) or run as it is. Returns
    the logits (1, V) of the last real query token."""

    def __init__(self, model, group, arena: Arena, tb: int, use_graph: bool, layers: str):
        dev = group.device
        self.model, self.group, self.arena, self.tb = model, group, arena, tb
        self.use_graph, self.layers = use_graph, layers
        self.ids = torch.zeros((1, tb), dtype=torch.long, device=dev)
        self.pos = torch.zeros((1, tb), dtype=torch.long, device=dev)
        self.tq = torch.ones(1, dtype=torch.long, device=dev)
        self.keep = torch.zeros(1, dtype=torch.long, device=dev)
        self.cu_q = torch.tensor([0, 1], dtype=torch.int32, device=dev)
        self.offsets = torch.arange(tb, device=dev)
        self.state = PrefillAttention(group, arena, self)
        self.graph = None
        self.calls = 0

    def _forward(self) -> torch.Tensor:
        with attention_state(self.state), compiled_layers(self.model, self.layers):
            logits = self.model(input_ids=self.ids, position_ids=self.pos, use_cache=False,
                                logits_to_keep=self.keep).logits[:, -1]
        self.arena.len_t += self.tq
        return logits

    def __call__(self, query: torch.Tensor, start: int) -> torch.Tensor:
        t = query.numel()
        self.ids.zero_()
        self.ids[0, :t] = query
        self.pos.copy_(torch.arange(start, start + self.tb, device=self.pos.device).view(1, -1))
        self.tq.fill_(t)
        self.keep.fill_(t - 1)
        self.cu_q[1] = t
        self.calls += 1
        if not self.use_graph or self.calls == 1:  # the first request of a bucket runs as it is (no capture)
            return self._forward()
        if self.graph is None:
            saved = self.arena.len_t.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: kernels chosen, compiled layers built
                for _ in range(2):
                    self._forward()
                    self.arena.len_t.copy_(saved)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.logits = self._forward()
            self.arena.len_t.copy_(saved)
        self.graph.replay()
        return self.logits


# -- the decode loop -----------------------------------------------------------------------------------------
@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    first_token_s: float = 0.0  # this sample's query prefill until its first token is known
    ttft_s: float = 0.0  # generate's ``started`` (default: its own start) until this sample's first token is known
    decode_s: float = 0.0  # wall time of the decode steps this sample took part in (and of a deferred gather)
    stopped_by: str = "length"  # eos | stop_word | length
    steps: int = 0  # forwards: 1 query prefill + (steps - 1) decode steps
    logits: list = field(default_factory=list)  # per step (V,) fp32 on the CPU, host only, if asked
    prefill_logits: torch.Tensor | None = None  # (Tq, V) of the query prefill, host only, if asked


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)




def resolve_decode_mode(mode: str, model, device: torch.device, num_devices: int = 1) -> str:
    """auto: a CUDA graph per batch on GPUs (unless the RoPE type needs the host), eager elsewhere; static
    (same fixed shapes, not captured) for a model split over several GPUs."""
    if mode == "auto":
        if device.type == "cuda" and num_devices > 1:
            return "static"
        return "graph" if device.type == "cuda" and graph_capturable(model) else "eager"
    if mode == "graph" and num_devices > 1:
        raise ValueError("--decode graph captures one GPU's stream; a model split over several GPUs decodes "
                         "with --decode static")
    if mode == "graph" and (device.type != "cuda" or not graph_capturable(model)):
        raise ValueError("--decode graph needs a CUDA device and a RoPE type without host-side updates; "
                         "use --decode static or eager")
    return mode


@torch.inference_mode()
def generate(model, group, shards: list[ContextShard], queries: list[torch.Tensor], starts: list[int],
             max_new: list[int], samplers, stop_checkers, eos: set[int], keep_logits: bool = False,
             decode: str = "eager", prefill_logits: bool = False, batched_kv: bool | None = None,
             layers: str = "eager", arenas: "Arenas | None" = None, query_ids: list[list[int]] | None = None,
             started: float | None = None, device: torch.device | None = None) -> list[Generation]:
    """Query prefill then decode for a batch of samples.

    queries[b]: (Tq_b,) long, on the model device or (with ``device`` given) on the host: moved where a path
    reads them on the device (the in-place first token reads the host's ids); starts[b]: sample b's context
    length (its first query position); max_new[b]: its token cap; samplers/stop_checkers: per sample, used on
    the host only.
    decode: eager (shapes shrink as samples finish), static (fixed shapes) or graph (static, replayed from
    a CUDA graph). prefill_logits: the host also keeps the logits of every query position (Tq, V) (to
    compare with a teacher-forced forward). batched_kv: static decode over one padded KV copy (True), per
    sample (False), or as memory allows (None). layers: --prefill_layers for the query prefill and the static
    steps (compiled decoder layers fuse their elementwise work; fused.compiled_layers). Returns per sample the
    generated ids (without EOS), identical on every worker. arenas: the worker's Arenas; one sample on one
    worker with fixed-shape steps then prefills and decodes over an Arena, from graphs kept across requests.
    query_ids: the queries' ids on the host as well (else read back from the device where needed). started: the
    perf_counter time each sample's ``ttft_s`` counts from (the caller's start: phase 1 included).
    """
    started = time.perf_counter() if started is None else started
    dev = queries[0].device if device is None else torch.device(device)
    n = len(queries)
    host = group.is_host
    arena = None
    if arenas is not None and arena_path(group.world_size, n, decode, model) and not prefill_logits:
        arena = arenas.for_request(model, len(shards[0]), queries[0].numel(), max_new[0], dev)
    # a context whose gather phase 1 deferred (cached blocks, kv/shard.py): the first token attends the blocks
    # in place, the gather runs after it; everything else reads settled rows
    paged = arena is not None and shards[0].blocks is not None and shards[0].rows is arena.rows
    first = None
    if paged:  # launched before the bookkeeping below, which then overlaps the device's work (one sample)
        t_first = time.perf_counter()
        ids = query_ids[0] if query_ids is not None else queries[0].tolist()  # (the step reads the host's ids)
        first = arenas.prefill_in_place(model, arena, shards[0], ids, starts[0], decode == "graph", layers)
    # static decode keeps finished samples in the batch, so every cache must hold the longest run
    cap = [q.numel() + (max(max_new) if decode != "eager" else m) for q, m in zip(queries, max_new)]
    caches = [QueryCache(num_layers(model), c) for c in cap] if host else None
    gens = [Generation() for _ in range(n)]
    last = [0] * n
    pos = [s + q.numel() for s, q in zip(starts, queries)]  # next position per sample
    running = [True] * n

    def forward(batch: list[int], ids: torch.Tensor, position_ids: torch.Tensor, keep_all: bool = False):
        state = GlobalAttention(group, [shards[b] for b in batch], [caches[b] for b in batch] if host else None)
        with attention_state(state), compiled_layers(model, layers if ids.shape[1] > 1 else "eager"):
            logits = model(input_ids=ids, position_ids=position_ids, use_cache=False,
                           logits_to_keep=0 if keep_all else 1).logits
        if keep_all and host:
            gens[batch[0]].prefill_logits = logits[0].float().cpu()
        if host:
            for b in batch:
                caches[b].commit(ids.shape[1])
        return logits[:, -1]

    def decide(batch: list[int], logits: torch.Tensor | None, greedy: list[int] | None = None) -> None:
        """Host picks each sample's token and stop flag; every worker receives them (one worker: no copies).
        greedy: the batch's argmax tokens when the caller has them already."""
        if host:
            rows = []
            # greedy batch: one argmax and one device-to-host copy for every sample
            if greedy is None and all(samplers[b].temperature < GREEDY_BELOW for b in batch):
                greedy = argmax_rows(logits).tolist()
            for i, b in enumerate(batch):
                if keep_logits:
                    gens[b].logits.append(logits[i].float().cpu())
                tok = greedy[i] if greedy is not None else samplers[b](logits[i])
                stop = EOS if tok in eos else 0
                if not stop and stop_checkers[b] is not None and stop_checkers[b](gens[b].tokens + [tok]):
                    stop = STOP_WORD
                rows.append((tok, stop))
        if group.world_size > 1:
            msg = torch.tensor(rows, dtype=torch.long, device=dev) if host else \
                torch.zeros(len(batch), 2, dtype=torch.long, device=dev)
            group.broadcast(msg, group.host)
            rows = msg.tolist()
        for (tok, stop), b in zip(rows, batch):
            gens[b].steps += 1
            if stop != EOS:
                gens[b].tokens.append(tok)
            last[b] = tok
            if stop:
                gens[b].stopped_by = "eos" if stop == EOS else "stop_word"
                running[b] = False
            elif gens[b].steps >= max_new[b]:
                running[b] = False

    for b, sh in enumerate(shards):
        if not (paged and b == 0):
            sh.settle()
    for b in range(n):  # query prefill, one sample at a time
        t0 = time.perf_counter()
        q = None if paged else queries[b].to(dev)
        if paged:  # (one sample, launched above)
            t0 = t_first
            decide([b], first)
        elif arena is not None:  # fixed shapes over the arena: one graph replay
            arena.load(shards[b])
            tb = query_bucket(q.numel())
            if tb not in arena.prefills:
                arena.prefills[tb] = PrefillStep(model, group, arena, tb, decode == "graph", layers)
            decide([b], arena.prefills[tb](q, starts[b]))
        else:
            p = torch.arange(starts[b], starts[b] + q.numel(), device=dev).unsqueeze(0)
            with rope_frame(model, starts[b] + q.numel()):  # the prompt's frequencies, as phase 1 had them
                decide([b], forward([b], q.unsqueeze(0), p, keep_all=prefill_logits))
        # decide read the token back (every worker: the host its choice, the others the broadcast), so the
        # device's work up to it is done: no second sync on the way to the first token
        done = time.perf_counter()
        gens[b].first_token_s, gens[b].ttft_s = done - t0, done - started
        if paged and running[b]:  # the context into the arena for the decode steps, after the first token
            t0 = time.perf_counter()
            shards[b].settle()
            sync_device(dev)
            gens[b].decode_s += time.perf_counter() - t0

    step = None  # static / graph: one fixed-shape step for the whole batch (finished samples ride along)
    if arena is not None and any(running):
        if arena.step is None:
            arena.step = DecodeStep(model, group, shards, None, last, pos, use_graph=decode == "graph",
                                    layers=layers, kv=arena)
        else:
            arena.step.rearm(last, pos)
        step = arena.step
    elif decode != "eager" and any(running) and len(frame_groups(model.config, [p + 1 for p in pos])) == 1:
        step = DecodeStep(model, group, shards, caches, last, pos, use_graph=decode == "graph",
                          batched_kv=batched_kv, layers=layers)
    next_ids = None  # the next step's input tokens (A,), on the device, when the last step chose them there
    while any(running):  # decode, every unfinished sample one token per step
        tick()
        batch = [b for b in range(n) if running[b]]
        t0 = time.perf_counter()
        if step is not None:
            logits = step(next_ids if next_ids is not None else torch.tensor(last, dtype=torch.long, device=dev))
            next_ids = None
            if group.world_size == 1 and all(samplers[b].temperature < GREEDY_BELOW for b in range(n)):
                # greedy on one worker: the next step's input stays on the device, one copy to the host
                next_ids = argmax_rows(logits)
                picked = next_ids.tolist()
                decide(batch, logits[batch], [picked[b] for b in batch])
            else:
                decide(batch, logits[batch] if host else None)
        else:  # one forward per group of samples sharing RoPE frequencies (one group but for LongRoPE)
            for grp in frame_groups(model.config, [pos[b] + 1 for b in batch]):
                sub = [batch[j] for j in grp]
                ids = torch.tensor([[last[b]] for b in sub], dtype=torch.long, device=dev)
                p = torch.tensor([[pos[b]] for b in sub], dtype=torch.long, device=dev)
                with rope_frame(model, max(pos[b] + 1 for b in sub)):
                    decide(sub, forward(sub, ids, p))
            for b in batch:
                pos[b] += 1
        dt = time.perf_counter() - t0  # the step's tokens were read back (decide): its device work is done
        for b in batch:
            gens[b].decode_s += dt
    return gens


# -- continuous batching: sequences join and leave at step boundaries -------------------------------------------
@dataclass
class Sequence:
    """One request being decoded on this worker: its context shard, its query/generated KV (query host), the
    next position, the last token, and (host) its sampler, stop checker and tokens so far."""

    shard: ContextShard
    cache: QueryCache | None
    pos: int
    max_new: int
    sampler: object = None
    stop: object = None
    last: int = 0
    steps: int = 0
    tokens: list[int] = field(default_factory=list)


class Sequences:
    """The sequences one worker decodes for a server (SPMD: every worker holds the same sequence ids).

    ``add`` runs a newcomer's query prefill (its phase 1 is done: its shard) and returns its first token and
    stop flag; ``step`` runs one decode step for the given sequences together and returns each one's token and
    stop flag; ``remove`` frees one. A running batch therefore changes at every step boundary without waiting
    for anyone. Stop flags: 0, EOS, STOP_WORD (the caller also ends a sequence at its token cap).

    Two ways to run a step. Sequences whose KV lives in Arenas (``table_prefill``/``adopt``; one worker,
    fixed-shape steps) decode by a TableStep of their batch-size bucket -- one CUDA-graph replay for the whole
    batch, however it changed since the last step (table_step.py). Otherwise (several workers, dynamic RoPE, a
    newcomer with no arena to be had in the batch) one eager forward with one collective per layer
    (GlobalAttention); the tokens an arena sequence decoded so wait in its QueryCache and move into its arena
    when it is next on a table step (``_fold``).
    """

    def __init__(self, model, group, eos: set[int], layers: str = "eager", decode: str = "eager"):
        self.model, self.group, self.eos, self.layers, self.decode = model, group, eos, layers, decode
        self.seqs: dict[int, Sequence] = {}
        self.arenas: dict[int, Arena] = {}  # sequences that live in an Arena's rows
        self.steps: dict[tuple[int, int, int], TableStep] = {}  # (rows, tokens, pages) -> its TableStep
        self.unsettled: dict[int, ContextShard] = {}  # newcomers' contexts still to gather into their arenas
        self.last_path = "batch"  # how the last step ran: "table" (TableStep) or "batch" (eager)
        self._kernels_ok: bool | None = None  # the table kernels serve this model here (GPU; made once)

    def table_step(self, rows: int, tb: int, pages: int = 0) -> TableStep:
        """The TableStep of ``rows`` x ``tb`` tokens (pages: a query prefill over cached blocks in place, with
        a page table of that capacity)."""
        key = (rows, tb, pages)
        if key not in self.steps:
            self.steps[key] = TableStep(self.model, rows, tb, self.layers, self.decode == "graph", pages)
        return self.steps[key]

    def warm(self, max_batch: int, pages: bool = False) -> None:
        """Capture every decode bucket up to max_batch rows and the query buckets up to ROWS_SPLIT_TOKENS before
        serving, so no request waits for a capture (graph decode on a capturable model only). pages: also the
        query buckets over cached blocks in place, for page capacities up to PAGES_WARM (block mode)."""
        if self.decode != "graph" or not graph_capturable(self.model) or self.group.world_size != 1:
            return
        for rows in batch_buckets(max_batch):
            self.table_step(rows, 1).capture()
        tb = 16
        while tb <= ROWS_SPLIT_TOKENS:
            self.table_step(1, tb).capture()
            cap = capacity_bucket(1)
            while pages and cap <= PAGES_WARM:
                self.table_step(1, tb, cap).capture()
                cap *= 2
            tb *= 2

    def _forward(self, ids: list[int], tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        host = self.group.is_host
        seqs = [self.seqs[i] for i in ids]
        state = GlobalAttention(self.group, [s.shard for s in seqs], [s.cache for s in seqs] if host else None)
        with attention_state(state), compiled_layers(self.model, self.layers if tokens.shape[1] > 1 else "eager"):
            logits = self.model(input_ids=tokens, position_ids=positions, use_cache=False, logits_to_keep=1).logits
        if host:
            for s in seqs:
                s.cache.commit(tokens.shape[1])
        return logits[:, -1]

    def _decide(self, ids: list[int], logits: torch.Tensor | None) -> list[tuple[int, int]]:
        dev = self.group.device
        rows = []
        if self.group.is_host:
            seqs = [self.seqs[i] for i in ids]
            greedy = argmax_rows(logits).tolist() if all(s.sampler.temperature < GREEDY_BELOW for s in seqs) \
                else None
            for j, s in enumerate(seqs):
                tok = greedy[j] if greedy is not None else s.sampler(logits[j])
                flag = EOS if tok in self.eos else 0
                if not flag and s.stop is not None and s.stop(s.tokens + [tok]):
                    flag = STOP_WORD
                rows.append((tok, flag))
        if self.group.world_size > 1:
            msg = torch.tensor(rows, dtype=torch.long, device=dev) if self.group.is_host else \
                torch.zeros(len(ids), 2, dtype=torch.long, device=dev)
            self.group.broadcast(msg, self.group.host)
            rows = msg.tolist()
        for i, (tok, flag) in zip(ids, rows):
            s = self.seqs[i]
            s.steps += 1
            s.last = tok
            if flag != EOS:
                s.tokens.append(tok)
        return rows

    @torch.inference_mode()
    def add(self, sid: int, shard: ContextShard, query: torch.Tensor, start: int, max_new: int,
            sampler=None, stop=None) -> tuple[int, int]:
        """query: (Tq,) long on the device; start: its first position (the context length)."""
        cache = QueryCache(num_layers(self.model), query.numel() + max_new) if self.group.is_host else None
        self.seqs[sid] = Sequence(shard, cache, start + query.numel(), max_new, sampler, stop)
        pos = torch.arange(start, start + query.numel(), device=query.device).unsqueeze(0)
        with rope_frame(self.model, start + query.numel()):  # the prompt's frequencies, as phase 1 had them
            return self._decide([sid], self._forward([sid], query.unsqueeze(0), pos))[0]

    def table_prefill(self, arena: "Arena", query: list[int], start: int, shard: ContextShard | None = None,
                      sid: int | None = None) -> torch.Tensor | None:
        """The query (T tokens, T <= ROWS_SPLIT_TOKENS) of a newcomer whose context is in ``arena`` at [0,
        start), by the TableStep of its query bucket: its KV lands at [start, start + T). Returns the logits
        (1, V) of its last token, or None where the table path does not apply (the caller prefills otherwise).
        shard: the newcomer's context (sequence ``sid``); one whose gather phase 1 deferred (``blocks``) is
        attended in place and gathered into the arena before the next decode step (``_settle``), unless the
        sequence is removed first (its arena may then serve another)."""
        t = len(query)
        if not (self._table_ok() and t <= ROWS_SPLIT_TOKENS):
            return None
        if shard is not None and shard.blocks is not None:
            cap = capacity_bucket(pages_needed([e.shape[3] for e in shard.blocks[0]]))
            logits = self.table_step(1, query_bucket(t), cap)([arena.rows], [query], [start], t - 1, shard.blocks)
            self.unsettled[sid] = shard
            return logits
        if shard is not None:
            shard.settle()
        return self.table_step(1, query_bucket(t))([arena.rows], [query], [start], t - 1)

    def _settle(self) -> None:
        """Gather the contexts newcomers' first tokens read in place into their arenas (before any step reads
        the arenas)."""
        while self.unsettled:
            self.unsettled.popitem()[1].settle()

    def _table_ok(self) -> bool:
        """One worker, fixed-shape steps, a capturable RoPE, and on a GPU the table's kernels (a GPU without them,
        or an fp32 model there, keeps the eager path rather than the torch twin's loops)."""
        if not (self.group.world_size == 1 and self.decode in ("static", "graph") and graph_capturable(self.model)):
            return False
        if self.group.device.type == "cpu":
            return True
        if self._kernels_ok is None:
            self._kernels_ok = kernels_ok(self.model.dtype, self.group.device, head_dim(self.model.config))
        return self._kernels_ok

    @torch.inference_mode()
    def adopt(self, sid: int, arena: "Arena", logits: torch.Tensor, length: int, max_new: int, sampler=None,
              stop=None) -> tuple[int, int]:
        """A newcomer whose query was prefilled over an Arena: its context and query KV are the arena's first
        ``length`` rows; its later tokens go there too (TableStep) or, once it decodes eagerly, to its
        QueryCache. logits: (1, V) of its last query token."""
        shard = ContextShard.in_rows(arena.rows, length)
        cache = QueryCache(num_layers(self.model), max_new) if self.group.is_host else None
        arena.busy = True
        self.seqs[sid] = Sequence(shard, cache, length, max_new, sampler, stop)
        self.arenas[sid] = arena
        return self._decide([sid], logits)[0]

    def _on_table(self, ids: list[int]) -> bool:
        """Every one in an arena with room for its remaining tokens, one RoPE frame for all (the eager path
        splits the batch by frame)."""
        if not self._table_ok() or not all(i in self.arenas for i in ids):
            return False
        seqs = [self.seqs[i] for i in ids]
        last = [s.pos + (s.max_new - s.steps) + 1 for s in seqs]  # each one's length after its last token
        if any(n > self.arenas[i].capacity for i, n in zip(ids, last)):
            return False
        return len(frame_groups(self.model.config, [s.pos + 1 for s in seqs] + last)) == 1

    def _fold(self, sid: int) -> None:
        """Tokens an eager step left in an arena sequence's QueryCache move into its arena rows after its shard,
        so it decodes by table steps again (the KV of every token stays where its position says)."""
        s, rows = self.seqs[sid], self.arenas[sid].rows
        m = s.cache.length if s.cache is not None else 0
        if not m:
            return
        n = len(s.shard)
        for layer in range(rows.shape[0]):
            rows[layer, 0, n:n + m] = s.cache.k[layer][0, :, :m].transpose(0, 1)
            rows[layer, 1, n:n + m] = s.cache.v[layer][0, :, :m].transpose(0, 1)
        s.cache.length = 0
        s.shard = ContextShard.in_rows(rows, n + m)

    @torch.inference_mode()
    def step(self, ids: list[int]) -> list[tuple[int, int]]:
        """One token for each of ``ids``: one TableStep replay, or one eager forward per group of sequences
        sharing RoPE frequencies (one group but for LongRoPE models with sequences on both sides of the
        switch)."""
        tick()
        self._settle()
        if self._on_table(ids):
            for i in ids:
                self._fold(i)
            seqs = [self.seqs[i] for i in ids]
            step = self.table_step(batch_bucket(len(ids)), 1)
            logits = step([self.arenas[i].rows for i in ids], [[s.last] for s in seqs], [s.pos for s in seqs], 0)
            rows = self._decide(ids, logits[: len(ids)])
            for s in seqs:
                s.pos += 1
            self.last_path = "table"
            return rows
        self.last_path = "batch"
        for i in ids:  # tokens a TableStep wrote into an arena become part of its shard (read in place)
            s = self.seqs[i]
            if i in self.arenas and s.cache is not None and not s.cache.length and len(s.shard) != s.pos:
                s.shard = ContextShard.in_rows(self.arenas[i].rows, s.pos)
            elif i in self.arenas and s.cache is not None and len(s.shard) + s.cache.length != s.pos:
                raise RuntimeError(f"sequence {i}: {len(s.shard)} arena rows + {s.cache.length} cached tokens do "
                                   f"not reach its position {s.pos}")
        dev = self.group.device
        out = {}
        lengths = [self.seqs[i].pos + 1 for i in ids]
        for group in frame_groups(self.model.config, lengths):
            gids = [ids[j] for j in group]
            tokens = torch.tensor([[self.seqs[i].last] for i in gids], dtype=torch.long, device=dev)
            positions = torch.tensor([[self.seqs[i].pos] for i in gids], dtype=torch.long, device=dev)
            with rope_frame(self.model, max(lengths[j] for j in group)):
                logits = self._forward(gids, tokens, positions)
            out.update(zip(gids, self._decide(gids, logits)))
        for i in ids:
            self.seqs[i].pos += 1
        return [out[i] for i in ids]

    def remove(self, sid: int) -> None:
        self.seqs.pop(sid, None)
        self.unsettled.pop(sid, None)  # never gathered: its arena is free for others
        arena = self.arenas.pop(sid, None)
        if arena is not None:
            arena.busy = False

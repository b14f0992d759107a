"""Content-addressed store of encoded blocks' KV, per worker, with LRU tiers: device -> CPU -> disk -> gone.

An entry is one block encoded on its own at positions 0..L-1: KV of every layer as one tensor
(layers, 2, H_kv, L, D) in the model dtype, plus the inverse RoPE frequencies it was encoded with (D/2,)
(needed to re-encode it exactly, attention/rope.py). Keys are content hashes (model identity + token ids),
so the same passage in any later prompt, at any offset, is a hit. Each tier has a byte budget; the least
recently used entries move down a tier when a tier is full (device to CPU, CPU to disk when a disk tier is
set, else dropped). A hit moves the entry back to the device tier.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TIERS = ("device", "cpu", "disk")


def block_key(model_id: str, token_ids: list[int]) -> str:
    """Content address of a block: sha256 of the model identity and its token ids."""
    h = hashlib.sha256(model_id.encode())
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


@dataclass
class Entry:
    kv: torch.Tensor | None  # (layers, 2, H_kv, L, D); None while on disk
    inv_freq: torch.Tensor  # (D/2,) fp32
    nbytes: int
    tier: str


@dataclass
class StoreStats:
    hits: dict = field(default_factory=lambda: {t: 0 for t in TIERS})
    misses: int = 0
    hit_tokens: int = 0
    miss_tokens: int = 0
    evictions: dict = field(default_factory=lambda: {"device_to_cpu": 0, "cpu_to_disk": 0, "dropped": 0})

    def as_dict(self) -> dict:
        return {"hits": dict(self.hits), "misses": self.misses, "hit_tokens": self.hit_tokens,
                "miss_tokens": self.miss_tokens, "evictions": dict(self.evictions)}


class BlockStore:
    def __init__(self, device: torch.device, device_bytes: int, cpu_bytes: int,
                 disk_dir: str | None = None, disk_bytes: int = 0):
        self.device = device
        self.budget = {"device": int(device_bytes), "cpu": int(cpu_bytes),
                       "disk": int(disk_bytes) if disk_dir else 0}
        self.used = {t: 0 for t in TIERS}
        self.lru = {t: OrderedDict() for t in TIERS}  # key -> Entry, oldest first
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.stats = StoreStats()
        if self.disk_dir:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            self._index_disk()

    # -- lookups ---------------------------------------------------------------------------------------
    def get(self, key: str, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(kv on the device, inv_freq) for a stored block, moved to the device tier; None on a miss."""
        for tier in TIERS:
            entry = self.lru[tier].get(key)
            if entry is None:
                continue
            self.stats.hits[tier] += 1
            self.stats.hit_tokens += num_tokens
            self._remove(key, tier)
            if tier == "disk":
                payload = torch.load(self._path(key), map_location="cpu", weights_only=True)
                entry.kv, entry.inv_freq = payload["kv"], payload["inv_freq"]
                entry.nbytes = entry.kv.numel() * entry.kv.element_size()
                self._path(key).unlink(missing_ok=True)
            kv = entry.kv.to(self.device)
            self._insert(key, Entry(kv, entry.inv_freq, entry.nbytes, "device"), "device")
            return kv, entry.inv_freq
        self.stats.misses += 1
        self.stats.miss_tokens += num_tokens
        return None

    def put(self, key: str, kv: torch.Tensor, inv_freq: torch.Tensor) -> None:
        """Store a freshly encoded block (layers, 2, H_kv, L, D) in the device tier (or lower if too big)."""
        if self.contains(key):
            return
        nbytes = kv.numel() * kv.element_size()
        self._insert(key, Entry(kv, inv_freq.detach().float().cpu(), nbytes, "device"), "device")

    def contains(self, key: str) -> bool:
        return any(key in self.lru[t] for t in TIERS)

    # -- tier mechanics ----------------------------------------------------------------------------------
    def _insert(self, key: str, entry: Entry, tier: str) -> None:
        """Put entry in ``tier``, first pushing least recently used entries down until it fits."""
        while tier is not None and entry.nbytes > self.budget[tier]:
            tier = self._below(tier)  # larger than the whole tier: skip it
        if tier is None:
            self.stats.evictions["dropped"] += 1
            return
        while self.used[tier] + entry.nbytes > self.budget[tier]:
            old_key, old = self.lru[tier].popitem(last=False)
            self.used[tier] -= old.nbytes
            self._demote(old_key, old, tier)
        self._place(key, entry, tier)

    def _place(self, key: str, entry: Entry, tier: str) -> None:
        if tier == "device":
            entry.kv = entry.kv.to(self.device)
        elif tier == "cpu":
            entry.kv = entry.kv.to("cpu")
        else:
            torch.save({"kv": entry.kv.cpu(), "inv_freq": entry.inv_freq}, self._path(key))
            entry.kv = None
        entry.tier = tier
        self.lru[tier][key] = entry
        self.used[tier] += entry.nbytes

    def _demote(self, key: str, entry: Entry, tier: str) -> None:
        below = self._below(tier)
        if tier == "disk":
            self._path(key).unlink(missing_ok=True)
        if below is None:
            self.stats.evictions["dropped"] += 1
            return
        self.stats.evictions["device_to_cpu" if tier == "device" else "cpu_to_disk"] += 1
        self._insert(key, entry, below)

    def _below(self, tier: str) -> str | None:
        if tier == "device":
            return "cpu"
        if tier == "cpu" and self.disk_dir is not None:
            return "disk"
        return None

    def _remove(self, key: str, tier: str) -> None:
        entry = self.lru[tier].pop(key)
        self.used[tier] -= entry.nbytes

    def _path(self, key: str) -> Path:
        return self.disk_dir / f"{key}.pt"

    def _index_disk(self) -> None:
        """Reuse blocks a previous run left in the disk tier (oldest first)."""
        files = sorted(self.disk_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime)
        for f in files:
            n = f.stat().st_size
            if self.used["disk"] + n > self.budget["disk"]:
                f.unlink(missing_ok=True)
                continue
            self.lru["disk"][f.stem] = Entry(None, torch.empty(0), n, "disk")
            self.used["disk"] += n

    def persist(self) -> int:
        """Write the device and CPU tiers down to the disk tier (most recently used kept first), so a later
        run with the same disk folder starts warm. Returns the number of blocks on disk afterwards."""
        if self.disk_dir is None:
            return 0
        for tier in ("cpu", "device"):  # least recent first: the disk LRU ends with the freshest blocks
            for key in list(self.lru[tier]):
                entry = self.lru[tier].pop(key)
                self.used[tier] -= entry.nbytes
                self._insert(key, entry, "disk")
        return len(self.lru["disk"])

    def summary(self) -> dict:
        return {**self.stats.as_dict(), "entries": {t: len(self.lru[t]) for t in TIERS},
                "bytes": dict(self.used)}


def gib(x: float) -> int:
    return int(x * (1 << 30))


def default_disk_dir() -> str:
    from ..models.bundled import cache_root

    return os.path.join(cache_root(), "blocks")

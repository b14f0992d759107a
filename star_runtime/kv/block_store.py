"""Content-addressed store of encoded blocks' KV, per worker, with LRU tiers: device -> CPU -> (disk) -> gone.

An entry is one block encoded on its own at positions 0..L-1: KV of every layer as one tensor
(layers, 2, H_kv, L, D) in the model dtype, plus the inverse RoPE frequencies it was encoded with (D/2,)
(needed to re-encode it exactly, attention/rope.py). Keys are content hashes (model identity + token ids),
so the same passage in any later prompt, at any offset, is a hit.

The device and CPU tiers are memory with byte budgets: the least recently used entries move from the device
tier to the CPU tier, and out of the CPU tier when it is full. The optional disk tier (DiskTier) holds every
entry, written through when the entry is first stored, so what a run computed survives however the run ends;
its files are verified when loaded (a damaged, truncated or misplaced file is a miss, never wrong KV).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import sys
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TIERS = ("device", "cpu", "disk")
PENDING_BYTES = 1 << 30  # entries waiting for the disk writer beyond this make put() wait
FORMAT = "star-runtime-block/1"
SUFFIX = ".safetensors"


def block_key(model_id: str, token_ids: list[int]) -> str:
    """Content address of a block: sha256 of the model identity and its token ids."""
    h = hashlib.sha256(model_id.encode())
    if isinstance(token_ids, (list, tuple)):  # the bytes of an int64 array, packed without building one (3x faster)
        h.update(struct.pack(f"={len(token_ids)}q", *token_ids))
    else:
        h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _notice(msg: str) -> None:
    print(f"[star-runtime] {msg}", file=sys.stderr, flush=True)


@dataclass
class Entry:
    kv: torch.Tensor  # (layers, 2, H_kv, L, D)
    inv_freq: torch.Tensor  # (D/2,) fp32, CPU
    nbytes: int


@dataclass
class StoreStats:
    hits: dict = field(default_factory=lambda: {t: 0 for t in TIERS})
    misses: int = 0
    hit_tokens: int = 0
    miss_tokens: int = 0
    repeat_tokens: int = 0  # blocks repeated within one prompt: served from their first occurrence's KV
    evictions: dict = field(default_factory=lambda: {"device_to_cpu": 0, "cpu_to_disk": 0, "dropped": 0})

    def as_dict(self) -> dict:
        return {"hits": dict(self.hits), "misses": self.misses, "hit_tokens": self.hit_tokens,
                "miss_tokens": self.miss_tokens, "repeat_tokens": self.repeat_tokens,
                "evictions": dict(self.evictions)}


class BlockStore:
    """get(key, L) -> (kv on the device, inv_freq) or None; put(key, kv, inv_freq) after a miss.

    expect: (layers, H_kv, D) and dtype of every entry, when known: a disk entry of another shape or dtype is
    a miss. ``flush()`` waits until every stored entry is on disk; ``close()`` flushes and stops the writer.
    """

    def __init__(self, device: torch.device, device_bytes: int, cpu_bytes: int,
                 disk_dir: str | None = None, disk_bytes: int = 0, expect: tuple | None = None,
                 dtype: torch.dtype | None = None, notice=_notice):
        self.device = device
        self.budget = {"device": int(device_bytes), "cpu": int(cpu_bytes)}
        self.used = {"device": 0, "cpu": 0}
        self.lru = {"device": OrderedDict(), "cpu": OrderedDict()}  # key -> Entry, oldest first
        self.stats = StoreStats()
        self.gone: list[str] = []
        self._freqs: dict[bytes, torch.Tensor] = {}  # every entry of one frequency set shares one tensor
        self.disk = DiskTier(Path(disk_dir), int(disk_bytes), expect, dtype, notice) if disk_dir else None

    # -- lookups ---------------------------------------------------------------------------------------
    def get(self, key: str, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(kv on the device, inv_freq) for a stored block, moved to the device tier; None on a miss."""
        lru = self.lru["device"]
        entry = lru.get(key)
        if entry is not None:  # the common warm case: it only becomes the most recent (once per passage of a
            lru.move_to_end(key)  # prompt: kept short)
            self.stats.hits["device"] += 1
            self.stats.hit_tokens += num_tokens
            return entry.kv, entry.inv_freq
        entry = self.lru["cpu"].pop(key, None)
        if entry is not None:
            self.used["cpu"] -= entry.nbytes
            self._hit("cpu", num_tokens)
            kv = entry.kv.to(self.device)
            entry.kv = kv
            self._insert(key, entry, "device")  # an entry larger than the device tier lands lower: kv stays here
            return kv, entry.inv_freq
        got = self.disk.load(key, num_tokens) if self.disk is not None else None
        if got is not None:
            self._hit("disk", num_tokens)
            kv, inv_freq = got
            kv = kv.to(self.device)
            self._insert(key, Entry(kv, inv_freq, kv.numel() * kv.element_size()), "device")
            return kv, inv_freq
        self.stats.misses += 1
        self.stats.miss_tokens += num_tokens
        return None

    def put(self, key: str, kv: torch.Tensor, inv_freq: torch.Tensor) -> None:
        """Store a freshly encoded block (layers, 2, H_kv, L, D) in the device tier (or lower if too big),
        and on disk (in the background) when there is a disk tier."""
        if key in self.lru["device"] or key in self.lru["cpu"]:
            return
        # contiguous from here on, in every tier and on disk (_insert keeps them so when they move): the in-place
        # first token reads them where they lie
        kv = kv.contiguous()
        inv_freq = inv_freq.detach().float().cpu()
        fk = inv_freq.numpy().tobytes()  # one tensor per frequency set (dynamic RoPE: one per length, bounded)
        inv_freq = self._freqs.setdefault(fk, inv_freq) if len(self._freqs) < 64 else self._freqs.get(fk, inv_freq)
        self._insert(key, Entry(kv, inv_freq, kv.numel() * kv.element_size()), "device")
        if self.disk is not None:
            self.disk.put(key, kv, inv_freq)

    def contains(self, key: str) -> bool:
        return key in self.lru["device"] or key in self.lru["cpu"] or (
            self.disk is not None and self.disk.contains(key))

    def _hit(self, tier: str, num_tokens: int) -> None:
        self.stats.hits[tier] += 1
        self.stats.hit_tokens += num_tokens

    # -- memory tiers ----------------------------------------------------------------------------------
    def _insert(self, key: str, entry: Entry, tier: str | None) -> None:
        """Put entry in ``tier``, first pushing least recently used entries down until it fits."""
        while tier is not None and entry.nbytes > self.budget[tier]:
            tier = "cpu" if tier == "device" else None  # larger than the whole tier: skip it
        if tier is None:
            self._drop(key)
            return
        while self.used[tier] + entry.nbytes > self.budget[tier]:
            old_key, old = self.lru[tier].popitem(last=False)
            self.used[tier] -= old.nbytes
            if tier == "device":
                self.stats.evictions["device_to_cpu"] += 1
                self._insert(old_key, old, "cpu")
            else:
                self._drop(old_key)
        # contiguous in every tier (attention/pages.py reads device entries where they lie, as contiguous ones)
        entry.kv = entry.kv.to(self.device if tier == "device" else "cpu").contiguous()
        self.lru[tier][key] = entry
        self.used[tier] += entry.nbytes

    def _drop(self, key: str) -> None:
        """An entry leaves memory: it stays on disk when there is a disk tier, else it is gone."""
        self.stats.evictions["cpu_to_disk" if self.disk is not None else "dropped"] += 1
        if self.disk is None:
            self.gone.append(key)

    def take_gone(self) -> list[str]:
        """Keys this store no longer holds anywhere since the last call (for the engine's placement map)."""
        gone = self.gone + (self.disk.take_gone() if self.disk is not None else [])
        self.gone = []
        return [k for k in gone if not self.contains(k)]

    def flush(self) -> None:
        if self.disk is not None:
            self.disk.flush()

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()

    def summary(self) -> dict:
        entries = {t: len(self.lru[t]) for t in ("device", "cpu")}
        used = dict(self.used)
        entries["disk"], used["disk"] = (self.disk.count(), self.disk.used) if self.disk is not None else (0, 0)
        return {**self.stats.as_dict(), "entries": entries, "bytes": used}


class DiskTier:
    """Block entries as files ``<dir>/<key>.safetensors`` under a byte budget, least recently used out first.

    A file holds the KV, the inverse frequencies and, as metadata, the format, its key, dtype, shape and a
    CRC-32 of the KV bytes. Files are written by a background thread as entries arrive (temporary file,
    fsync, rename: a file is whole or absent), a hit leaves the file in place and refreshes its time (the
    LRU order survives restarts), and a file that does not verify is removed with one notice and counts as
    a miss. Until its file is written an entry is served from memory.
    """

    def __init__(self, folder: Path, budget: int, expect: tuple | None, dtype: torch.dtype | None, notice):
        self.dir = folder
        self.budget = budget
        self.expect = expect
        self.dtype = dtype
        self.notice = notice
        self.lock = threading.Lock()
        self.files: OrderedDict[str, int] = OrderedDict()  # key -> bytes on disk, oldest first
        self.used = 0
        self.pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pending_bytes = 0
        self.space = threading.Condition()
        self.gone: list[str] = []
        self.queue: queue.Queue = queue.Queue()
        self._failed = False
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index()
        self.thread = threading.Thread(target=self._writer, name="block-cache-writer", daemon=True)
        self.thread.start()

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}{SUFFIX}"

    def _index(self) -> None:
        """Entries a previous run left (oldest first); leftover temporary files of a killed writer go."""
        now = time.time()
        for tmp in self.dir.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > 600:  # not another live writer's file in progress
                    tmp.unlink()
            except OSError:
                pass
        found = []
        for f in self.dir.glob(f"*{SUFFIX}"):
            try:
                st = f.stat()
            except OSError:
                continue
            found.append((st.st_mtime, f.name[: -len(SUFFIX)], st.st_size))
        for _, key, size in sorted(found):
            self.files[key] = size
            self.used += size
        with self.lock:
            self._evict()

    def contains(self, key: str) -> bool:
        with self.lock:
            return key in self.files or key in self.pending

    def count(self) -> int:
        with self.lock:
            return len(self.files)

    # -- writing -----------------------------------------------------------------------------------------
    def put(self, key: str, kv: torch.Tensor, inv_freq: torch.Tensor) -> None:
        """Queue an entry for writing. One larger than the whole budget is not written (it would evict every
        other entry and then itself). Pending entries hold memory outside every tier's budget, so a disk slower
        than encoding makes put() wait while more than PENDING_BYTES wait to be written."""
        nbytes = kv.numel() * kv.element_size()
        if nbytes > self.budget:
            return
        with self.space:
            while self.pending_bytes > max(PENDING_BYTES, nbytes) and not self._failed:
                self.space.wait(1.0)
        with self.lock:
            if key in self.files or key in self.pending:
                return
            self.pending[key] = (kv, inv_freq)
            self.pending_bytes += nbytes
        self.queue.put(key)

    def _writer(self) -> None:
        while True:
            key = self.queue.get()
            try:
                if key is None:
                    return
                kv, inv_freq = self.pending[key]
                try:
                    self._write(key, kv, inv_freq)
                except Exception as e:  # a full or read-only disk: the run goes on, the entry stays in memory
                    if not self._failed:
                        self._failed = True
                        self.notice(f"block cache: cannot write {self.dir} ({e}); entries are kept in memory only")
                with self.lock:
                    done = self.pending.pop(key, None)
                    if done is not None:
                        self.pending_bytes -= done[0].numel() * done[0].element_size()
                with self.space:
                    self.space.notify_all()
            finally:
                self.queue.task_done()

    def _write(self, key: str, kv: torch.Tensor, inv_freq: torch.Tensor) -> None:
        from safetensors.torch import save_file

        cpu = kv.detach().to("cpu").contiguous()
        meta = {"format": FORMAT, "key": key, "dtype": str(cpu.dtype), "shape": json.dumps(list(cpu.shape)),
                "crc32": str(_crc(cpu, inv_freq.float().cpu()))}
        tmp = self.dir / f".tmp-{key}-{os.getpid()}-{threading.get_ident()}"
        try:
            save_file({"kv": cpu, "inv_freq": inv_freq.float().cpu().contiguous()}, str(tmp), metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self._path(key))
        finally:
            tmp.unlink(missing_ok=True)
        size = self._path(key).stat().st_size
        with self.lock:
            self.used += size - self.files.pop(key, 0)
            self.files[key] = size
            self._evict()

    def _evict(self) -> None:
        """Delete least recently used files until the tier fits its budget (caller holds the lock); an entry
        larger than the whole budget does not stay either."""
        while self.used > self.budget and self.files:
            old, size = self.files.popitem(last=False)
            self.used -= size
            _unlink(self._path(old))
            self.gone.append(old)

    def take_gone(self) -> list[str]:
        with self.lock:
            gone, self.gone = self.gone, []
        return gone

    def flush(self) -> None:
        """Wait until every entry stored so far is on disk (or its write failed)."""
        self.queue.join()

    def close(self) -> None:
        if self.thread.is_alive():
            self.flush()
            self.queue.put(None)
            self.thread.join(timeout=60)

    # -- reading -----------------------------------------------------------------------------------------
    def load(self, key: str, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(kv, inv_freq) of a verified entry, or None (absent, or unusable: removed with one notice)."""
        with self.lock:
            if key in self.pending:
                return self.pending[key]
            if key not in self.files:
                return None
        path = self._path(key)
        try:
            if not path.exists():
                raise FileNotFoundError(path)
            kv, inv_freq = self._read(path, key, num_tokens)
        except FileNotFoundError:  # another process sharing the folder evicted it: a plain miss
            with self.lock:
                self.used -= self.files.pop(key, 0)
            return None
        except Exception as e:
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            self.notice(f"block cache: {path} is unusable ({reason}); recomputing that block")
            with self.lock:
                self.used -= self.files.pop(key, 0)
            _unlink(path)
            return None
        with self.lock:
            if key in self.files:
                self.files.move_to_end(key)
        try:
            os.utime(path)
        except OSError:
            pass
        return kv, inv_freq

    def _read(self, path: Path, key: str, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"not a block-cache file of format {FORMAT}")
            if meta.get("key") != key:
                raise ValueError(f"it holds block {meta.get('key')}, not {key}")
            kv = f.get_tensor("kv")
            inv_freq = f.get_tensor("inv_freq")
        if str(kv.dtype) != meta.get("dtype") or list(kv.shape) != json.loads(meta.get("shape", "[]")):
            raise ValueError("its tensor does not match its recorded dtype and shape")
        if kv.dim() != 5 or kv.shape[1] != 2 or kv.shape[3] != num_tokens:
            raise ValueError(f"shape {tuple(kv.shape)} is not (layers, 2, heads, {num_tokens}, head_dim)")
        if self.expect is not None and (kv.shape[0], kv.shape[2], kv.shape[4]) != tuple(self.expect):
            raise ValueError(f"shape {tuple(kv.shape)} does not fit this model (layers, heads, head_dim = "
                             f"{tuple(self.expect)})")
        if self.dtype is not None and kv.dtype != self.dtype:
            raise ValueError(f"dtype {kv.dtype}, the model runs in {self.dtype}")
        if str(_crc(kv, inv_freq)) != meta.get("crc32"):
            raise ValueError("checksum mismatch: its bytes were damaged")
        if inv_freq.dim() != 1 or inv_freq.dtype != torch.float32:
            raise ValueError("its RoPE frequencies are not a float32 vector")
        return kv, inv_freq


def _crc(*tensors: torch.Tensor) -> int:
    """CRC-32 of CPU tensors' bytes, in order."""
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.contiguous().view(-1).view(torch.uint8).numpy(), crc)
    return crc


def _unlink(path: Path) -> None:
    """Remove a cache file; a read-only or vanished file is left to be (the entry is dropped all the same)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def gib(x: float) -> int:
    return int(x * (1 << 30))

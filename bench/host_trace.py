"""Where a request's host time goes: wall-clock stamps on entry to and exit from named functions (each wrapper
costs about a microsecond), for timelines of the host work before and after the GPU's.

    with HostTrace(TTFT_TARGETS) as tr:
        worker.run_batch([req])
    print(format_timeline(tr.timeline()))  # per call: its offset from the first stamp, its duration, its label
"""

from __future__ import annotations

import functools
import importlib
import statistics
import time


# (module, attribute path, label): the warm cached-passage request's path, phase 1 to the first token
TTFT_TARGETS = [
    ("star_runtime.parallel.worker", "Worker._run_batch", "run_batch"),
    ("star_runtime.parallel.group", "Group.barrier", "barrier"),
    ("star_runtime.modes.block", "BlockMode.encode", "phase 1 encode"),
    ("star_runtime.modes.block", "encode_blocks", "encode_blocks"),
    ("star_runtime.modes.block", "BlockMode.counters", "counters"),
    ("star_runtime.parallel.worker", "Worker.context_rows", "context_rows"),
    ("star_runtime.kv.block_store", "BlockStore.get", "store.get"),
    ("star_runtime.attention.rope", "RopeReencoder.inv_freq_pair", "inv_freq_pair"),
    ("star_runtime.modes.block", "pages_usable", "pages usable"),
    ("star_runtime.modes.block", "_same_freq", "same freq"),
    ("star_runtime.parallel.worker", "Worker._sampler", "sampler"),
    ("star_runtime.parallel.worker", "sync_device", "sync (worker)"),
    ("star_runtime.parallel.worker", "generate", "generate"),
    ("star_runtime.decode", "Arenas.for_request", "arena for_request"),
    ("star_runtime.decode", "Arenas.prefill_in_place", "prefill_in_place"),
    ("star_runtime.table_step", "TableStep.__call__", "step call"),
    ("star_runtime.attention.table", "KVTable.set", "kvtable set"),
    ("star_runtime.attention.pages", "PageTable.fill", "pages fill"),
    ("star_runtime.staging", "Staging.push", "upload"),
    ("star_runtime.staging", "Staging.mark", "upload mark"),
    ("star_runtime.staging", "Staging.buffer", "staging wait"),
    ("torch.cuda.graphs", "CUDAGraph.replay", "graph replay"),
    ("star_runtime.decode", "argmax_rows", "argmax"),
    ("star_runtime.decode", "sync_device", "sync (decode)"),
]


class HostTrace:
    """Wraps each target while active; ``events`` holds (label, 'in' | 'out', perf_counter seconds)."""

    def __init__(self, targets):
        self.targets, self.events, self._undo = targets, [], []

    def __enter__(self):
        for module, path, label in self.targets:
            owner = importlib.import_module(module)
            *outer, name = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            self._undo.append((owner, name, original))
            setattr(owner, name, self._wrap(original, label))
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def _wrap(self, fn, label):
        events, clock = self.events, time.perf_counter

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            events.append((label, "in", clock()))
            try:
                return fn(*args, **kwargs)
            finally:
                events.append((label, "out", clock()))
        return wrapped

    def timeline(self) -> list[tuple[str, float, float]]:
        """(label, start offset, duration) in ms from the first stamp, in order of entry."""
        t0 = self.events[0][2] if self.events else 0.0
        open_, rows = {}, []
        for label, kind, t in self.events:
            if kind == "in":
                open_.setdefault(label, []).append(len(rows))
                rows.append([label, 1000 * (t - t0), float("nan")])
            else:
                i = open_[label].pop()
                rows[i][2] = 1000 * (t - t0) - rows[i][1]
        return [tuple(r) for r in rows]


def median_timeline(traces: list[list[tuple[str, float, float]]]) -> list[tuple[str, float, float]]:
    """Per position of the first trace, the median start and duration over traces of the same shape."""
    same = [t for t in traces if [r[0] for r in t] == [r[0] for r in traces[0]]]
    return [(traces[0][i][0], statistics.median(t[i][1] for t in same), statistics.median(t[i][2] for t in same))
            for i in range(len(traces[0]))]


def format_timeline(rows) -> str:
    return "\n".join(f"{start:9.3f} ms  {dur:8.3f} ms  {label}" for label, start, dur in rows)

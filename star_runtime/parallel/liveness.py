"""Liveness: a stalled or dead worker ends the run in seconds, with its rank named, not after a collective
timeout.

Every worker process runs a ``Heartbeat`` thread that writes ``"<beat> <progress> <busy> <waiting>"`` under
``star_runtime/hb/<rank>`` of a TCP key-value store once a second: ``beat`` counts heartbeats (the process
runs), ``progress`` is star_runtime.progress's counter (the work advances: every layer of every forward,
every decode step, compiles included), ``busy`` says a step is running and ``waiting`` that it blocks in a
collective for its peers. A ``Watchdog`` reads them:

* no new beat for ``timeout_s``: the process is frozen (SIGSTOP, swapped out, its node gone);
* busy, and no progress for ``timeout_s``: the step is stuck (a hung device or collective); the workers
  stuck outside a collective are named (the others wait for them), else all stuck ones.

Long legitimate steps do not trip it: a 1M-token phase 1 still ticks every layer, and a compile counts as
progress. Under Ray the driver hosts the store and watches while it waits for the workers
(ray_launcher.py); under torchrun/srun every rank watches the others through the job's rendezvous store and
ends its process when one stalls (torchrun then stops the rest).
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time

from .. import progress

PERIOD_S = 1.0
PREFIX = "star_runtime/hb/"


def connect_store(host: str, port: int, is_master: bool = False, timeout_s: float = 10.0):
    from torch.distributed import TCPStore

    return TCPStore(host, port, is_master=is_master, wait_for_workers=False,
                    timeout=datetime.timedelta(seconds=timeout_s))


class Heartbeat:
    """Publishes this process's heartbeat from a daemon thread. store_factory() -> a store client (made in
    the thread, so a slow connection never blocks the worker)."""

    def __init__(self, store_factory, rank: int):
        self.factory = store_factory
        self.rank = rank
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{rank}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            store = self.factory()
        except Exception as e:
            print(f"[star-runtime] worker {self.rank}: heartbeat store unreachable ({e}); liveness is not watched",
                  file=sys.stderr, flush=True)
            return
        beat = 0
        while not self.stop_event.is_set():
            beat += 1
            if progress.compiling():
                progress.tick()  # a compile runs for tens of seconds without a layer: it is progress
            count, busy, waiting = progress.snapshot()
            try:
                store.set(f"{PREFIX}{self.rank}", f"{beat} {count} {int(busy)} {int(waiting)}")
            except Exception:
                pass  # the watcher is gone (end of run) or slow: the next beat tries again
            self.stop_event.wait(PERIOD_S)

    def stop(self) -> None:
        self.stop_event.set()


class Watchdog:
    """Judges the heartbeats of ``ranks``: feed ``observe(rank, value)``, ask ``verdict()``."""

    def __init__(self, ranks, timeout_s: float):
        self.timeout_s = timeout_s
        now = time.monotonic()
        # rank -> [beat, progress, busy, time of the last new beat, time of the last progress or idle state,
        #          waiting]
        self.seen = {r: None for r in ranks}
        self.start = now

    def observe(self, rank: int, value: bytes | str | None, now: float | None = None) -> None:
        if value is None:
            return
        now = time.monotonic() if now is None else now
        text = value.decode() if isinstance(value, bytes) else value
        try:
            beat, count, busy, *rest = (int(x) for x in text.split())
        except ValueError:
            return
        waiting = rest[0] if rest else 0
        old = self.seen.get(rank)
        if old is None:
            self.seen[rank] = [beat, count, busy, now, now, waiting]
            return
        old[5] = waiting
        if beat != old[0]:
            old[0], old[3] = beat, now
        if count != old[1] or not busy:
            old[1], old[4] = count, now
        old[2] = busy

    def reset(self, now: float | None = None) -> None:
        """A new wait begins (the driver starts waiting on a step): time is counted from now, not from
        observations before an idle gap."""
        now = time.monotonic() if now is None else now
        for s in self.seen.values():
            if s is not None:
                s[3] = s[4] = now

    def verdict(self, now: float | None = None) -> str | None:
        """One line naming the stalled workers, or None while every worker is fine."""
        now = time.monotonic() if now is None else now
        frozen = [r for r, s in self.seen.items() if s is not None and now - s[3] > self.timeout_s]
        if frozen:
            return (f"worker {_names(frozen)} sent no heartbeat for {self.timeout_s:.0f} s (the process is "
                    "frozen or stopped, or its node is gone)")
        busy = [r for r, s in self.seen.items() if s is not None and s[2]]
        stuck = [r for r in busy if now - self.seen[r][4] > self.timeout_s]
        if len(stuck) < len(busy):  # some busy worker progresses: the others wait for it in a collective
            return None
        working = [r for r in stuck if not self.seen[r][5]]  # stuck outside a collective: the others wait on it
        stuck = working or stuck
        if stuck:
            return (f"worker {_names(stuck)} made no progress for {self.timeout_s:.0f} s inside a step (a hung "
                    "device or collective); raise --stall_timeout_s if one step legitimately takes longer")
        return None


def _names(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in sorted(ranks))


def read_all(store, ranks) -> dict:
    """{rank: value or None} for the ranks that have published a heartbeat."""
    out = {}
    for r in ranks:
        key = f"{PREFIX}{r}"
        out[r] = store.get(key) if store.check([key]) else None
    return out


class PeerWatch:
    """torchrun/srun: this rank watches every other rank through its own client of the rendezvous store;
    when one stalls it prints ``error: worker N ...`` and ends this process (torchrun then stops the rest)."""

    def __init__(self, rank: int, world: int, timeout_s: float):
        self.rank, self.world = rank, world
        host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
        self.heartbeat = Heartbeat(lambda: connect_store(host, port), rank)
        self.watchdog = Watchdog(list(range(world)), timeout_s)  # itself too: a peer may be waiting for it
        self.host, self.port = host, port
        self.thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            store = connect_store(self.host, self.port)
        except Exception:
            return
        unreachable_since = None
        while not self.heartbeat.stop_event.is_set():
            now = time.monotonic()
            try:
                values = read_all(store, list(self.watchdog.seen))
                unreachable_since = None
            except Exception:
                values = {}
                unreachable_since = unreachable_since or now
            for r, v in values.items():
                if r != self.rank:
                    self.watchdog.observe(r, v, now)
            count, busy, waiting = progress.snapshot()
            self.watchdog.observe(self.rank, f"{int(now * 10)} {count} {int(busy)} {int(waiting)}", now)
            msg = self.watchdog.verdict(now)
            if msg is None and unreachable_since and now - unreachable_since > self.watchdog.timeout_s:
                msg = "worker 0 (host of the rendezvous store) stopped answering"
            if msg:
                print(f"error: {msg}; the run is stopped (finished samples are saved: rerun with --use_cache "
                      "to resume)", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(PERIOD_S)

    def stop(self) -> None:
        self.heartbeat.stop()

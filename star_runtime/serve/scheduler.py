"""Continuous batching over one long-lived engine: a bounded queue, newcomers admitted one per iteration (so a
newcomer's phase 1 and prefill stall the running batch by at most one prefill), one decode step per
iteration for every running sequence, and sequences that leave as soon as they finish.

The scheduler runs in its own thread (the engine's workers are driven from it alone); each request is a Job
whose events (text pieces, the end, an error) go to the HTTP side through its asyncio queue.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

from ..decode import EOS, STOP_WORD
from .protocol import APIError, cached_tokens


class TextStream:
    """Token ids -> the text to send, piece by piece: decoded incrementally (a window from the last settled
    point, so merges across tokens and multi-byte characters come out right at a cost that does not grow with
    the output), cut at the first stop sequence (which is never sent), holding back a tail that could still grow
    into a stop sequence."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.text = ""  # the settled text of every token so far
        self.prefix, self.read = 0, 0  # tokens[prefix:read] decode to the end of self.text
        self.sent = ""
        self.stopped = False
        self.longest = max((len(s) for s in stop), default=0)

    def _advance(self, tokens: list[int]) -> None:
        dec = self.tokenizer.decode
        head = dec(tokens[self.prefix:self.read], skip_special_tokens=True)
        full = dec(tokens[self.prefix:], skip_special_tokens=True)
        if len(full) > len(head) and not full.endswith("\ufffd"):  # the new tokens end on a whole character
            self.text += full[len(head):]
            self.prefix, self.read = self.read, len(tokens)

    def _cut(self, text: str, searched_from: int) -> tuple[str, bool]:
        start = max(0, searched_from - self.longest)
        cuts = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def push(self, tokens: list[int]) -> str:
        if self.stopped:  # the text ended at its stop sequence
            return ""
        before = len(self.text)
        self._advance(tokens)
        text, self.stopped = self._cut(self.text, before)
        hold = 0
        if not self.stopped:
            for s in self.stop:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
        return self._emit(text[: len(text) - hold])

    def flush(self, tokens: list[int]) -> str:
        """The end: everything settled and not cut, incomplete characters included."""
        if self.stopped:
            return ""
        rest = self.tokenizer.decode(tokens[self.prefix:], skip_special_tokens=True)
        head = self.tokenizer.decode(tokens[self.prefix:self.read], skip_special_tokens=True)
        before = len(self.text)
        self.text += rest[len(head):]
        self.prefix = self.read = len(tokens)
        text, stopped = self._cut(self.text, before)
        self.stopped = self.stopped or stopped
        return self._emit(text)

    def _emit(self, safe: str) -> str:
        if not safe.startswith(self.sent):
            return ""
        piece, self.sent = safe[len(self.sent):], safe
        return piece


class Job:
    def __init__(self, req, parsed, loop: asyncio.AbstractEventLoop, text: TextStream):
        self.req, self.p, self.loop, self.text = req, parsed, loop, text
        self.sid = req.index
        self.events: asyncio.Queue = asyncio.Queue()
        self.tokens: list[int] = []
        self.steps = 0
        self.finish: str | None = None
        self.cancelled = False
        self.cache: dict | None = None
        self.submitted = time.perf_counter()
        self.last: float | None = None
        self.prepare_s = 0.0  # tokenizing, checks, placement before submission (set by the HTTP side)
        self.first: float | None = None  # when its first token was decided

    def timing(self) -> dict:
        """The server's seconds for this request: preparing it, and from its arrival to its first token."""
        out = {"prepare_s": round(self.prepare_s, 6)}
        if self.first is not None:
            out["ttft_s"] = round(self.prepare_s + self.first - self.submitted, 6)
        return out

    @property
    def prompt_tokens(self) -> int:
        return len(self.req.context_ids) + len(self.req.query_ids)

    def emit(self, kind: str, payload=None) -> None:
        if self.loop.is_closed():  # the HTTP side is gone (shutdown): nobody to tell
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # closed in between
            pass


class Scheduler:
    def __init__(self, engine, metrics, max_queue: int = 64, max_batch: int = 16):
        self.engine, self.metrics = engine, metrics
        self.max_queue, self.max_batch = max_queue, max_batch
        self.cond = threading.Condition()
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}
        self.to_close: list[int] = []
        self.dead: str | None = None
        self.stopping = False
        self.ready = False
        self.next_sid = 0
        self.thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        """The scheduler thread first captures the decode and prefill steps it will replay (GPU), then the
        server is ready (/health 200)."""
        self.thread.start()

    def new_sid(self) -> int:
        with self.cond:
            self.next_sid += 1
            return self.next_sid

    # -- the HTTP side ---------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cond:
            if self.dead:
                raise APIError(503, f"a worker failed ({self.dead}); the server cannot serve requests, restart it",
                               type="server_error", code="worker_failed")
            if self.stopping:
                raise APIError(503, "the server is shutting down; retry against another instance",
                               type="server_error", code="shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise APIError(429, f"the queue is full ({self.max_queue} requests waiting); retry shortly",
                               type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
            self.waiting.append(job)
            self.metrics.queue_depth.set(len(self.waiting))
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: a waiting request leaves the queue now, a running one leaves the batch at the
        next step boundary."""
        with self.cond:
            job.cancelled = True
            try:
                self.waiting.remove(job)
            except ValueError:
                pass
            self.metrics.queue_depth.set(len(self.waiting))
            self.cond.notify()

    def stop(self, timeout: float = 60.0) -> None:
        """Admit nothing more; finish the running sequences; then the thread ends."""
        with self.cond:
            self.stopping = True
            for job in self.waiting:
                job.emit("error", APIError(503, "the server is shutting down; retry against another instance",
                                           type="server_error", code="shutting_down"))
            self.waiting.clear()
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)
        if self.thread.is_alive():  # generations still running past the grace time: cancel them, then wait
            with self.cond:
                for job in list(self.running.values()):  # the scheduler thread may change it meanwhile
                    job.cancelled = True
                self.cond.notify()
            self.thread.join()

    # -- the scheduler thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self.engine.serve_step([], [], [], warm=self.max_batch)
        except Exception as e:  # noqa: BLE001 -- a worker that cannot even warm up: /health and requests say so
            self._die(e, [])
            return
        self.ready = True
        while True:
            with self.cond:
                while not (self.waiting or self.running or self.to_close or self.stopping):
                    self.cond.wait(0.5)
                close, self.to_close = self.to_close, []
                for sid, job in list(self.running.items()):
                    if job.cancelled:
                        del self.running[sid]
                        close.append(sid)
                new = []
                while self.waiting and len(self.running) + len(new) < self.max_batch and not new:
                    job = self.waiting.popleft()
                    if not job.cancelled:
                        new.append(job)
                        self.metrics.queue_wait.observe(time.perf_counter() - job.submitted)
                self.metrics.queue_depth.set(len(self.waiting))
                step = list(self.running)
                if self.stopping and not self.running and not new:
                    break
            if not (close or new or step):
                continue
            # a newcomer's first token goes out before the running batch's step, not after it
            calls = [(close, new, []), ([], [], step)] if new and step else [(close, new, step)]
            for c, n, st in calls:
                if not self._run(c, n, st):
                    return
        self.metrics.running.set(0)

    def _run(self, close: list[int], new: list[Job], step: list[int]) -> bool:
        """One engine call: free ``close``, admit ``new``, one decode step of ``step``; their tokens go out.
        False when a worker failed (every request has its error then)."""
        try:
            res = self.engine.serve_step(close, [j.req for j in new], step)
        except Exception as e:  # a dead or failing worker: every request gets its error now, never a hang
            self._die(e, new)
            return False
        now = time.perf_counter()
        if step:
            self.metrics.steps.inc()
            self.metrics.step_sequences.inc(len(step))
            self.metrics.step_seconds.labels(res["step_path"]).observe(res["step_s"])
        for job, (tok, flag, p1, ft, counts), path in zip(new, res["new"], res["new_path"]):
            self.metrics.prefill_seconds.labels("phase1", path).observe(p1)
            self.metrics.prefill_seconds.labels("query", path).observe(ft)
            job.cache = counts
            self.running[job.sid] = job
            self.metrics.prompt.inc(job.prompt_tokens)
            if counts:
                self.metrics.cache_hits.inc(counts["hits"])
                self.metrics.cache_misses.inc(counts["misses"])
                self.metrics.cache_hit_tokens.inc(cached_tokens(counts))
            self._token(job, tok, flag, now)
        for sid, (tok, flag) in zip(step, res["step"]):
            if sid in self.running:
                self._token(self.running[sid], tok, flag, now)
        for tier, n in (res.get("cache_bytes") or {}).items():
            self.metrics.cache_bytes.labels(tier).set(n)
        self.metrics.running.set(len(self.running))
        return True

    def _token(self, job: Job, tok: int, flag: int, now: float) -> None:
        job.steps += 1
        if flag != EOS:
            job.tokens.append(tok)
            self.metrics.generated.inc()
        if job.last is None:
            job.first = now
            self.metrics.ttft.observe(now - job.submitted)
        else:
            self.metrics.itl.observe(now - job.last)
        job.last = now
        piece = job.text.push(job.tokens)
        finish = None
        if flag in (EOS, STOP_WORD) or job.text.stopped:
            finish = "stop"
        elif job.steps >= job.req.max_new_tokens:
            finish = "length"
        if finish:
            piece += job.text.flush(job.tokens) if not job.text.stopped else ""
        if piece:
            job.emit("text", piece)
        if finish:
            job.finish = finish
            del self.running[job.sid]
            self.to_close.append(job.sid)
            job.emit("done", finish)

    def _die(self, e: Exception, new: list) -> None:
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        with self.cond:
            self.dead = msg
            jobs = list(self.running.values()) + list(self.waiting) + list(new)
            self.running.clear()
            self.waiting.clear()
        err = APIError(503, f"a worker failed ({msg}); the request could not finish", type="server_error",
                       code="worker_failed")
        for job in jobs:
            job.emit("error", err)
        self.metrics.running.set(0)

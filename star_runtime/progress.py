"""This process's progress, for liveness checks: a counter the runtime ticks as work advances.

Every attention call (each layer of every forward) and every decode step ticks it; while a torch.compile
runs, the heartbeat ticks it (compiling a layer takes tens of seconds without a tick). The heartbeat
(parallel/liveness.py) publishes ``snapshot()``; a worker inside a step whose counter stops moving is stalled.
Imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import threading

_state = {"count": 0, "busy": 0, "compiling": 0, "waiting": 0}
_lock = threading.Lock()


def tick() -> None:
    _state["count"] += 1  # a plain int add: cheap enough for every layer; races only lose a tick


@contextlib.contextmanager
def busy():
    """Inside the block the process is in a step that must keep making progress."""
    with _lock:
        _state["busy"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["busy"] -= 1


@contextlib.contextmanager
def waiting():
    """Inside the block the process waits for its peers (a blocking collective): if the run stalls, the
    peer it waits for is the one to name."""
    with _lock:
        _state["waiting"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["waiting"] -= 1


def snapshot() -> tuple[int, bool, bool]:
    """(progress count, whether a step is running, whether it waits for its peers)."""
    return _state["count"], _state["busy"] > 0, _state["waiting"] > 0


def compiling() -> bool:
    """A torch.compile is running (the heartbeat counts it as progress)."""
    return _state["compiling"] > 0


def _compile_start(*_args) -> None:
    with _lock:
        _state["compiling"] += 1


def _compile_end(*_args) -> None:
    with _lock:
        _state["compiling"] = max(0, _state["compiling"] - 1)
    tick()


def _watch_compiles() -> None:
    try:
        from torch._dynamo.callback import callback_handler
    except Exception:  # another torch layout: compiles then simply look like long steps
        return
    callback_handler.register_start_callback(_compile_start)
    callback_handler.register_end_callback(_compile_end)


_watch_compiles()

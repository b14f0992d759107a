"""Programmatic dependent launch (PDL) for the runtime's Triton kernels on Hopper and newer.

Inside a CUDA graph a kernel normally starts only after the one before it has finished and flushed. A kernel
launched with PDL may start while its predecessor still runs: it does what does not depend on the predecessor
(the skinny matmul pulls the first bytes of its weight into L2), then waits (``gdc_wait``: the predecessor has
finished and its writes are visible) before reading anything the predecessor wrote; it lets its own successor
launch (``gdc_launch_dependents``) once it has started. Every kernel launched this way waits before its first
dependent read, so the results are those of the serialized launches.

STAR_RUNTIME_PDL=1 turns it on (default off); STAR_RUNTIME_PDL_PREFETCH: bytes of each weight row the skinny
matmul pulls into L2 before it waits (default 0). Read once per process.
"""

from __future__ import annotations

import os

import torch

_ON: dict = {}


def enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL (asked once per device)."""
    if device not in _ON:
        _ON[device] = (os.environ.get("STAR_RUNTIME_PDL", "0") == "1" and device.type == "cuda"
                       and torch.cuda.get_device_capability(device)[0] >= 9)
    return _ON[device]


def prefetch_bytes() -> int:
    """Bytes of each weight row a PDL-launched skinny matmul prefetches into L2 before it waits (a multiple of 16)."""
    if "prefetch" not in _ON:
        v = int(os.environ.get("STAR_RUNTIME_PDL_PREFETCH", "0"))
        _ON["prefetch"] = max(0, v - v % 16)
    return _ON["prefetch"]


def launch_args(device: torch.device) -> dict:
    """The launch's extra arguments for a runtime kernel with a ``PDL`` constexpr: PDL=True and Triton's
    launch_pdl on a device where PDL is on, none elsewhere (the kernel then runs as it always did)."""
    return {"PDL": True, "launch_pdl": True} if device.type == "cuda" and enabled(device) else {}

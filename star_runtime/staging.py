"""Small host-to-device uploads without a stream sync.

``dst.copy_(cpu_tensor)`` from pageable memory makes the host wait until the GPU has finished everything queued
before it (torch synchronizes the stream after a blocking copy), three times before a query's first token (its
tokens, its page table, the pages' rotations). A ``Staging`` writes into a pinned buffer and uploads it
asynchronously; before the buffer is written again it waits for that upload only, not for the GPU's other work.
On the CPU it is a plain copy.
"""

from __future__ import annotations

import torch


class Staging:
    """A pinned host twin of the device tensor ``dst`` (same shape and dtype)."""

    def __init__(self, dst: torch.Tensor):
        self.dst = dst
        cuda = dst.device.type == "cuda"
        self.host = torch.zeros(dst.shape, dtype=dst.dtype, pin_memory=cuda)
        self.done = torch.cuda.Event() if cuda else None

    def buffer(self) -> torch.Tensor:
        """The host buffer, once the last upload out of it has finished (so it may be written)."""
        if self.done is not None:
            self.done.synchronize()
        return self.host

    def push(self) -> None:
        """Queue the upload host -> dst on the current stream (in order with the work that reads dst)."""
        self.copy()
        self.mark()

    def copy(self) -> None:
        """The upload alone, also inside a CUDA graph's capture: the graph then copies whatever the buffer holds
        when it is replayed (``mark`` after each replay)."""
        self.dst.copy_(self.host, non_blocking=self.done is not None)

    def mark(self) -> None:
        """The buffer may be written again once the work queued on the current stream so far has run."""
        if self.done is not None:
            self.done.record()

"""The workers' torch.distributed group (NCCL on GPUs, gloo on CPU) and the few collectives we use."""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

from ..progress import waiting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    return socket.gethostbyname(socket.gethostname())


# torch >= 2.13 renamed all_gather_into_tensor; keep both working.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _Done:
    def wait(self) -> bool:
        return True


_DONE = _Done()


class Group:
    """rank / world size / device, plus the collectives of the runtime.

    A group of one worker makes no torch.distributed calls at all.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank = rank
        self.world_size = world_size
        self.device = device

    @classmethod
    def init(cls, rank: int, world_size: int, device: torch.device, init_method: str | None,
             timeout_s: float = 600.0) -> "Group":
        """Join the group. init_method: ``tcp://host:port`` (Ray launcher) or ``env://`` (torchrun/srun)."""
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs = dict(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                          timeout=datetime.timedelta(seconds=timeout_s))
            if device.type == "cuda":
                kwargs["device_id"] = device
            dist.init_process_group(**kwargs)
        return cls(rank, world_size, device)

    @property
    def host(self) -> int:
        """The query host: the last worker holds the query and generated tokens' KV (as the reference)."""
        return self.world_size - 1

    @property
    def is_host(self) -> bool:
        return self.rank == self.host

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """t (...) on every rank -> (world_size, ...) identical on every rank."""
        if self.world_size == 1:
            return t.unsqueeze(0)
        t = t.contiguous().view(1, *t.shape)
        out = torch.empty((self.world_size, *t.shape[1:]), dtype=t.dtype, device=t.device)
        with waiting():
            _all_gather_single(out, t)  # concatenation along dim 0 of the (1, ...) inputs
        return out

    def broadcast(self, t: torch.Tensor, src: int) -> torch.Tensor:
        if self.world_size > 1:
            with waiting():
                dist.broadcast(t, src)
        return t

    def broadcast_async(self, t: torch.Tensor, src: int):
        """Start broadcasting ``t`` from ``src`` into ``t`` on every rank (all ranks call it, in the same
        order); returns a handle whose ``wait()`` orders later work after it (on CUDA without blocking the
        host)."""
        if self.world_size == 1:
            return _DONE
        return dist.broadcast(t, src, async_op=True)

    def broadcast_object(self, obj, src: int):
        """Any picklable ``obj`` from ``src`` to every rank (for small control data, not tensors)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        with waiting():
            dist.broadcast_object_list(box, src, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            with waiting():
                if self.device.type == "cuda":
                    dist.barrier(device_ids=[self.device.index or 0])
                else:
                    dist.barrier()

    def ring_exchange(self, send: torch.Tensor, recv: torch.Tensor):
        """Start sending ``send`` to rank+1 and receiving ``recv`` from rank-1; returns handles to wait on."""
        nxt = (self.rank + 1) % self.world_size
        prv = (self.rank - 1) % self.world_size
        ops = [dist.P2POp(dist.isend, send, nxt), dist.P2POp(dist.irecv, recv, prv)]
        return dist.batch_isend_irecv(ops)

    def destroy(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def local_devices(kind: str, per_worker: int = 1) -> list[torch.device]:
    """This process's devices: under torchrun GPUs [LOCAL_RANK * n, (LOCAL_RANK + 1) * n); under Ray the n
    GPUs it made visible (cuda:0 ..). The first is the group device (communicator, embeddings, LM head)."""
    if kind != "cuda":
        return [torch.device("cpu")]
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but this worker sees no CUDA GPU; use --device cpu")
    count = torch.cuda.device_count()
    if per_worker > count:
        raise RuntimeError(f"--gpus_per_worker {per_worker} but this worker sees {count} GPU(s); lower it")
    first = (int(os.environ.get("LOCAL_RANK", 0)) * per_worker) % count
    if first + per_worker > count:
        raise RuntimeError(f"local rank {os.environ.get('LOCAL_RANK')} with --gpus_per_worker {per_worker} needs "
                           f"GPUs {first}..{first + per_worker - 1}, this node has {count}; start "
                           f"{count // per_worker} workers per node")
    torch.cuda.set_device(first)
    return [torch.device("cuda", first + j) for j in range(per_worker)]


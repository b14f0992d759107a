"""How workers are started: in this process (one worker), as Ray actors, or as torchrun/srun ranks.

Every launcher offers ``run_batch(requests, options) -> [Reply]`` (the query host's replies),
``share_from_host(obj)`` and ``close()``.
"""

from __future__ import annotations

import os

from ..config import ConfigError, RunConfig
from ..errors import WorkerFailure
from ..models.loader import ModelSource
from .worker import Options, Reply, Request, Worker


class _LocalWorker:
    """The worker lives in this process."""

    worker: Worker

    def run_batch(self, reqs: list[Request], options: Options | None = None) -> list[Reply]:
        return self.worker.run_batch(reqs, options)

    def share_from_host(self, obj):
        """``obj`` as the query host has it, on every rank (one process: itself)."""
        return obj

    def serve_step(self, close, new, step, warm: int = 0) -> dict:
        return self.worker.serve_step(close, new, step, warm)

    def close(self) -> None:
        self.worker.close()


class InProcessLauncher(_LocalWorker):
    """A single worker in the calling process: no process group, no Ray."""

    def __init__(self, cfg: RunConfig, source: ModelSource):
        self.worker = Worker(cfg, source, 0, 1, threads=None)
        self.world_size = 1
        self.is_writer = True


class TorchrunLauncher(_LocalWorker):
    """This process is one rank of a torchrun / srun job (env:// rendezvous: RANK, WORLD_SIZE, MASTER_ADDR...).

    Every rank runs the same driver loop; only the query host writes results.
    """

    def __init__(self, cfg: RunConfig, source: ModelSource):
        rank, world = torchrun_rank()
        if world != cfg.world_size:
            raise WorkerFailure(
                f"torchrun started {world} processes but the run asks for {cfg.world_size} workers; "
                f"pass --num_workers {world}"
            )
        self.worker = Worker(cfg, source, rank, world, "env://")
        self.world_size = world
        self.is_writer = self.worker.group.is_host

    def share_from_host(self, obj):
        return self.worker.group.broadcast_object(obj, self.worker.group.host)

    def serve_step(self, close, new, step, warm: int = 0) -> dict:
        """The host rank (the server) sends each iteration to the other ranks, which follow (follow())."""
        self.worker.group.broadcast_object(("step", close, new, step, warm), self.worker.group.host)
        return self.worker.serve_step(close, new, step, warm)

    def follow(self) -> None:
        """On ranks other than the host: run the server's iterations until it stops. The host decides when to
        stop (SIGTERM here is left to it: torchrun sends it to every rank); a host that dies is seen by the
        liveness watch (parallel/liveness.py)."""
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            cmd = self.worker.group.broadcast_object(None, self.worker.group.host)
            if cmd[0] == "stop":
                return
            self.worker.serve_step(*cmd[1:])

    def stop_following(self) -> None:
        if self.worker.group.world_size > 1:
            self.worker.group.broadcast_object(("stop",), self.worker.group.host)


def torchrun_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of this torchrun / srun process; one line if they are not set."""
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise ConfigError("--launcher torchrun, but RANK and WORLD_SIZE are not set: start the command with "
                          "torchrun --nproc_per_node N ... (or srun, launch/slurm_srun.sbatch), or use "
                          "--launcher ray") from None


def uses_torchrun(cfg: RunConfig) -> bool:
    return cfg.launcher == "torchrun" or ("RANK" in os.environ and "WORLD_SIZE" in os.environ
                                          and os.environ["WORLD_SIZE"].isdigit() and int(os.environ["WORLD_SIZE"]) > 1)


def writes_results(cfg: RunConfig) -> bool:
    """Whether this process writes results: always, except on torchrun ranks other than the query host
    (the last rank). Known before any worker starts."""
    if not uses_torchrun(cfg):
        return True
    rank, world = torchrun_rank()
    return rank == world - 1


def check_devices(cfg: RunConfig) -> None:
    """Refuse, before any worker starts, a GPU run this machine cannot hold (one line, with the fix).

    On a Ray cluster given by address the GPUs are counted once connected (ray_launcher)."""
    on_cluster = bool(cfg.ray_address or os.environ.get("RAY_ADDRESS")) and not uses_torchrun(cfg)
    if cfg.device != "cuda" or on_cluster:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device cuda, but this machine has no usable CUDA GPU (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
    if uses_torchrun(cfg):
        return  # each rank takes its own GPU(s): parallel/group.local_devices checks the node's count
    need, have = cfg.world_size * cfg.gpus_per_worker, torch.cuda.device_count()
    if need > have:
        raise ConfigError(f"{cfg.world_size} worker(s) x {cfg.gpus_per_worker} GPU(s) need {need} GPUs, this "
                          f"machine has {have}; pass --num_workers {max(1, have // cfg.gpus_per_worker)} (-np), or "
                          "--ray_address of a cluster with more GPUs")


def make_launcher(cfg: RunConfig, source: ModelSource):
    if uses_torchrun(cfg):
        return TorchrunLauncher(cfg, source)
    if cfg.world_size == 1:
        return InProcessLauncher(cfg, source)
    try:
        from .ray_launcher import RayLauncher
    except ImportError as e:
        raise ConfigError(f"{cfg.world_size} workers need Ray ({e}); pip install 'ray[default]', or start the "
                          f"workers with torchrun --nproc_per_node {cfg.world_size} ... --launcher torchrun") from e
    return RayLauncher(cfg, source)

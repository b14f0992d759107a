"""How workers are started: in this process (one worker), as Ray actors, or as torchrun/srun ranks.

Every launcher offers ``run(request) -> Reply`` (the query host's reply) and ``close()``.
"""

from __future__ import annotations

import os

from ..config import RunConfig
from ..models.loader import ModelSource
from .worker import Reply, Request, Worker


class WorkerFailure(RuntimeError):
    """A worker died or raised; the run stops instead of hanging in a collective."""


class _LocalWorker:
    """The worker lives in this process."""

    worker: Worker

    def run(self, req: Request) -> Reply:
        return self.worker.run(req)

    def run_batch(self, reqs: list[Request]) -> list[Reply]:
        return self.worker.run_batch(reqs)

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
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if world != cfg.world_size:
            raise WorkerFailure(
                f"torchrun started {world} processes but the run asks for {cfg.world_size} workers; "
                f"pass --num_workers {world}"
            )
        self.worker = Worker(cfg, source, rank, world, "env://")
        self.world_size = world
        self.is_writer = self.worker.group.is_host


def make_launcher(cfg: RunConfig, source: ModelSource):
    if cfg.launcher == "torchrun" or ("RANK" in os.environ and "WORLD_SIZE" in os.environ
                                       and int(os.environ["WORLD_SIZE"]) > 1):
        return TorchrunLauncher(cfg, source)
    if cfg.world_size == 1:
        return InProcessLauncher(cfg, source)
    try:
        from .ray_launcher import RayLauncher
    except ImportError as e:
        from ..config import ConfigError

        raise ConfigError(f"{cfg.world_size} workers need Ray ({e}); pip install 'ray[default]', or start the "
                          f"workers with torchrun --nproc_per_node {cfg.world_size} ... --launcher torchrun") from e
    return RayLauncher(cfg, source)

"""Ray launcher: one actor per worker (one GPU each on CUDA), placed by a placement group, joined in one
torch.distributed group (NCCL on GPUs, gloo on CPU).

A worker that dies or raises ends the run with a clear error: the driver waits on all workers at once,
and on the first failure kills the others (which would otherwise wait forever in a collective).
"""

from __future__ import annotations

import os

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import RunConfig
from ..models.loader import ModelSource
from .group import free_port, node_ip
from .launchers import WorkerFailure
from .worker import Reply, Request, Worker


@ray.remote
class WorkerActor:
    def __init__(self):
        self.worker = None

    def address(self) -> tuple[str, int]:
        return node_ip(), free_port()

    def where(self) -> dict:
        """The Ray node this actor runs on, its IP and the GPUs Ray gave it."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "ip": node_ip(), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def setup(self, cfg: RunConfig, source: ModelSource, rank: int, world: int, init_method: str,
              threads: int) -> dict:
        self.worker = Worker(cfg, source, rank, world, init_method, threads=threads)
        return self.worker.info()

    def run_batch(self, reqs: list[Request]) -> list[Reply]:
        return self.worker.run_batch(reqs)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def order_by_node(actors: list) -> tuple[list, list[dict]]:
    """Sort actors so ranks follow node order, then GPU order: block i lives on a node no later than block
    i + 1's. Node order is $STAR_RUNTIME_NODE_ORDER (comma-separated IPs or hostnames, as the Slurm launcher
    sets it), else the order of the nodes in ray.nodes()."""
    places = ray.get([a.where.remote() for a in actors])
    order = [x.strip() for x in os.environ.get("STAR_RUNTIME_NODE_ORDER", "").split(",") if x.strip()]
    known = {}
    for n in ray.nodes():
        known.setdefault(n["NodeID"], (n.get("NodeManagerAddress"), n.get("NodeManagerHostname")))

    def node_rank(p):
        ip, host = known.get(p["node_id"], (p["ip"], None))
        for i, name in enumerate(order):
            if name in (ip, host, p["ip"]):
                return i
        return len(order) + list(known).index(p["node_id"]) if p["node_id"] in known else 10**6

    def gpu_key(p):
        return [int(g) if g.isdigit() else 0 for g in p["gpus"]]

    keyed = sorted(range(len(actors)), key=lambda i: (node_rank(places[i]), gpu_key(places[i]), i))
    return [actors[i] for i in keyed], [places[i] for i in keyed]


def ensure_ray(address: str | None, num_workers: int) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=True,
                  logging_level="ERROR", configure_logging=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, num_workers), **kwargs)


class RayLauncher:
    def __init__(self, cfg: RunConfig, source: ModelSource):
        self.cfg = cfg
        self.world_size = cfg.world_size
        self.is_writer = True
        ensure_ray(cfg.ray_address, self.world_size)
        gpus = cfg.gpus_per_worker if cfg.device == "cuda" else 0
        bundles = [{"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1} for _ in range(self.world_size)]
        # PACK fills a node's GPUs before the next node's; over several nodes the ranks are then ordered by
        # node (below), so consecutive context blocks stay on one node.
        self.pg = placement_group(bundles, strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=120)
        except Exception as e:
            remove_placement_group(self.pg)
            raise WorkerFailure(
                f"Ray could not place {self.world_size} workers ({f'{gpus} GPU' if gpus else '1 CPU'} each) within "
                f"120 s; the cluster has {ray.cluster_resources()}; lower --num_workers"
            ) from e
        self.actors = [
            WorkerActor.options(
                num_cpus=1, num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote()
            for i in range(self.world_size)
        ]
        self.actors, self.placement = order_by_node(self.actors)
        host, port = ray.get(self.actors[0].address.remote())
        threads = max(1, (os.cpu_count() or 1) // self.world_size)
        self.infos = self._gather(
            [a.setup.remote(cfg, source, i, self.world_size, f"tcp://{host}:{port}", threads)
             for i, a in enumerate(self.actors)], "start"
        )

    def _gather(self, refs, what: str):
        """ray.get on all refs, but fail fast: the first error kills every actor and raises WorkerFailure."""
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except Exception as e:
                rank = refs.index(ready[0])
                self._kill()
                raise WorkerFailure(
                    f"worker {rank} failed during {what}: {_first_line(e)}; the run is stopped "
                    "(finished samples are saved: rerun with --use_cache to resume)"
                ) from e
        return ray.get(list(refs))

    def run(self, req: Request) -> Reply:
        return self.run_batch([req])[0]

    def run_batch(self, reqs: list[Request]) -> list[Reply]:
        what = f"sample {reqs[0].index}" if len(reqs) == 1 else f"samples {[r.index for r in reqs]}"
        replies = self._gather([a.run_batch.remote(reqs) for a in self.actors], what)
        return replies[-1]  # the query host is the last worker

    def _kill(self) -> None:
        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)
        self.actors = []
        try:
            remove_placement_group(self.pg)
        except Exception:
            pass

    def close(self) -> None:
        if self.actors:
            try:
                ray.get([a.close.remote() for a in self.actors], timeout=30)
            except Exception:
                pass
        self._kill()


def _first_line(e: Exception) -> str:
    cause = getattr(e, "cause", None) or e
    text = f"{type(cause).__name__}: {cause}".strip()
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1][:300] if lines else type(e).__name__

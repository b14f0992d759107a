"""Ray launcher: one actor per worker (one GPU each on CUDA), placed by a placement group, joined in one
torch.distributed group (NCCL on GPUs, gloo on CPU).

A worker that dies or raises ends the run with a clear error: the driver waits on all workers at once,
and on the first failure kills the others (which would otherwise wait forever in a collective).
"""

from __future__ import annotations

import os
import socket
import time

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import ConfigError, RunConfig
from ..errors import WorkerFailure
from ..models.loader import ModelSource
from .group import free_port, node_ip
from .liveness import PERIOD_S, Watchdog, connect_store, read_all
from .worker import Options, Reply, Request, Worker, flush_on_signals


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
              threads: int, heartbeat_store: tuple[str, int] | None) -> None:
        self.worker = Worker(cfg, source, rank, world, init_method, threads=threads,
                             heartbeat_store=heartbeat_store)
        flush_on_signals(self.worker.flush)

    def run_batch(self, reqs: list[Request], options: Options | None = None) -> list[Reply]:
        return self.worker.run_batch(reqs, options)

    def serve_step(self, close, new, step, warm: int = 0) -> dict:
        return self.worker.serve_step(close, new, step, warm)

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
        check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot connect to the Ray cluster at {address} ({_first_line(e)}); check the "
                              "address (`ray status` on the head node), or leave --ray_address and RAY_ADDRESS "
                              "unset to start a local Ray") from None
    else:  # a Ray of our own, even if another one runs on this machine (join that one with --ray_address auto)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_workers), **kwargs)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A host:port (or ray://host:port) address must accept a TCP connection within a few seconds;
    ``auto`` and other forms are left to Ray."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"--ray_address {address}: nothing answers at {host}:{port} ({e.strerror or e}); start "
                          "the cluster (`ray start --head`) or fix the address, or leave it unset to start a "
                          "local Ray") from None


def check_cluster_gpus(cfg: RunConfig) -> None:
    """A GPU run needs workers x GPUs per worker GPUs in the cluster: one line at once, not a long wait."""
    if cfg.device != "cuda":
        return
    need = cfg.world_size * cfg.gpus_per_worker
    have = int(ray.cluster_resources().get("GPU", 0))
    if need > have:
        raise ConfigError(f"{cfg.world_size} worker(s) x {cfg.gpus_per_worker} GPU(s) need {need} GPUs; the Ray "
                          f"cluster has {have}; lower --num_workers (-np), or add GPU nodes to the cluster")


class RayLauncher:
    def __init__(self, cfg: RunConfig, source: ModelSource):
        self.cfg = cfg
        self.world_size = cfg.world_size
        self.is_writer = True
        ensure_ray(cfg.ray_address, self.world_size)
        check_cluster_gpus(cfg)
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
        self.store, self.watchdog, beat_at = None, None, None
        if cfg.stall_timeout_s > 0:  # the workers' heartbeats come to a store this driver hosts
            self.store = connect_store(node_ip(), 0, is_master=True)
            beat_at = (node_ip(), self.store.port)
            self.watchdog = Watchdog(range(self.world_size), cfg.stall_timeout_s)
        self._gather([a.setup.remote(cfg, source, i, self.world_size, f"tcp://{host}:{port}", threads, beat_at)
                      for i, a in enumerate(self.actors)], "start")

    def _gather(self, refs, what: str):
        """ray.get on all refs, but fail fast: the first error, or a worker whose heartbeat or progress stops
        (liveness.Watchdog), kills every actor and raises WorkerFailure."""
        pending = list(refs)
        if self.watchdog is not None:
            self.watchdog.reset()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=PERIOD_S)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as e:
                    self._fail(f"worker {refs.index(ref)} failed during {what}: {_first_line(e)}", e)
            if self.watchdog is not None and pending:
                now = time.monotonic()
                try:
                    beats = read_all(self.store, range(self.world_size))
                except Exception:
                    beats = {}
                for rank, value in beats.items():
                    self.watchdog.observe(rank, value, now)
                msg = self.watchdog.verdict(now)
                if msg:
                    self._fail(f"{msg}, during {what}")
        return ray.get(list(refs))

    def _fail(self, msg: str, cause: Exception | None = None):
        self._kill()
        raise WorkerFailure(f"{msg}; the run is stopped (finished samples are saved: rerun with --use_cache "
                            "to resume)") from cause

    def share_from_host(self, obj):
        return obj  # the driver is the only process that reads and writes results

    def serve_step(self, close, new, step, warm: int = 0) -> dict:
        what = "a server step" + (f" (requests {[r.index for r in new]})" if new else "")
        replies = self._gather([a.serve_step.remote(close, new, step, warm) for a in self.actors], what)
        out = replies[-1]
        out["gone"] = [k for r in replies for k in r.get("gone", [])]  # every worker's evicted blocks
        tiers = {t for r in replies for t in r.get("cache_bytes", {})}
        out["cache_bytes"] = {t: sum(r.get("cache_bytes", {}).get(t, 0) for r in replies) for t in tiers}
        return out

    def run_batch(self, reqs: list[Request], options: Options | None = None) -> list[Reply]:
        what = f"sample {reqs[0].index}" if len(reqs) == 1 else f"samples {[r.index for r in reqs]}"
        replies = self._gather([a.run_batch.remote(reqs, options) for a in self.actors], what)
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

"""A Ray cluster of several real Ray nodes on this machine (ray.cluster_utils.Cluster): star over workers on
different nodes vs one worker; then a worker killed mid-run and the run resumed. Prints one JSON line.

Run by tests/test_launch.py in its own process (a process joins one Ray cluster only).
"""

import importlib
import json
import sys
import threading
import time
from pathlib import Path

import ray
import ray.util.placement_group  # noqa: F401  (the runtime's Ray imports, before the thread below)
import ray.util.scheduling_strategies  # noqa: F401
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
RUNTIME = ["conftest", "star_runtime", "star_runtime.harness.predict", "star_runtime.errors",
           "star_runtime.parallel.worker"]


def main(out_dir: str) -> None:
    out = Path(out_dir)
    # the runtime's imports (seconds of CPU) run while the Ray nodes start, which is mostly waiting
    loading = threading.Thread(target=lambda: [importlib.import_module(m) for m in RUNTIME])
    loading.start()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    loading.join()
    from conftest import random_ids  # an import that failed in the thread fails here, with its traceback

    from star_runtime import Engine, RunConfig
    from star_runtime.errors import WorkerFailure
    from star_runtime.harness.predict import run_jsonl
    from star_runtime.parallel.worker import Request

    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    result = {"nodes": len([n for n in ray.nodes() if n["Alive"]])}

    cases = [(random_ids(130, 1), random_ids(6, 2)), (random_ids(70, 3), random_ids(4, 4))]
    # tokens_to_generate is for the run_jsonl part below; the requests here set their own 10 tokens
    cfg = RunConfig(model_path="random:tiny", attn_type="star", block_size=32, num_workers=2,
                    ray_address=cluster.address, ignore_eos=True, tokens_to_generate=100)
    eng = Engine(cfg)  # kept for the run a dead worker stops below (starting workers costs seconds)
    result["worker_nodes"] = [p["node_id"] for p in eng.launcher.placement]
    multi = [eng.run(Request(i, c, q, 10)).tokens for i, (c, q) in enumerate(cases)]
    with Engine(cfg.replace(num_workers=1, ray_address=None)) as one:  # the reference: one in-process worker
        single = [one.run(Request(i, c, q, 10)).tokens for i, (c, q) in enumerate(cases)]
    result["star_equal"] = multi == single and all(len(t) == 10 for t in multi)

    # a worker dies in the middle of a run: clear error, no hang; the resumed run finishes every sample once
    inp, preds = out / "in.jsonl", out / "preds.jsonl"
    with open(inp, "w") as f:
        for i in range(5):
            f.write(json.dumps({"index": i, "input_context": f"Passage {i}. " * 60, "input_query": " Why?"}) + "\n")
    victim = eng.launcher.actors[0]

    def kill_after_first():
        while not preds.exists() or preds.read_text().count("\n") < 1:
            time.sleep(0.05)
        ray.kill(victim, no_restart=True)

    threading.Thread(target=kill_after_first, daemon=True).start()
    t0 = time.time()
    try:
        run_jsonl(cfg, str(inp), str(preds), use_cache=True, engine=eng)
        result["error"] = None
    except WorkerFailure as e:
        result["error"] = str(e)
    finally:
        eng.close()
    result["fail_s"] = round(time.time() - t0, 1)
    result["written_before_resume"] = preds.read_text().count("\n")
    run_jsonl(cfg, str(inp), str(preds), use_cache=True)  # the same settings: resume refuses others
    result["indices"] = sorted(json.loads(l)["index"] for l in preds.read_text().splitlines())
    print(json.dumps(result), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])

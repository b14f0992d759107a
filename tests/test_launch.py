"""Launch: scripts parse, dry runs print each node's exact command for a Slurm environment, Slurm host
lists expand, and a real multi-node Ray cluster on this machine runs star exactly and survives a dead worker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
from hostlist import expand  # noqa: E402

SCRIPTS = ["launch.sh", "launch/common.sh", "launch/ray_cluster.sh", "launch/slurm_ray.sbatch",
           "launch/slurm_srun.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_hostlist_expansion():
    assert expand("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand("a1,b[9-10]x") == ["a1", "b9x", "b10x"]
    assert expand("node7") == ["node7"]


def dry(script, *args, **env):
    e = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_GPUS_ON_NODE": "4", **env}
    return subprocess.run(["bash", str(ROOT / script), *args], env=e, cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.splitlines()


def test_ray_classic_dry_run():
    lines = dry("launch/slurm_ray.sbatch", "python", "run_ruler.py", "-l", "131072", "-nn", "3", "-np", "4",
                RAY_MODE="classic")
    assert lines[0] == "[gpu07] ray start --head --node-ip-address=gpu07 --port=6379 --num-gpus=4 --block"
    assert lines[1] == "[gpu08] ray start --address=gpu07:6379 --num-gpus=4 --block"
    assert lines[2] == "[gpu09] ray start --address=gpu07:6379 --num-gpus=4 --block"
    assert "< 12:" in "\n".join(lines)  # waits for every GPU of the allocation
    assert lines[-1] == ("[gpu07] RAY_ADDRESS=gpu07:6379 STAR_RUNTIME_NODE_ORDER=gpu07,gpu08,gpu09 "
                         "python run_ruler.py -l 131072 -nn 3 -np 4")


def test_ray_symmetric_dry_run():
    lines = dry("launch/slurm_ray.sbatch", "python", "run_babilong.py", "-l", "64k", RAY_MODE="symmetric")
    assert len(lines) == 3
    for node, line in zip(["gpu07", "gpu08", "gpu09"], lines):
        assert line == (f"[{node}] RAY_ADDRESS=gpu07:6379 STAR_RUNTIME_NODE_ORDER=gpu07,gpu08,gpu09 ray "
                        "symmetric-run --address gpu07:6379 --min-nodes 3 --num-gpus 4 -- python run_babilong.py "
                        "-l 64k")


def test_srun_dry_run():
    lines = dry("launch/slurm_srun.sbatch", "run_ruler.py", "-l", "131072", "-nn", "3", "-np", "4")
    assert lines == [f"[gpu0{7 + i}] torchrun --nnodes=3 --nproc_per_node=4 --node_rank={i} --master_addr=gpu07 "
                     "--master_port=29500 run_ruler.py -l 131072 -nn 3 -np 4 --launcher torchrun" for i in range(3)]


def test_srun_dry_run_two_gpus_per_worker():
    lines = dry("launch/slurm_srun.sbatch", "run_ruler.py", "-l", "131072", "-nn", "3", "-np", "2",
                "--gpus_per_worker", "2", GPUS_PER_WORKER="2")
    assert lines[0] == ("[gpu07] torchrun --nnodes=3 --nproc_per_node=2 --node_rank=0 --master_addr=gpu07 "
                        "--master_port=29500 run_ruler.py -l 131072 -nn 3 -np 2 --gpus_per_worker 2 --launcher torchrun")


def test_launch_sh_dry_run_on_cpu():
    e = {**os.environ, "DRY_RUN": "1", "PATH": "/usr/bin:/bin"}  # no nvidia-smi: CPU workers
    out = subprocess.run(["bash", str(ROOT / "launch.sh"), "-l", "1024", "-s", "2", "-t", "niah_single_1"],
                         env=e, cwd=ROOT, check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(out) == 4
    assert " -a dense " in out[0] and "-nn 1 -np 1" in out[0] and "--device cpu" in out[0]
    assert " -a ring " in out[1] and out[1].endswith("-nn 1 -np 2")
    assert " -a star " in out[2] and out[2].endswith("-nn 1 -np 2")
    assert out[3].endswith("ruler/gather_results_ruler.py -e results/ruler")


def test_multinode_ray_cluster_star_and_dead_worker(tmp_path):
    """Real raylets: a head and two worker nodes on this machine (ray.cluster_utils)."""
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "ray_multinode.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["nodes"] == 3 and len(set(r["worker_nodes"])) == 2  # one worker on each worker node
    assert r["star_equal"]
    assert r["error"] and "worker 0 failed during sample" in r["error"] and r["fail_s"] < 60
    assert 1 <= r["written_before_resume"] < 5
    assert r["indices"] == [0, 1, 2, 3, 4]  # every sample exactly once after the resume

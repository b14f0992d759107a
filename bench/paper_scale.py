"""The Star Attention paper's scale on one 8-GPU machine: ring vs star at 128K (block 32K), 256K, 512K and
1M (block 32K), random:llama3-8b, bf16. Prints the FLOP model's predicted star/ring ratio beside the
paper's, and the commands; --run runs them (needs 8 GPUs).

  python bench/paper_scale.py            # predictions + the commands (a dry run)
  python bench/paper_scale.py --run --out paper_scale.jsonl
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flop_model import Shape, predicted_speedup  # noqa: E402

CASES = [(131072, 32768), (262144, 32768), (524288, 32768), (1048576, 32768)]
PAPER = {131072: "2.7x (8xA100)", 262144: "10.8x", 524288: "16.2x", 1048576: "16.9x (more GPUs)"}


def commands(gpus: int, out: str) -> list[list[str]]:
    here = Path(__file__).resolve().parent
    cases = [f"{n}:{b}" for n, b in CASES]
    common = ["--max_batch_tokens", "65536", "--repeats", "1", "--decode_tokens", "9", "--out", out]
    return [["torchrun", f"--nproc_per_node={gpus}", str(here / "bench_modes.py"), "--modes", "ring", "star",
             "--cases", *cases, *common],
            # the paper's 128K layout: half as many workers, each over 2 GPUs (layers split, static decode)
            ["torchrun", f"--nproc_per_node={gpus // 2}", str(here / "bench_modes.py"), "--modes", "ring", "star",
             "--cases", cases[0], "--gpus_per_worker", "2", "--decodes", "static", *common]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--run", action="store_true")
    p.add_argument("--out", default="paper_scale.jsonl")
    a = p.parse_args(argv)
    shape = Shape()
    print(f"{'context':>8} {'block':>6} {'FLOP model star/ring':>21}  paper (star vs ring)")
    for n, b in CASES:
        print(f"{n // 1024:>7}K {b // 1024:>5}K {predicted_speedup(shape, n, a.gpus, b):>20.2f}x  {PAPER[n]}")
    print("The second command is the paper's 128K layout (workers of 2 GPUs, layers split in order): it holds "
          "more per worker, but a worker's 2 GPUs run its layers one after the other, not faster than one.")
    for cmd in commands(a.gpus, a.out):
        print(("running: " if a.run else "dry run: ") + " ".join(shlex.quote(c) for c in cmd), flush=True)
        if a.run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

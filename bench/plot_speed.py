"""Plot GPU speed runs (bench_modes.py JSON): phase-1 time against length per mode, and star's measured
speed-up over ring beside the FLOP model's prediction.

  python bench/plot_speed.py docs/results/speed_h100x4_cudnn.jsonl docs/results/speed_h100x4.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    rows = [json.loads(l) for l in open(src) if l.strip()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    # one line per mode, and for star one per block size (a line never joins two block sizes)
    series = sorted({(r["mode"], r.get("block_size") if r["mode"] == "star" else None) for r in rows
                     if r["mode"] in ("dense", "ring", "star")},
                    key=lambda m: (("dense", "ring", "star").index(m[0]), m[1] or 0))
    for mode, block in series:
        mine = [r for r in rows if r["mode"] == mode and (mode != "star" or r.get("block_size") == block)]
        pts = sorted((r["context"], r["phase1_s"]) for r in mine)
        label = f"{mode} ({mine[0]['workers']} GPU)" + (f", block {block // 1024}K" if block else "")
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("context tokens")
    ax1.set_ylabel("phase 1 (s)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    stars = [r for r in rows if "star_vs_ring_measured" in r]
    names = [f"{r['context'] // 1024}K / block {r['block_size'] // 1024}K" for r in stars]
    x = range(len(stars))
    ax2.bar([i - 0.2 for i in x], [r["star_vs_ring_measured"] for r in stars], 0.4, label="measured")
    ax2.bar([i + 0.2 for i in x], [r["star_vs_ring_predicted"] for r in stars], 0.4, label="FLOP model")
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names)
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_ylabel("star speed-up over ring (phase 1)")
    ax2.legend()
    fig.suptitle(f"{rows[0]['model']}, {rows[0]['dtype']}, {rows[0]['card']}")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

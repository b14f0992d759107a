"""Plot bench_modes.py output: phase-1 time, TTFT and decode latency per mode and context length.

  python bench/plot_modes.py docs/results/modes_h200_2gpu.jsonl docs/results/modes_h200_2gpu.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    rows = [json.loads(l) for l in open(src) if l.strip()]
    modes = sorted({(r["mode"], r["workers"]) for r in rows}, key=lambda m: ["dense", "ring", "star"].index(m[0]))
    lengths = sorted({r["context"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    metrics = [("phase1_s", "phase 1 (s)"), ("ttft_s", "TTFT (s)"), ("decode_ms", "decode (ms / token)")]
    width = 0.8 / len(modes)
    for ax, (key, label) in zip(axes, metrics):
        for i, (mode, w) in enumerate(modes):
            vals = [next((r[key] for r in rows if r["mode"] == mode and r["workers"] == w and r["context"] == n),
                         0) for n in lengths]
            ax.bar([j + i * width for j in range(len(lengths))], vals, width, label=f"{mode} ({w} GPU)")
        ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(lengths))])
        ax.set_xticklabels([f"{n // 1024}K" for n in lengths])
        ax.set_title(label)
        ax.set_xlabel("context tokens")
    axes[0].legend()
    fig.suptitle(f"{rows[0]['model']}, {rows[0]['dtype']}, {rows[0]['card']}")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

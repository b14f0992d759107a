"""Gather benchmark summaries of several runs into one table (markdown + CSV) and an accuracy plot.

A run is a folder <name>/<length>/summary.json (as run_benchmark writes them).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def collect(exp_dir: str) -> dict:
    """{run name: {length: summary}} for every run under exp_dir."""
    runs: dict = {}
    for f in sorted(Path(exp_dir).glob("*/*/summary.json")):
        try:
            length = int(f.parent.name)
        except ValueError:
            continue
        runs.setdefault(f.parent.parent.name, {})[length] = json.loads(f.read_text())
    return runs


def table(runs: dict) -> tuple[list[str], list[list]]:
    """Header and rows: tasks (then Average) by length x run."""
    cols = sorted({(length, run) for run, per in runs.items() for length in per})
    tasks: list[str] = []
    for per in runs.values():
        for s in per.values():
            tasks += [t for t in s["tasks"] if t not in tasks]
    header = ["task"] + [f"{length} {run}" for length, run in cols]
    rows = []
    for t in tasks + ["Average"]:
        row = [t]
        for length, run in cols:
            s = runs[run][length]
            row.append(s["average"] if t == "Average" else s["tasks"].get(t, {}).get("score"))
        rows.append(row)
    return header, rows


def write_outputs(exp_dir: str, title: str) -> tuple[Path, Path, Path]:
    runs = collect(exp_dir)
    if not runs:
        raise SystemExit(f"no <run>/<length>/summary.json under {exp_dir}")
    header, rows = table(runs)
    out = Path(exp_dir)
    md = out / "results_table.md"
    fmt = lambda v: "" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    md.write_text("\n".join(lines) + "\n")
    with open(out / "results_table.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header] + rows)
    png = out / "results_plot.png"
    plot(runs, png, title)
    return md, out / "results_table.csv", png


def plot(runs: dict, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run, per in sorted(runs.items()):
        lengths = sorted(per)
        ax.plot(lengths, [per[n]["average"] for n in lengths], marker="o", label=run)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({n for per in runs.values() for n in per}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{int(x) // 1024}K"
                                                                        if x >= 1024 else str(int(x))))
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def cli(argv, title: str) -> None:
    """The gather_results_* command line: -e DIR -> table (md, csv) and plot in DIR."""
    import argparse

    p = argparse.ArgumentParser(description=f"{title}: one table and plot across runs")
    p.add_argument("-e", "--exp_dir", required=True, help="folder holding <run>/<length>/summary.json")
    a = p.parse_args(argv)
    for f in write_outputs(a.exp_dir, title):
        print(f)
    print((Path(a.exp_dir) / "results_table.md").read_text())

#!/usr/bin/env python3
"""Expand a Slurm node list ("gpu[01-03,07],login1") into one hostname per line, without scontrol.

  python3 launch/hostlist.py "$SLURM_JOB_NODELIST"
"""

import re
import sys


def expand(nodelist: str) -> list[str]:
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-")
                hosts += [f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(f"{prefix}{r}{suffix}")
    return hosts


if __name__ == "__main__":
    print("\n".join(expand(sys.argv[1] if len(sys.argv) > 1 else "")))

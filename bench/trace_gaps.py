"""Where a profiled request's wall time goes between the host and the GPU, from a torch.profiler Chrome trace.

Inside the span of a ``record_function`` annotation (the request): GPU busy time (the union of kernels,
copies and sets), the GPU's idle time before its first operation, between operations and after its last one,
and the longest idle gaps with the operations on either side (a gap inside a CUDA-graph replay is the
launch spacing; one before the first kernel is host work the GPU waits for).

    python bench/trace_gaps.py trace.json [--span request] [--top 12]
"""

from __future__ import annotations

import argparse
import gzip
import json

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def load(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def gaps(events: list[dict], span: str = "request", top: int = 12) -> dict:
    """Summary (ms) of the GPU's time inside the first annotation named ``span``."""
    spans = [e for e in events if e.get("ph") == "X" and e.get("name") == span and e.get("cat") != "gpu_user_annotation"]
    if not spans:
        raise ValueError(f"no span named {span!r} in the trace")
    s0 = spans[0]["ts"]
    s1 = s0 + spans[0]["dur"]
    ops = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATS
                  and s0 <= e["ts"] <= s1), key=lambda e: e["ts"])
    if not ops:
        return {"wall_ms": (s1 - s0) / 1e3, "gpu_ops": 0}
    busy, holes, end = 0.0, [], ops[0]["ts"]
    prev = None
    for e in ops:
        a, b = e["ts"], e["ts"] + e["dur"]
        if prev is not None and a > end:
            holes.append((a - end, prev["name"], e["name"]))
        if b > end:
            busy += b - max(a, end)
            end = b
        prev = e
    holes.sort(reverse=True)
    inside = sum(h for h, _, _ in holes)
    return {
        "wall_ms": (s1 - s0) / 1e3, "gpu_busy_ms": busy / 1e3, "gpu_ops": len(ops),
        "idle_before_first_ms": (ops[0]["ts"] - s0) / 1e3, "idle_between_ms": inside / 1e3,
        "idle_after_last_ms": max(0.0, s1 - end) / 1e3,
        "gaps_over_5us": sum(1 for h, _, _ in holes if h > 5), "idle_in_gaps_over_5us_ms":
            sum(h for h, _, _ in holes if h > 5) / 1e3,
        "longest": [{"us": round(h, 1), "after": a[:60], "before": b[:60]} for h, a, b in holes[:top]],
    }


def report(summary: dict) -> str:
    s = summary
    if not s.get("gpu_ops"):
        return f"wall {s['wall_ms']:.3f} ms, no GPU operation"
    lines = [f"wall {s['wall_ms']:.3f} ms: GPU busy {s['gpu_busy_ms']:.3f} ({s['gpu_ops']} ops); idle before the "
             f"first {s['idle_before_first_ms']:.3f}, between {s['idle_between_ms']:.3f} ({s['gaps_over_5us']} gaps "
             f"> 5 us hold {s['idle_in_gaps_over_5us_ms']:.3f}), after the last {s['idle_after_last_ms']:.3f}"]
    for g in s["longest"]:
        lines.append(f"  {g['us']:>8.1f} us  after {g['after']}  before {g['before']}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("--span", default="request")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    print(report(gaps(load(a.trace), a.span, a.top)))


if __name__ == "__main__":
    main()

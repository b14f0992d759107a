"""The server's Prometheus metrics (prometheus_client), in one registry per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("star_runtime_requests", "finished requests by route and status", ["route", "status"],
                                registry=r)
        self.queue_depth = Gauge("star_runtime_queue_depth", "requests waiting for admission", registry=r)
        self.running = Gauge("star_runtime_running_batch_size", "sequences in the running decode batch", registry=r)
        self.prepare = Histogram("star_runtime_prepare_seconds", "a request's tokenizing, checks and block "
                                 "placement, before it is queued", buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("star_runtime_time_to_first_token_seconds", "submission (after preparing) to first "
                              "token", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("star_runtime_queue_wait_seconds", "submission to admission: a request "
                                    "waiting in the queue, for the scheduler to wake and for a running step to end",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("star_runtime_inter_token_latency_seconds", "between a request's tokens",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.generated = Counter("star_runtime_generated_tokens", "tokens generated", registry=r)
        self.prompt = Counter("star_runtime_prompt_tokens", "prompt tokens admitted", registry=r)
        self.steps = Counter("star_runtime_decode_steps", "decode steps run (each serves the whole batch)",
                             registry=r)
        self.step_sequences = Counter("star_runtime_decode_step_sequences", "sequences served by decode steps "
                                      "(over star_runtime_decode_steps: the mean batch)", registry=r)
        self.step_seconds = Histogram("star_runtime_decode_step_seconds", "one decode step on the workers, by "
                                      "path: table (the batch's sequences in their arenas, one fixed-shape step) or batch (eager)",
                                      ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.prefill_seconds = Histogram("star_runtime_prefill_seconds", "a newcomer on the workers: phase 1 "
                                         "(context) and query (its prefill), by path (table, arena: in its arena; batch: eager)",
                                         ["phase", "path"], buckets=LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("star_runtime_block_cache_hits", "block-cache hits", registry=r)
        self.cache_misses = Counter("star_runtime_block_cache_misses", "block-cache misses", registry=r)
        self.cache_hit_tokens = Counter("star_runtime_block_cache_hit_tokens", "tokens served from the block cache",
                                        registry=r)
        self.cache_bytes = Gauge("star_runtime_block_cache_bytes", "block-cache bytes per tier (summed over "
                                 "workers reporting)", ["tier"], registry=r)

"""One dataclass holding every knob of a run, validated with one clear error line per problem."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

ATTN_TYPES = ("dense", "ring", "star", "block")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
PREFILL_LAYERS = ("auto", "compiled", "eager")
LAUNCHERS = ("ray", "torchrun")
DISK_GIB_DEFAULT = 32.0  # block cache disk tier budget per worker when only the folder is given


class ConfigError(ValueError):
    """A bad setting or bad input. Its message is one line that names the problem and the fix."""


@dataclass
class RunConfig:
    """Everything a run needs; one instance is shipped to every worker.

    model_path: local HF directory, a `.gguf` file, `random:<name>`, or None for the bundled SmolLM2.
    attn_type: dense | ring | star.
    block_size: star context block length in tokens; -1 = context length / num_workers (as the reference).
    anchor_block_size: star anchor length; -1 = block_size (as the reference).
    num_blocks: star; > 0 cuts each context into this many blocks (block = ceil(length / num_blocks)) instead
        of a fixed block_size; 0 = use block_size.
    """

    model_path: str | None = None
    attn_type: str = "star"
    block_size: int = -1
    anchor_block_size: int = -1
    num_blocks: int = 0
    tokens_to_generate: int = 32
    stop_words: list[str] = field(default_factory=list)
    num_workers: int = 1
    gpus_per_worker: int = 1  # > 1: the worker's model layers are split over that many GPUs (big models)
    device: str = "cpu"
    dtype: str = "auto"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    chat_template: bool = False
    launcher: str = "ray"
    ray_address: str | None = None
    collective_timeout_s: float = 600.0
    stall_timeout_s: float = 30.0  # a worker without heartbeat, or without progress inside a step, this long fails
    max_batch_tokens: int = 0  # star phase 1: cap on tokens per batch of blocks (0: all of a worker's blocks)
    decode: str = "auto"  # auto | eager | static | graph (CUDA graph per batch; auto = graph on GPUs)
    prefill_layers: str = "auto"  # auto | compiled | eager (phase 1's decoder layers; auto = compiled on GPUs)
    # block mode (Block-Attention): passages encoded alone, cached, re-encoded to their offsets
    block_delimiter: str = "\n\n"
    num_local_attention_blocks: int = -1  # first N blocks local, the rest folded into the final block; -1 = all
    block_cache_gpu_gib: float = 4.0  # per worker; the device tier (host memory when --device cpu)
    block_cache_cpu_gib: float = 8.0
    block_cache_disk_dir: str | None = None
    block_cache_disk_gib: float | None = None  # per worker; None: DISK_GIB_DEFAULT when a folder is given

    def validate(self) -> "RunConfig":
        if self.attn_type not in ATTN_TYPES:
            raise ConfigError(
                f"unknown --attn_type {self.attn_type!r}; choose one of {', '.join(ATTN_TYPES)}"
            )
        if self.device not in DEVICES:
            raise ConfigError(f"unknown --device {self.device!r}; choose cpu or cuda")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"unknown launcher {self.launcher!r}; choose ray or torchrun")
        if self.decode not in ("auto", "eager", "static", "graph"):
            raise ConfigError(f"unknown --decode {self.decode!r}; choose auto, eager, static or graph")
        if self.prefill_layers not in PREFILL_LAYERS:
            raise ConfigError(f"unknown --prefill_layers {self.prefill_layers!r}; choose auto, compiled or eager")
        if self.stall_timeout_s < 0:
            raise ConfigError(f"--stall_timeout_s must be >= 0 (got {self.stall_timeout_s}); 0 turns the watch off")
        if self.max_batch_tokens < 0:
            raise ConfigError(f"--max_batch_tokens must be >= 0 (got {self.max_batch_tokens}); 0 means no cap")
        if self.num_workers < 1:
            raise ConfigError(f"--num_workers must be >= 1 (got {self.num_workers})")
        if self.gpus_per_worker < 1:
            raise ConfigError(f"--gpus_per_worker must be >= 1 (got {self.gpus_per_worker})")
        if self.gpus_per_worker > 1:
            if self.device != "cuda":
                raise ConfigError(f"--gpus_per_worker {self.gpus_per_worker} splits a worker's model over GPUs; "
                                  "it needs --device cuda (on CPU use --gpus_per_worker 1)")
            if self.attn_type == "block":
                raise ConfigError("block mode keeps each worker's block cache on one GPU; "
                                  "use --gpus_per_worker 1 with --attn_type block")
            if self.decode == "graph":
                raise ConfigError("--decode graph captures one GPU's stream; a worker over several GPUs "
                                  "decodes with --decode static (auto picks it)")
        if self.block_size == 0 or self.block_size < -1:
            raise ConfigError(
                f"--block_size must be a positive number of tokens (got {self.block_size}); "
                "pass e.g. --block_size 4096, or -1 for context length / workers"
            )
        if self.num_blocks < 0:
            raise ConfigError(f"--num_blocks must be >= 0 (got {self.num_blocks}); 0 means use --block_size")
        if self.num_blocks > 0 and self.block_size > 0:
            raise ConfigError(f"--num_blocks {self.num_blocks} and --block_size {self.block_size} both given; "
                              "pass only one of them")
        if self.anchor_block_size == 0 or self.anchor_block_size < -1:
            raise ConfigError(
                f"--anchor_block_size must be a positive number of tokens (got {self.anchor_block_size}); "
                "pass -1 to use the block size"
            )
        if self.block_size > 0 and self.anchor_block_size > self.block_size:
            raise ConfigError(
                f"--anchor_block_size {self.anchor_block_size} is larger than --block_size {self.block_size}; "
                "use an anchor no longer than a block"
            )
        if self.tokens_to_generate < 1:
            raise ConfigError(f"--tokens_to_generate must be >= 1 (got {self.tokens_to_generate})")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (got {self.temperature}); 0 means greedy")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top_p must be in (0, 1] (got {self.top_p})")
        if self.attn_type == "block" and not self.block_delimiter:
            raise ConfigError("--block_delimiter is empty; give the text that separates passages (default a blank line)")
        if self.num_local_attention_blocks < -1:
            raise ConfigError(f"--num_local_attention_blocks must be >= 0, or -1 for all blocks "
                              f"(got {self.num_local_attention_blocks})")
        for name in ("block_cache_gpu_gib", "block_cache_cpu_gib"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0 (got {getattr(self, name)})")
        if self.block_cache_disk_gib is not None:
            if not self.block_cache_disk_dir:
                raise ConfigError("--block_cache_disk_gib needs --block_cache_disk_dir (the folder of the disk tier)")
            if self.block_cache_disk_gib <= 0:
                raise ConfigError(f"--block_cache_disk_gib must be > 0 (got {self.block_cache_disk_gib}); leave "
                                  "out --block_cache_disk_dir for no disk tier")
        if self.block_cache_disk_dir and os.path.exists(self.block_cache_disk_dir) \
                and not os.path.isdir(self.block_cache_disk_dir):
            raise ConfigError(f"--block_cache_disk_dir {self.block_cache_disk_dir} is a file; give a folder")
        return self

    @property
    def disk_budget_gib(self) -> float:
        """The disk tier's budget per worker (the default when only the folder is given)."""
        return DISK_GIB_DEFAULT if self.block_cache_disk_gib is None else self.block_cache_disk_gib

    @property
    def world_size(self) -> int:
        """Workers that take part: dense attention always runs on one worker."""
        return 1 if self.attn_type == "dense" else self.num_workers

    def replace(self, **kw) -> "RunConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

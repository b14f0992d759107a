"""Every knob of a run, declared once: one field of RunConfig each, with its group, help and flags.

The command lines of inference, RULER, BABILong, the RAG evaluation and the benches are generated from these
declarations (``add_flags``, ``from_args``), so a new knob is one field plus its use. ``validate`` checks a
whole config and names any problem in one line with its fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field

from .errors import ConfigError, WorkerFailure  # noqa: F401  (re-exported: the one place both live)

ATTN_TYPES = ("dense", "ring", "star", "apb", "block")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
PREFILL_LAYERS = ("auto", "compiled", "eager")
BLAS = ("auto", "cublaslt", "cublas")
DECODE_MODES = ("auto", "eager", "static", "graph")
LAUNCHERS = ("ray", "torchrun")
DISK_GIB_DEFAULT = 32.0  # block cache disk tier budget per worker when only the folder is given

GROUPS = {
    "model": "model",
    "layout": "context layout (attention mode, star blocks, block mode)",
    "generation": "generation",
    "decode": "decode and batching",
    "compile": "compilation",
    "block_cache": "block KV cache (block mode)",
    "launch": "workers and launch",
}


def knob(default, help: str, group: str, flags: tuple[str, ...] = (), choices=None, metavar=None):
    """A RunConfig field with its command-line declaration."""
    meta = {"help": help, "group": group, "flags": flags, "choices": choices, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything a run needs; one instance is shipped to every worker. See each field's help."""

    # model
    model_path: str | None = knob(None, "HF model folder, .gguf file or random:<name>; default: the bundled "
                                        "SmolLM2-135M-Instruct", "model", ("-p",))
    device: str = knob("cpu", "cpu (gloo) or cuda (NCCL)", "model", choices=DEVICES)
    dtype: str = knob("auto", "auto = bfloat16 on cuda, float32 on cpu", "model", choices=DTYPES)
    # layout
    attn_type: str = knob("star", "dense, ring, star, apb (star with passing blocks) or block", "layout", ("-a",), choices=ATTN_TYPES)
    block_size: int = knob(-1, "star context block length in tokens (-1: context length / workers)", "layout",
                           ("-bs",))
    anchor_block_size: int = knob(-1, "star anchor length (-1: the block size)", "layout", ("-as",))
    num_blocks: int = knob(0, "star: cut each context into N blocks, block = ceil(length / N) (instead of "
                              "--block_size)", "layout", ("-nb",))
    passing_tokens: int = knob(-1, "apb: tokens of each block that later blocks also see, chosen by the query "
                                   "(-1: block / 8; 0 = star; >= block = dense); the context's KV then depends "
                                   "on the query and is never reused across queries", "layout")
    query_before_blocks: bool = knob(False, "apb: every block after the first also sees the query, encoded "
                                            "just before it (after the anchor and the passing tokens), as APB's "
                                            "query in the anchor; the blocks' KV then knows the question (no "
                                            "longer star / dense at passing 0 / block)", "layout")
    max_batch_tokens: int = knob(0, "star: at most this many tokens per phase-1 batch of blocks (0: all of a "
                                    "worker's blocks)", "layout")
    block_delimiter: str = knob("\n\n", "block mode: passages of input_context are cut at this text "
                                          "(default a blank line)", "layout")
    num_local_attention_blocks: int = knob(-1, "block mode: the first N blocks encoded alone, the rest folded into "
                                               "the final block (full attention); -1 = all, 0 = dense", "layout")
    # generation
    tokens_to_generate: int = knob(32, "generation cap", "generation")
    stop_words: list[str] = knob([], r"comma-separated stop words; \, is a comma inside one", "generation")
    temperature: float = knob(0.0, "0 = greedy", "generation")
    top_p: float = knob(1.0, "nucleus sampling mass", "generation")
    seed: int = knob(0, "sampling seed (each sample adds its own)", "generation")
    chat_template: bool = knob(False, "wrap context + query in the model's chat template", "generation")
    ignore_eos: bool = knob(False, "generate every token up to --tokens_to_generate, past end-of-sequence "
                                   "(benchmarks)", "generation")
    # decode and batching
    decode: str = knob("auto", "decode steps: auto (a CUDA graph per batch on GPUs, eager on CPU), eager, static, "
                               "graph", "decode", choices=DECODE_MODES)
    batch_size: int = knob(1, "samples decoded together (phase 1 runs per sample; decode steps are batched)",
                           "decode")
    # compilation
    prefill_layers: str = knob("auto", "phase 1's decoder layers: auto (torch.compile'd on GPUs, about a minute to "
                                       "compile an 8B model once per process; eager on CPU), compiled, eager",
                               "compile", choices=PREFILL_LAYERS)
    blas: str = knob("auto", "matmul library on CUDA, for the whole process: auto (the Triton kernel of "
                             "models/skinny.py for 64 tokens or fewer where it was tuned faster, cuBLASLt for the "
                             "rest; only in fused layers: not with --unfused_projections or a worker over several "
                             "GPUs), cublaslt, cublas (that library for every matmul)", "compile", choices=BLAS)
    unfused_projections: bool = knob(False, "keep each layer's q/k/v and gate/up as separate matmuls (default: "
                                            "one matmul each over their weights concatenated, no memory added; "
                                            "models/fuse.py)", "compile")
    # block cache
    block_cache_gpu_gib: float = knob(4.0, "block KV cache, device tier, per worker", "block_cache")
    block_cache_cpu_gib: float = knob(8.0, "block KV cache, CPU tier, per worker", "block_cache")
    block_cache_disk_dir: str | None = knob(None, "block KV cache, optional disk tier folder (entries written as "
                                                  "they are made, verified when read, kept across runs)",
                                            "block_cache")
    block_cache_disk_gib: float | None = knob(None, f"disk tier budget per worker, least recently used entries "
                                                    f"out first (default {DISK_GIB_DEFAULT:g})", "block_cache")
    # workers and launch
    num_workers: int = knob(1, "workers (one per GPU on cuda); dense uses one", "launch", ("-np",))
    gpus_per_worker: int = knob(1, "GPUs per worker: > 1 splits the model's layers over them (a model too big "
                                   "for one GPU)", "launch")
    launcher: str = knob("ray", "ray actors (default), or this process is a torchrun/srun rank (env://)",
                         "launch", choices=LAUNCHERS)
    ray_address: str | None = knob(None, "existing Ray cluster (default: start a local one)", "launch")
    stall_timeout_s: float = knob(30.0, "a worker that sends no heartbeat, or makes no progress inside a step, "
                                        "for this long ends the run naming it (0: off)", "launch")
    collective_timeout_s: float = knob(600.0, "torch.distributed collective timeout", "launch")

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
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1 (got {self.batch_size})")
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"unknown --decode {self.decode!r}; choose auto, eager, static or graph")
        if self.blas not in BLAS:
            raise ConfigError(f"unknown --blas {self.blas!r}; choose auto, cublaslt or cublas")
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
        if self.passing_tokens < -1:
            raise ConfigError(f"--passing_tokens must be >= 0, or -1 for one eighth of the block "
                              f"(got {self.passing_tokens})")
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


def parse_stop_words(text: str) -> list[str]:
    r"""'a,b' -> ['a', 'b']; '\,' is a comma inside a stop word, '\\' a backslash; empty items are dropped."""
    words, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ",\\":
            cur += text[i + 1]
            i += 2
            continue
        if c == ",":
            words.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    words.append(cur)
    return [w for w in words if w]


def _unescape(text: str) -> str:
    r"""--block_delimiter typed on a command line: '\n', '\t' and '\\' become a newline, a tab, a backslash."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_HINTS = typing.get_type_hints(RunConfig)


def add_flags(parser: argparse.ArgumentParser, exclude=(), defaults: dict | None = None,
              extra_flags: dict | None = None) -> argparse.ArgumentParser:
    """Add every RunConfig knob as a flag, grouped; ``exclude``: fields a command sets itself; ``defaults``:
    this command's own defaults; ``extra_flags``: more option strings for a field (e.g. a bench's --model)."""
    defaults = defaults or {}
    extra_flags = extra_flags or {}
    groups = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in exclude:
            continue
        meta = f.metadata
        g = meta["group"]
        if g not in groups:
            groups[g] = parser.add_argument_group(GROUPS[g])
        names = [f"--{f.name}", *meta["flags"], *extra_flags.get(f.name, ())]
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        hint = _HINTS[f.name]
        kw = dict(default=default, help=meta["help"], dest=f.name)
        if hint is bool:
            kw["action"] = "store_true"
        else:
            base = {int: int, float: float, str: str}.get(hint, None)
            if base is None:  # optional / list fields
                base = float if hint == (float | None) else str
            if f.name == "stop_words" and isinstance(default, list):
                kw["default"] = ",".join(w.replace("\\", "\\\\").replace(",", "\\,") for w in default)
            kw["type"] = base
            if meta["choices"]:
                kw["choices"] = list(meta["choices"])
        groups[g].add_argument(*names, **kw)
    return parser


def from_args(ns: argparse.Namespace, **overrides) -> RunConfig:
    """The RunConfig of parsed flags (fields a command excluded keep their defaults unless overridden)."""
    kw = {}
    for f in dataclasses.fields(RunConfig):
        if hasattr(ns, f.name):
            kw[f.name] = getattr(ns, f.name)
    if isinstance(kw.get("stop_words"), str):
        kw["stop_words"] = parse_stop_words(kw["stop_words"])
    if isinstance(kw.get("block_delimiter"), str):
        kw["block_delimiter"] = _unescape(kw["block_delimiter"])
    kw.update(overrides)
    return RunConfig(**kw)

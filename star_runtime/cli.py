"""`star-runtime` console entry: subcommands infer (jsonl inference) and demo (needle in a haystack)."""

from __future__ import annotations

import signal
import sys
import threading

from .config import ConfigError

COMMANDS = {
    "infer": ("star_runtime.infer", "run inference over a jsonl file (the reference's flags)"),
    "demo": ("star_runtime.needle", "find a needle in a generated haystack on the bundled model"),
    "finetune-block": ("star_runtime.finetune.train", "teach a model Block-Attention (RAG data, block masks)"),
    "eval-rag": ("star_runtime.finetune.eval_rag", "RAG accuracy on the held-out split in dense/block/star"),
    "serve": ("star_runtime.serve.cli", "an OpenAI-compatible server (chat, completions, streaming, metrics)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: star-runtime {" + ",".join(COMMANDS) + "} [flags]\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<15} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nstar-runtime: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    return run_main(module.main, argv[1:])


class Stopped(BaseException):
    """SIGTERM (a Slurm time limit, `kill`): unwinds the job like Ctrl-C, so every finally block runs."""


def _stop(signum, _frame):
    raise Stopped(signal.Signals(signum).name)


def run_main(fn, argv) -> int:
    """Run a job; a bad setting or input ends with its one-line message and exit code 2. SIGTERM and Ctrl-C
    stop it cleanly: finished results are on disk, pending block-cache writes are flushed, workers stop."""
    from .errors import WorkerFailure

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        return fn(argv)
    except (ConfigError, WorkerFailure) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Stopped, KeyboardInterrupt) as e:
        name = str(e) or "SIGINT"
        print(f"error: stopped by {name}; finished samples are saved (rerun with --use_cache to resume)",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if name == "SIGTERM" else signal.SIGINT)


if __name__ == "__main__":  # python -m star_runtime.cli: run the package's module, so its classes are the ones used
    from star_runtime.cli import main as package_main

    sys.exit(package_main())

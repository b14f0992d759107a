"""`star-runtime serve`: the run flags of inference (config.py) plus the server's; starts the engine and its
workers once, then serves until SIGTERM / Ctrl-C (in-flight requests finish, the block cache's disk tier is
flushed, exit 0)."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from ..cli import Stopped
from ..config import add_flags, from_args
from ..errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="An OpenAI-compatible server over the star-runtime engine.")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api_key", default=os.environ.get("STAR_RUNTIME_API_KEY"),
                   help="require 'Authorization: Bearer <key>' on /v1/* (default $STAR_RUNTIME_API_KEY; none: open)")
    s.add_argument("--served_model_name", default=None, help="the model's name in the API (default: the model's)")
    s.add_argument("--max_queue", type=int, default=64, help="requests waiting for admission; more get 429")
    s.add_argument("--max_batch", type=int, default=16, help="sequences decoded together (continuous batching)")
    s.add_argument("--max_body_mb", type=float, default=32.0, help="largest request body; larger get 413")
    add_flags(p, exclude=("chat_template",))
    return p


def check_port(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or stop what "
                          "holds it") from None


def main(argv=None) -> int:
    import uvicorn

    from ..engine import Engine
    from .app import ServerState, create_app
    from .metrics import Metrics
    from .scheduler import Scheduler

    a = build_parser().parse_args(argv)
    for name, lo in (("max_queue", 1), ("max_batch", 1), ("port", 0)):
        if getattr(a, name) < lo:
            raise ConfigError(f"--{name} must be >= {lo} (got {getattr(a, name)})")
    cfg = from_args(a).validate()  # the server applies the chat template itself (chat completions)
    check_port(a.host, a.port)  # before the expensive start-up
    engine = Engine(cfg)
    launcher = engine.launcher
    try:
        if not engine.is_writer:  # a torchrun rank other than the host: follow the host's iterations
            launcher.follow()
            return 0
        metrics = Metrics()
        scheduler = Scheduler(engine, metrics, max_queue=a.max_queue, max_batch=a.max_batch)
        name = a.served_model_name or (cfg.model_path if (cfg.model_path or "").startswith("random:")
                                       else engine.source.name)
        state = ServerState(engine, scheduler, metrics, name, a.api_key, int(a.max_body_mb * (1 << 20)))
        # two Python threads share the interpreter: the HTTP event loop and the scheduler driving the GPU. The
        # default 5 ms switch interval lets one hold the lock for 5 ms while the other waits to launch a step
        sys.setswitchinterval(0.001)
        scheduler.start()
        print(f"[star-runtime] serving {name} on http://{a.host}:{a.port}/v1 ({cfg.attn_type} attention, "
              f"{cfg.world_size} worker(s))", file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(state), host=a.host, port=a.port, log_level="warning",
                                               timeout_graceful_shutdown=30, access_log=False))
        try:
            server.run()  # until SIGTERM / SIGINT: stops accepting, lets in-flight requests finish
        except (Stopped, KeyboardInterrupt):
            pass  # uvicorn raises the signal it shut down on again once it is done: the shutdown goes on here
        scheduler.stop()
        if hasattr(launcher, "stop_following"):
            launcher.stop_following()
        print("[star-runtime] server stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        engine.close()

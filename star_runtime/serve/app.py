"""The HTTP side (FastAPI): OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health and
/metrics. Requests are checked and tokenized here (errors in OpenAI's JSON shape), then run by the Scheduler;
answers are JSON or server-sent events in OpenAI's chunk format ending in ``data: [DONE]``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..errors import ConfigError
from .protocol import APIError, chat_pieces, chunk, new_id, parse, response, usage
from .scheduler import Job, TextStream


@dataclasses.dataclass
class ServerState:
    engine: object
    scheduler: object
    metrics: object
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 32 << 20
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    prepare_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="star-runtime", docs_url=None, redoc_url=None)

    def error(e: APIError, route: str | None = None) -> JSONResponse:
        if route:
            state.metrics.requests.labels(route, str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if state.api_key and request.headers.get("authorization", "") != f"Bearer {state.api_key}":
                return error(APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                      type="authentication_error", code="invalid_api_key"))
            size = request.headers.get("content-length")
            if size and size.isdigit() and int(size) > state.max_body_bytes:
                return error(APIError(413, f"the request body ({int(size)} bytes) is larger than "
                                           f"{state.max_body_bytes} bytes; send fewer or shorter documents",
                                      code="request_too_large"))
        return await call_next(request)

    @app.get("/health")
    async def health():
        s = state.scheduler
        if s.dead:
            return JSONResponse({"status": "worker_failed", "detail": s.dead}, status_code=503)
        if not s.ready or s.stopping:
            return JSONResponse({"status": "not_ready"}, status_code=503)
        return {"status": "ok", "model": state.model_name, "running": len(s.running), "waiting": len(s.waiting)}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "star-runtime"}]}

    async def complete(request: Request, kind: str):
        route = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        try:
            raw = await request.body()
            if len(raw) > state.max_body_bytes:
                raise APIError(413, f"the request body is larger than {state.max_body_bytes} bytes",
                               code="request_too_large")
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise APIError(400, f"the body is not valid JSON ({e}); send one JSON object",
                               code="invalid_json") from None
            p = parse(body, kind)
            if p.model != state.model_name:
                raise APIError(404, f"the model '{p.model}' does not exist here; this server serves "
                                    f"'{state.model_name}' (GET /v1/models)", param="model", code="model_not_found")
            job = await asyncio.to_thread(make_job, state, p, asyncio.get_running_loop())  # queued there
        except APIError as e:
            return error(e, route)
        rid = new_id(kind)
        if p.stream:
            return StreamingResponse(stream(state, job, rid, route), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text = []

        async def watch():  # the body is read: the next message is the client's going away
            while (await request.receive())["type"] != "http.disconnect":
                pass
            state.scheduler.cancel(job)

        watcher = asyncio.create_task(watch())
        try:
            while True:
                getter = asyncio.create_task(job.events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:  # the client went away: its slot is freed
                    getter.cancel()
                    state.metrics.requests.labels(route, "499").inc()
                    return PlainTextResponse("", status_code=499)
                kind_, payload = getter.result()
                if kind_ == "text":
                    text.append(payload)
                elif kind_ == "done":
                    break
                else:
                    return error(payload, route)
        except asyncio.CancelledError:
            state.scheduler.cancel(job)
            raise
        finally:
            watcher.cancel()
        state.metrics.requests.labels(route, "200").inc()
        return response(p, rid, state.model_name, "".join(text), job.finish,
                        usage(job.prompt_tokens, len(job.tokens), job.cache, job.timing()))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, "completion")

    return app


def make_job(state: ServerState, p, loop) -> Job:
    """Tokenize and check the request (the engine's prepare, one at a time), as a Job, and queue it for the
    scheduler from this thread: handing it back to the event loop first cost ~0.9 ms before the scheduler
    could see it (the loop's wake-up, the interpreter lock)."""
    t0 = time.perf_counter()
    eng = state.engine
    sid = state.scheduler.new_sid()
    where = f"request {sid}"
    cfg = eng.cfg
    mode = None
    if p.attention == "full":
        mode = "dense"
    elif p.attention == "block":
        mode = "block"
    docs = p.documents
    try:
        with state.prepare_lock:
            if p.kind == "chat":
                head, question = chat_pieces(eng.tokenizer, p.messages)
                if (mode or cfg.attn_type) == "block":
                    req = eng.prepare("", question, sid, where, p.max_tokens, blocks=[head] + list(docs or []),
                                      mode="block")
                else:
                    req = eng.prepare(head + "".join(docs or []), question, sid, where, p.max_tokens,
                                      mode=mode)
            elif docs:
                req = eng.prepare("".join(docs), p.prompt, sid, where, p.max_tokens, blocks=list(docs),
                                  mode=mode)
            else:  # a plain prompt: its last tokens are the query (all that matters for star/ring's phase 2)
                ids = eng.tokenizer.encode(p.prompt, add_special_tokens=False)
                q = max(1, min(64, len(ids) // 2))
                one_token = len(ids) < 2  # all of it is the query: no context, dense attention
                req = eng.prepare_ids(ids[:-q], ids[-q:], sid, where, p.max_tokens,
                                      mode="dense" if one_token or (mode or cfg.attn_type) == "block" else mode)
    except ConfigError as e:
        msg = str(e)
        code = "context_length_exceeded" if "exceeds the model window" in msg else "invalid_value"
        raise APIError(400, msg, param="messages" if p.kind == "chat" else "prompt", code=code) from None
    req = dataclasses.replace(req, temperature=p.temperature, top_p=p.top_p, stop_words=p.stop or None,
                              seed=p.seed if p.seed is not None else req.seed)
    job = Job(req, p, loop, TextStream(eng.tokenizer, p.stop or list(cfg.stop_words)))
    job.prepare_s = job.submitted - t0  # the job's clock starts where its preparation ends
    state.metrics.prepare.observe(job.prepare_s)
    state.scheduler.submit(job)
    time.sleep(0)  # let go of the interpreter lock: the woken scheduler thread starts the request now
    return job


async def stream(state: ServerState, job: Job, rid: str, route: str):
    """Server-sent events: a first chunk with the role, text chunks as they are decided, the finish reason,
    the usage (stream_options.include_usage), then ``data: [DONE]``. A client that goes away cancels."""
    p, model = job.p, state.model_name

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    status = "200"
    try:
        first = True
        if p.kind == "chat":
            yield sse(chunk(p, rid, model, "", None, first=True))
            first = False
        while True:
            kind, payload = await job.events.get()
            if kind == "text":
                yield sse(chunk(p, rid, model, payload, None, first=first))
                first = False
            elif kind == "done":
                yield sse(chunk(p, rid, model, None, payload))
                break
            else:
                status = str(payload.status)
                yield sse(payload.body())
                break
        if p.include_usage and status == "200":
            use = usage(job.prompt_tokens, len(job.tokens), job.cache, job.timing())
            yield sse(chunk(p, rid, model, None, None, use=use))
        yield "data: [DONE]\n\n"
    except asyncio.CancelledError:
        status = "499"
        state.scheduler.cancel(job)
        raise
    finally:
        if not job.finish and status == "200":
            status = "499"
            state.scheduler.cancel(job)
        state.metrics.requests.labels(route, status).inc()

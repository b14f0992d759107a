"""`star-runtime serve` as a real subprocess on 127.0.0.1, driven by the official `openai` client and raw HTTP:
the same greedy text as the CLI (fp32, bundled model), concurrent clients sharing decode steps with the same
outputs as one at a time, block-cache hits across requests, the bad-input matrix, disconnect, SIGTERM, a dead
worker, and a bounded load test."""

import concurrent.futures as cf
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess; ready=False returns once it is started, and wait_ready() then waits for its health
    (several servers start side by side that way)."""

    def __init__(self, *flags, model="random:tiny", key=None, wait=180, ready=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        cmd = [sys.executable, "-m", "star_runtime.cli", "serve", "--port", str(self.port), *flags]
        if model:
            cmd += ["--model_path", model]
        if key:
            cmd += ["--api_key", key]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        if ready:
            self.wait_ready(wait)

    def wait_ready(self, wait=180):
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()[-3000:]}")
            try:
                if get(self.url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("server did not become healthy")
        self.client = OpenAI(base_url=self.url + "/v1", api_key=self.key or "none", max_retries=0, timeout=120)
        self.model = self.client.models.list().data[0].id

    def stop(self, sig=signal.SIGTERM, timeout=90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def post(url, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def metric(server, name) -> float:
    text = get(server.url + "/metrics")[1]
    vals = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:_total)?(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)]
    return sum(vals)


DOC = "The lighthouse keeper counted ships every night and wrote their names in a blue book. "
QUESTION = "What did the lighthouse keeper count?"


def test_openai_client_matches_the_cli(tmp_path):
    """Bundled SmolLM2, dense, fp32: chat (the model's template), completions and streaming give the CLI's
    greedy text for the same prompt."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"input_context": DOC, "input_query": QUESTION}) + "\n"
                   + json.dumps({"input_context": DOC, "input_query": " In short, the keeper"}) + "\n")
    base = [sys.executable, str(ROOT / "run_star_attn_inference.py"), "--attn_type", "dense",
            "--tokens_to_generate", "12", "--input_path", str(inp)]
    out2 = tmp_path / "out2.jsonl"
    with Server("--attn_type", "dense", model=None, ready=False) as s:
        # the two CLI runs start while the server loads
        runs = [subprocess.Popen(base + flags, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for flags in (["--chat_template", "--output_path", str(out), "--num_samples", "1"],
                              ["--output_path", str(out2)])]
        for run in runs:
            err = run.communicate(timeout=300)[1]
            assert run.returncode == 0, err[-2000:]
        cli_chat = json.loads(out.read_text().splitlines()[0])["pred"]
        cli_plain = json.loads(out2.read_text().splitlines()[1])["pred"]
        s.wait_ready()
        c = s.client
        chat = c.chat.completions.create(model=s.model, messages=[{"role": "user", "content": QUESTION}],
                                         max_tokens=12, extra_body={"documents": [DOC]})
        assert chat.choices[0].message.content.strip() == cli_chat
        assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 20
        comp = c.completions.create(model=s.model, prompt=" In short, the keeper", max_tokens=12,
                                    extra_body={"documents": [DOC]})
        assert comp.choices[0].text.strip() == cli_plain
        pieces, finish, use = [], None, None
        for ch in c.chat.completions.create(model=s.model, messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=12, stream=True, stream_options={"include_usage": True},
                                            extra_body={"documents": [DOC]}):
            if ch.choices:
                pieces.append(ch.choices[0].delta.content or "")
                finish = ch.choices[0].finish_reason or finish
            else:
                use = ch.usage
        assert "".join(pieces).strip() == cli_chat and finish in ("stop", "length")
        assert use.completion_tokens == chat.usage.completion_tokens
        assert s.stop() == 0


def test_concurrent_clients_share_decode_steps_and_match_one_at_a_time():
    prompts = [f"Request number {i} asks about the weather in town {i} and more." for i in range(8)]
    with Server("--attn_type", "dense", "--ignore_eos", "--max_batch", "8") as s:
        c = s.client

        def ask(p):
            return c.completions.create(model=s.model, prompt=p, max_tokens=24, extra_body={"documents": [DOC]}
                                        ).choices[0].text

        alone = [ask(p) for p in prompts]
        steps0, seqs0 = metric(s, "star_runtime_decode_steps"), metric(s, "star_runtime_decode_step_sequences")
        with cf.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(ask, prompts))
        steps = metric(s, "star_runtime_decode_steps") - steps0
        seqs = metric(s, "star_runtime_decode_step_sequences") - seqs0
    assert together == alone
    assert seqs / steps > 2, (seqs, steps)  # the requests shared decode steps


def test_cached_passages_in_another_order_hit_and_answer_as_a_cold_server():
    docs = [f"Passage {i}: the value of item {i} is {7 * i + 3}. " * 3 for i in range(4)]
    order = [docs[2], docs[0], docs[3], docs[1]]
    msg = [{"role": "user", "content": "What is the value of item 3?"}]
    # the cold server starts beside the warm one and answers only the last request
    with Server("--attn_type", "block", ready=False) as cold, Server("--attn_type", "block") as warm:
        first = warm.client.chat.completions.create(model=warm.model, messages=msg, max_tokens=8,
                                                    extra_body={"documents": docs})
        second = warm.client.chat.completions.create(model=warm.model, messages=msg, max_tokens=8,
                                                     extra_body={"documents": order})
        hits = metric(warm, "star_runtime_block_cache_hits")
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        extra = second.usage.model_extra  # the extension fields of usage
        assert second.usage.prompt_tokens_details.cached_tokens > 0
        assert extra["block_cache"]["hits"] == 5 and extra["block_cache"]["misses"] == 0  # 4 passages + the head
        assert 0 < extra["timing"]["prepare_s"] < extra["timing"]["ttft_s"] < 60  # the server's own seconds
        assert hits >= 5
        cold.wait_ready()
        fresh = cold.client.chat.completions.create(model=cold.model, messages=msg, max_tokens=8,
                                                    extra_body={"documents": order})
    assert fresh.choices[0].message.content == second.choices[0].message.content


CHAT = {"model": "random:tiny", "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def small():
    with Server("--attn_type", "dense", "--max_body_mb", "0.01", key="sekrit") as s:
        yield s


@pytest.mark.parametrize("body,status,code,param", [
    (b"{not json", 400, "invalid_json", None),
    ({"model": "random:tiny"}, 400, "missing_required_parameter", "messages"),
    ({**CHAT, "messages": "hello"}, 400, "invalid_value", "messages"),
    ({**CHAT, "max_tokens": "many"}, 422, "invalid_type", "max_tokens"),
    ({**CHAT, "temperature": 5}, 400, "invalid_value", "temperature"),
    ({**CHAT, "n": 2}, 400, "unsupported_value", "n"),
    ({**CHAT, "logprobs": True}, 400, "unsupported_parameter", "logprobs"),
    ({**CHAT, "colour": "blue"}, 400, "unknown_parameter", "colour"),
    ({**CHAT, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({**CHAT, "messages": [{"role": "user", "content": "word " * 9000}]}, 413, "request_too_large", None),
    ({**CHAT, "model": "gpt-4"}, 404, "model_not_found", "model"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(small, body, status, code, param):
    st, text, _ = post(small.url + "/v1/chat/completions", body, {"Authorization": "Bearer sekrit"})
    err = json.loads(text)["error"]
    assert st == status and err["code"] == code and err["param"] == param, (st, err)
    assert err["message"] and err["type"]
    assert get(small.url + "/health")[0] == 200


def test_window_overflow_names_the_counts_and_auth_is_required(small):
    body = {**CHAT, "messages": [{"role": "user", "content": "x " * 1500}], "max_tokens": 8000}
    st, text, _ = post(small.url + "/v1/chat/completions", body, {"Authorization": "Bearer sekrit"})
    err = json.loads(text)["error"]
    assert st == 400 and err["code"] == "context_length_exceeded" and "exceeds the model window of 8192" in \
        err["message"]
    st, text, _ = post(small.url + "/v1/chat/completions", CHAT)
    assert st == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"
    st, text, _ = post(small.url + "/v1/chat/completions", CHAT, {"Authorization": "Bearer sekrit"})
    assert st == 200 and json.loads(text)["choices"][0]["message"]["content"] is not None


def test_queue_full_is_429_with_retry_after():
    with Server("--attn_type", "dense", "--ignore_eos", "--max_queue", "1", "--max_batch", "1") as s:
        body = {**CHAT, "max_tokens": 400}
        with cf.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: post(s.url + "/v1/chat/completions", body), range(6)))
        codes = sorted(st for st, _, _ in results)
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
        refused = next(h for st, _, h in results if st == 429)
        assert refused.get("retry-after") == "1"
        assert s.stop() == 0


def test_client_disconnect_cancels_its_generation():
    with Server("--attn_type", "dense", "--ignore_eos", "--max_batch", "1") as s:
        body = json.dumps({**CHAT, "max_tokens": 5000, "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        got = b""
        while got.count(b"data:") < 5:
            got += sock.recv(4096)
        sock.close()  # gone mid-stream
        t0 = time.time()
        while metric(s, "star_runtime_running_batch_size") > 0 and time.time() - t0 < 20:
            time.sleep(0.2)
        assert metric(s, "star_runtime_running_batch_size") == 0
        # the slot is free: the next request (max_batch 1) is served at once
        r = s.client.chat.completions.create(model=s.model, messages=CHAT["messages"], max_tokens=3)
        assert r.choices[0].finish_reason == "length"
        assert 'status="499"' in get(s.url + "/metrics")[1]


def test_sigterm_finishes_in_flight_requests_persists_the_disk_tier_and_exits_0(tmp_path):
    disk = tmp_path / "blocks"
    with Server("--attn_type", "block", "--ignore_eos", "--block_cache_disk_dir", str(disk)) as s:
        body = {**CHAT, "max_tokens": 120, "documents": ["A passage about ships. " * 4, "Another about rain. " * 4]}
        with cf.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(post, s.url + "/v1/chat/completions", body)
            while metric(s, "star_runtime_running_batch_size") < 1:
                time.sleep(0.05)
            assert s.stop(signal.SIGTERM) == 0
            st, text, _ = fut.result(timeout=60)
    assert st == 200 and json.loads(text)["usage"]["completion_tokens"] == 120
    assert len(list((disk / "rank0").glob("*.safetensors"))) == 3  # the template head and both passages


def descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def test_dead_worker_makes_health_503_and_requests_fail_fast():
    with Server("--attn_type", "ring", "-np", "2", "--ignore_eos", "--stall_timeout_s", "5") as s:
        body = {**CHAT, "max_tokens": 100000 // 20}
        with cf.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(post, s.url + "/v1/chat/completions", body)
            while metric(s, "star_runtime_running_batch_size") < 1:
                time.sleep(0.05)
            actors = [p for p in descendants(s.proc.pid)
                      if b"WorkerActor" in Path(f"/proc/{p}/cmdline").read_bytes()]
            assert len(actors) == 2
            os.kill(actors[-1], signal.SIGKILL)
            t0 = time.time()
            st, text, _ = fut.result(timeout=60)
            assert st == 503 and json.loads(text)["error"]["code"] == "worker_failed"
            assert time.time() - t0 < 30
        assert get(s.url + "/health")[0] == 503
        st, text, _ = post(s.url + "/v1/chat/completions", CHAT)
        assert st == 503 and json.loads(text)["error"]["code"] == "worker_failed"


def test_bounded_load_every_request_completes_or_is_refused():
    """200 requests from 16 clients against a small queue: each gets its answer or a clean 429 with Retry-After;
    none lost. A refused client waits the Retry-After it was given before its next request, as a client should
    (without it, refusals come back at once and the 200 requests can run out while a dozen are served)."""
    with Server("--attn_type", "dense", "--max_queue", "8", "--max_batch", "8") as s:
        def one(i):
            t0 = time.perf_counter()
            st, text, headers = post(s.url + "/v1/completions",
                                     {"model": s.model, "prompt": f"Load request {i} with a few words.",
                                      "max_tokens": 8, "stream": False})
            took = time.perf_counter() - t0
            if st == 429:
                time.sleep(float(headers["retry-after"]))
            return st, took, text

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(200)))
        wall = time.perf_counter() - t0
        done = [r for r in results if r[0] == 200]
        assert {r[0] for r in results} <= {200, 429} and len(done) >= 50  # how many are refused depends on the machine
        assert all(json.loads(r[2])["choices"][0]["finish_reason"] in ("stop", "length") for r in done)
        lat = sorted(r[1] for r in done)
        print(f"load: {len(done)}/200 served, {200 - len(done)} refused (429), p50 {lat[len(lat) // 2]:.3f} s, "
              f"p99 {lat[int(len(lat) * 0.99) - 1]:.3f} s, {len(done) / wall:.1f} requests/s")
        assert metric(s, "star_runtime_requests") >= 200
        assert s.stop() == 0


def test_torchrun_ranks_serve_and_stop_together():
    """Under torchrun the host rank serves and the other ranks follow its iterations; SIGTERM stops all."""
    port, master = free_port(), free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(master),
           "-m", "star_runtime.cli", "serve", "--launcher", "torchrun", "-np", "2", "--attn_type", "ring",
           "--model_path", "random:tiny", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if get(url + "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="random:tiny", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=5)
        assert r.usage.completion_tokens >= 1
        host = [p for p in descendants(proc.pid)
                if b"LOCAL_RANK=1" in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
                and b"star_runtime.cli" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(host) == 1
        os.kill(host[0], signal.SIGTERM)  # the serving rank: it drains, tells the others to stop, all exit 0
        assert proc.wait(90) == 0, proc.stdout.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_extreme_temperature_is_greedy_and_a_one_token_prompt_is_served(small):
    auth = {"Authorization": "Bearer sekrit"}
    st, text, _ = post(small.url + "/v1/completions", {"model": "random:tiny", "prompt": "hello there friend",
                                                        "max_tokens": 3, "temperature": 1e-300}, auth)
    assert st == 200, text
    st, text, _ = post(small.url + "/v1/completions", {"model": "random:tiny", "prompt": "a", "max_tokens": 3}, auth)
    assert st == 200 and json.loads(text)["usage"]["prompt_tokens"] == 1, text
    assert get(small.url + "/health")[0] == 200


def _raw_request(port, body: dict):
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_non_streaming_client_that_leaves_is_cancelled_and_queued_ones_free_their_slots():
    with Server("--attn_type", "dense", "--ignore_eos", "--max_batch", "1", "--max_queue", "2") as s:
        gone = _raw_request(s.port, {**CHAT, "max_tokens": 8000})  # not streamed
        t0 = time.time()
        while metric(s, "star_runtime_running_batch_size") < 1 and time.time() - t0 < 30:
            time.sleep(0.02)
        gone.close()  # the client goes away: its generation stops within a poll
        while metric(s, "star_runtime_running_batch_size") > 0 and time.time() - t0 < 30:
            time.sleep(0.1)
        assert metric(s, "star_runtime_running_batch_size") == 0
        assert metric(s, "star_runtime_generated_tokens") < 8000
        assert 'status="499"' in get(s.url + "/metrics")[1]
        running = _raw_request(s.port, {**CHAT, "max_tokens": 8000, "stream": True})
        while metric(s, "star_runtime_running_batch_size") < 1 and time.time() - t0 < 60:
            time.sleep(0.02)
        queued = [_raw_request(s.port, {**CHAT, "max_tokens": 10, "stream": True}) for _ in range(2)]
        while metric(s, "star_runtime_queue_depth") < 2 and time.time() - t0 < 60:
            time.sleep(0.02)
        for q in queued:  # waiting clients go away: their places in the queue are freed at once
            q.close()
        t1 = time.time()
        while metric(s, "star_runtime_queue_depth") > 0 and time.time() - t1 < 10:
            time.sleep(0.1)
        assert metric(s, "star_runtime_queue_depth") == 0
        running.close()


def test_text_stream_pieces_add_up_to_the_decoded_text_cut_at_the_stop():
    from star_runtime.models.bundled import bundled_tokenizer_dir
    from star_runtime.serve.scheduler import TextStream
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))
    text = "Prix: 5 € — 日本語のテキスト 😀 and then END of it, more after END."
    ids = tok.encode(text, add_special_tokens=False)
    for stop in ([], ["END"], ["ト 😀"], ["€ —"], ["END", "5 €"]):
        ts = TextStream(tok, stop)
        pieces = [ts.push(ids[:i]) for i in range(1, len(ids) + 1)]
        pieces.append(ts.flush(ids))
        want = text[: min([text.find(x) for x in stop] + [len(text)])]
        assert want != text or not stop
        assert "".join(pieces) == want, (stop, pieces)
        assert all("\ufffd" not in p for p in pieces)


def test_requests_prefill_and_decode_over_their_arenas_by_table_steps_as_the_eager_path():
    """With fixed-shape steps every newcomer gets an Arena of its own: its query is prefilled there and it decodes
    there by the table step of its batch size, alone or with the others (one CUDA-graph replay per step on
    GPUs; here the same fixed shapes, uncaptured); block mode's first token attends the cached passages in place
    (path "pages") and the context is gathered into the arena before the next step. Both give the eager server's
    answers, alone and together, and together they share steps."""
    prompts = [f"Question {i} about the market in town {i}?" for i in range(4)]
    docs = [DOC, "Copper turns green when it weathers in rain. "]
    out = {}
    # both servers start at once; each is then asked alone and together, one server after the other
    with Server("--attn_type", "block", "--ignore_eos", "--decode", "eager", ready=False) as eager, \
            Server("--attn_type", "block", "--ignore_eos", "--decode", "static", ready=False) as static:
        for decode, s in (("eager", eager), ("static", static)):
            s.wait_ready()

            def ask(p):
                return s.client.chat.completions.create(model=s.model, max_tokens=12, extra_body={"documents": docs},
                                                        messages=[{"role": "user", "content": p}]
                                                        ).choices[0].message.content

            def counts():
                text = get(s.url + "/metrics")[1]
                return {m.group(1): float(m.group(2)) for m in re.finditer(
                    r'^(star_runtime_decode_step\S*_count\{path="\w+"\}|star_runtime_decode_steps_total|'
                    r'star_runtime_decode_step_sequences_total|star_runtime_prefill_seconds_count\{[^}]*\}) (\S+)$',
                    text, re.M)}

            alone = [ask(p) for p in prompts]
            c1 = counts()
            with cf.ThreadPoolExecutor(4) as pool:
                together = list(pool.map(ask, prompts))
            c2 = counts()
            if decode == "static":
                assert c1.get('star_runtime_decode_step_seconds_count{path="table"}', 0) >= 4 * 11, c1
                assert c1.get('star_runtime_prefill_seconds_count{path="pages",phase="query"}') == 4.0, c1
                assert c2.get('star_runtime_prefill_seconds_count{path="pages",phase="query"}') == 8.0, c2
                assert 'star_runtime_decode_step_seconds_count{path="batch"}' not in c2, c2  # never eager
                steps = c2["star_runtime_decode_steps_total"] - c1["star_runtime_decode_steps_total"]
                seqs = c2["star_runtime_decode_step_sequences_total"] - c1["star_runtime_decode_step_sequences_total"]
                assert seqs == 4 * 11 and steps < seqs, (steps, seqs)  # together: steps were shared
            out[decode] = (alone, together)
    assert out["static"][0] == out["eager"][0]
    assert out["static"][1] == out["eager"][0]

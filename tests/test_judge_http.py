"""HTTPJudge against real servers: vLLM's CPU build serving the embedded model (e2e), and small stdlib
HTTP servers on 127.0.0.1 that misbehave in one way each (slow, down, garbage, failing once)."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

openai = pytest.importorskip("openai", reason="the HTTP judge needs the openai client (pip install 'opo-rl[judge]')")

from opo.judges.http import HTTPJudge  # noqa: E402
from opo.judges.verdict import parse_verdict  # noqa: E402
from opo.models import embedded_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_READY_S = 240
ANSWERED = {"ok", "no_verdict", "bad_verdict"}
ITEMS = [("What is 2 + 3?", "5", "6"), ("What is the capital of France?", "Lyon", "Paris"),
         ("Is 7 prime?", "Yes, 7 is prime.", "No, 7 = 7 * 1."), ("What is 10 / 2?", "5", "2")]
FAKE_KEY = "sk-test-9f8e7d6c5b4a-never-shown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _completion(content: object) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


class Recorder:
    """What a stdlib server saw: each request's path, headers and JSON body, and the most requests
    in flight at once."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()


Reply = Callable[[BaseHTTPRequestHandler, int], None]  # (handler, index of this request) -> writes a reply


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "application/json") -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _send_json(h: BaseHTTPRequestHandler, obj: object, status: int = 200) -> None:
    _send(h, status, json.dumps(obj).encode())


@contextmanager
def stdlib_server(reply: Reply) -> Iterator[tuple[str, Recorder]]:
    """A real HTTP server on 127.0.0.1 (a free port, a thread per request) that answers every POST
    with ``reply``; yields (base_url, recorder)."""
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with rec.lock:
                index = len(rec.requests)
                rec.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                rec.in_flight += 1
                rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
            try:
                reply(self, index)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                pass
            finally:
                with rec.lock:
                    rec.in_flight -= 1

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", rec
    finally:
        server.shutdown()
        server.server_close()


def _judge(url: str, **kw: object) -> HTTPJudge:
    return HTTPJudge(url, "m", **{"timeout": 5.0, "retries": 0, **kw})  # type: ignore[arg-type]


# ---------------------------------------------------------------- stdlib servers


def test_verdicts_and_exact_request():
    texts = {"What is 2 + 3?": "5 is right. \\boxed{Assistant 1}", "What is the capital of France?":
             "Paris. \\boxed{Assistant 2}", "Is 7 prime?": "Both look fine to me.", "What is 10 / 2?": "\\boxed{3}"}

    def reply(h: BaseHTTPRequestHandler, index: int) -> None:
        prompt = rec.requests[index][2]["messages"][-1]["content"]
        query = next(q for q in texts if q in prompt)
        _send_json(h, _completion(texts[query]))

    with stdlib_server(reply) as (url, rec):
        out = _judge(url, concurrency=1, temperature=0.25, max_tokens=17).judge(ITEMS)
    assert [(j.choice, j.status) for j in out] == [(1, "ok"), (2, "ok"), (None, "no_verdict"), (None, "bad_verdict")]
    assert [j.reasoning for j in out] == [texts[q] for q, _, _ in ITEMS]
    for path, _, body in rec.requests:  # exactly the sampling settings given, nothing the client adds
        assert path == "/v1/chat/completions"
        assert set(body) == {"model", "messages", "temperature", "max_tokens"}
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("m", 0.25, 17)


def test_thinking_returned_apart():
    """A server with a reasoning parser: the thinking comes back as ``reasoning`` (``reasoning_content``
    before vLLM 0.10); a box in it is no verdict, and a reply cut off while thinking is no error."""
    messages = [{"content": "so: \\boxed{Assistant 2}", "reasoning": "1 is wrong"},
                {"content": "no box here", "reasoning_content": "maybe \\boxed{Assistant 1}"},
                {"content": None, "reasoning": "still thinking, cut off by max_tokens"}]

    def reply(h: BaseHTTPRequestHandler, index: int) -> None:
        body = _completion(None)
        body["choices"][0]["message"] = {"role": "assistant", **messages[index]}
        _send_json(h, body)

    with stdlib_server(reply) as (url, rec):
        judge = _judge(url, concurrency=1)
        out = [judge.judge([item])[0] for item in ITEMS[:3]]
    assert [(j.choice, j.status) for j in out] == [(2, "ok"), (None, "no_verdict"), (None, "no_verdict")]
    assert out[0].reasoning == "1 is wrong</think>so: \\boxed{Assistant 2}"
    assert out[2].reasoning == "still thinking, cut off by max_tokens</think>"


def test_concurrency_limit():
    def reply(h: BaseHTTPRequestHandler, _: int) -> None:
        time.sleep(0.3)
        _send_json(h, _completion("\\boxed{Assistant 1}"))

    with stdlib_server(reply) as (url, rec):
        judge = _judge(url, concurrency=3)
        out = judge.judge(ITEMS * 2)
    assert [j.status for j in out] == ["ok"] * 8
    assert rec.max_in_flight == 3 and judge.counts["requests"] == 8  # three at a time, never more


def test_slow_server_times_out_within_bound():
    with stdlib_server(lambda h, _: (time.sleep(30), _send_json(h, _completion("late")))) as (url, rec):
        judge = _judge(url, timeout=0.5, retries=1)
        t = time.monotonic()
        out = judge.judge(ITEMS[:2])
        took = time.monotonic() - t
    assert [(j.choice, j.reasoning, j.status) for j in out] == [(None, "", "timeout")] * 2
    assert took < 15  # bounded by the timeouts (2 x 0.5 s and a backoff), far below one 30 s answer
    assert judge.counts["requests"] == 4 and judge.counts["retries"] == 2 and judge.counts["failures"] == 2


def test_server_down_is_an_error_quickly():
    judge = _judge(f"http://127.0.0.1:{_free_port()}/v1", retries=1)
    t = time.monotonic()
    out = judge.judge(ITEMS[:2])
    assert time.monotonic() - t < 30  # refused connections fail at once; only the backoff waits
    assert all(j.choice is None and j.status == "error" and "connect" in j.reasoning for j in out)
    assert judge.counts["requests"] == 4 and judge.counts["failures"] == 2


GARBAGE: dict[str, Reply] = {
    "text": lambda h, _: _send(h, 200, b"<html>not json</html>", "text/html"),
    "bad-json": lambda h, _: _send(h, 200, b'{"choices": [', "application/json"),
    "no-choices": lambda h, _: _send_json(h, {"id": "x", "object": "chat.completion"}),
    "empty-choices": lambda h, _: _send_json(h, {**_completion("x"), "choices": []}),
    "null-content": lambda h, _: _send_json(h, _completion(None)),
    "number-content": lambda h, _: _send_json(h, _completion(42)),
    "list-body": lambda h, _: _send_json(h, [1, 2]),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_response_is_an_error(kind, tmp_path):
    with stdlib_server(GARBAGE[kind]) as (url, rec):
        judge = _judge(url, retries=2, cache_path=tmp_path / "cache.jsonl")
        out = judge.judge(ITEMS[:1])
    assert out[0].choice is None and out[0].status == "error" and out[0].reasoning
    assert judge.counts["requests"] == 1  # an answer of the wrong shape is not asked again
    assert not (tmp_path / "cache.jsonl").exists() or not (tmp_path / "cache.jsonl").read_text()


def test_retry_after_server_error():
    def reply(h: BaseHTTPRequestHandler, index: int) -> None:
        if index == 0:
            _send_json(h, {"error": {"message": "overloaded"}}, status=500)
        else:
            _send_json(h, _completion("\\boxed{Assistant 2}"))

    with stdlib_server(reply) as (url, rec):
        judge = _judge(url, retries=2)
        out = judge.judge(ITEMS[:1])
    assert (out[0].choice, out[0].status) == (2, "ok")
    assert judge.counts["requests"] == 2 and judge.counts["retries"] == 1 and judge.counts["failures"] == 0


def test_client_error_is_not_retried_and_hides_the_key(monkeypatch, caplog):
    monkeypatch.setenv("MY_JUDGE_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)  # the client's and httpx's debug logs too

    def reply(h: BaseHTTPRequestHandler, _: int) -> None:  # a server that echoes the key in its error
        _send_json(h, {"error": {"message": f"bad request from {h.headers['Authorization']}"}}, status=400)

    with stdlib_server(reply) as (url, rec):
        judge = _judge(url, retries=2, api_key_env="MY_JUDGE_KEY")
        out = judge.judge(ITEMS[:1])
    assert rec.requests[0][1]["authorization"] == f"Bearer {FAKE_KEY}"  # the key was sent
    assert out[0].status == "error" and "HTTP 400" in out[0].reasoning and FAKE_KEY not in out[0].reasoning
    assert judge.counts["requests"] == 1 and FAKE_KEY not in judge.name + repr(judge)
    assert "chat/completions" in caplog.text and FAKE_KEY not in caplog.text


def test_missing_key_sends_empty(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with stdlib_server(lambda h, _: _send_json(h, _completion("\\boxed{1}"))) as (url, rec):
        assert _judge(url).judge(ITEMS[:1])[0].status == "ok"
    assert rec.requests[0][1]["authorization"] == "Bearer EMPTY"


def test_cache_survives_a_cut_last_line(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with stdlib_server(lambda h, i: _send_json(h, _completion(f"answer {i} \\boxed{{Assistant 1}}"))) as (url, rec):
        first = _judge(url, cache_path=cache).judge(ITEMS[:2])
        with cache.open("a") as f:
            f.write('{"key": "abc", "te')  # a crash mid-write
        judge = _judge(url, cache_path=cache)
        assert judge.counts["cache_skipped"] == 1
        again = judge.judge(ITEMS[:3])  # two from the cache, one asked and appended after the cut line
        assert judge.counts["requests"] == 1 and judge.counts["cache_hits"] == 2
        assert again[:2] == first
        reloaded = _judge(url, cache_path=cache)
        assert reloaded.judge(ITEMS[:3]) == again and reloaded.counts["requests"] == 0
    assert reloaded.counts["cache_skipped"] == 1 and len(rec.requests) == 3


def test_cache_key_covers_settings(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with stdlib_server(lambda h, i: _send_json(h, _completion(f"answer {i}"))) as (url, rec):
        _judge(url, cache_path=cache).judge(ITEMS[:1])
        for settings in ({"temperature": 0.9}, {"max_tokens": 7}, {"system_prompt": "Be brief."},
                         {"template": "{query} | {response_1} | {response_2}"}):
            other = _judge(url, cache_path=cache, **settings)
            other.judge(ITEMS[:1])
            assert other.counts["requests"] == 1 and other.counts["cache_hits"] == 0, settings
        same = _judge(url, cache_path=cache)
        assert same.judge(ITEMS[:1])[0].reasoning == "answer 0" and same.counts["requests"] == 0
        elsewhere = HTTPJudge(url, "another-model", cache_path=cache)  # the name holds model and server
        elsewhere.judge(ITEMS[:1])
        assert elsewhere.counts["requests"] == 1


def test_reseed_samples_again_and_the_same_seed_finds_the_cache(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with stdlib_server(lambda h, i: _send_json(h, _completion(f"answer {i}"))) as (url, rec):
        judge = _judge(url, cache_path=cache)
        judge.reseed(1)
        first = judge.judge(ITEMS[:1])
        judge.reseed(2)  # the next step: the same comparison is a new sample
        assert judge.judge(ITEMS[:1])[0].reasoning == "answer 1" and judge.counts["requests"] == 2
        resumed = _judge(url, cache_path=cache)
        resumed.reseed(1)  # a resumed run replays step 1
        assert resumed.judge(ITEMS[:1]) == first and resumed.counts["requests"] == 0


def test_failures_are_not_cached(tmp_path):
    cache = tmp_path / "cache.jsonl"
    judge = _judge(f"http://127.0.0.1:{_free_port()}/v1", cache_path=cache)
    assert judge.judge(ITEMS[:1])[0].status == "error"
    assert judge.judge(ITEMS[:1])[0].status == "error"
    assert judge.counts["requests"] == 2 and judge.counts["cache_hits"] == 0
    assert not cache.exists() or cache.read_text() == ""


def test_import_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "opo.judges.http")
    with pytest.raises(ImportError, match=r"pip install openai .*opo-rl\[judge\]"):
        import opo.judges.http  # noqa: F401


# ---------------------------------------------------------------- vLLM (CPU build) serving the embedded model


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory) -> Iterator[str]:
    """A vLLM server on 127.0.0.1 serving the embedded model as ``judge``, for this module."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON.parent.parent} is absent: create it with scripts/setup_vllm.sh")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ,
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the model runs in the engine's process: one process fewer on 2 cores
           "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; by default it takes most of the machine's memory
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}  # no pinning to a core another job may be using
    args = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded_model_dir()),
            "--served-model-name", "judge", "--dtype", "float32",  # bf16 is slower on CPUs without AVX-512
            "--enforce-eager", "--max-model-len", "512", "--generation-config", "vllm",  # no hidden sampling defaults
            "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + VLLM_READY_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server was not ready in {VLLM_READY_S} s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.e2e
def test_vllm_judgments(vllm_url):
    judge = HTTPJudge(vllm_url, "judge", max_tokens=24, concurrency=4, timeout=180, retries=0)
    out = judge.judge(ITEMS)
    assert [j.status for j in out if j.status not in ANSWERED] == []
    for j in out:
        assert isinstance(j.reasoning, str) and j.reasoning.strip()
        assert (j.choice, j.status) == parse_verdict(j.reasoning)
    assert judge.counts["requests"] == 4 and judge.counts["failures"] == 0


@pytest.mark.e2e
def test_vllm_cache_and_key(vllm_url, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", FAKE_KEY)  # vLLM without --api-key accepts any key
    cache = tmp_path / "judge.jsonl"
    kw = dict(max_tokens=24, concurrency=3, timeout=180, retries=0, api_key_env="JUDGE_TEST_KEY", cache_path=cache)
    a, b = ITEMS[0], ITEMS[1]
    judge = HTTPJudge(vllm_url, "judge", **kw)
    first = judge.judge([a, a, b])  # a twice: two samples, two cache entries
    assert all(j.status in ANSWERED for j in first)
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 3 and len({r["key"] for r in rows}) == 3
    assert sorted(r["text"] for r in rows) == sorted(j.reasoning for j in first)

    assert judge.judge([a, a, b]) == first  # the same call again: no request
    assert judge.counts["requests"] == 3 and judge.counts["cache_hits"] == 3

    fresh = HTTPJudge(vllm_url, "judge", **kw)  # a resumed run reads the file
    third = fresh.judge([b, a, a, a])  # a's first two occurrences are cached, its third is new
    assert fresh.counts["cache_hits"] == 3 and fresh.counts["requests"] == 1
    assert third[:3] == [first[2], first[0], first[1]]
    assert len(cache.read_text().splitlines()) == 4

    for text in (judge.name, repr(judge), cache.read_text()):
        assert FAKE_KEY not in text

"""fulmen.serve's engine over real HTTP: one server process (tests/serve/apps/suite_app.py) with seven
endpoints and real worker processes. The last tests kill a worker and then SIGTERM the server, so the
order of this file matters (pytest runs it top to bottom)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest
from tests.serve._support import HERE, Server, wait_for

KEY = {"X-API-Key": "s3cret"}


@pytest.fixture(scope="module")
def flag(tmp_path_factory):
    return tmp_path_factory.mktemp("serve") / "sick.flag"


@pytest.fixture(scope="module")
def server(flag):
    srv = Server([str(HERE / "apps" / "suite_app.py"), "{port}", str(flag)])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=KEY, timeout=15) as c:
        yield c


def test_predict_json_in_and_out(client):
    r = client.post("/predict", json={"input": 4})
    assert r.status_code == 200, r.text
    assert r.json()["output"] == 16
    assert r.json()["pid"] != 0


def test_bad_inputs_get_clear_errors_and_the_worker_survives(client):
    pid = client.post("/predict", json={"input": 1}).json()["pid"]
    r = client.post("/predict", content=b'{"input": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post("/predict", json={"wrong": 1})
    assert r.status_code == 400 and "decode_request raised KeyError" in r.json()["detail"]
    r = client.post("/fail", json={"input": -3})
    assert r.status_code == 500 and r.json()["detail"] == "predict raised ValueError: negative input -3"
    r = client.post("/fail", json={"input": "http"})
    assert r.status_code == 422 and r.json()["detail"] == "input 'http' is refused"
    r = client.post("/predict", json={"input": 1, "pad": "x" * 20_000})
    assert r.status_code == 413 and "over the limit of 10000 bytes" in r.json()["detail"]
    r = client.post("/predict", json={"input": 3})
    assert r.status_code == 200 and r.json() == {"output": 9, "pid": pid}  # same worker, still alive
    assert client.get("/health").status_code == 200


def test_api_key_on_every_route_but_health(server):
    assert httpx.post(server.url + "/predict", json={"input": 2}).status_code == 401
    assert httpx.get(server.url + "/info").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.post(server.url + "/predict", json={"input": 2}, headers={"X-API-Key": "nope"}).status_code == 401
    bearer = {"Authorization": "Bearer s3cret"}
    assert httpx.post(server.url + "/predict", json={"input": 2}, headers=bearer).json()["output"] == 4
    assert httpx.get(server.url + "/health").status_code == 200


def test_dynamic_batching_gathers_concurrent_requests(client, server):
    results = [None] * 8

    def call(i):
        with httpx.Client(base_url=server.url, headers=KEY, timeout=15) as c:
            results[i] = c.post("/batched", json={"input": i}).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [r["output"] for r in results] == [2 * i for i in range(8)]
    assert max(r["batch"] for r in results) > 1  # several requests shared one predict call
    assert all(r["batch"] <= 4 for r in results)  # never more than max_batch_size
    # alone, a request waits out at most batch_timeout (0.3 s) and is served in a batch of 1
    t0 = time.monotonic()
    assert client.post("/batched", json={"input": 5}).json() == {"output": 10, "batch": 1}
    assert time.monotonic() - t0 < 2.0


def test_adaptive_batch_window(client, server):
    # alone: no window is waited out (a fixed window would add its whole length to every lone request)
    times = []
    for i in range(3):
        t0 = time.monotonic()
        assert client.post("/auto", json={"input": i}).json() == {"output": i, "batch": 1}
        times.append(time.monotonic() - t0)
    assert min(times) < 0.05 + 0.15
    # under load: requests that arrive while predict runs share the next call
    results = [None] * 12

    def call(i):
        with httpx.Client(base_url=server.url, headers=KEY, timeout=15) as c:
            results[i] = c.post("/auto", json={"input": i}).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [r["output"] for r in results] == list(range(12))
    assert max(r["batch"] for r in results) > 1 and all(r["batch"] <= 8 for r in results)


def test_request_timeout_is_a_504_and_the_worker_moves_on(client):
    t0 = time.monotonic()
    r = client.post("/slow", json={"sleep": 3.0})
    assert r.status_code == 504 and "timeout of 2 s" in r.json()["detail"]
    assert time.monotonic() - t0 < 2.9
    r = client.post("/slow", json={"sleep": 0.0})  # served once the worker is past the slow one
    assert r.status_code == 200


def test_streaming_sends_chunks(client):
    with client.stream("POST", "/stream", json={"n": 4}) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines == [{"i": i} for i in range(4)]


def test_openai_spec_streaming_and_not(client):
    body = {"model": "echo", "messages": [{"role": "user", "content": "hello there world"}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "hello there world "}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hello there world "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    r = client.post("/v1/chat/completions", json={"messages": "hi"})
    assert r.status_code == 400 and "'messages' must be a list" in r.json()["detail"]


def test_info_and_metrics(client):
    info = client.get("/info").json()
    paths = [e["api_path"] for e in info["server"]["endpoints"]]
    assert paths == ["/predict", "/batched", "/fail", "/slow", "/stream", "/v1/chat/completions", "/sick", "/auto"]
    assert len(info["server"]["workers"]) == 8 and all(w["alive"] for w in info["server"]["workers"])
    text = client.get("/metrics").text
    assert 'fulmen_serve_requests_total{api_path="/predict",status="200"}' in text
    assert 'fulmen_serve_requests_total{api_path="/slow",status="504"}' in text
    assert "fulmen_serve_request_latency_seconds_bucket" in text
    assert 'fulmen_serve_batch_size_bucket{api_path="/batched",le="4.0"}' in text
    assert "fulmen_serve_queue_depth" in text


def test_health_reflects_a_failing_health_hook(client, flag):
    assert client.get("/health").status_code == 200
    flag.write_text("sick")
    try:
        assert wait_for(lambda: client.get("/health").status_code == 503, timeout=5)
    finally:
        flag.unlink()
    assert wait_for(lambda: client.get("/health").status_code == 200, timeout=5)


def _slow_worker_pid(client):
    workers = client.get("/info").json()["server"]["workers"]
    return next(w["pid"] for w in workers if w["api"] == 3)


def test_sigkilled_worker_fails_its_requests_at_once_and_is_restarted(client, server):
    pid = _slow_worker_pid(client)
    result = {}

    def call():
        t0 = time.monotonic()
        with httpx.Client(base_url=server.url, headers=KEY, timeout=15) as c:
            result["response"] = c.post("/slow", json={"sleep": 1.8})
        result["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)  # the request is in the worker's predict
    os.kill(pid, signal.SIGKILL)
    thread.join(10)
    r = result["response"]
    assert r.status_code == 503 and "died" in r.json()["detail"]
    assert result["seconds"] < 1.8  # answered when the worker died, not when its predict would have ended
    assert wait_for(lambda: client.get("/health").status_code == 200, timeout=30, step=0.2)
    assert _slow_worker_pid(client) != pid
    assert client.post("/slow", json={"sleep": 0.0}).status_code == 200
    assert client.post("/predict", json={"input": 2}).json()["output"] == 4  # other endpoints untouched
    assert 'fulmen_serve_worker_restarts_total{api_path="/slow"} 1.0' in client.get("/metrics").text


def test_sigterm_drains_in_flight_requests_then_exits(server):
    result = {}

    def call():
        with httpx.Client(base_url=server.url, headers=KEY, timeout=15) as c:
            result["response"] = c.post("/slow", json={"sleep": 1.0})

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.4)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(10)
    assert result["response"].status_code == 200 and result["response"].json()["slept"] == 1.0
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is -SIGTERM
    assert server.proc.wait(20) in (0, -signal.SIGTERM)
    assert "fulmen.serve: stopped" in server.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=2)

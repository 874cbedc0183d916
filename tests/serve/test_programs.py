"""LitServe README/docs-style programs (tests/serve/programs/) run unmodified but for
``import fulmen.serve as ls``, each as its own server process, hit over real HTTP. The six servers start
together (one wait instead of six)."""

from __future__ import annotations

import json

import httpx
import pytest
from tests.serve._support import HERE, Server

PROGRAMS = ["hello_world", "batched", "streaming", "openai_spec", "multiple_endpoints", "torch_model"]


@pytest.fixture(scope="module")
def servers():
    started = {
        name: Server([str(HERE / "programs" / f"{name}.py")], wait=False, ready_timeout=120) for name in PROGRAMS
    }
    try:
        for srv in started.values():
            srv.wait_ready()
        yield {name: srv.url for name, srv in started.items()}
    finally:
        for srv in started.values():
            srv.stop()


def test_hello_world(servers):
    r = httpx.post(servers["hello_world"] + "/predict", json={"input": 4.0}, timeout=10)
    assert r.status_code == 200 and r.json() == {"output": 80.0}


def test_batched(servers):
    r = httpx.post(servers["batched"] + "/predict", json={"input": 3.0}, timeout=10)
    assert r.json() == {"output": 9.0, "batched": True}


def test_streaming(servers):
    with httpx.stream("POST", servers["streaming"] + "/predict", json={"input": 5}, timeout=10) as r:
        assert [json.loads(line) for line in r.iter_lines() if line] == [{"output": 5}, {"output": 10}, {"output": 15}]


def test_openai_spec_with_the_demo_transformer(servers):
    url = servers["openai_spec"] + "/v1/chat/completions"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}
    whole = httpx.post(url, json=body, timeout=30).json()
    text = whole["choices"][0]["message"]["content"]
    assert len(text) == 12  # 12 generated characters
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=30) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(pieces) == text  # same seed, greedy decoding: the stream spells the same text


def test_multiple_endpoints(servers):
    base = servers["multiple_endpoints"]
    assert httpx.post(base + "/sentiment", json={"text": "a great day"}, timeout=10).json() == {"sentiment": "positive"}
    assert httpx.post(base + "/length", json={"text": "abcd"}, timeout=10).json() == {"length": 4}
    workers = httpx.get(base + "/info", timeout=10).json()["server"]["workers"]
    assert sorted(w["api"] for w in workers) == [0, 1]


def test_torch_model(servers):
    base = servers["torch_model"]
    outs = [httpx.post(base + "/predict", json={"input": x}, timeout=10).json()["output"] for x in (0, 1, 2.5)]
    assert outs == [1.0, 3.0, 6.0]  # 2x + 1
    assert len(httpx.get(base + "/info", timeout=10).json()["server"]["workers"]) == 2

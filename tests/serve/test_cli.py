"""`fulmen serve CKPT --model ...` and `fulmen serve app.py`: real server processes, real HTTP."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import torch
from tests.serve._support import HERE, ROOT, Server

APPS = HERE / "apps"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sys.path.insert(0, str(APPS))
    try:
        from tiny_module import TinyRegressor
    finally:
        sys.path.remove(str(APPS))
    import fulmen as L

    torch.manual_seed(0)
    model = TinyRegressor(width=3)
    data = torch.utils.data.DataLoader(torch.randn(8, 3), batch_size=4)
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path_factory.mktemp("fit")),
    )
    trainer.fit(model, data)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    x = torch.tensor([[0.5, -1.0, 2.0]])
    with torch.inference_mode():
        expected = model.eval().predict_step(x, 0)[0].tolist()
    return path, expected


@pytest.fixture(scope="module")
def servers(checkpoint):
    path, _ = checkpoint
    cli = ["-m", "fulmen", "serve"]
    started = {
        "ckpt": Server(
            [
                *cli,
                str(path),
                "--model",
                "tiny_module:TinyRegressor",
                "--port",
                "{port}",
                "--max-batch-size",
                "4",
                "--batch-timeout",
                "auto",
            ],
            wait=False,
            cwd=APPS,
        ),
        "app": Server([*cli, str(APPS / "file_app.py"), "--port", "{port}", "--api-key", "k"], wait=False),
    }
    try:
        for srv in started.values():
            srv.wait_ready()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def test_serve_checkpoint_predict_step(servers, checkpoint):
    _, expected = checkpoint
    r = httpx.post(servers["ckpt"].url + "/predict", json={"input": [0.5, -1.0, 2.0]}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == pytest.approx(expected, abs=1e-6)
    r = httpx.post(servers["ckpt"].url + "/predict", json={"x": 1}, timeout=10)
    assert r.status_code == 400 and '{"input":' in r.json()["detail"]


def test_serve_file_with_a_litapi_prints_url_endpoints_and_curl(servers):
    srv = servers["app"]
    r = httpx.post(srv.url + "/predict", json={"text": "abc"}, headers={"X-API-Key": "k"}, timeout=10)
    assert r.json() == {"reversed": "cba"}
    assert httpx.post(srv.url + "/predict", json={"text": "abc"}, timeout=10).status_code == 401
    banner = srv.output()
    assert f"serving on {srv.url}" in banner
    assert f"POST {srv.url}/predict" in banner and f"GET  {srv.url}/health" in banner
    assert f"curl -X POST {srv.url}/predict" in banner and "X-API-Key" in banner


def test_checkpoint_without_a_class_is_a_clear_error(checkpoint):
    path, _ = checkpoint
    out = subprocess.run(
        [sys.executable, "-m", "fulmen", "serve", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
    )
    assert out.returncode != 0
    assert "pass --model package.module:ClassName" in out.stderr

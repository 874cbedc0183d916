"""LitAPI/LitServer settings and errors, and the lazy imports (no server needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fulmen.serve as ls


def test_import_fulmen_and_fulmen_serve_import_no_serving_dependency():
    code = (
        "import sys, fulmen, fulmen.serve\n"
        "bad = [m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'starlette', 'litserve') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch_size": 0}, r"max_batch_size=0\): expected an int >= 1"),
        ({"batch_timeout": -1}, r"batch_timeout=-1\): expected seconds >= 0 or 'auto'"),
        ({"api_path": "predict"}, r"expected a path starting with '/'"),
        ({"enable_async": True}, "write synchronous hooks"),
    ],
)
def test_litapi_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ls.LitAPI(**kwargs)


def test_litserver_arguments_are_validated():
    with pytest.raises(TypeError, match="expected a fulmen.serve.LitAPI"):
        ls.LitServer(object())
    with pytest.raises(ValueError, match="same api_path"):
        ls.LitServer([ls.LitAPI(), ls.LitAPI()], accelerator="cpu")
    with pytest.raises(ValueError, match="collides with a built-in route"):
        ls.LitServer(ls.LitAPI(api_path="/health"), accelerator="cpu")
    with pytest.raises(ValueError, match="accelerator='tpu'"):
        ls.LitServer(ls.LitAPI(), accelerator="tpu")


def test_legacy_litserver_settings_move_to_the_api_with_a_deprecation_warning():
    api = ls.LitAPI()
    with pytest.warns(DeprecationWarning, match="pass them to LitAPI"):
        ls.LitServer(api, accelerator="cpu", max_batch_size=4, batch_timeout=0.05, api_path="/x")
    assert (api.max_batch_size, api.batch_timeout, api.api_path) == (4, 0.05, "/x")
    spec_api = ls.LitAPI()
    ls.LitServer(spec_api, accelerator="cpu", spec=ls.OpenAISpec())
    assert spec_api.api_path == "/v1/chat/completions" and spec_api.stream


def test_default_batch_and_unbatch():
    import torch

    api = ls.LitAPI()
    assert api.batch([torch.ones(2), torch.zeros(2)]).shape == (2, 2)
    assert api.batch([1, 2]) == [1, 2]
    assert api.unbatch(torch.ones(3, 2))[0].shape == (2,)
    with pytest.raises(TypeError, match="override `unbatch"):
        api.unbatch(5)

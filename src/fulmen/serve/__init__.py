"""fulmen.serve: serve models over HTTP with LitServe 0.2's API (``import fulmen.serve as ls``).

The user writes a :class:`LitAPI` (``setup``, ``decode_request``, ``predict``, ``encode_response``, and
optionally ``batch``/``unbatch``/``health``); :class:`LitServer` runs it in worker processes behind a FastAPI
front on uvicorn. FastAPI, uvicorn and prometheus_client (the ``fulmen[serve]`` extra) are imported only
when a server runs. Built on fulmen's public API only.
"""

from fulmen.serve.api import LitAPI
from fulmen.serve.server import LitServer
from fulmen.serve.specs import LitSpec, OpenAISpec

__all__ = ["LitAPI", "LitServer", "LitSpec", "OpenAISpec", "ServableModule", "ServableModuleValidator"]


def __getattr__(name: str) -> object:
    # Lightning's serving callback needs torch and the callbacks package: imported on first use only
    if name in ("ServableModule", "ServableModuleValidator"):
        from fulmen.serve import servable

        return getattr(servable, name)
    raise AttributeError(f"module 'fulmen.serve' has no attribute {name!r}")

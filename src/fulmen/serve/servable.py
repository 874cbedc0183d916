"""Lightning's ``ServableModule`` and ``ServableModuleValidator`` (``lightning.pytorch.serve``).

The validator checks at the start of ``fit`` that the module serves what it promises: it serves a copy of
the module over real HTTP on ``host:port`` (FastAPI on uvicorn, in a thread of the training process, so the
module need not be picklable), posts ``configure_payload()`` to ``/serve`` and compares the JSON answer with
``configure_response()``.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from fulmen.callbacks import Callback
from fulmen.utilities.exceptions import MisconfigurationException

__all__ = ["ServableModule", "ServableModuleValidator"]


class ServableModule(ABC, torch.nn.Module):
    """A module that says how to serve itself: a sample payload, (de)serializers, a step and the answer."""

    @abstractmethod
    def configure_payload(self) -> dict[str, Any]:
        """A sample request, ``{"body": {...}}``."""

    @abstractmethod
    def configure_serialization(self) -> tuple[dict[str, Callable[..., Any]], dict[str, Callable[..., Any]]]:
        """``(deserializers, serializers)``: per body key, JSON -> tensor; per output key, tensor -> JSON."""

    @abstractmethod
    def serve_step(self, *args: Tensor, **kwargs: Tensor) -> dict[str, Tensor]:
        """The serving step: deserialized body in, a dict of tensors out."""

    @abstractmethod
    def configure_response(self) -> dict[str, Any]:
        """The response ``configure_payload()`` must produce."""


class _Response:
    def __init__(self, status_code: int, text: str) -> None:
        self.status_code, self.text = status_code, text

    def json(self) -> Any:
        return json.loads(self.text)


def _overridden(name: str, module: Any) -> bool:
    return getattr(type(module), name, None) is not getattr(ServableModule, name)


class ServableModuleValidator(Callback):
    """Check at the start of training that a :class:`ServableModule` serves ``configure_response()``.

    Args:
        optimization: not supported (``None`` only), as in Lightning.
        server: ``"fastapi"`` only, as in Lightning.
        host, port: where the check's server listens (127.0.0.1 by default).
        timeout: seconds the server has to start.
        exit_on_failure: raise when the module is not servable.

    Raises:
        ModuleNotFoundError: FastAPI or uvicorn is missing (install ``fulmen[serve]``).
        NotImplementedError: another ``optimization`` or ``server``.
    """

    def __init__(
        self,
        optimization: Literal["trace", "script", "onnx", "tensorrt"] | None = None,
        server: Literal["fastapi", "ml_server", "torchserve", "sagemaker"] = "fastapi",
        host: str = "127.0.0.1",
        port: int = 8080,
        timeout: int = 20,
        exit_on_failure: bool = True,
    ) -> None:
        super().__init__()
        for name in ("fastapi", "uvicorn"):
            try:
                __import__(name)
            except ImportError as exc:
                raise ModuleNotFoundError(
                    f"ServableModuleValidator needs {name}; install the serving extra: pip install 'fulmen[serve]'"
                ) from exc
        if optimization is not None:
            raise NotImplementedError(f"The optimization {optimization} is currently not supported.")
        if server != "fastapi":
            raise NotImplementedError("Only the fastapi server is currently supported.")
        self.optimization = optimization
        self.host = host
        self.port = port
        self.server = server
        self.timeout = timeout
        self.exit_on_failure = exit_on_failure
        self.resp: _Response | None = None

    def on_train_start(self, trainer: Any, servable_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        strategy = type(trainer.strategy).__name__
        if "DeepSpeed" in strategy or "FSDP" in strategy:
            raise Exception(
                f"The current strategy {strategy} used by the trainer isn't supported for sanity serving yet."
            )
        if not isinstance(servable_module, ServableModule):
            raise TypeError(f"The provided model should be subclass of {ServableModule.__qualname__}.")
        for name in ("configure_payload", "configure_serialization", "serve_step"):
            if not _overridden(name, servable_module):
                raise NotImplementedError(f"The `{name}` method needs to be overridden.")
        payload = servable_module.configure_payload()
        if "body" not in payload:
            raise Exception(f'Your provided payload {payload} should have a field named "body".')
        self.resp = self._serve_once(servable_module, payload)
        if _overridden("configure_response", servable_module):
            response = servable_module.configure_response()
            if self.resp.status_code != 200 or self.resp.json() != response:
                got = self.resp.json() if self.resp.status_code == 200 else self.resp.text
                raise Exception(f"The expected response {response} doesn't match the generated one {got}.")
        if self.exit_on_failure and not self.successful:
            raise MisconfigurationException("The model isn't servable. Investigate the traceback and try again.")

    @property
    def successful(self) -> bool | None:
        """Whether the model was served successfully (``None`` before the check ran)."""
        return self.resp.status_code == 200 if self.resp else None

    def state_dict(self) -> dict[str, Any]:
        return {"successful": self.successful, "optimization": self.optimization, "server": self.server}

    def _serve_once(self, module: Any, payload: dict[str, Any]) -> _Response:
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        model = _copy_without_trainer(module)
        model.eval()
        deserializers, serializers = model.configure_serialization()
        app = FastAPI()

        async def serve(request: Any) -> Any:
            try:
                body = (await request.json())["body"]
                for key, deserializer in deserializers.items():
                    body[key] = deserializer(body[key])
                with torch.no_grad():
                    output = model.serve_step(**body)
                if not isinstance(output, dict):
                    raise TypeError(f"Please, return your outputs as a dictionary. Found {output}")
                for key, serializer in serializers.items():
                    output[key] = serializer(output[key])
                return JSONResponse(output)
            except Exception as exc:
                return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)

        async def ping(request: Any) -> Any:
            return JSONResponse(True)

        app.add_route("/serve", serve, methods=["POST"])
        app.add_route("/ping", ping, methods=["GET"])
        server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True, name="fulmen-servable-check")
        thread.start()
        try:
            deadline = time.monotonic() + self.timeout
            while not server.started:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise Exception(f"The server didn't start within {self.timeout} seconds.")
                time.sleep(0.05)
            request = urllib.request.Request(
                f"http://{self.host}:{self.port}/serve",
                data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    return _Response(r.status, r.read().decode())
            except urllib.error.HTTPError as err:
                return _Response(err.code, err.read().decode())
        finally:
            server.should_exit = True
            thread.join(10)


def _copy_without_trainer(module: Any) -> Any:
    """A deep copy of ``module`` without its trainer (which holds loaders, loggers, locks), as Lightning does."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return copy.deepcopy(module)
    module.trainer = None
    try:
        return copy.deepcopy(module)
    finally:
        module.trainer = trainer

"""``LitAPI``: the four hooks the user writes; the server owns batching, workers, devices and streaming.

The contract is LitServe 0.2.x's: per request ``decode_request -> predict -> encode_response``; with
``max_batch_size > 1`` the worker calls ``batch`` on the decoded inputs, ``predict`` once, ``unbatch`` and
``encode_response`` per request. With ``stream=True``, ``predict`` and ``encode_response`` are generators.
This module imports neither FastAPI nor uvicorn: a ``LitAPI`` is pickled into its worker processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["LitAPI"]


def _is_generator_like(value: Any) -> bool:
    return hasattr(value, "__next__") and hasattr(value, "__iter__")


class LitAPI:
    """Base class of an inference endpoint.

    Args:
        max_batch_size: the most requests one ``predict`` call receives (1: no batching).
        batch_timeout: seconds the worker waits for a batch to fill after its first request, or ``"auto"``:
            wait only while waiting pays (an adaptive window from measured predict time and arrival rate).
        api_path: the route this endpoint answers on (POST).
        stream: ``predict`` and ``encode_response`` are generators; each chunk is sent as it is produced.
        loop: accepted for LitServe compatibility (``"auto"``); fulmen's worker loop is chosen by ``stream``.
        spec: an API specification such as :class:`~fulmen.serve.OpenAISpec` (sets the route and formats).
        request_timeout: seconds a request may take before it gets a 504 (default: the server's ``timeout``).
        workers_per_device: replicas of this endpoint per device (default: the server's), so that several
            endpoints in one server each get their own placement.
        devices: devices of this endpoint (default: the server's).

    Raises:
        ValueError: a setting out of range, naming the setting and the accepted values.
    """

    def __init__(
        self,
        max_batch_size: int = 1,
        batch_timeout: float | str = 0.0,
        api_path: str = "/predict",
        stream: bool = False,
        loop: str | None = "auto",
        spec: Any = None,
        mcp: Any = None,
        enable_async: bool = False,
        request_timeout: float | None = None,
        workers_per_device: int | None = None,
        devices: int | str | list[int] | None = None,
    ) -> None:
        if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
            raise ValueError(f"LitAPI(max_batch_size={max_batch_size!r}): expected an int >= 1 (1 turns batching off).")
        if batch_timeout != "auto" and (
            not isinstance(batch_timeout, (int, float)) or isinstance(batch_timeout, bool) or batch_timeout < 0
        ):
            raise ValueError(f"LitAPI(batch_timeout={batch_timeout!r}): expected seconds >= 0 or 'auto'.")
        if not isinstance(api_path, str) or not api_path.startswith("/"):
            raise ValueError(f"LitAPI(api_path={api_path!r}): expected a path starting with '/', e.g. '/predict'.")
        if enable_async:
            raise ValueError(
                "LitAPI(enable_async=True) is not supported by fulmen.serve: write synchronous hooks; the worker "
                "processes already run requests concurrently."
            )
        if request_timeout is not None and request_timeout <= 0:
            raise ValueError(f"LitAPI(request_timeout={request_timeout!r}): expected seconds > 0 or None.")
        if workers_per_device is not None and workers_per_device < 1:
            raise ValueError(f"LitAPI(workers_per_device={workers_per_device!r}): expected an int >= 1 or None.")
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self.api_path = api_path
        self.stream = stream
        self.loop = loop
        self.mcp = mcp
        self.enable_async = enable_async
        self.request_timeout = request_timeout
        self.workers_per_device = workers_per_device
        self.devices = devices
        self._spec: Any = None
        self.spec = spec

    # ``spec`` is a property so that setting it (here or later) lets the spec adjust the endpoint.
    @property
    def spec(self) -> Any:
        return self._spec

    @spec.setter
    def spec(self, spec: Any) -> None:
        self._spec = spec
        if spec is not None:
            spec.setup(self)

    def setup(self, device: str) -> None:
        """Load the model onto ``device`` (``"cpu"``, ``"cuda:0"``...). Runs once in each worker process."""

    def decode_request(self, request: Any, **kwargs: Any) -> Any:
        """Turn the request's JSON body into the model's input (default: the body as is)."""
        if self._spec is not None:
            return self._spec.decode_request(request)
        return request

    def batch(self, inputs: list[Any]) -> Any:
        """Combine decoded inputs into one batch: tensors and arrays are stacked, anything else stays a list."""
        if inputs and all(type(x).__module__ == "torch" and type(x).__name__ == "Tensor" for x in inputs):
            import torch

            return torch.stack(inputs)
        if inputs and all(type(x).__module__ == "numpy" and type(x).__name__ == "ndarray" for x in inputs):
            import numpy as np

            return np.stack(inputs)
        return inputs

    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Run the model. Must be overridden."""
        raise NotImplementedError(
            f"{type(self).__name__}.predict is not implemented: override `predict(self, x)` to run your model."
        )

    def unbatch(self, output: Any) -> list[Any]:
        """Split a batched output into one output per request (default: ``list(output)``)."""
        if hasattr(output, "__len__"):
            return list(output)
        raise TypeError(
            f"{type(self).__name__}.unbatch: the default unbatch needs an output with a length (a list, tensor, "
            f"array), got {type(output).__name__}; override `unbatch(self, output)`."
        )

    def encode_response(self, output: Any, **kwargs: Any) -> Any:
        """Turn the model's output into the JSON response (default: the output as is)."""
        if self._spec is not None:
            return self._spec.encode_response(output)
        return output

    def health(self) -> bool:
        """Whether this worker can serve (polled by the worker; ``/health`` is 200 only when all pass)."""
        return True

    # -- helpers used by the worker ------------------------------------------------------------------
    def format_encoded_response(self, data: Any) -> Any:
        """A streamed chunk as sent: dicts and pydantic models as one JSON line, strings/bytes as they are."""
        if isinstance(data, dict):
            return json.dumps(data) + "\n"
        if hasattr(data, "model_dump_json"):
            return data.model_dump_json() + "\n"
        return data

    def _iter(self, value: Any) -> Iterable[Any]:
        if not _is_generator_like(value) and not isinstance(value, (list, tuple)):
            raise TypeError(
                f"{type(self).__name__}: with stream=True, predict and encode_response must be generators "
                f"(use `yield`), got {type(value).__name__}."
            )
        return value

"""``LitServer``: the HTTP front (FastAPI on uvicorn) over the worker processes of one or more ``LitAPI``.

Routes: each endpoint's ``api_path`` (POST, JSON in and out, or a stream), ``/health`` (200 only when every
worker is alive, set up, beating and its ``health()`` passes), ``/info`` (model metadata and settings) and
``/metrics`` (Prometheus). Binds 127.0.0.1 unless told otherwise; with an API key (``api_key=`` or the
``LIT_SERVER_API_KEY`` environment variable) every route but ``/health`` needs the ``X-API-Key`` header (or
``Authorization: Bearer <key>``). SIGTERM/SIGINT: stop accepting, finish the requests in flight, stop workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fulmen.serve import _worker
from fulmen.serve.api import LitAPI

END, ERROR = _worker.END, _worker.ERROR

__all__ = ["LitServer"]

_EXTRA_HINT = "install the serving extra: pip install 'fulmen[serve]'"


def _require_serving_deps() -> None:
    missing = []
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModuleNotFoundError(f"fulmen.serve needs {', '.join(missing)} to run a server; {_EXTRA_HINT}.")


def _cuda_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _resolve_devices(accelerator: str, devices: Any) -> list[str]:
    if accelerator == "auto":
        # without an NVIDIA driver there is no CUDA: don't import torch (seconds) just to learn that
        maybe_cuda = "torch" in sys.modules or os.path.exists("/dev/nvidiactl")
        accelerator = "cuda" if maybe_cuda and _cuda_count() > 0 else "cpu"
    if accelerator in ("gpu", "cuda"):
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"LitServer(accelerator={accelerator!r}): no CUDA device is available; use 'cpu'.")
        if devices == "auto":
            ids = list(range(count))
        elif isinstance(devices, int):
            ids = list(range(devices))
        else:
            ids = list(devices)
        if any(i >= count for i in ids):
            raise ValueError(f"LitServer(devices={devices!r}): only {count} CUDA device(s) are available.")
        return [f"cuda:{i}" for i in ids]
    if accelerator != "cpu":
        raise ValueError(f"LitServer(accelerator={accelerator!r}): expected 'auto', 'cpu', 'cuda' or 'gpu'.")
    n = 1 if devices == "auto" else devices if isinstance(devices, int) else len(devices)
    return ["cpu"] * max(1, n)


class _ApiKey:
    """Pure ASGI middleware: every route but the health check needs the key."""

    def __init__(self, app: Any, key: str, open_paths: set[str]) -> None:
        self.app, self.key, self.open_paths = app, key, open_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key", b"").decode()
            auth = headers.get(b"authorization", b"").decode()
            if auth.lower().startswith("bearer "):
                given = given or auth[7:]
            if given != self.key:
                from fastapi.responses import JSONResponse

                response = JSONResponse(
                    {"detail": "missing or wrong API key: send it in the X-API-Key header"}, status_code=401
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class LitServer:
    """Serve one or more :class:`~fulmen.serve.LitAPI` over HTTP with worker processes.

    Args:
        lit_api: a ``LitAPI`` or a list of them (each on its own ``api_path``, with its own workers).
        accelerator: ``"auto"``, ``"cpu"``, ``"cuda"``/``"gpu"``.
        devices: ``"auto"``, a count or a list of device indices.
        workers_per_device: worker processes per device (a ``LitAPI``'s own ``workers_per_device`` wins).
        timeout: seconds a request may take before it gets a 504 (a ``LitAPI``'s ``request_timeout`` wins).
        healthcheck_path, info_path: the routes of the health check and of the info page.
        model_metadata: JSON-serializable metadata shown on ``/info``.
        spec: an API spec for a single ``lit_api`` (LitServe 0.2's older place for it).
        max_payload_size: the largest request body in bytes (default 100 MiB); bigger ones get a 413.
        callbacks: objects with optional ``on_server_start(server)`` / ``on_server_end(server)`` methods.
        middlewares: Starlette middleware classes, or ``(class, kwargs)`` pairs.
        api_key: required on every route but the health check (default: ``$LIT_SERVER_API_KEY``).
        max_batch_size, batch_timeout, stream, api_path: LitServe 0.2's older place for these ``LitAPI``
            settings; applied to a single ``lit_api``.
        max_queue_size: requests waiting per worker before new ones get a 503.
        setup_timeout: seconds the workers have to run ``setup`` at start.

    Raises:
        ValueError: an unknown accelerator, two endpoints on one path, a setting out of range.
        TypeError: ``lit_api`` is not a ``LitAPI``.
    """

    def __init__(
        self,
        lit_api: LitAPI | Sequence[LitAPI],
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        workers_per_device: int = 1,
        timeout: float | bool = 30,
        healthcheck_path: str = "/health",
        info_path: str = "/info",
        model_metadata: Any = None,
        spec: Any = None,
        max_payload_size: int | None = None,
        track_requests: bool = False,
        callbacks: Any = None,
        middlewares: Any = None,
        loggers: Any = None,
        fast_queue: bool = False,
        max_batch_size: int | None = None,
        batch_timeout: float | str | None = None,
        stream: bool | None = None,
        api_path: str | None = None,
        api_key: str | None = None,
        metrics_path: str = "/metrics",
        max_queue_size: int = 1024,
        setup_timeout: float = 300.0,
    ) -> None:
        apis: list[Any] = list(lit_api) if isinstance(lit_api, (list, tuple)) else [lit_api]
        for api in apis:
            if not isinstance(api, LitAPI):
                raise TypeError(
                    f"LitServer(lit_api=...): expected a fulmen.serve.LitAPI (or a list of them), got "
                    f"{type(api).__name__}; subclass fulmen.serve.LitAPI."
                )
        if not apis:
            raise ValueError("LitServer(lit_api=[]): give at least one LitAPI.")
        legacy = {
            "max_batch_size": max_batch_size,
            "batch_timeout": batch_timeout,
            "stream": stream,
            "api_path": api_path,
        }
        given: dict[str, Any] = {k: v for k, v in legacy.items() if v is not None}
        if given or spec is not None:
            if len(apis) > 1:
                raise ValueError(
                    f"LitServer({', '.join(given) or 'spec'}=...) with several LitAPIs: set it on each LitAPI instead."
                )
            if given:
                warnings.warn(
                    f"LitServer({', '.join(f'{k}=' for k in given)}...) is LitServe's deprecated place for these "
                    "settings; pass them to LitAPI(...) instead.",
                    DeprecationWarning,
                    stacklevel=2,
                )
            api = apis[0]
            if "max_batch_size" in given or "batch_timeout" in given:
                LitAPI.__init__(
                    api,
                    max_batch_size=given.get("max_batch_size", api.max_batch_size),
                    batch_timeout=given.get("batch_timeout", api.batch_timeout),
                    api_path=given.get("api_path", api.api_path),
                    stream=given.get("stream", api.stream),
                    spec=api.spec,
                    request_timeout=api.request_timeout,
                    workers_per_device=api.workers_per_device,
                    devices=api.devices,
                )
            else:
                for key in ("stream", "api_path"):
                    if key in given:
                        setattr(api, key, given[key])
            if spec is not None:
                api.spec = spec
        paths = [a.api_path for a in apis]
        if len(set(paths)) != len(paths):
            raise ValueError(f"LitServer: two LitAPIs on the same api_path ({paths}); give each its own api_path.")
        reserved = {healthcheck_path, info_path, metrics_path} & set(paths)
        if reserved:
            raise ValueError(f"LitServer: api_path {sorted(reserved)} collides with a built-in route; pick another.")
        if timeout is False or timeout is None or timeout == -1:
            timeout = 10**9
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"LitServer(timeout={timeout!r}): expected seconds > 0 (or False for no limit).")
        if not isinstance(workers_per_device, int) or workers_per_device < 1:
            raise ValueError(f"LitServer(workers_per_device={workers_per_device!r}): expected an int >= 1.")
        if max_payload_size is None:
            max_payload_size = 100 * 2**20
        self.lit_apis = apis
        self.lit_api = apis[0]
        self.accelerator = accelerator
        self.devices = devices
        self.workers_per_device = workers_per_device
        self.timeout = float(timeout)
        self.healthcheck_path = healthcheck_path
        self.info_path = info_path
        self.metrics_path = metrics_path
        self.model_metadata = model_metadata
        self.max_payload_size = int(max_payload_size)
        self.callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks] if callbacks else []
        self.middlewares = list(middlewares or [])
        self.api_key = api_key if api_key is not None else os.environ.get("LIT_SERVER_API_KEY") or None
        self.max_queue_size = max_queue_size
        self.setup_timeout = setup_timeout
        self._placements = [self._placement(a) for a in apis]
        self._engine: Any = None

    def _placement(self, api: LitAPI) -> list[tuple[str, int, int]]:
        devices = _resolve_devices(self.accelerator, api.devices if api.devices is not None else self.devices)
        per = api.workers_per_device or self.workers_per_device
        out = []
        cpu_total = devices.count("cpu") * per
        k = 0
        for device in devices:
            for _ in range(per):
                if device == "cpu":
                    out.append((device, k, cpu_total))
                    k += 1
                else:
                    out.append((device, 0, per))
        return out

    # -- the app -----------------------------------------------------------------------------------------
    def _timeout_of(self, api: LitAPI) -> float:
        return float(api.request_timeout or self.timeout)

    def build_app(self, engine: Any) -> Any:
        """The FastAPI app over ``engine`` (routes, metrics, middlewares)."""
        from contextlib import asynccontextmanager

        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

        registry = CollectorRegistry()
        requests_total = Counter(
            "fulmen_serve_requests", "Requests answered", ["api_path", "status"], registry=registry
        )
        latency = Histogram(
            "fulmen_serve_request_latency_seconds",
            "Time from request to response",
            ["api_path"],
            registry=registry,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
        )
        batch_sizes = Histogram(
            "fulmen_serve_batch_size",
            "Size of the batch each request was served in",
            ["api_path"],
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        depth = Gauge("fulmen_serve_queue_depth", "Requests sent to workers and not yet answered", registry=registry)
        depth.set_function(engine.queue_depth)
        restarts = Counter(
            "fulmen_serve_worker_restarts", "Workers restarted after dying", ["api_path"], registry=registry
        )
        apis = self.lit_apis
        engine.on_batch = lambda a, n: batch_sizes.labels(apis[a].api_path).observe(n)
        engine.on_restart = lambda slot: restarts.labels(apis[slot.api_index].api_path).inc()
        server = self

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            engine.loop = asyncio.get_running_loop()
            for cb in server.callbacks:
                if hasattr(cb, "on_server_start"):
                    cb.on_server_start(server)
            yield
            engine.stop()  # uvicorn has drained the requests in flight by now
            print("fulmen.serve: stopped (requests in flight answered, workers stopped)", flush=True)
            for cb in server.callbacks:
                if hasattr(cb, "on_server_end"):
                    cb.on_server_end(server)

        app = FastAPI(title="fulmen.serve", lifespan=lifespan)

        def error(status: int, message: str, path: str, started: float) -> Any:
            requests_total.labels(path, str(status)).inc()
            latency.labels(path).observe(time.perf_counter() - started)
            return JSONResponse({"detail": message}, status_code=status)

        async def read_json(request: Any, path: str, started: float) -> tuple[Any, Any]:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > server.max_payload_size:
                return None, error(
                    413,
                    f"request body of {length} bytes is over the limit of {server.max_payload_size} bytes "
                    "(LitServer(max_payload_size=...))",
                    path,
                    started,
                )
            raw = await request.body()
            if len(raw) > server.max_payload_size:
                return None, error(
                    413,
                    f"request body of {len(raw)} bytes is over the limit of {server.max_payload_size} bytes",
                    path,
                    started,
                )
            try:
                return json.loads(raw), None
            except ValueError as exc:
                return None, error(400, f"the request body is not valid JSON: {exc}", path, started)

        def make_handler(index: int, api: LitAPI) -> Any:
            path, limit, spec = api.api_path, self._timeout_of(api), api.spec

            async def stream_chunks(slot: Any, rid: int, sink: Any, deadline: float, first: Any) -> AsyncIterator[Any]:
                try:
                    item = first
                    while True:
                        kind, payload = item
                        if kind == END:
                            return
                        if kind == ERROR:  # after the first chunk the status is sent: end the stream
                            return
                        yield payload
                        remaining = deadline - time.time()
                        if remaining <= 0:
                            return
                        try:
                            item = await asyncio.wait_for(sink.get(), remaining)
                        except asyncio.TimeoutError:
                            return
                finally:
                    engine.forget(slot, rid)

            async def handle(request: Any) -> Any:
                started = time.perf_counter()
                body, failure = await read_json(request, path, started)
                if failure is not None:
                    return failure
                if spec is not None and hasattr(spec, "validate_request"):
                    problem = spec.validate_request(body)
                    if problem is not None:
                        return error(400, problem, path, started)
                deadline = time.time() + limit
                try:
                    slot, rid, sink = engine.submit(index, body, deadline, api.stream)
                except Exception as exc:
                    if type(exc).__name__ == "Busy":
                        return error(
                            503, "the server is at capacity (every worker's queue is full); retry later", path, started
                        )
                    raise
                try:
                    if api.stream:
                        first = await asyncio.wait_for(sink.get(), limit)
                    else:
                        first = await asyncio.wait_for(sink, limit)
                except asyncio.TimeoutError:
                    engine.forget(slot, rid)
                    return error(504, f"the request took longer than the timeout of {limit:g} s", path, started)
                kind, payload = first
                if kind == ERROR:
                    status, message = payload
                    return error(status, message, path, started)
                requests_total.labels(path, "200").inc()
                latency.labels(path).observe(time.perf_counter() - started)
                if not api.stream:
                    return Response(payload, media_type="application/json")
                chunks = stream_chunks(slot, rid, sink, deadline, first)
                if spec is not None and hasattr(spec, "respond"):
                    return await spec.respond(body, chunks)
                return StreamingResponse(chunks, media_type="application/x-ndjson")

            return handle

        for index, api in enumerate(apis):
            # plain Starlette routes: the handler reads the body itself (no per-request parameter model)
            app.add_route(api.api_path, make_handler(index, api), methods=["POST"])

        async def health(request: Any) -> Any:
            ok, _ = engine.health()
            return PlainTextResponse("ok" if ok else "not ready", status_code=200 if ok else 503)

        async def info(request: Any) -> Any:
            ok, workers = engine.health()
            return JSONResponse(
                {
                    "model": server.model_metadata,
                    "server": {
                        "endpoints": [
                            {
                                "api_path": a.api_path,
                                "max_batch_size": a.max_batch_size,
                                "batch_timeout": a.batch_timeout,
                                "stream": a.stream,
                                "spec": type(a.spec).__name__ if a.spec is not None else None,
                                "timeout": server._timeout_of(a),
                                "devices": sorted({d for d, _, _ in server._placements[i]}),
                                "workers": len(server._placements[i]),
                            }
                            for i, a in enumerate(apis)
                        ],
                        "accelerator": server.accelerator,
                        "workers_per_device": server.workers_per_device,
                        "timeout": server.timeout,
                        "healthy": ok,
                        "workers": workers,
                    },
                }
            )

        async def metrics(request: Any) -> Any:
            return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

        app.add_route(self.healthcheck_path, health, methods=["GET"])
        app.add_route(self.info_path, info, methods=["GET"])
        app.add_route(self.metrics_path, metrics, methods=["GET"])

        for middleware in self.middlewares:
            if isinstance(middleware, tuple):
                cls, kwargs = middleware
                app.add_middleware(cls, **kwargs)
            else:
                app.add_middleware(middleware)
        if self.api_key:
            app.add_middleware(_ApiKey, key=self.api_key, open_paths={self.healthcheck_path})
        return app

    def run(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        num_api_servers: int | None = None,
        log_level: str = "info",
        generate_client_file: bool = False,
        api_server_worker_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Start the workers, wait for their ``setup``, then serve until SIGTERM/SIGINT.

        Raises:
            ModuleNotFoundError: FastAPI, uvicorn or prometheus_client is missing (names the extra).
            RuntimeError: a worker's ``setup`` failed.
        """
        _require_serving_deps()
        import uvicorn

        from fulmen.serve import _engine

        if num_api_servers not in (None, 1):
            warnings.warn(
                f"LitServer.run(num_api_servers={num_api_servers}): fulmen.serve runs one HTTP front process for "
                "now (the workers are separate processes); serving with 1.",
                stacklevel=2,
            )
        engine = _engine.Engine(self.lit_apis, self._placements, self.max_queue_size)
        self._engine = engine
        engine.start(self.setup_timeout)
        app = self.build_app(engine)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=int(min(self.timeout, 600)) + 5,
            **kwargs,
        )
        self._print_banner(host, port)
        try:
            uvicorn.Server(config).run()
        finally:
            engine.stop()

    def _print_banner(self, host: str, port: int) -> None:
        url = f"http://{host}:{port}"
        lines = [f"fulmen.serve: serving on {url}"]
        for a in self.lit_apis:
            lines.append(f"  POST {url}{a.api_path}")
        lines += [f"  GET  {url}{p}" for p in (self.healthcheck_path, self.info_path, self.metrics_path)]
        key = " -H 'X-API-Key: $LIT_SERVER_API_KEY'" if self.api_key else ""
        first = self.lit_apis[0]
        example = '{"messages": [{"role": "user", "content": "hello"}]}' if first.spec is not None else '{"input": 4.0}'
        lines.append(
            f"example: curl -X POST {url}{first.api_path} -H 'Content-Type: application/json'{key} -d '{example}'"
        )
        print("\n".join(lines), flush=True)

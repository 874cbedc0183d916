"""The inference worker process: pull requests from its queue, batch, run the hooks, push responses.

Messages (plain Python objects through ``multiprocessing`` queues between fulmen's own processes; clients
only ever send JSON): a request is ``(rid, stamp, deadline, body)`` and a response ``(rid, kind, payload,
batch_size)``. ``stamp`` is the worker slot's generation when the request was dispatched: a restarted worker
drops requests meant for the dead one (the front has already answered them with a 5xx). ``None`` stops the
worker. Every blocking wait has a timeout so the heartbeat and shutdown are never stuck behind an empty queue.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from typing import Any

OK, ERROR, CHUNK, END = 0, 1, 2, 3
# worker states in the shared array
STARTING, READY, UNHEALTHY, SETUP_FAILED = 0, 1, 2, 3
_HEALTH_EVERY = 1.0


def _error_payload(hook: str, exc: BaseException, default_status: int) -> tuple[int, str]:
    status = getattr(exc, "status_code", None)
    detail = getattr(exc, "detail", None)
    if isinstance(status, int) and 400 <= status < 600:  # an HTTPException raised by the user's hook
        return status, str(detail if detail is not None else exc)
    return default_status, f"{hook} raised {type(exc).__name__}: {exc}"


class _AdaptiveWindow:
    """``batch_timeout="auto"``: wait for more requests only while waiting pays.

    Tracks the mean time between arrivals and the mean predict time per batch. Waiting for one more request
    costs about one inter-arrival time; it pays when that is short compared with a predict call (the request
    would otherwise queue behind a whole batch). At concurrency 1 nobody else arrives within a predict time,
    so the window is 0 and a lone request goes straight to predict.
    """

    def __init__(self) -> None:
        self.gap = 1.0  # EMA of seconds between arrivals
        self.predict = 0.001  # EMA of seconds per predict call
        self._last = 0.0

    def arrived(self, now: float) -> None:
        if self._last:
            self.gap = 0.8 * self.gap + 0.2 * (now - self._last)
        self._last = now

    def measured(self, seconds: float) -> None:
        self.predict = 0.8 * self.predict + 0.2 * seconds

    def window(self, missing: int) -> float:
        if missing <= 0 or self.gap > self.predict:
            return 0.0
        return min(self.gap * missing, self.predict, 0.05)


def _pin(slot_in_device: int, workers_on_device: int, device: str) -> None:
    """On CPUs, give each worker its own cores and matching torch threads.

    torch is not imported for this: an endpoint that doesn't use it starts without paying for the import.
    """
    if device != "cpu" or os.environ.get("FULMEN_SERVE_PIN", "1") == "0":  # 0: leave placement to the OS
        return
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = list(range(os.cpu_count() or 1))
    per = max(1, len(cores) // max(1, workers_on_device))
    if len(cores) >= workers_on_device:
        mine = cores[slot_in_device * per : (slot_in_device + 1) * per]
        try:
            os.sched_setaffinity(0, mine)
        except (AttributeError, OSError):
            pass
    os.environ["OMP_NUM_THREADS"] = str(per)  # read by torch when it is first imported
    torch = sys.modules.get("torch")
    if torch is not None:  # already imported by unpickling the LitAPI
        torch.set_num_threads(per)


class _Inbox:
    """This worker's request pipe, drained by a thread into a local queue (``get``/``get_nowait``).

    One pipe per worker, one writer (the front) and one reader (this worker): no lock a killed process could
    leave held, which a shared ``multiprocessing.Queue`` has. The intake thread keeps the pipe empty while
    ``predict`` runs, so the front's send never waits on a full pipe (large payloads, a slow model).
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._intake, daemon=True, name="fulmen-serve-intake").start()

    def _intake(self) -> None:
        while True:
            try:
                item = self.conn.recv()
            except (EOFError, OSError):  # the front is gone: stop
                item = None
            self.queue.put(item)
            if item is None:
                return

    def get(self, timeout: float) -> Any:
        return self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()

    def get_nowait(self) -> Any:
        return self.queue.get_nowait()


class _Outbox:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def put(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):  # the front is gone
            os._exit(0)


def worker_main(
    api: Any,
    device: str,
    slot: int,
    slot_in_device: int,
    workers_on_device: int,
    generation: int,
    request_conn: Any,
    response_conn: Any,
    states: Any,
    heartbeats: Any,
) -> None:
    """Process target: set up ``api`` on ``device`` and serve requests until ``None`` arrives."""
    requests, responses = _Inbox(request_conn), _Outbox(response_conn)
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            heartbeats[slot] = time.time()
            stop.wait(0.2)

    threading.Thread(target=beat, daemon=True, name="fulmen-serve-heartbeat").start()
    try:
        _pin(slot_in_device, workers_on_device, device)
        api.setup(device)
    except BaseException:
        traceback.print_exc()
        states[slot] = SETUP_FAILED
        stop.set()
        os._exit(3)
    states[slot] = READY if _safe_health(api) else UNHEALTHY
    try:
        if api.stream:
            _stream_loop(api, generation, requests, responses, states, slot)
        else:
            _batch_loop(api, generation, requests, responses, states, slot)
    finally:
        stop.set()


def _safe_health(api: Any) -> bool:
    try:
        return bool(api.health())
    except Exception:
        traceback.print_exc()
        return False


def _next(api: Any, generation: int, requests: Any, states: Any, slot: int, last_health: list[float]) -> Any:
    """The next live request, ``None`` to stop, or ``False`` when the wait timed out."""
    while True:
        try:
            item = requests.get(timeout=0.5)
        except queue.Empty:
            now = time.time()
            if now - last_health[0] > _HEALTH_EVERY:
                states[slot] = READY if _safe_health(api) else UNHEALTHY
                last_health[0] = now
            return False
        if item is None:
            return None
        if item[1] < generation or item[2] < time.time():  # meant for a dead worker, or already answered (504)
            continue
        return item


def _encode_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _batch_loop(api: Any, generation: int, requests: Any, responses: Any, states: Any, slot: int) -> None:
    max_batch = api.max_batch_size
    adaptive = _AdaptiveWindow() if api.batch_timeout == "auto" else None
    fixed = 0.0 if adaptive is not None else float(api.batch_timeout)
    last_health = [time.time()]
    while True:
        item = _next(api, generation, requests, states, slot, last_health)
        if item is None:
            return
        if item is False:
            continue
        items = [item]
        if max_batch > 1:
            start = time.monotonic()
            if adaptive is not None:
                adaptive.arrived(start)
            stopping = False
            while len(items) < max_batch:
                try:  # whatever is already queued costs nothing to take
                    nxt = requests.get_nowait()
                except queue.Empty:
                    wait = (adaptive.window(max_batch - len(items)) if adaptive else fixed) - (time.monotonic() - start)
                    if wait <= 0:
                        break
                    try:
                        nxt = requests.get(timeout=wait)
                    except queue.Empty:
                        break
                if nxt is None:
                    stopping = True
                    break
                if nxt[1] < generation or nxt[2] < time.time():
                    continue
                if adaptive is not None:
                    adaptive.arrived(time.monotonic())
                items.append(nxt)
            _run_batch(api, items, responses, adaptive)
            if stopping:
                return
        else:
            _run_one(api, item, responses)


def _run_one(api: Any, item: Any, responses: Any) -> None:
    rid, body = item[0], item[3]
    try:
        x = api.decode_request(body)
    except Exception as exc:
        responses.put((rid, ERROR, _error_payload("decode_request", exc, 400), 1))
        return
    try:
        y = api.predict(x)
    except Exception as exc:
        responses.put((rid, ERROR, _error_payload("predict", exc, 500), 1))
        return
    try:
        out = _encode_json(api.encode_response(y))
    except Exception as exc:
        responses.put((rid, ERROR, _error_payload("encode_response", exc, 500), 1))
        return
    responses.put((rid, OK, out, 1))


def _run_batch(api: Any, items: list[Any], responses: Any, adaptive: _AdaptiveWindow | None) -> None:
    decoded, rids = [], []
    for rid, _, _, body in items:
        try:
            decoded.append(api.decode_request(body))
            rids.append(rid)
        except Exception as exc:
            responses.put((rid, ERROR, _error_payload("decode_request", exc, 400), 1))
    if not rids:
        return
    n = len(rids)
    try:
        t0 = time.monotonic()
        outputs = api.unbatch(api.predict(api.batch(decoded)))
        if adaptive is not None:
            adaptive.measured(time.monotonic() - t0)
        if len(outputs) != n:
            raise RuntimeError(f"unbatch returned {len(outputs)} outputs for a batch of {n} requests")
    except Exception as exc:
        payload = _error_payload("predict", exc, 500)
        for rid in rids:
            responses.put((rid, ERROR, payload, n))
        return
    for rid, y in zip(rids, outputs):
        try:
            responses.put((rid, OK, _encode_json(api.encode_response(y)), n))
        except Exception as exc:
            responses.put((rid, ERROR, _error_payload("encode_response", exc, 500), n))


def _stream_loop(api: Any, generation: int, requests: Any, responses: Any, states: Any, slot: int) -> None:
    last_health = [time.time()]
    while True:
        item = _next(api, generation, requests, states, slot, last_health)
        if item is None:
            return
        if item is False:
            continue
        rid, deadline, body = item[0], item[2], item[3]
        try:
            x = api.decode_request(body)
        except Exception as exc:
            responses.put((rid, ERROR, _error_payload("decode_request", exc, 400), 1))
            continue
        first = True
        try:
            for chunk in api._iter(api.encode_response(api._iter(api.predict(x)))):
                chunk = api.format_encoded_response(chunk)
                if not isinstance(chunk, (str, bytes)):
                    chunk = json.dumps(chunk)
                responses.put((rid, CHUNK, chunk, 1 if first else 0))
                first = False
                if time.time() > deadline:  # the front gave up on it: stop generating
                    break
        except Exception as exc:
            responses.put((rid, ERROR, _error_payload("predict", exc, 500), 1 if first else 0))
            continue
        responses.put((rid, END, None, 0))

"""The front's side of the worker processes: spawn, dispatch, collect, supervise.

Lives in the HTTP front's process. Each worker slot has two pipes (requests in, responses out), a generation
counter and an entry in two shared arrays (state, heartbeat). A supervisor thread waits on the workers'
sentinels: when one dies, its generation is bumped, its in-flight requests are answered with a 503 at once,
and a fresh process (with fresh pipes) takes the slot. A reader thread waits on every response pipe and hands
messages to the event loop. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fulmen.serve import _worker

CHUNK, END, ERROR, OK = _worker.CHUNK, _worker.END, _worker.ERROR, _worker.OK
READY, SETUP_FAILED, STARTING = _worker.READY, _worker.SETUP_FAILED, _worker.STARTING


class Busy(Exception):
    """Every worker of the endpoint has ``max_queue_size`` requests waiting."""


@dataclass
class _Slot:
    index: int
    api_index: int
    device: str
    slot_in_device: int
    workers_on_device: int
    generation: int = 0
    process: Any = None
    send: Any = None  # request pipe, front end
    recv: Any = None  # response pipe, front end
    inflight: dict[int, Any] = field(default_factory=dict)  # rid -> (stamp, sink)
    restarts: int = 0
    last_exit: int | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class Engine:
    def __init__(self, apis: list[Any], placements: list[list[tuple[str, int, int]]], max_queue_size: int) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.apis = apis
        self.max_queue_size = max_queue_size
        self.slots: list[_Slot] = []
        self.by_api: list[list[_Slot]] = []
        for a, placement in enumerate(placements):
            mine = []
            for device, k, n in placement:
                slot = _Slot(len(self.slots), a, device, k, n)
                self.slots.append(slot)
                mine.append(slot)
            self.by_api.append(mine)
        self.states = self.ctx.Array("b", len(self.slots), lock=False)
        self.heartbeats = self.ctx.Array("d", len(self.slots), lock=False)
        self.rids = itertools.count()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.lock = threading.Lock()
        self.on_restart: Any = None  # callback(slot) for metrics
        self.on_batch: Any = None  # callback(api_index, batch_size)
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._threads: list[threading.Thread] = []

    # -- processes -------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        req_r, req_w = self.ctx.Pipe(duplex=False)
        resp_r, resp_w = self.ctx.Pipe(duplex=False)
        self.states[slot.index] = STARTING
        self.heartbeats[slot.index] = time.time()
        process = self.ctx.Process(
            target=_worker.worker_main,
            args=(
                self.apis[slot.api_index],
                slot.device,
                slot.index,
                slot.slot_in_device,
                slot.workers_on_device,
                slot.generation,
                req_r,
                resp_w,
                self.states,
                self.heartbeats,
            ),
            name=f"fulmen-serve-worker-{slot.index}",
            daemon=True,
        )
        process.start()
        req_r.close()
        resp_w.close()
        slot.process, slot.send, slot.recv = process, req_w, resp_r
        self._wake_w.send_bytes(b"w")  # the reader picks up the new response pipe now

    def start(self, setup_timeout: float) -> None:
        """Start every worker and wait until each has run ``setup``.

        Raises:
            RuntimeError: a worker's ``setup`` raised or died, or the workers were not ready in time.
        """
        for slot in self.slots:
            self._spawn(slot)
        deadline = time.monotonic() + setup_timeout
        while True:
            states = [self.states[s.index] for s in self.slots]
            failed = [s for s in self.slots if states[s.index] == SETUP_FAILED or not s.process.is_alive()]
            if failed:
                self.stop()
                s = failed[0]
                raise RuntimeError(
                    f"fulmen.serve: worker {s.index} of {type(self.apis[s.api_index]).__name__} failed during "
                    f"setup(device={s.device!r}) (exit code {s.process.exitcode}); its traceback is printed above."
                )
            if all(st != STARTING for st in states):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fulmen.serve: the workers were not ready after {setup_timeout:.0f} s of setup.")
            time.sleep(0.02)
        for target, name in ((self._supervise, "supervisor"), (self._read, "reader")):
            thread = threading.Thread(target=target, daemon=True, name=f"fulmen-serve-{name}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping = True
        for slot in self.slots:
            if slot.send is not None:
                try:
                    with slot.send_lock:
                        slot.send.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(1.0)
        try:
            self._wake_w.send_bytes(b"s")
        except OSError:
            pass

    def _supervise(self) -> None:
        backoff: dict[int, float] = {}
        while not self.stopping:
            by_sentinel = {s.process.sentinel: s for s in self.slots if s.process is not None}
            ready = multiprocessing.connection.wait(list(by_sentinel), timeout=0.2)
            for sentinel in ready:
                slot = by_sentinel[sentinel]
                if self.stopping:
                    return
                slot.process.join(0)
                failed_setup = self.states[slot.index] == SETUP_FAILED
                with self.lock:
                    slot.last_exit = slot.process.exitcode
                    slot.generation += 1
                    slot.restarts += 1
                    old_send = slot.send
                    slot.send = None
                try:
                    old_send.close()
                except OSError:
                    pass
                if self.loop is not None:
                    self.loop.call_soon_threadsafe(self._fail_slot, slot, slot.generation, slot.last_exit)
                if self.on_restart is not None:
                    self.on_restart(slot)
                delay = backoff.get(slot.index, 0.0)
                if failed_setup:  # don't spin on a setup that keeps failing
                    delay = min(10.0, max(0.5, delay * 2))
                    backoff[slot.index] = delay
                    time.sleep(delay)
                else:
                    backoff[slot.index] = 0.0
                if not self.stopping:
                    self._spawn(slot)

    def _read(self) -> None:
        while not self.stopping:
            conns = {s.recv: s for s in self.slots if s.recv is not None}
            ready: list[Any] = multiprocessing.connection.wait([*conns, self._wake_r], timeout=0.5)
            for conn in ready:
                if conn is self._wake_r:
                    self._wake_r.recv_bytes()
                    continue
                slot = conns[conn]
                try:
                    while conn.poll():
                        message = conn.recv()
                        if self.loop is not None:
                            self.loop.call_soon_threadsafe(self._deliver, slot, message)
                except (EOFError, OSError):  # the worker died: the supervisor answers its requests
                    if slot.recv is conn:
                        slot.recv = None
                    conn.close()

    # -- on the event loop --------------------------------------------------------------------------------
    def _deliver(self, slot: _Slot, message: tuple[int, int, Any, int]) -> None:
        rid, kind, payload, batch_size = message
        entry = slot.inflight.get(rid)
        if entry is None:  # timed out (504 already sent) or from a dead generation
            return
        if batch_size and self.on_batch is not None:
            self.on_batch(slot.api_index, batch_size)
        sink = entry[1]
        if isinstance(sink, asyncio.Queue):
            sink.put_nowait((kind, payload))
            if kind in (END, ERROR):
                slot.inflight.pop(rid, None)
        else:
            slot.inflight.pop(rid, None)
            if not sink.done():
                sink.set_result((kind, payload))

    def _fail_slot(self, slot: _Slot, generation: int, exitcode: int | None) -> None:
        message = (
            503,
            f"the worker serving this request died (exit code {exitcode}) and is being restarted; retry the request",
        )
        for rid, (stamp, sink) in list(slot.inflight.items()):
            if stamp < generation:
                slot.inflight.pop(rid, None)
                if isinstance(sink, asyncio.Queue):
                    sink.put_nowait((ERROR, message))
                elif not sink.done():
                    sink.set_result((ERROR, message))

    def submit(self, api_index: int, body: Any, deadline: float, stream: bool) -> tuple[_Slot, int, Any]:
        """Send ``body`` to the least-loaded ready worker of the endpoint; returns (slot, rid, sink).

        Raises:
            Busy: every worker of the endpoint already has ``max_queue_size`` requests waiting.
        """
        candidates = self.by_api[api_index]
        ready = [s for s in candidates if s.send is not None and self.states[s.index] == READY]
        pool = ready or [s for s in candidates if s.send is not None] or candidates
        slot = min(pool, key=lambda s: len(s.inflight))
        if len(slot.inflight) >= self.max_queue_size:
            raise Busy
        rid = next(self.rids)
        assert self.loop is not None
        sink: Any = asyncio.Queue() if stream else self.loop.create_future()
        with self.lock:
            stamp, send = slot.generation, slot.send
        slot.inflight[rid] = (stamp, sink)
        if send is None:  # restarting: answered by _fail_slot's next call, or here
            slot.inflight.pop(rid, None)
            message = (ERROR, (503, "no worker is available for this endpoint (restarting); retry the request"))
            if stream:
                sink.put_nowait(message)
            else:
                sink.set_result(message)
            return slot, rid, sink
        try:
            with slot.send_lock:
                send.send((rid, stamp, deadline, body))
        except OSError:
            slot.inflight.pop(rid, None)
            message = (ERROR, (503, "the worker for this endpoint died; retry the request"))
            if stream:
                sink.put_nowait(message)
            else:
                sink.set_result(message)
        return slot, rid, sink

    def forget(self, slot: _Slot, rid: int) -> None:
        slot.inflight.pop(rid, None)

    # -- health ------------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, list[dict[str, Any]]]:
        now = time.time()
        report, ok = [], True
        for slot in self.slots:
            alive = slot.process is not None and slot.process.is_alive()
            state = self.states[slot.index]
            fresh = now - self.heartbeats[slot.index] < 3.0
            good = alive and state == READY and fresh
            ok = ok and good
            report.append(
                {
                    "worker": slot.index,
                    "api": slot.api_index,
                    "device": slot.device,
                    "pid": slot.process.pid if slot.process is not None else None,
                    "alive": alive,
                    "ready": state == READY,
                    "healthy": good,
                    "restarts": slot.restarts,
                }
            )
        return ok, report

    def queue_depth(self) -> int:
        return sum(len(s.inflight) for s in self.slots)


_ = (OK, CHUNK, os)

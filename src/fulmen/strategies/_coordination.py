"""Out-of-band coordination between ranks: failure propagation and sync points.

Why this exists: a collective (DDP's gradient all-reduce, a barrier) blocks until every rank joins.
When one rank raises, or takes a different path (saves a checkpoint the others do not, stops an epoch
early), the others wait in C++ until the process-group timeout (30 minutes by default). fulmen keeps a
second channel that never blocks on a peer: the rendezvous key-value store.

* **Failures.** A rank that raises writes a record (its rank, exception, traceback) to the store. A
  watchdog thread on every rank polls the store; when it sees a peer's record it unblocks this rank's
  pending collectives (gloo: shuts down the peer sockets, so the collective fails at once; NCCL: aborts
  the communicator) and the error surfaces as :class:`RankFailedError` naming the rank and its
  exception. If this rank does not surface it within ``failure_timeout`` seconds (stuck outside
  Python), the watchdog prints the error and ends the process.
* **Sync points.** Collective control points (end of a training epoch, a checkpoint save, the end of
  a stage) rendezvous through the store, each rank posting the point's name and its progress (how
  many training forwards it has run). A rank whose progress passes a point a peer is waiting at, or
  that arrives at a differently named point, proves the ranks diverged: every rank gets
  :class:`RanksOutOfSyncError` saying who did what, instead of a hang. This costs nothing per step.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from fulmen.utilities.exceptions import RankFailedError, RanksOutOfSyncError

_FAILURE_KEY = "fulmen/failure"
_ACK_KEY = "fulmen/failure_acks"
_PREEMPT_KEY = "fulmen/preempt"
_EPOCH_END_KEY = "fulmen/epoch_end"
_VAL_CHECK_KEY = "fulmen/val_check"
_POLL_S = 0.1
# How long a rank that asks for a decision waits at its batch boundary for the others to ask at the same one (a
# collective decision: every rank asks at once, and acts at once). A peer that is already past that boundary
# says so through its watchdog within a poll, so this bound is reached only when a peer is slower than this.
_SAME_BOUNDARY_WAIT_S = 2.0


def _socket_fds() -> dict[int, str]:
    """Open socket file descriptors of this process (Linux ``/proc``; empty elsewhere)."""
    out: dict[int, str] = {}
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out[int(fd)] = target
    return out


class PeerSockets:
    """The connected TCP sockets a process group opened to its peers, found by diffing the open sockets
    around ``init_process_group``. The rendezvous store's sockets (its port) and listening sockets are
    left alone: the store must stay usable, and closing a gloo listener aborts the process."""

    def __init__(self) -> None:
        self._before = _socket_fds()
        self._fds: list[int] = []

    def capture(self, store_port: int) -> None:
        after = _socket_fds()
        for fd, target in after.items():
            if self._before.get(fd) == target:
                continue
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                if s.type != socket.SOCK_STREAM:
                    continue
                local, peer = s.getsockname(), s.getpeername()
                if local[1] == store_port or peer[1] == store_port:
                    continue
                self._fds.append(fd)
            except OSError:
                continue  # not connected (a listener)
            finally:
                s.close()

    def shutdown(self) -> int:
        """Shut the peer connections down; blocked collectives then fail with a connection error."""
        n = 0
        for fd in self._fds:
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
                n += 1
            except OSError:
                pass
            finally:
                s.close()
        self._fds = []
        return n


def failure_record(rank: int, exc: BaseException, kind: str = "exception") -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "rank": rank,
        "kind": kind,
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": tb[-6000:],
        "time": time.time(),
    }


def error_from_record(record: dict[str, Any], this_rank: int) -> Exception:
    if record.get("kind") == "desync":
        return RanksOutOfSyncError(record["message"])
    return RankFailedError(
        rank=int(record["rank"]),
        exc_type=str(record.get("type", "Exception")),
        message=str(record.get("message", "")),
        remote_traceback=str(record.get("traceback", "")),
        this_rank=this_rank,
    )


class Coordinator:
    """Failure propagation and sync points for one process group (see the module docstring)."""

    def __init__(
        self,
        store: Any,
        rank: int,
        world_size: int,
        failure_timeout: float,
        sync_timeout: float,
        progress: Callable[[], int],
        unblock: Callable[[], None],
    ) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.failure_timeout = failure_timeout
        self.sync_timeout = sync_timeout
        self._progress = progress
        self._unblock = unblock
        self._posted = 0  # sync points this rank has posted
        self._posting: str | None = None
        self.peer_failure: dict[str, Any] | None = None
        self.surfaced = False  # the main thread has turned the failure into an exception
        self.broken = False  # a failure happened: collectives no longer work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._extra_checks: list[Callable[[], dict[str, Any] | None]] = []
        self._acked = False
        # decisions any rank can ask for mid-epoch, acted on by every rank at the same batch boundary
        self.preemption = Agreement(self, _PREEMPT_KEY, parse=int)
        self.epoch_end = Agreement(self, _EPOCH_END_KEY)
        # a time-based val_check_interval: a rank whose clock says the interval passed asks to validate
        self.val_check = Agreement(self, _VAL_CHECK_KEY)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None and self.world_size > 1:
            self._thread = threading.Thread(target=self._watch, name="fulmen-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * _POLL_S + 1)

    def add_check(self, check: Callable[[], dict[str, Any] | None]) -> None:
        """Extra liveness check polled by the watchdog (e.g. launcher children); returns a failure record."""
        self._extra_checks.append(check)

    # ------------------------------------------------------------------ failures
    def publish(self, record: dict[str, Any]) -> dict[str, Any]:
        """Record a failure; the first one recorded wins (it is the root cause). Returns the winning record."""
        self.broken = True
        payload = json.dumps(record)
        try:
            current = self.store.compare_set(_FAILURE_KEY, "", payload)
            current = current.decode() if isinstance(current, bytes) else current
            return json.loads(current) if current else record
        except Exception:  # noqa: BLE001 - the store may be gone with its host; the record stays local
            return record

    def read_failure(self) -> dict[str, Any] | None:
        try:
            if not self.store.check([_FAILURE_KEY]):
                return None
            raw = self.store.get(_FAILURE_KEY)
        except Exception:  # noqa: BLE001
            return None
        record: dict[str, Any] = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return record

    def wait_failure(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            if self.peer_failure is not None:
                return self.peer_failure
            try:
                if self.store.check([_FAILURE_KEY]):
                    return self.read_failure()
            except Exception:  # noqa: BLE001 - the store's host is gone: nothing more to learn
                return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def acknowledge(self) -> None:
        """Tell the failing rank this rank has seen its record (it may host the store and want to exit)."""
        if self._acked:
            return
        self._acked = True
        with contextlib.suppress(Exception):
            self.store.add(_ACK_KEY, 1)

    def wait_acknowledged(self, timeout: float) -> None:
        """Failing rank: keep the store up until every other rank has read the failure (bounded)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(Exception):
            while int(self.store.add(_ACK_KEY, 0)) < self.world_size - 1 and time.monotonic() < deadline:
                time.sleep(0.01)

    def _on_peer_failure(self, record: dict[str, Any]) -> None:
        self.peer_failure = record
        self.broken = True
        self.acknowledge()
        with contextlib.suppress(
            Exception
        ):  # unblocking is best effort; the deadline below still ends the process
            self._unblock()

    # ------------------------------------------------------------------ sync points
    def sync_point(self, name: str) -> None:
        """Block until every rank reaches the sync point ``name`` (the same, n-th, point on each rank).

        Raises:
            RanksOutOfSyncError: a rank reached a different point, or ran past this one.
            RankFailedError: a rank failed while this one waited.
        """
        if self.world_size == 1:
            return
        seq = self._posted
        progress = self._progress()
        mine = f"{self.rank}|{progress}|{name}"
        first = self._compare_set(f"fulmen/sp/{seq}/first", mine)
        self._posted = seq + 1
        f_rank, f_progress, f_name = _parse_point(first)
        if f_rank != self.rank and (f_name != name or f_progress != progress):
            self._desync(_diverged_message(f_rank, f_name, f_progress, self.rank, name, progress))
        count_key = f"fulmen/sp/{seq}/count"
        self.store.add(count_key, 1)
        deadline = time.monotonic() + self.sync_timeout
        delay = 0.0005
        while True:
            if int(self.store.add(count_key, 0)) >= self.world_size:
                return
            record = self.peer_failure or self.read_failure()
            if record is not None and int(record["rank"]) != self.rank:
                self.surfaced = True
                raise error_from_record(record, self.rank)
            if time.monotonic() > deadline:
                missing = self.world_size - int(self.store.add(count_key, 0))
                self._desync(
                    f"{missing} rank(s) did not reach {name!r} within {self.sync_timeout:.0f}s (sync_timeout) while "
                    f"rank {self.rank} waited there. Fix: make sure every rank calls it, or raise the strategy's "
                    "sync_timeout."
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def leave(self, host: bool, timeout: float = 5.0) -> None:
        """After the last sync point: the rank hosting the store waits until every rank has seen it pass, so
        that no rank is still talking to the store when its host exits."""
        if self.world_size == 1:
            return
        left = int(self.store.add("fulmen/left", 1))
        if not host:
            return
        deadline = time.monotonic() + timeout
        while left < self.world_size and time.monotonic() < deadline:
            time.sleep(0.002)
            left = int(self.store.add("fulmen/left", 0))

    def _compare_set(self, key: str, value: str) -> str:
        current = self.store.compare_set(key, "", value)
        return current.decode() if isinstance(current, bytes) else str(current)

    def _desync(self, message: str) -> None:
        record = self.publish(
            {
                "rank": self.rank,
                "kind": "desync",
                "type": "RanksOutOfSyncError",
                "message": message,
                "traceback": "",
                "time": time.time(),
            }
        )
        self.surfaced = True
        raise error_from_record(record, self.rank)

    def _check_diverged(self) -> dict[str, Any] | None:
        """Watchdog: a peer waits at a point this rank has not posted, and this rank's progress passed it."""
        seq = self._posted
        key = f"fulmen/sp/{seq}/first"
        if not self.store.check([key]):
            return None
        raw = self.store.get(key)
        f_rank, f_progress, f_name = _parse_point(raw.decode() if isinstance(raw, bytes) else raw)
        if f_rank == self.rank or self._posted != seq:
            return None
        progress = self._progress()
        if progress <= f_progress:
            return None  # this rank is behind: it may still get there
        message = (
            f"Rank {f_rank} is waiting at {f_name!r}, but rank {self.rank} went past that point without reaching it "
            f"(it ran {progress - f_progress} more training step(s) or collective(s) than rank {f_rank} had run "
            "there). " + _hint(f_name)
        )
        return {
            "rank": self.rank,
            "kind": "desync",
            "type": "RanksOutOfSyncError",
            "message": message,
            "traceback": "",
            "time": time.time(),
        }

    # ------------------------------------------------------------------ preemption
    @property
    def preempt_callbacks(self) -> list[Callable[[Any], None]]:
        """``callback(signum)`` runs on the watchdog thread when a peer rank received a preemption signal."""
        return self.preemption.callbacks

    def agree_preemption(self, signum: int, step: int) -> bool:
        """Whether this batch boundary is where every rank saves and exits after a preemption signal
        (see :class:`Agreement`)."""
        if self.world_size == 1:
            return True
        return self.preemption.agree(str(signum), step) is not None

    # ------------------------------------------------------------------ the watchdog thread
    def _watch(self) -> None:
        deadline: float | None = None
        while not self._stop.wait(_POLL_S):
            if deadline is None:
                try:
                    self.preemption.poll()
                    self.epoch_end.poll()
                    self.val_check.poll()
                    record = self.read_failure()
                    if record is None:
                        record = self._check_diverged()
                        if record is not None:
                            record = self.publish(record)
                    for check in self._extra_checks:
                        if record is None:
                            record = check()
                            if record is not None:
                                record = self.publish(record)
                except Exception:  # noqa: BLE001 - store gone: its host ended; gloo sees closed peers itself
                    return
                if (
                    (record is not None and int(record["rank"]) != self.rank)
                    or (record is not None and record.get("kind") == "desync")
                ):
                    self._on_peer_failure(record)
                    deadline = time.monotonic() + self.failure_timeout
                elif record is not None:
                    return  # our own failure: the main thread is already handling it
            elif not self.surfaced and time.monotonic() > deadline:
                self._hard_exit()
            elif self.surfaced:
                return

    def _hard_exit(self) -> None:
        record = self.peer_failure or {}
        err = error_from_record(record, self.rank) if record else RuntimeError("a peer rank failed")
        sys.stderr.write(
            f"[fulmen rank {self.rank}] {err}\n[fulmen rank {self.rank}] this rank did not stop within "
            f"failure_timeout={self.failure_timeout}s of the failure; ending the process.\n"
        )
        sys.stderr.flush()
        os._exit(1)


class Agreement:
    """A decision any rank can ask for at a batch boundary (stop, skip the rest of the epoch, save and exit on
    a preemption signal) that every rank acts on at the same batch boundary. Nothing runs per step while
    nobody asks: the fit loop checks a Python attribute.

    The protocol, one request *generation* at a time (``next_generation``, called by every rank at the same
    point, starts a fresh one, so a later request in the run, or in the next epoch, works):

    1. A rank that asks posts, under the generation's keys, the optimizer step and its progress (training
       forwards + collectives issued) at the boundary, and what it asks for. The watchdog of every other rank
       sees the post within a poll (0.1 s) and calls ``callbacks``; the loop there posts at its next boundary.
    2. **At once**, when every rank asked at the same boundary (a collective decision, e.g. EarlyStopping's
       reduced ``should_stop``): each rank waits at the boundary where it posted until a decision is
       recorded. The first rank to see every rank's post at the same step and progress records ``"now"``, and
       every rank acts at this boundary, exactly where one process would. A peer whose progress is already past
       the posted one records ``"defer"`` from its watchdog (so the asking rank waits about one poll), and so does
       a rank that waited ``_SAME_BOUNDARY_WAIT_S`` in vain. The decision is one compare-and-set: all ranks
       follow the same one.
    3. **Deferred**: once every rank has posted, the agreed step is the largest posted step + 2. The gradient
       all-reduce keeps ranks within one optimizer step of each other, so no rank has passed it, and every
       rank acts at the first batch boundary whose ``global_step`` reaches it: the same batch on every rank
       (with gradient accumulation too, as the optimizer steps at the same batches everywhere). When the
       epoch ends first (asked near its end, or no optimizer step is taken), the request is dropped on every
       rank by ``next_generation``; the fit loop still reduces ``should_stop`` across ranks at the epoch end.
    """

    def __init__(self, coordinator: Coordinator, prefix: str, parse: Callable[[str], Any] = str) -> None:
        self._c = coordinator
        self.prefix = prefix
        self._parse = parse
        self.callbacks: list[Callable[[Any], None]] = []
        self.generation = 0
        self._lock = threading.Lock()
        # progress at which this rank's loop last went past its decision point without asking (``pass_boundary``);
        # -1 while the loop does not say so (it then counts as past a boundary only once its progress moved on)
        self._passed = -1
        self._clear()

    def _clear(self) -> None:
        self._seen = False  # the watchdog has called the callbacks for this generation
        self._deferred = False  # the watchdog has recorded "defer" (this rank is past a peer's boundary)
        self._posted: tuple[int, int] | None = None  # (step, progress) where this rank posted
        self._at: int | None = None
        self._values: list[str] | None = None

    def _key(self, *parts: object) -> str:
        return "/".join([self.prefix, str(self.generation), *map(str, parts)])

    # ---- the main thread, at a batch boundary
    def agree(self, value: str, step: int) -> list[str] | None:
        """Post this rank's request (``value``: what it asks for; ``""`` to join a peer's) the first time it is
        called in this generation. Returns every rank's posted value at the boundary where all act; None
        (keep training) before it."""
        c = self._c
        store = c.store
        if self._posted is None:
            progress = c._progress()
            self._posted = (step, progress)
            if value:  # the first asker's value tells the peers what is asked (a joining rank saw it there)
                store.compare_set(self._key(), "", value)
            store.set(self._key(c.rank), f"{step}|{progress}|{value}")
            if self._decide_here(step, progress) == "now":
                self._values = [p[2] for p in self._read_posts() or []]
                return self._values
        if self._at is None:
            posts = self._read_posts()
            if posts is None:
                return None
            self._at = max(p[0] for p in posts) + 2
            self._values = [p[2] for p in posts]
        return self._values if step >= self._at else None

    def pass_boundary(self) -> None:
        """The loop went past its decision point at this batch boundary without asking (optional, for a loop that
        checks at every boundary): a peer that asks at this same boundary is told at once (by this rank's
        watchdog) that acting there at once is impossible, instead of waiting until this rank's progress moves on
        (which it may not do soon, e.g. while this rank waits at the same boundary in another agreement)."""
        self._passed = self._c._progress()

    def _decide_here(self, step: int, progress: int) -> str:
        """Wait at the posting boundary until the decision is recorded (see the class docstring, 2.)."""
        c = self._c
        deadline = time.monotonic() + _SAME_BOUNDARY_WAIT_S
        delay = 0.0005
        while True:
            decision = self._read_decision()
            if decision is not None:
                return decision
            if c.broken:  # a peer failed: the next collective reports it
                return "defer"
            posts = self._read_posts()
            if posts is not None:
                same = all(p[0] == step and p[1] == progress for p in posts)
                return self._record("now" if same else "defer")
            if time.monotonic() >= deadline:
                return self._record("defer")
            time.sleep(delay)
            delay = min(delay * 2, 0.005)

    def _record(self, decision: str) -> str:
        current = _text(self._c.store.compare_set(self._key("decision"), "", decision))
        return current or decision

    def _read_decision(self) -> str | None:
        store = self._c.store
        key = self._key("decision")
        return _text(store.get(key)) if store.check([key]) else None

    def _read_posts(self) -> list[tuple[int, int, str]] | None:
        store = self._c.store
        keys = [self._key(r) for r in range(self._c.world_size)]
        if not store.check(keys):
            return None
        posts = []
        for k in keys:
            step, progress, value = _text(store.get(k)).split("|", 2)
            posts.append((int(step), int(progress), value))
        return posts

    def next_generation(self, clear: Callable[[], None] | None = None) -> None:
        """Start a fresh request (every rank, at the same point: the end of a training epoch). ``clear`` runs
        under the watchdog's lock, so a notice of the finished generation cannot arrive after it."""
        with self._lock:
            self.generation += 1
            self._clear()
            if clear is not None:
                clear()

    # ---- the watchdog thread
    def poll(self) -> None:
        c = self._c
        with self._lock:
            if not self.callbacks:
                return
            store = c.store
            if not self._seen:
                if not store.check([self._key()]):
                    return
                self._seen = True
                value = self._parse(_text(store.get(self._key())))
                for callback in self.callbacks:
                    callback(value)
            if self._posted is not None or self._deferred:
                return
            # this rank has not posted: if it already ran past a peer's posting boundary (its progress moved on, or
            # its loop said so), acting there at once is impossible; say so, so that the peer does not wait for it
            progress = c._progress()
            passed = self._passed
            for r in range(c.world_size):
                key = self._key(r)
                if r != c.rank and store.check([key]):
                    posted = int(_text(store.get(key)).split("|", 2)[1])
                    if posted < progress or posted <= passed:
                        self._record("defer")
                        self._deferred = True
                        return


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _parse_point(raw: str) -> tuple[int, int, str]:
    rank, progress, name = raw.split("|", 2)
    return int(rank), int(progress), name


def _hint(name: str) -> str:
    if name.startswith("save_checkpoint"):
        return (
            "Saving a checkpoint is collective. Fix: call trainer.save_checkpoint / fabric.save on every rank "
            "(rank 0 writes the file); do not guard it with `if trainer.is_global_zero`."
        )
    if name.startswith("train_epoch_end"):
        return (
            "The ranks ran different numbers of training batches this epoch (a loader of a different length per "
            "rank?). Fix: keep use_distributed_sampler=True or give every rank the same number of batches."
        )
    return "Fix: make every rank take the same path through the run (control decisions must be collective)."


def _diverged_message(r0: int, n0: str, p0: int, r1: int, n1: str, p1: int) -> str:
    if n0 != n1:
        return f"The ranks diverged: rank {r0} reached {n0!r} while rank {r1} reached {n1!r}. " + _hint(
            n0 if n0.startswith(("save", "train")) else n1
        )
    return (
        f"The ranks diverged: rank {r0} reached {n0!r} after {p0} training steps and collectives, rank {r1} after "
        f"{p1}. " + _hint(n0)
    )

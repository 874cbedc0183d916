"""``MultiProcessingLauncher``: run a function in worker processes (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``).

Rank 0's return value comes back to the calling process. When a worker fails, the others are ended
within the strategy's ``failure_timeout`` (they learn of it through the rendezvous store and stop), and
the calling process raises :class:`~fulmen.utilities.exceptions.RankFailedError` for the rank that
failed first, chained to its original exception when that can be pickled.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

import torch

from fulmen.utilities.exceptions import MisconfigurationException, RankFailedError, RanksOutOfSyncError


class MultiProcessingLauncher:
    def __init__(self, strategy: Any, start_method: str = "spawn") -> None:
        if start_method not in mp.get_all_start_methods():
            raise MisconfigurationException(
                f"start_method={start_method!r} is not available on this platform (available: "
                f"{mp.get_all_start_methods()}). Fix: use strategy='ddp_spawn'."
            )
        self.strategy = strategy
        self.start_method = start_method
        self.in_worker = False

    @property
    def is_interactive_compatible(self) -> bool:
        return self.start_method == "fork"

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.in_worker:
            return function(*args, **kwargs)
        if self.start_method == "fork" and torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            raise MisconfigurationException(
                "strategy='ddp_fork'/'ddp_notebook' cannot fork after CUDA was initialized in this process. Fix: do not "
                "touch CUDA before trainer.fit (restart the notebook kernel), or use strategy='ddp_spawn'."
            )
        strategy = self.strategy
        if self.start_method == "fork":
            # what every worker would import on its own is imported once here and inherited by the forks
            getattr(strategy, "_warm_up_before_fork", lambda: None)()
        env = strategy._env()
        user_port = "MASTER_PORT" in os.environ
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        ctx: Any = mp.get_context(self.start_method)
        procs: list[Any] = []
        readers: list[Any] = []
        # spawn/forkserver pickle the arguments with torch's multiprocessing pickler, which moves tensors to
        # shared memory: every worker would then update the *same* parameters. Plain pickle copies them.
        work = (
            self,
            function,
            args,
            kwargs,
        )  # one pickle: the launcher's strategy stays the trainer's strategy
        payload: Any = work if self.start_method == "fork" else pickle.dumps(work)
        for local_rank in range(strategy.num_processes):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(local_rank, payload, writer), daemon=False)
            proc.start()
            writer.close()
            procs.append(proc)
            readers.append(reader)
        try:
            return self._collect(procs, readers)
        finally:
            if not user_port and hasattr(env, "_main_port"):
                # the port belonged to this run's store; a later launch picks a fresh one
                env._main_port = -1
                os.environ.pop("MASTER_PORT", None)

    def _collect(self, procs: list[Any], readers: list[Any]) -> Any:
        strategy = self.strategy
        nprocs = len(procs)
        node_rank = strategy.node_rank
        messages: dict[int, dict[str, Any]] = {}
        open_readers = {id(r): (i, r) for i, r in enumerate(readers)}
        alive = {id(p.sentinel): (i, p) for i, p in enumerate(procs)}
        deadline: float | None = None
        while alive or open_readers:
            handles = [r for _, r in open_readers.values()] + [p.sentinel for _, p in alive.values()]
            for ready in wait(handles, timeout=0.2):
                if id(ready) in open_readers:
                    i, r = open_readers[id(ready)]
                    try:
                        messages[i] = pickle.loads(r.recv_bytes())
                    except (EOFError, OSError):
                        pass
                    del open_readers[id(ready)]
                elif ready in [p.sentinel for _, p in alive.values()]:
                    key = id(ready)
                    if key in alive:
                        alive[key][1].join()
                        del alive[key]
            if not alive:
                # a worker's message may still sit in its pipe
                for i, r in list(open_readers.values()):
                    if r.poll(0):
                        try:
                            messages[i] = pickle.loads(r.recv_bytes())
                        except (EOFError, OSError):
                            pass
                open_readers.clear()
            failed = any(not m["ok"] for m in messages.values()) or any(
                p.exitcode not in (None, 0) for p in procs
            )
            if failed and deadline is None:
                deadline = time.monotonic() + strategy.failure_timeout + 2.0
            if deadline is not None and time.monotonic() > deadline:
                for _, p in alive.values():
                    p.kill()
        for p in procs:
            p.join()
        errors = {i: m for i, m in messages.items() if not m["ok"]}
        missing = [i for i, p in enumerate(procs) if i not in messages and p.exitcode != 0]
        if errors or missing:
            raise _root_error(errors, missing, procs, node_rank, nprocs)
        rank0 = messages.get(0)
        if rank0 is None or rank0.get("result") is None:
            return None
        return torch.load(io.BytesIO(rank0["result"]), weights_only=False, map_location="cpu")


def _worker(local_rank: int, payload: Any, conn: Any) -> None:
    launcher, function, args, kwargs = pickle.loads(payload) if isinstance(payload, bytes) else payload
    launcher.in_worker = True
    if launcher.start_method == "fork":
        # A forked child inherits OpenMP's thread-pool state but not its threads: once the parent has run a
        # multi-threaded op, the child's first one would wait forever for them. One intra-op thread per rank
        # is safe (use ddp or ddp_spawn for multi-threaded CPU ranks).
        torch.set_num_threads(1)
    strategy = launcher.strategy
    strategy._worker_setup(local_rank)
    rank = strategy.node_rank * strategy.num_processes + local_rank
    code = 0
    try:
        result = function(*args, **kwargs)
        report: dict[str, Any] = {"ok": True, "rank": rank, "result": None}
        if rank == 0 or local_rank == 0:
            buf = io.BytesIO()
            torch.save(result, buf)
            report["result"] = buf.getvalue()
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the launching process
        code = 1
        reported = exc
        with contextlib.suppress(Exception):
            reported = strategy.on_exception(exc)
        report = {"ok": False, "rank": rank, **_describe(reported)}
    with contextlib.suppress(Exception):
        strategy.finalize()
    try:
        conn.send_bytes(pickle.dumps(report))
        conn.close()
    except Exception:  # noqa: BLE001 - e.g. an unpicklable result: report that instead
        with contextlib.suppress(Exception):
            conn.send_bytes(
                pickle.dumps(
                    {
                        "ok": False,
                        "rank": rank,
                        **_describe(
                            RuntimeError(
                                "rank 0 finished but its result could not be sent to the launching process (not picklable?)"
                            )
                        ),
                    }
                )
            )
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: the work is done and reported, and process-group destructors can be slow
    os._exit(code)


def _describe(exc: BaseException) -> dict[str, Any]:
    pickled: bytes | None
    try:
        pickled = pickle.dumps(exc)
        pickle.loads(pickled)
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling is described by text only
        pickled = None
    secondary = isinstance(exc, RankFailedError) or "lost its connection to another rank" in str(exc)
    if isinstance(exc, SystemExit) and getattr(exc, "collective", False):
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "",
            "exception": None,
            "secondary": False,
            "exit_code": exc.code,
        }
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-6000:],
        "exception": pickled,
        "secondary": secondary,
    }


def _root_error(
    errors: dict[int, dict[str, Any]], missing: list[int], procs: list[Any], node_rank: int, nprocs: int
) -> BaseException:
    codes = {m.get("exit_code") for m in errors.values()}
    if not missing and len(errors) == len(procs) and len(codes) == 1 and None not in codes:
        return SystemExit(codes.pop())  # every rank exited together (preemption): exit with their code
    primary = [i for i, m in sorted(errors.items()) if not m.get("secondary")]
    if primary:
        i = primary[0]
        m = errors[i]
        original = pickle.loads(m["exception"]) if m.get("exception") else None
        if isinstance(original, RanksOutOfSyncError):
            return original
        err = RankFailedError(m["rank"], m["type"], m["message"], m["traceback"])
        err.__cause__ = original
        return err
    if missing:
        i = missing[0]
        code = procs[i].exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return RankFailedError(
            node_rank * nprocs + i, "ProcessExit", f"the worker process {how} without reporting"
        )
    i, m = min(errors.items())
    original = pickle.loads(m["exception"]) if m.get("exception") else None
    if isinstance(original, BaseException):
        return original
    return RankFailedError(m["rank"], m["type"], m["message"], m["traceback"])

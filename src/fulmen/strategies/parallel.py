"""``ParallelStrategy``: what every multi-process strategy shares.

Ranks come from the cluster environment; the process group, the collectives, the sampler that
splits data, failure propagation and sync points (``_coordination``) are set up here. DDP and FSDP
add only how the model is wrapped and how its state is saved.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from fulmen.accelerators import Accelerator
from fulmen.plugins.environments import ClusterEnvironment, detect_cluster_environment
from fulmen.plugins.precision import Precision
from fulmen.strategies import Strategy
from fulmen.strategies._coordination import Coordinator, PeerSockets, error_from_record, failure_record
from fulmen.utilities import distributed as fdist
from fulmen.utilities.exceptions import MisconfigurationException, RankFailedError, RanksOutOfSyncError
from fulmen.utilities.rank_zero import set_global_rank

_PEER_LOSS_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "ECONNRESET",
    "NCCL communicator was aborted",
    "aborted",
    "Socket Timeout",
    "closed",
)


class ParallelStrategy(Strategy):
    """Base of the multi-process strategies.

    Args:
        process_group_backend: ``"gloo"``, ``"nccl"``, ... (default: nccl on CUDA, gloo elsewhere).
        timeout: the process group's timeout for a collective (torch's default, 30 minutes).
        failure_timeout: seconds within which every rank ends after one rank fails (the failure is reported
            on every rank as a :class:`~fulmen.utilities.exceptions.RankFailedError` naming the rank).
        sync_timeout: seconds a rank waits at a collective control point (a checkpoint save, the end of an
            epoch) for ranks that are merely slow; ranks that took another path are detected at once.
            Default: ``timeout``.
    """

    is_distributed = True

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: Any = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = fdist.default_pg_timeout,
        failure_timeout: float = 10.0,
        sync_timeout: float | None = None,
        precision_plugin: Precision | None = None,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            checkpoint_io=checkpoint_io,
            precision=precision,
            precision_plugin=precision_plugin,
        )
        self.parallel_devices = parallel_devices
        self.cluster_environment = cluster_environment
        self.num_nodes = 1
        self._process_group_backend = process_group_backend
        self._timeout = timeout if timeout is not None else fdist.default_pg_timeout
        if failure_timeout <= 0:
            raise MisconfigurationException(f"failure_timeout={failure_timeout!r}; expected seconds > 0.")
        self.failure_timeout = float(failure_timeout)
        self.sync_timeout = float(sync_timeout) if sync_timeout is not None else self._timeout.total_seconds()
        self._launcher: Any = None
        self._coordinator: Coordinator | None = None
        # training forwards + collectives issued: the sync points' measure of how far a rank has got. Ranks
        # on the same path have equal counts at each sync point; a rank whose count passed a point another
        # rank waits at has provably gone another way.
        self._progress = 0
        self._local_rank_override: int | None = None
        self._reported: tuple[BaseException, BaseException] | None = None
        self._preempt_callbacks: list[Any] = []
        self.model: nn.Module | None = None  # the wrapped module (DDP / FSDP)

    # ------------------------------------------------------------------ ranks and devices
    @property
    def num_processes(self) -> int:
        return len(self.parallel_devices) if self.parallel_devices else 1

    def _env(self) -> ClusterEnvironment:
        if self.cluster_environment is None:
            self.cluster_environment = detect_cluster_environment()
        return self.cluster_environment

    @property
    def global_rank(self) -> int:  # type: ignore[override]
        return self._env().global_rank()

    @property
    def local_rank(self) -> int:  # type: ignore[override]
        if self._local_rank_override is not None:
            return self._local_rank_override
        return self._env().local_rank()

    @property
    def node_rank(self) -> int:  # type: ignore[override]
        return self._env().node_rank()

    @property
    def world_size(self) -> int:  # type: ignore[override]
        return self._env().world_size()

    @property
    def root_device(self) -> torch.device:
        if not self.parallel_devices:
            return torch.device("cpu")
        return self.parallel_devices[self.local_rank % len(self.parallel_devices)]

    @property
    def process_group_backend(self) -> str:
        return self._process_group_backend or fdist.default_backend(self.root_device)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    def supports_inference_mode(self) -> bool:
        # as in Lightning: not on gloo (tensors made there, e.g. FSDP's gathered parameters, would be inference
        # tensors the next training step cannot update in place)
        return self.process_group_backend != "gloo"

    def set_world_ranks(self) -> None:
        env = self._env()
        if not env.creates_processes_externally or type(env).__name__ == "LightningEnvironment":
            env.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
            env.set_world_size(self.num_nodes * self.num_processes)
        set_global_rank(self.global_rank)  # fulmen's and lightning_utilities' rank_zero_only

    # ------------------------------------------------------------------ launching
    @property
    def launcher(self) -> Any:
        return self._launcher

    @launcher.setter
    def launcher(self, value: Any) -> None:
        self._launcher = value

    def _worker_setup(self, local_rank: int) -> None:
        """Called in a process started by a multiprocessing launcher, before the run."""
        self._local_rank_override = local_rank
        os.environ["LOCAL_RANK"] = str(local_rank)

    # ------------------------------------------------------------------ the process group
    def setup_environment(self) -> None:
        self.set_world_ranks()
        if self.accelerator is not None:
            self.accelerator.setup_device(self.root_device)
        self._setup_distributed()

    def _setup_distributed(self) -> None:
        if fdist.is_initialized():
            if self._coordinator is None:
                self._start_coordinator(None)
            return
        env = self._env()
        sockets = PeerSockets()
        # restored by finalize(): a later run in this process must not inherit this run's rendezvous
        self._saved_env = {k: os.environ.get(k) for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        os.environ["WORLD_SIZE"] = str(self.world_size)
        fdist.init_process_group(
            self.process_group_backend,
            self.global_rank,
            self.world_size,
            env.main_address,
            env.main_port,
            timeout=self._timeout,
            device=self.root_device,
        )
        sockets.capture(env.main_port)
        self._start_coordinator(sockets)
        _install_excepthook(self)

    def _start_coordinator(self, sockets: PeerSockets | None) -> None:
        if self.world_size == 1:
            return

        def unblock() -> None:
            if sockets is not None:
                sockets.shutdown()
            if self.process_group_backend == "nccl":
                with contextlib.suppress(
                    Exception
                ):  # older torch: the failure deadline still ends the process
                    from torch.distributed.distributed_c10d import _abort_process_group

                    _abort_process_group()

        self._coordinator = Coordinator(
            fdist.get_default_store(),
            self.global_rank,
            self.world_size,
            self.failure_timeout,
            self.sync_timeout,
            progress=lambda: self._progress,
            unblock=unblock,
        )
        launcher = self._launcher
        for check in getattr(launcher, "liveness_checks", list)():
            self._coordinator.add_check(check)
        self._coordinator.preempt_callbacks.extend(self._preempt_callbacks)
        self._coordinator.start()

    @property
    def _broken(self) -> bool:
        c = self._coordinator
        return c is not None and c.broken

    def sync_point(self, name: str) -> None:
        c = self._coordinator
        if c is not None and not c.broken:
            c.sync_point(name)

    def on_exception(self, exception: BaseException) -> BaseException:
        c = self._coordinator
        if c is None:
            return exception
        if self._reported is not None and self._reported[0] is exception:
            return self._reported[1]  # asked again (the Trainer, then the launcher or the excepthook)
        reported = self._on_exception(c, exception)
        self._reported = (exception, reported)
        return reported

    def _on_exception(self, c: Coordinator, exception: BaseException) -> BaseException:
        if getattr(exception, "collective", False):
            return exception  # raised by every rank at the same point (a preemption exit), not a failure
        if isinstance(exception, (RankFailedError, RanksOutOfSyncError)):
            c.broken = c.surfaced = True
            return exception
        record = c.peer_failure or c.read_failure()
        if record is None and _looks_like_peer_loss(exception):
            # a rank publishes before its process ends, and its connections close only when it ends: if there
            # is no record yet there will be none (killed, out of memory); a short grace covers slow stores
            record = c.wait_failure(min(0.5, self.failure_timeout))
            if record is None:
                c.broken = c.surfaced = True
                return RuntimeError(
                    f"Rank {self.global_rank} lost its connection to another rank, which ended without reporting an "
                    f"error (killed, or out of memory?). Check the other ranks' output. Original error: {exception}"
                )
        if record is not None and (int(record["rank"]) != self.global_rank or record.get("kind") == "desync"):
            c.broken = c.surfaced = True
            c.acknowledge()
            return error_from_record(record, self.global_rank)
        if not c.broken or record is None:
            c.publish(failure_record(self.global_rank, exception))
            # this process may host the rendezvous store: stay until the others have read the record
            c.wait_acknowledged(min(self.failure_timeout, 5.0))
        c.surfaced = True
        return exception

    def on_preemption_request(self, callback: Any) -> None:
        """``callback(signum)`` runs (on the watchdog thread) when another rank received a preemption signal."""
        self._preempt_callbacks.append(callback)
        if self._coordinator is not None and callback not in self._coordinator.preempt_callbacks:
            self._coordinator.preempt_callbacks.append(callback)

    def agree_preemption(self, signum: int, step: int) -> bool:
        """True at the batch boundary where every rank saves the preemption checkpoint (see ``_coordination``)."""
        c = self._coordinator
        if c is None or c.broken:
            return True
        return c.agree_preemption(signum, step)

    @property
    def epoch_end_agreement(self) -> Any:
        """The agreement through which a stop or skip-the-rest-of-the-epoch asked for on one rank ends every rank's
        training epoch at the same batch (see ``_coordination.Agreement``); None on one process or once a rank
        failed."""
        c = self._coordinator
        if c is None or c.broken:
            return None
        return c.epoch_end

    @property
    def val_check_agreement(self) -> Any:
        """The agreement through which a time-based ``val_check_interval`` that elapsed on one rank's clock makes
        every rank validate after the same batch (see ``_coordination.Agreement``); None on one process or once a
        rank failed."""
        c = self._coordinator
        if c is None or c.broken:
            return None
        return c.val_check

    def finalize(self) -> None:
        """End of this process's part in the run: a last sync point, then the process group goes away."""
        c = self._coordinator
        if c is not None:
            if not c.broken:
                with contextlib.suppress(
                    Exception
                ):  # exiting anyway; the error was reported by the failing rank
                    c.sync_point("exit")
                    c.leave(host=self.global_rank == 0)
            c.stop()
            self._coordinator = None
        self.model = None
        fdist.destroy_process_group()
        for key, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    # ------------------------------------------------------------------ collectives
    def barrier(self, name: str | None = None) -> None:
        if self._broken:
            return
        self._progress += 1
        fdist.barrier(device=self.root_device)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if self._broken:
            return obj
        self._progress += 1
        device = self.root_device if self.process_group_backend == "nccl" else None
        return fdist.broadcast_object(obj, src, device=device)

    def all_gather(self, tensor: Any, group: Any = None, sync_grads: bool = False) -> Any:
        if self._broken:
            return tensor
        self._progress += 1
        return fdist.all_gather_collection(tensor, group=group, sync_grads=sync_grads)

    def reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        if self._broken or not isinstance(tensor, torch.Tensor):
            return tensor
        self._progress += 1
        return fdist.all_reduce(tensor, group=group, reduce_op=reduce_op)

    def all_reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        if self._broken:
            return tensor
        self._progress += 1
        if isinstance(tensor, torch.Tensor):
            return fdist.all_reduce(tensor, group=group, reduce_op=reduce_op)
        if isinstance(tensor, (int, float)):
            out = fdist.all_reduce(
                torch.tensor(tensor, device=self.root_device), group=group, reduce_op=reduce_op
            )
            return out
        return fdist.all_reduce_collection(tensor, group=group, reduce_op=reduce_op)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if self._broken:
            return bool(decision)
        self._progress += 1
        device = self.root_device if self.process_group_backend == "nccl" else None
        return fdist.reduce_boolean_decision(decision, all=all, device=device)

    def _all_gather_object(self, obj: Any) -> list[Any] | None:
        if self._broken:
            return None
        self._progress += 1
        return fdist.all_gather_object(obj)

    @property
    def metric_reduce(self) -> Any:
        if self.world_size == 1:
            return None

        def reduce(tensor: torch.Tensor, reduce_fx: str) -> torch.Tensor:
            if self._broken:
                return tensor
            self._progress += 1
            return fdist.all_reduce(tensor, reduce_op=reduce_fx)

        return reduce

    # ------------------------------------------------------------------ data
    def process_dataloader(self, loader: Any, mode: str = "train") -> Any:
        if self.world_size == 1:
            return loader
        return fdist.inject_distributed_sampler(loader, self.world_size, self.global_rank, mode)

    # ------------------------------------------------------------------ steps
    def step_function(self, module: nn.Module, name: str) -> Any:
        wrapper = self.model
        if wrapper is None or name != "training_step":
            method = getattr(module, name)
            if name != "training_step":
                return method

            def counted(*args: Any, **kwargs: Any) -> Any:
                self._progress += 1
                return method(*args, **kwargs)

            return counted

        def step(*args: Any, **kwargs: Any) -> Any:
            self._progress += 1
            return forward_redirection(wrapper, module, name, *args, **kwargs)

        return step

    def no_backward_sync(self, module: Any, enabled: bool = True) -> Any:
        return nullcontext()

    def count_step(self) -> None:
        """A training forward started (Fabric's module calls this; the Trainer's step function counts itself)."""
        self._progress += 1

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        self.sync_point(f"save_checkpoint {os.path.basename(str(filepath))}")
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def teardown(self) -> None:
        if self._coordinator is not None and not self._coordinator.broken:
            self.sync_point("teardown")
        self.model = None
        super().teardown()

    def __getstate__(self) -> dict[str, Any]:
        # a spawned worker gets the configuration, not this process's threads and wrappers
        state = dict(self.__dict__)
        state["_coordinator"] = None
        state["model"] = None
        state["_reported"] = None
        state["_preempt_callbacks"] = []
        if "_mesh" in state:
            state["_mesh"] = None
            state["_models"] = []
        return state


def forward_redirection(
    wrapper: nn.Module, original: nn.Module, method_name: str, *args: Any, **kwargs: Any
) -> Any:
    """Call ``original.<method_name>(*args)`` through ``wrapper.__call__``.

    DDP synchronizes gradients (and FSDP gathers parameters) only for what runs inside the wrapper's
    ``forward``. For the duration of one call, ``original.forward`` is pointed at the step method, so
    the wrapper's ``forward`` -> ``original(...)`` runs the step; it is restored before the step runs so
    that ``self(x)`` inside the step is the real ``forward``.
    """
    method = getattr(original, method_name)
    had_instance_forward = "forward" in original.__dict__
    previous = original.__dict__.get("forward")

    def restore() -> None:
        if had_instance_forward:
            original.__dict__["forward"] = previous
        else:
            original.__dict__.pop("forward", None)

    def redirected(*a: Any, **k: Any) -> Any:
        restore()
        return method(*a, **k)

    original.__dict__["forward"] = redirected
    try:
        return wrapper(*args, **kwargs)
    finally:
        restore()


def _looks_like_peer_loss(exc: BaseException) -> bool:
    text = str(exc)
    name = type(exc).__name__
    return name in ("DistBackendError", "DistNetworkError", "DistError") or (
        isinstance(exc, RuntimeError) and any(m in text for m in _PEER_LOSS_MARKERS)
    )


_HOOKED: list[ParallelStrategy] = []


def _install_excepthook(strategy: ParallelStrategy) -> None:
    """An uncaught exception (a script-style run under torchrun or the ddp launcher) is published to the
    peers before the interpreter exits; a normal exit passes a last sync point so that rank 0, which hosts
    the rendezvous store, does not leave while the others still need it."""
    _HOOKED.append(strategy)
    if len(_HOOKED) > 1:
        return
    previous = sys.excepthook

    def hook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        for s in _HOOKED:
            with contextlib.suppress(Exception):  # never mask the user's error
                s.on_exception(exc)
        previous(exc_type, exc, tb)

    sys.excepthook = hook

    def at_exit() -> None:
        for s in _HOOKED:
            with contextlib.suppress(Exception):
                s.finalize()

    atexit.register(at_exit)

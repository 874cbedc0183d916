"""Throughput and FLOP utilities (``lightning.fabric.utilities.throughput``).

* :func:`measure_flops`: count the FLOPs of a forward (and optionally backward) pass with torch's
  ``FlopCounterMode``; build the model on the ``meta`` device and nothing is computed or allocated.
* :func:`get_available_flops`: the peak theoretical FLOP/s of a CUDA device for a dtype (datasheet numbers, dense).
* :class:`Throughput`: rolling-window rates from cumulative counters you update: ``time``, ``batches``,
  ``samples``, ``lengths`` (items, e.g. tokens), ``flops``. Metric names are Lightning's: ``device/batches_per_sec``,
  ``device/samples_per_sec``, ``device/items_per_sec``, ``device/flops_per_sec``, ``device/mfu`` and, with
  several processes, the global ``batches_per_sec``, ``samples_per_sec``, ``items_per_sec``, ``flops_per_sec``.
* :class:`ThroughputMonitor`: a :class:`Throughput` bound to a Fabric, logging through ``fabric.log_dict``.

The Trainer callback of the same name is ``fulmen.callbacks.ThroughputMonitor``.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from fulmen.utilities.rank_zero import rank_zero_only

T = TypeVar("T", bound=float)

__all__ = ["Throughput", "ThroughputMonitor", "get_available_flops", "measure_flops"]


def measure_flops(
    model: torch.nn.Module,
    forward_fn: Callable[[], torch.Tensor],
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """The FLOPs of ``forward_fn()`` (and of ``loss_fn(output).backward()`` when ``loss_fn`` is given).

    Example::

        with torch.device("meta"):
            model = MyModel()
            x = torch.randn(2, 32)
        fwd = measure_flops(model, lambda: model(x))
        fwd_and_bwd = measure_flops(model, lambda: model(x), lambda y: y.sum())

    ``model`` is the module being measured (kept for Lightning's signature; the counter sees every op run).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        output = forward_fn()
        if loss_fn is not None:
            loss_fn(output).backward()
    return int(counter.get_total_flops())


# Peak dense (no sparsity) FLOP/s per dtype, from the vendors' datasheets. "tfloat32" is float32 matmuls on
# tensor cores (Ampere and later, when torch.get_float32_matmul_precision() is not "highest").
_CUDA_FLOPS: dict[str, dict[Any, float]] = {
    "h200 sxm": {torch.float64: 67e12, torch.float32: 67e12, "tfloat32": 494.5e12, torch.bfloat16: 989.5e12,
                 torch.float16: 989.5e12, torch.int8: 1979e12},
    "h100 sxm": {torch.float64: 67e12, torch.float32: 67e12, "tfloat32": 494.5e12, torch.bfloat16: 989.5e12,
                 torch.float16: 989.5e12, torch.int8: 1979e12},
    "h100 pcie": {torch.float64: 51e12, torch.float32: 51e12, "tfloat32": 378e12, torch.bfloat16: 756.5e12,
                  torch.float16: 756.5e12, torch.int8: 1513e12},
    "a100": {torch.float64: 9.7e12, torch.float32: 19.5e12, "tfloat32": 156e12, torch.bfloat16: 312e12,
             torch.float16: 312e12, torch.int8: 624e12},
    "a6000": {torch.float32: 38.7e12, "tfloat32": 77.4e12, torch.bfloat16: 154.8e12, torch.float16: 154.8e12,
              torch.int8: 309.7e12},
    "a40": {torch.float32: 37.4e12, "tfloat32": 74.8e12, torch.bfloat16: 149.7e12, torch.float16: 149.7e12,
            torch.int8: 299.3e12},
    "a10g": {torch.float32: 31.2e12, "tfloat32": 62.5e12, torch.bfloat16: 125e12, torch.float16: 125e12,
             torch.int8: 250e12},
    "l40": {torch.float32: 90.5e12, "tfloat32": 90.5e12, torch.bfloat16: 181e12, torch.float16: 181e12,
            torch.int8: 362e12},
    "l4": {torch.float32: 30.3e12, "tfloat32": 60e12, torch.bfloat16: 121e12, torch.float16: 121e12,
           torch.int8: 242e12},
    "t4": {torch.float32: 8.1e12, torch.float16: 65e12, torch.int8: 130e12},
    "v100 sxm": {torch.float64: 7.8e12, torch.float32: 15.7e12, torch.float16: 125e12},
    "v100 pcie": {torch.float64: 7e12, torch.float32: 14e12, torch.float16: 112e12},
    "v100s pcie": {torch.float64: 8.2e12, torch.float32: 16.4e12, torch.float16: 130e12},
    "quadro rtx 5000": {torch.float32: 11.2e12, torch.float16: 89.2e12},
    "titan rtx": {torch.float32: 16.3e12, torch.float16: 130e12},
}

# (substring of the lowercased device name, chip); the first match wins, so more specific names come first.
_CHIPS = [
    ("h200", "h200 sxm"),
    ("h100 pcie", "h100 pcie"), ("h100-pcie", "h100 pcie"), ("h100-hbm2e", "h100 pcie"), ("h100 hbm2e", "h100 pcie"),
    ("h100", "h100 sxm"),
    ("a100", "a100"), ("a6000", "a6000"), ("a40", "a40"), ("a10g", "a10g"),
    ("l40", "l40"), ("l4", "l4"), ("t4", "t4"),
    ("v100s-pcie", "v100s pcie"), ("v100s pcie", "v100s pcie"), ("v100-pcie", "v100 pcie"),
    ("v100 pcie", "v100 pcie"), ("v100", "v100 sxm"),
    ("quadro rtx 5000", "quadro rtx 5000"), ("titan rtx", "titan rtx"),
]


def _is_ampere_or_later(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def get_available_flops(device: torch.device, dtype: torch.dtype | str) -> int | None:
    """The peak FLOP/s of ``device`` for ``dtype``, or None (with a warning) when it is not known.

    Only CUDA devices are known; CPUs and other devices give None without a warning (MFU is then not computed).
    """
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    lowered = name.lower()
    chip = next((c for key, c in _CHIPS if key in lowered), None)
    if chip is None:
        warnings.warn(f"FLOPs not found for {name!r}: MFU is not computed.", stacklevel=2)
        return None
    table = _CUDA_FLOPS[chip]
    if dtype is torch.float32 and "tfloat32" in table:
        try:
            tensor_cores = _is_ampere_or_later(device) and torch.get_float32_matmul_precision() != "highest"
        except (RuntimeError, AssertionError):  # no driver: a name without a device (tests)
            tensor_cores = False
        if tensor_cores:
            dtype = "tfloat32"
    if dtype not in table:
        warnings.warn(f"{name!r} does not support {dtype}: MFU is not computed.", stacklevel=2)
        return None
    return int(table[dtype])


def _precision_dtype(precision: Any) -> torch.dtype:
    """The compute dtype of a precision plugin (or a precision string such as ``"bf16-mixed"``)."""
    value = str(getattr(precision, "precision", precision))
    if value.startswith("bf16"):
        return torch.bfloat16
    if value.startswith("16") or value == "half":
        return torch.float16
    if value.startswith("64"):
        return torch.float64
    if "transformer-engine" in value:
        return torch.int8
    return torch.float32


class _MonotonicWindow(list[T]):
    """The last ``maxlen`` values appended, which must increase strictly (cumulative counters)."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def append(self, value: T) -> None:
        if self and value <= self[-1]:
            raise ValueError(f"Expected the value to increase, last: {self[-1]}, current: {value}")
        super().append(value)
        if len(self) > self.maxlen:
            del self[0]

    def __setitem__(self, key: Any, value: Any) -> None:
        raise NotImplementedError("_MonotonicWindow only supports append()")


class Throughput:
    """Rolling-window throughput from cumulative counters.

    Call :meth:`update` after each iteration with running totals; :meth:`compute` returns the totals and, once
    ``window_size`` updates are in the window, the rates over the window.

    Args:
        available_flops: peak FLOP/s of one device (see :func:`get_available_flops`); enables ``mfu``.
        world_size: number of processes; with more than one, global rates are added (device rate x world size).
        window_size: number of updates the rates are computed over.
        separator: joins ``device`` and the metric name (``device/samples_per_sec``).

    Raises:
        ValueError: ``window_size`` is below 2 or ``world_size`` below 1.
    """

    def __init__(
        self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100, separator: str = "/"
    ) -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise ValueError(f"Throughput(window_size={window_size!r}); expected an int >= 2 (rates need two points).")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"Throughput(world_size={world_size!r}); expected a positive int.")
        self.available_flops = available_flops
        self.world_size = world_size
        self.separator = separator
        self._time: _MonotonicWindow[float] = _MonotonicWindow(maxlen=window_size)
        self._batches: _MonotonicWindow[int] = _MonotonicWindow(maxlen=window_size)
        self._samples: _MonotonicWindow[int] = _MonotonicWindow(maxlen=window_size)
        self._lengths: _MonotonicWindow[int] = _MonotonicWindow(maxlen=window_size)
        self._flops: deque[float] = deque(maxlen=window_size)  # per-update amounts, summed over the processes

    def update(
        self, *, time: float, batches: int, samples: int, lengths: int | None = None, flops: float | None = None
    ) -> None:
        """Record running totals after an iteration.

        Args:
            time: seconds elapsed since the start (increasing).
            batches: batches seen by this device so far (increasing).
            samples: samples seen by this device so far (increasing, at least ``batches``).
            lengths: items (e.g. tokens) seen so far (at least ``samples``); pass it every time or never.
            flops: FLOPs this device ran since the previous update (e.g. ``measure_flops(...) * batches_in_between``).

        Raises:
            ValueError: a total did not increase, or ``samples < batches`` / ``lengths < samples``.
            RuntimeError: ``lengths`` was passed on some updates and not on others.
        """
        if samples < batches:
            raise ValueError(f"Expected samples ({samples}) to be greater or equal than batches ({batches})")
        if lengths is not None and lengths < samples:
            raise ValueError(f"Expected lengths ({lengths}) to be greater or equal than samples ({samples})")
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
            if len(self._lengths) != len(self._samples):
                raise RuntimeError(
                    f"If lengths are passed ({len(self._lengths)}), there needs to be the same number of samples "
                    f"({len(self._samples)}). Fix: pass lengths= on every update, or on none."
                )
        if flops is not None:
            self._flops.append(flops * self.world_size)

    def compute(self) -> dict[str, int | float]:
        """The latest totals, plus the rates over the window once it is full."""
        if not self._time:
            return {}
        metrics: dict[str, int | float] = {
            "time": self._time[-1],
            "batches": self._batches[-1],
            "samples": self._samples[-1],
        }
        if self._lengths:
            metrics["lengths"] = self._lengths[-1]
        dev = f"device{self.separator}"
        several = self.world_size > 1
        if len(self._time) == self._time.maxlen:
            elapsed = self._time[-1] - self._time[0]
            batches_per_sec = (self._batches[-1] - self._batches[0]) / elapsed
            samples_per_sec = (self._samples[-1] - self._samples[0]) / elapsed
            metrics[f"{dev}batches_per_sec"] = batches_per_sec
            metrics[f"{dev}samples_per_sec"] = samples_per_sec
            if several:
                metrics["batches_per_sec"] = batches_per_sec * self.world_size
                metrics["samples_per_sec"] = samples_per_sec * self.world_size
            if len(self._lengths) == self._lengths.maxlen:
                items_per_sec = (self._lengths[-1] - self._lengths[0]) / elapsed
                metrics[f"{dev}items_per_sec"] = items_per_sec
                if several:
                    metrics["items_per_sec"] = items_per_sec * self.world_size
        if len(self._flops) == self._flops.maxlen:
            # the first update's FLOPs happened before the window's first time point
            flops_per_sec = (sum(self._flops) - self._flops[0]) / (self._time[-1] - self._time[0])
            if several:
                metrics["flops_per_sec"] = flops_per_sec
            device_flops_per_sec = flops_per_sec / self.world_size
            metrics[f"{dev}flops_per_sec"] = device_flops_per_sec
            if self.available_flops:
                metrics[f"{dev}mfu"] = device_flops_per_sec / self.available_flops
        return metrics

    def reset(self) -> None:
        """Forget every update (e.g. between stages)."""
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()


class ThroughputMonitor(Throughput):
    """A :class:`Throughput` for a Fabric loop: knows the device's peak FLOP/s and the world size, and logs.

    Example::

        monitor = ThroughputMonitor(fabric, window_size=50)
        t0 = time.perf_counter()
        for i, batch in enumerate(loader, 1):
            ...
            monitor.update(time=time.perf_counter() - t0, batches=i, samples=i * batch_size)
            if i % 10 == 0:
                monitor.compute_and_log(step=i)

    Only global rank 0 records and logs (the others' calls return ``{}``).

    Args:
        fabric: the (launched) Fabric; its device, precision and world size are read once here.
        **kwargs: :class:`Throughput`'s ``window_size`` and ``separator``.
    """

    def __init__(self, fabric: Any, **kwargs: Any) -> None:
        dtype = _precision_dtype(getattr(getattr(fabric, "strategy", None), "precision", "32-true"))
        device = getattr(fabric, "device", torch.device("cpu"))
        super().__init__(
            available_flops=get_available_flops(torch.device(device), dtype), world_size=fabric.world_size, **kwargs
        )
        self._fabric = fabric
        self.step = -1
        self.update = rank_zero_only(self.update)  # type: ignore[method-assign]
        self.compute = rank_zero_only(self.compute, default={})  # type: ignore[method-assign,assignment]
        self.compute_and_log = rank_zero_only(  # type: ignore[method-assign,assignment]
            self.compute_and_log, default={}
        )
        self.reset = rank_zero_only(self.reset)  # type: ignore[method-assign]

    def compute_and_log(self, step: int | None = None) -> dict[str, int | float]:
        """:meth:`compute`, then ``fabric.log_dict(metrics, step=step)``; ``step`` defaults to one more than the last."""
        self.step = self.step + 1 if step is None else step
        metrics = self.compute()
        self._fabric.log_dict(metrics=metrics, step=self.step)
        return metrics

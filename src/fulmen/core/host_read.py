"""Reading logged device values on the host without blocking the training step.

``float(t)`` / ``t.item()`` of a CUDA tensor waits for every kernel queued before it: a progress bar
doing that at each refresh stalls the pipeline. :class:`DeferredHostRead` instead starts a
non-blocking copy of the values into pinned host memory and records a CUDA event after it; the
numbers are shown at the *next* refresh, once the event reports the copy done (``Event.query()``,
which never blocks). So a mid-epoch bar refresh costs a few async copies and no host sync, and the
bar shows values one refresh late.

Only CUDA tensors take that route. CPU tensors and Python numbers are read at once: on the CPU
``.item()`` waits for nothing, so a lag would only make the bar less accurate, and the bars' output
on the CPU stays exactly what it was. The CPU runs the same code (the copy becomes a ``clone`` and
the event ``None``) when :data:`DEFER_CPU` is set, which the test suite does to check the lag logic
without a GPU.

Exact values are still read where the run must sync anyway (the epoch end, a logger's interval):
:meth:`DeferredHostRead.settle` records those, so the next deferred read starts from them.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DEFER_CPU", "DeferredHostRead", "to_host_number"]

#: Send CPU tensors through the deferred route too (tests only: on the CPU it buys nothing).
DEFER_CPU = False


def to_host_number(value: Any) -> Any:
    """A logged value as a Python number (``.item()`` of a tensor: a sync for a device tensor)."""
    return value.item() if isinstance(value, torch.Tensor) else float(value)


class DeferredHostRead:
    """One reader per consumer (a progress bar): values of refresh ``k`` are shown at refresh ``k + 1``.

    If the copy started at refresh ``k`` has not finished by refresh ``k + 1`` (a very slow step), no new
    copy is started and the values shown are older still; nothing ever waits.
    """

    __slots__ = ("_buffers", "_pending", "_shown")

    def __init__(self) -> None:
        # host copies in flight and the event recorded after them (None on the CPU)
        self._pending: tuple[dict[str, torch.Tensor], Any] | None = None
        self._shown: dict[str, Any] = {}  # the last values known on the host
        self._buffers: dict[str, torch.Tensor] = {}  # pinned buffers, reused while shape/dtype stay the same

    def read(self, values: dict[str, Any]) -> dict[str, Any]:
        """Host numbers for ``values``, in their order: CUDA tensors from the last finished copy (a key not
        copied yet is left out), everything else exact and now. Starts the copy of this call's CUDA values."""
        self._adopt_finished()
        staged: dict[str, torch.Tensor] = {}
        out: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and (value.is_cuda or (DEFER_CPU and value.device.type == "cpu")):
                staged[key] = value
                if key in self._shown:
                    out[key] = self._shown[key]
            else:
                out[key] = to_host_number(value)
        if staged and self._pending is None:
            self._pending = self._start_copy(staged)
        return out

    def settle(self, exact: dict[str, Any]) -> None:
        """Record values read exactly (at a point that syncs anyway); a copy in flight is dropped."""
        self._pending = None
        self._shown = dict(exact)

    def _adopt_finished(self) -> None:
        if self._pending is None:
            return
        host, event = self._pending
        if event is not None and not event.query():
            return  # still copying: keep showing the older values
        self._pending = None
        self._shown = {key: t.item() for key, t in host.items()}  # host memory: no device sync

    def _start_copy(self, values: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        host: dict[str, torch.Tensor] = {}
        on_cuda = False
        for key, value in values.items():
            value = value.detach()
            if value.is_cuda:
                on_cuda = True
                buf = self._buffers.get(key)
                if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
                    buf = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                    self._buffers[key] = buf
                buf.copy_(value, non_blocking=True)
                host[key] = buf
            else:  # DEFER_CPU: a snapshot, as the copy would be
                host[key] = value.clone()
        event = None
        if on_cuda:
            event = torch.cuda.Event()
            event.record()  # on the current stream, after the copies (which follow the kernels that made the values)
        return host, event

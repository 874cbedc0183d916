"""Profilers (mirrors ``lightning.pytorch.profilers``): ``Trainer(profiler="simple" | "advanced" | "pytorch")``.

Which class owns what:

* :class:`Profiler` (``profiler.py``): the interface (``start``/``stop``/``profile``/``summary``/``describe``);
* :class:`PassThroughProfiler`: the default; the Trainer does not instrument the run for it (zero cost);
* :class:`SimpleProfiler` (``simple.py``): wall time per action, as a table;
* :class:`AdvancedProfiler` (``advanced.py``): ``cProfile`` statistics per action;
* :class:`PyTorchProfiler` (``pytorch.py``): a ``torch.profiler`` trace for Perfetto / TensorBoard;
* ``_instrument.py``: how the Trainer turns hooks and steps into actions when a real profiler is set.
"""

from __future__ import annotations

from typing import Any

from fulmen.profilers.advanced import AdvancedProfiler
from fulmen.profilers.profiler import PassThroughProfiler, Profiler
from fulmen.profilers.pytorch import PyTorchProfiler
from fulmen.profilers.simple import SimpleProfiler
from fulmen.utilities.exceptions import MisconfigurationException, NotSupportedYetError
from fulmen.utilities.registry import Registry

__all__ = [
    "PROFILER_REGISTRY",
    "AdvancedProfiler",
    "PassThroughProfiler",
    "Profiler",
    "PyTorchProfiler",
    "SimpleProfiler",
    "XLAProfiler",
    "resolve_profiler",
]


class XLAProfiler(Profiler):
    """Lightning's TPU profiler. Not supported: fulmen has no XLA accelerator yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedYetError(
            "XLAProfiler is not supported yet (fulmen has no XLA/TPU accelerator). Fix: use 'simple', 'advanced' "
            "or 'pytorch'."
        )

    def start(self, action_name: str) -> None:  # pragma: no cover
        pass

    def stop(self, action_name: str) -> None:  # pragma: no cover
        pass


PROFILER_REGISTRY: Registry[Profiler] = Registry("profiler")
PROFILER_REGISTRY.register("simple", SimpleProfiler, "wall time per hook and step")
PROFILER_REGISTRY.register("advanced", AdvancedProfiler, "cProfile statistics per hook and step")
PROFILER_REGISTRY.register("pytorch", PyTorchProfiler, "torch.profiler trace (Perfetto, TensorBoard)")
PROFILER_REGISTRY.register("xla", XLAProfiler, "not supported")
PROFILER_REGISTRY.register("passthrough", PassThroughProfiler, "no profiling (the default)")


def resolve_profiler(profiler: Any) -> Profiler:
    """``Trainer(profiler=...)``: ``None`` (no profiling), a registered name or a :class:`Profiler` instance.

    Raises:
        MisconfigurationException: For an unknown name or a value of another type.
    """
    if profiler is None:
        return PassThroughProfiler()
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str):
        name = profiler.lower()
        if name not in PROFILER_REGISTRY:
            raise MisconfigurationException(
                f"Trainer(profiler={profiler!r}): expected one of {PROFILER_REGISTRY.names()} or a Profiler "
                "instance. Fix: e.g. profiler='simple'."
            )
        return PROFILER_REGISTRY.get(name)
    raise MisconfigurationException(
        f"Trainer(profiler={profiler!r}): got {type(profiler).__name__}; expected None, one of "
        f"{PROFILER_REGISTRY.names()} or a fulmen.profilers.Profiler instance. Fix: e.g. profiler='simple'."
    )

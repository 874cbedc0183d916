"""A table of a model's layers: name, type, parameter count, train/eval mode and, optionally, I/O shapes.

:class:`ModelSummary` inspects an ``nn.Module`` (usually a ``LightningModule``) once, at construction,
and keeps plain Python data afterwards, so printing or re-reading it never touches the model again.

When the model defines ``example_input_array``, one forward pass is run (in eval mode, under
``torch.no_grad``) with a forward hook on every summarized layer to record the shapes going in and
coming out. The model's per-module train/eval flags are restored afterwards, and the hooks are
removed even if the forward pass raises.

Example::

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> print(ModelSummary(model))  # doctest: +NORMALIZE_WHITESPACE
      | Name | Type   | Params | Mode
    ----------------------------------------
    0 | 0    | Linear | 40     | train
    1 | 1    | ReLU   | 0      | train
    2 | 2    | Linear | 18     | train
    ----------------------------------------
    58        Trainable params
    0         Non-trainable params
    58        Total params
    0.000     Total estimated model params size (MB)
    3         Modules in train mode
    0         Modules in eval mode
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_zero_warn

__all__ = [
    "PARAMETER_NUM_UNITS",
    "UNKNOWN_SIZE",
    "LayerSummary",
    "ModelSummary",
    "format_summary_table",
    "get_formatted_model_size",
    "get_human_readable_count",
    "summarize",
    "summary_totals",
]

#: Suffixes used by :func:`get_human_readable_count` (ones, thousands, millions, billions, trillions).
PARAMETER_NUM_UNITS = [" ", "K", "M", "B", "T"]
#: Shown for an input/output size that could not be determined (layer not called, or not a tensor).
UNKNOWN_SIZE = "?"

_HEADER_WIDTH = 10  # width of the number column in the totals block


def get_human_readable_count(number: float) -> str:
    """Abbreviate a (parameter) count with a K/M/B/T suffix.

    Counts under 1,000 are printed in full followed by a space (so columns line up with the suffixed
    ones); larger counts keep one decimal below 100 units and none above. Counts beyond the
    trillions stay in trillions.

    Args:
        number: A non-negative count.

    Returns:
        The abbreviated count, e.g. ``"123  "``, ``"1.2 K"``, ``"2.0 M"``, ``"400 T"``, ``"5,000 T"``.

    Raises:
        ValueError: If ``number`` is negative or not finite.

    Example::

        >>> get_human_readable_count(123)
        '123  '
        >>> get_human_readable_count(1234)
        '1.2 K'
        >>> get_human_readable_count(2e6)
        '2.0 M'
        >>> get_human_readable_count(4e14)
        '400 T'
        >>> get_human_readable_count(5e15)
        '5,000 T'
    """
    if not math.isfinite(number) or number < 0:
        raise ValueError(
            f"get_human_readable_count: got {number!r}; expected a finite count >= 0. "
            "Fix: pass a parameter count such as `sum(p.numel() for p in model.parameters())`."
        )
    digits = len(str(int(number))) if number >= 1 else 1
    unit = min((digits - 1) // 3, len(PARAMETER_NUM_UNITS) - 1)
    scaled = number / 1000**unit
    if unit == 0 or scaled >= 100:
        return f"{int(scaled):,d} {PARAMETER_NUM_UNITS[unit]}"
    return f"{scaled:,.1f} {PARAMETER_NUM_UNITS[unit]}"


def get_formatted_model_size(total_model_size: float) -> str:
    """Format a size in megabytes with three decimals and thousands separators (``"1,234.568"``)."""
    return f"{total_model_size:,.3f}"


def _is_lazy(param: torch.Tensor) -> bool:
    return isinstance(param, (UninitializedParameter, UninitializedBuffer))


def _shape_of(obj: Any) -> Any:
    """The shape of a tensor as a list; nested for tuples/lists/dicts of tensors; ``"?"`` otherwise."""
    if isinstance(obj, torch.Tensor):
        return list(obj.shape)
    if isinstance(obj, (list, tuple)):
        return [_shape_of(item) for item in obj]
    if isinstance(obj, Mapping):
        return {key: _shape_of(value) for key, value in obj.items()}
    shape = getattr(obj, "shape", None)  # numpy arrays and tensor-likes
    if shape is not None:
        try:
            return list(shape)
        except TypeError:
            pass
    return UNKNOWN_SIZE


class LayerSummary:
    """What the summary knows about one layer (submodule).

    Args:
        module: The layer to describe.

    Attributes:
        in_size: Shape(s) of the layer's input in the example forward pass, or ``"?"``.
        out_size: Shape(s) of the layer's output in the example forward pass, or ``"?"``.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self.in_size: Any = UNKNOWN_SIZE
        self.out_size: Any = UNKNOWN_SIZE
        self._called = False
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _register_hook(self) -> None:
        """Record the shapes of the first call of the layer (a shared layer keeps its first shapes)."""

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if self._called:
                return
            self._called = True
            if args and kwargs:
                inputs: Any = [*args, dict(kwargs)]
            elif kwargs:
                inputs = dict(kwargs)
            else:
                inputs = args[0] if len(args) == 1 else list(args)
            self.in_size = _shape_of(inputs)
            self.out_size = _shape_of(output)

        self._handle = self._module.register_forward_hook(hook, with_kwargs=True)

    def detach_hook(self) -> None:
        """Remove the forward hook, if one is registered. Safe to call more than once."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def layer_type(self) -> str:
        """The layer's class name, e.g. ``"Linear"``."""
        return type(self._module).__name__

    @property
    def num_parameters(self) -> int:
        """Number of parameters in the layer and its children (uninitialized lazy ones count as 0)."""
        return sum(p.numel() for p in self._module.parameters() if not _is_lazy(p))

    @property
    def training(self) -> bool:
        """Whether the layer is in training mode (as recorded, not during the example forward pass)."""
        return self._module.training


class ModelSummary:
    """Summarize a model's layers up to ``max_depth`` and its parameter totals.

    Args:
        model: The model to summarize. If it has a non-``None`` ``example_input_array`` attribute,
            one forward pass with it records each layer's input and output shapes.
        max_depth: How deep to descend into submodules. ``1`` lists the direct children, ``2`` also
            their children, and so on; ``-1`` lists every submodule; ``0`` lists no layers (only
            the totals).

    Raises:
        fulmen.utilities.exceptions.MisconfigurationException: If ``max_depth`` is not an integer
            ``>= -1``.
        Exception: Whatever the example forward pass raises, with a note naming
            ``example_input_array`` (the model's modes are restored and the hooks removed first).
    """

    def __init__(self, model: nn.Module, max_depth: int = 1) -> None:
        if not isinstance(model, nn.Module):
            raise misconfig(
                "ModelSummary(model=...)",
                type(model).__name__,
                "a torch.nn.Module",
                "pass the LightningModule (or any nn.Module) to summarize",
            )
        _validate_max_depth(max_depth)
        self._model = model
        self._max_depth = max_depth
        self._layer_summary: OrderedDict[str, LayerSummary] = OrderedDict(
            (name, LayerSummary(module)) for name, module in self.named_modules
        )
        example = getattr(model, "example_input_array", None)
        self._has_example_input = example is not None
        if self._has_example_input:
            self._forward_example_input(example)
        self._compute_totals()

    # ----------------------------------------------------------------------------------------------
    # collection
    # ----------------------------------------------------------------------------------------------
    @property
    def max_depth(self) -> int:
        """The depth this summary was built with."""
        return self._max_depth

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        """The ``(name, module)`` pairs listed in the table, in registration order."""
        if self._max_depth == 0:
            return []
        if self._max_depth == 1:
            return list(self._model.named_children())
        return [
            (name, module)
            for name, module in self._model.named_modules()
            if name and (self._max_depth == -1 or name.count(".") < self._max_depth)
        ]

    def _forward_example_input(self, example: Any) -> None:
        model = self._model
        device = _module_device(model)
        inputs = move_data_to_device(example, device) if device is not None else example
        modes = {module: module.training for module in model.modules()}
        for layer in self._layer_summary.values():
            layer._register_hook()
        try:
            model.eval()
            with torch.no_grad():
                if isinstance(inputs, (list, tuple)):
                    model(*inputs)
                elif isinstance(inputs, Mapping):
                    model(**inputs)
                else:
                    model(inputs)
        except Exception as err:
            if hasattr(err, "add_note"):  # Python >= 3.11
                err.add_note(
                    f"(raised by {type(model).__name__}.forward while ModelSummary ran `example_input_array` "
                    "through the model to record layer shapes. Fix the example input, or set "
                    "`example_input_array = None` to summarize without shapes.)"
                )
            raise
        finally:
            for layer in self._layer_summary.values():
                layer.detach_hook()
            for module, training in modes.items():
                module.training = training

    def _compute_totals(self) -> None:
        params = list(self._model.parameters())  # `parameters()` already de-duplicates shared tensors
        self._has_lazy = any(_is_lazy(p) for p in params)
        sized = [p for p in params if not _is_lazy(p)]
        self._total_parameters = sum(p.numel() for p in sized)
        self._trainable_parameters = sum(p.numel() for p in sized if p.requires_grad)
        self._model_size = sum(p.numel() * p.element_size() for p in sized) / 1e6
        modes = [module.training for module in self._model.modules()][
            1:
        ]  # the root is not a "module in mode"
        self._total_training_modes = {"train": modes.count(True), "eval": modes.count(False)}
        if self._has_lazy:
            rank_zero_warn(
                "The model has uninitialized (lazy) parameters, so the parameter counts in its summary are "
                "incomplete. Set `example_input_array` on the model so the summary's forward pass "
                "materializes them, or run one batch before summarizing.",
                stacklevel=3,
            )

    # ----------------------------------------------------------------------------------------------
    # per-layer data
    # ----------------------------------------------------------------------------------------------
    def summarize(self) -> OrderedDict[str, LayerSummary]:
        """The per-layer summaries, keyed by the layer's qualified name."""
        return OrderedDict(self._layer_summary)

    @property
    def layer_names(self) -> list[str]:
        return list(self._layer_summary)

    @property
    def layer_types(self) -> list[str]:
        return [layer.layer_type for layer in self._layer_summary.values()]

    @property
    def in_sizes(self) -> list[Any]:
        return [layer.in_size for layer in self._layer_summary.values()]

    @property
    def out_sizes(self) -> list[Any]:
        return [layer.out_size for layer in self._layer_summary.values()]

    @property
    def param_nums(self) -> list[int]:
        return [layer.num_parameters for layer in self._layer_summary.values()]

    @property
    def training_modes(self) -> list[bool]:
        return [layer.training for layer in self._layer_summary.values()]

    # ----------------------------------------------------------------------------------------------
    # totals
    # ----------------------------------------------------------------------------------------------
    @property
    def total_parameters(self) -> int:
        """All parameters of the model, shared ones counted once."""
        return self._total_parameters

    @property
    def trainable_parameters(self) -> int:
        """Parameters with ``requires_grad=True``."""
        return self._trainable_parameters

    @property
    def non_trainable_parameters(self) -> int:
        return self._total_parameters - self._trainable_parameters

    @property
    def total_layer_params(self) -> int:
        """Sum of the listed layers' counts (a layer shared between two listed parents counts twice)."""
        return sum(self.param_nums)

    @property
    def model_size(self) -> float:
        """Size of the parameters in megabytes (10**6 bytes), from each parameter's actual dtype."""
        return self._model_size

    @property
    def total_training_modes(self) -> dict[str, int]:
        """How many submodules (the root excluded) are in train and in eval mode."""
        return dict(self._total_training_modes)

    # ----------------------------------------------------------------------------------------------
    # rendering
    # ----------------------------------------------------------------------------------------------
    def get_summary_data(self) -> list[tuple[str, list[str]]]:
        """The table as ``(header, cells)`` columns, all cells already formatted as strings."""
        columns: list[tuple[str, list[str]]] = [
            (" ", [str(i) for i in range(len(self._layer_summary))]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(n) for n in self.param_nums]),
            ("Mode", ["train" if training else "eval" for training in self.training_modes]),
        ]
        if self._has_example_input:
            columns.append(("In sizes", [str(size) for size in self.in_sizes]))
            columns.append(("Out sizes", [str(size) for size in self.out_sizes]))
        return columns

    def totals_lines(self) -> list[tuple[str, str]]:
        """The totals block as ``(value, label)`` pairs, values already formatted."""
        return summary_totals(
            self.total_parameters, self.trainable_parameters, self.model_size, self._total_training_modes
        )

    def __str__(self) -> str:
        return format_summary_table(self.get_summary_data(), self.totals_lines())

    def __repr__(self) -> str:
        return str(self)


def format_summary_table(columns: list[tuple[str, list[str]]], totals: list[tuple[str, str]]) -> str:
    """Render summary columns and a totals block as plain text.

    Args:
        columns: ``(header, cells)`` pairs, every ``cells`` list of the same length.
        totals: ``(value, label)`` pairs printed under the table.

    Returns:
        The table; only the totals block when there are no rows.
    """
    lines: list[str] = []
    n_rows = len(columns[0][1]) if columns else 0
    if n_rows:
        widths = [max(len(header), *(len(cell) for cell in cells)) for header, cells in columns]
        divider = "-" * (sum(widths) + 3 * (len(columns) + 1))
        lines.append(" | ".join(header.ljust(w) for (header, _), w in zip(columns, widths)).rstrip())
        lines.append(divider)
        for row in range(n_rows):
            lines.append(" | ".join(cells[row].ljust(w) for (_, cells), w in zip(columns, widths)).rstrip())
        lines.append(divider)
    for value, label in totals:
        lines.append(f"{value:<{_HEADER_WIDTH}}{label}")
    return "\n".join(lines)


def summary_totals(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: Mapping[str, int],
) -> list[tuple[str, str]]:
    """The totals block under the table as ``(formatted value, label)`` pairs.

    Args:
        total_parameters: All parameters.
        trainable_parameters: Parameters with ``requires_grad``.
        model_size: Parameter size in MB.
        total_training_modes: ``{"train": n, "eval": m}`` submodule counts.
    """
    return [
        (get_human_readable_count(trainable_parameters), "Trainable params"),
        (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
        (get_human_readable_count(total_parameters), "Total params"),
        (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
        (str(total_training_modes.get("train", 0)), "Modules in train mode"),
        (str(total_training_modes.get("eval", 0)), "Modules in eval mode"),
    ]


def summarize(lightning_module: nn.Module, max_depth: int = 1) -> ModelSummary:
    """Build a :class:`ModelSummary` of ``lightning_module`` (see its docs for ``max_depth``)."""
    return ModelSummary(lightning_module, max_depth=max_depth)


def _validate_max_depth(max_depth: Any) -> None:
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
        raise misconfig(
            "ModelSummary(max_depth=...)",
            max_depth,
            "an int >= -1 (-1: all layers, 0: totals only)",
            "pass e.g. `max_depth=1` for the top-level layers or `max_depth=-1` for all of them",
        )


def _module_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first materialized parameter or buffer (``None`` if it has none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if not _is_lazy(tensor):
            return tensor.device
    return None

"""Tests for fulmen.utilities.model_summary (no Trainer needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.model_summary import (
    UNKNOWN_SIZE,
    LayerSummary,
    ModelSummary,
    get_formatted_model_size,
    get_human_readable_count,
    summarize,
)


class Net(nn.Module):
    """A LightningModule-shaped module: children with nesting and an ``example_input_array``."""

    def __init__(self, example: object = None) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.unused = nn.Linear(3, 3)
        self.example_input_array = example

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0, "0  "),
        (123, "123  "),
        (999, "999  "),
        (1234, "1.2 K"),
        (99_999, "100.0 K"),
        (123_456, "123 K"),
        (2e6, "2.0 M"),
        (3e9, "3.0 B"),
        (4e14, "400 T"),
        (5e15, "5,000 T"),
    ],
)
def test_get_human_readable_count(number: float, expected: str) -> None:
    assert get_human_readable_count(number) == expected


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_get_human_readable_count_rejects_bad_input(bad: float) -> None:
    with pytest.raises(ValueError, match="expected a finite count >= 0"):
        get_human_readable_count(bad)


def test_formatted_model_size() -> None:
    assert get_formatted_model_size(1234.56789) == "1,234.568"


@pytest.mark.parametrize("bad", [-2, 1.5, True, "1", None])
def test_bad_max_depth_names_argument(bad: object) -> None:
    with pytest.raises(MisconfigurationException, match=r"max_depth.*got.*expected an int >= -1.*Fix"):
        ModelSummary(Net(), max_depth=bad)  # type: ignore[arg-type]


def test_not_a_module() -> None:
    with pytest.raises(MisconfigurationException, match="torch.nn.Module"):
        ModelSummary(object())  # type: ignore[arg-type]


def test_depths() -> None:
    model = Net()
    assert ModelSummary(model, max_depth=0).layer_names == []
    assert ModelSummary(model, max_depth=1).layer_names == ["encoder", "head", "unused"]
    assert ModelSummary(model, max_depth=2).layer_names == [
        "encoder",
        "encoder.0",
        "encoder.1",
        "head",
        "unused",
    ]
    assert ModelSummary(model, max_depth=-1).layer_names == ModelSummary(model, max_depth=5).layer_names
    summary = summarize(model, max_depth=2)
    assert summary.max_depth == 2
    assert summary.layer_types == ["Sequential", "Linear", "ReLU", "Linear", "Linear"]
    assert summary.param_nums == [40, 40, 0, 18, 12]
    assert isinstance(summary.summarize()["head"], LayerSummary)


def test_totals_and_modes() -> None:
    model = Net()
    model.unused.requires_grad_(False)
    model.encoder.eval()
    summary = ModelSummary(model)
    assert summary.total_parameters == 70
    assert summary.trainable_parameters == 58
    assert summary.non_trainable_parameters == 12
    assert summary.total_layer_params == 70
    assert summary.model_size == pytest.approx(70 * 4 / 1e6)
    # root excluded: encoder, encoder.0, encoder.1, head, unused
    assert summary.total_training_modes == {"train": 2, "eval": 3}
    assert summary.training_modes == [False, True, True]


def test_model_size_uses_dtype() -> None:
    model = nn.Linear(1000, 1000).half()
    assert ModelSummary(model).model_size == pytest.approx(1_001_000 * 2 / 1e6)


def test_shared_parameters_counted_once() -> None:
    shared = nn.Linear(5, 5)
    model = nn.Sequential(shared, shared)
    summary = ModelSummary(model)
    assert summary.total_parameters == 30
    # `named_children` de-duplicates the shared module, like `named_modules`
    assert summary.layer_names == ["0"]


def test_no_example_input_has_no_size_columns() -> None:
    text = str(ModelSummary(Net()))
    headers = text.splitlines()[0]
    assert "Name" in headers and "Type" in headers and "Params" in headers and "Mode" in headers
    assert "In sizes" not in text and "Out sizes" not in text


def test_example_input_records_shapes_and_restores_modes() -> None:
    seen: dict[str, bool] = {}

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["training"] = self.training
            seen["grad"] = torch.is_grad_enabled()
            return x

    model = Net(example=torch.zeros(3, 4))
    model.encoder.append(Probe())
    model.head.eval()  # mixed modes must come back exactly as they were
    summary = ModelSummary(model, max_depth=2)
    assert seen == {"training": False, "grad": False}
    sizes = dict(zip(summary.layer_names, zip(summary.in_sizes, summary.out_sizes)))
    assert sizes["encoder"] == ([3, 4], [3, 8])
    assert sizes["encoder.0"] == ([3, 4], [3, 8])
    assert sizes["head"] == ([3, 8], [3, 2])
    assert sizes["unused"] == (UNKNOWN_SIZE, UNKNOWN_SIZE)  # never called
    assert model.training and model.encoder.training and not model.head.training
    assert all(not m._forward_hooks for m in model.modules())
    text = str(summary)
    assert "In sizes" in text and "Out sizes" in text and "[3, 4]" in text


def test_example_input_tuple_dict_and_multiple_outputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.split = Splitter()

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.split(self.a(x), scale=y)

    class Splitter(nn.Module):
        def forward(
            self, x: torch.Tensor, scale: torch.Tensor
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return x * scale, {"sum": x.sum(1)}

    model = Two()
    model.example_input_array = (torch.ones(4, 2), torch.ones(1))
    summary = ModelSummary(model)
    assert summary.in_sizes == [[4, 2], [[4, 2], {"scale": [1]}]]
    assert summary.out_sizes == [[4, 2], [[4, 2], {"sum": [4]}]]

    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, *, features: torch.Tensor) -> torch.Tensor:
            return self.lin(features)

    kw = Kw()
    kw.example_input_array = {"features": torch.ones(5, 2)}
    assert ModelSummary(kw).out_sizes == [[5, 1]]


def test_forward_error_propagates_with_note_and_cleans_up() -> None:
    class Broken(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.encoder(x)
            raise RuntimeError("boom")

    model = Broken(example=torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="boom") as info:
        ModelSummary(model)
    assert any(
        "example_input_array" in note for note in getattr(info.value, "__notes__", ["example_input_array"])
    )
    assert model.training and model.encoder.training
    assert all(not m._forward_hooks for m in model.modules())


def test_lazy_modules_warn_without_example_and_materialize_with_one() -> None:
    model = nn.Sequential(nn.LazyLinear(3))
    with pytest.warns(UserWarning, match="uninitialized"):
        summary = ModelSummary(model)
    assert summary.total_parameters == 0

    model.example_input_array = torch.zeros(2, 5)  # type: ignore[assignment]
    summary = ModelSummary(model)
    assert summary.total_parameters == 18
    assert summary.out_sizes == [[2, 3]]


def test_str_layout() -> None:
    text = str(ModelSummary(Net(example=torch.zeros(1, 4))))
    lines = text.splitlines()
    assert lines[1].startswith("---") and set(lines[1]) == {"-"}
    assert lines[2].startswith("0 | encoder | Sequential | 40 ")
    assert lines[-6:] == [
        "70        Trainable params",
        "0         Non-trainable params",
        "70        Total params",
        "0.000     Total estimated model params size (MB)",
        "5         Modules in train mode",
        "0         Modules in eval mode",
    ]
    assert repr(ModelSummary(Net())) == str(ModelSummary(Net()))


def test_depth_zero_renders_only_totals() -> None:
    text = str(ModelSummary(Net(), max_depth=0))
    assert "Name" not in text
    assert text.splitlines()[0] == "70        Trainable params"

"""Tests for the ModelSummary / RichModelSummary callbacks (driven with a stand-in trainer)."""

from __future__ import annotations

import importlib.util
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fulmen.callbacks.model_summary import ModelSummary, RichModelSummary
from fulmen.utilities.exceptions import MisconfigurationException


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.example_input_array = torch.zeros(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _trainer(rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=rank_zero)


@pytest.fixture(autouse=True)
def _no_fulmen_log_handlers() -> None:
    """The callbacks print when nobody listens to the `fulmen` logger; make that the starting point."""
    logger = logging.getLogger("fulmen")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers, logger.propagate = [], False
    yield
    logger.handlers, logger.propagate, logger.level = saved[0], saved[1], saved[2]


def test_prints_table_on_rank_zero(capsys: pytest.CaptureFixture[str]) -> None:
    model = Net()
    ModelSummary(max_depth=2).on_fit_start(_trainer(), model)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "| Name" in out and "encoder.0" in out and "In sizes" in out and "[3, 4]" in out
    assert "58        Total params" in out
    assert "Modules in train mode" in out
    assert model.training  # the summary's eval-mode forward pass left the mode alone


def test_silent_on_other_ranks_and_when_depth_zero(capsys: pytest.CaptureFixture[str]) -> None:
    ModelSummary().on_fit_start(_trainer(rank_zero=False), Net())  # type: ignore[arg-type]
    ModelSummary(max_depth=0).on_fit_start(_trainer(), Net())  # type: ignore[arg-type]
    assert capsys.readouterr().out == ""


def test_goes_to_the_fulmen_logger_when_configured(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("fulmen")
    logger.propagate = True
    with caplog.at_level(logging.INFO, logger="fulmen"):
        ModelSummary().on_fit_start(_trainer(), Net())  # type: ignore[arg-type]
    assert any("Total params" in record.getMessage() for record in caplog.records)
    assert "Total params" not in capsys.readouterr().out


@pytest.mark.parametrize("bad", [-2, 1.0, "1", True])
def test_bad_max_depth(bad: object) -> None:
    with pytest.raises(MisconfigurationException, match=r"ModelSummary\(max_depth=\.\.\.\).*got.*Fix"):
        ModelSummary(max_depth=bad)  # type: ignore[arg-type]


def test_unknown_summarize_kwargs() -> None:
    with pytest.raises(MisconfigurationException, match=r"header_style.*RichModelSummary"):
        ModelSummary(header_style="bold")
    with pytest.raises(MisconfigurationException, match="colour"):
        RichModelSummary(colour="red")


def test_max_depth_property_and_summary_override(capsys: pytest.CaptureFixture[str]) -> None:
    seen = {}

    class Custom(ModelSummary):
        @staticmethod
        def summarize(
            summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, **kw
        ):  # type: ignore[no-untyped-def,override]
            seen.update(
                total=total_parameters,
                trainable=trainable_parameters,
                modes=total_training_modes,
                headers=[header for header, _ in summary_data],
            )

    callback = Custom(max_depth=-1)
    assert callback.max_depth == -1
    callback.on_fit_start(_trainer(), Net())  # type: ignore[arg-type]
    assert seen["total"] == 58 and seen["trainable"] == 58 and seen["modes"] == {"train": 4, "eval": 0}
    assert seen["headers"] == [" ", "Name", "Type", "Params", "Mode", "In sizes", "Out sizes"]
    assert capsys.readouterr().out == ""


def test_rich_summary_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    RichModelSummary(max_depth=1).on_fit_start(_trainer(), Net())  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "Name" in out and "encoder" in out and "Sequential" in out and "[3, 4]" in out
    assert "Trainable params" in out and "Total estimated model params size (MB)" in out


def test_rich_summary_requires_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"fulmen\[rich\]"):
        RichModelSummary()


# --------------------------------------------------------------------------------------------------
# end to end with the real Trainer
# --------------------------------------------------------------------------------------------------
def _fit(tmp_path: object, **trainer_kwargs: object) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    import fulmen as L

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()
            self.example_input_array = torch.zeros(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_epochs=1,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    trainer.fit(Model(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))


def test_e2e_default_summary(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    # the plain-text summary (the default when rich is not installed; with rich, RichModelSummary as Lightning)
    _fit(tmp_path, callbacks=[ModelSummary()])
    out = capsys.readouterr().out
    assert "| net  | Net  | 58" in out and "In sizes" in out and "[2, 4]" in out
    assert "58        Total params" in out


def test_e2e_custom_depth_and_disabled(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    _fit(tmp_path, callbacks=[ModelSummary(max_depth=-1)])
    out = capsys.readouterr().out
    assert (
        "net.encoder.0" in out and out.count("Total params") == 1
    )  # the user's summary replaces the default
    _fit(tmp_path, enable_model_summary=False)
    assert "Total params" not in capsys.readouterr().out

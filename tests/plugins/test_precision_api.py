"""The precision plugins' public API as Lightning 2.6 has it: ``MixedPrecision(precision, device, scaler=None)``
makes a GradScaler for ``16-mixed``, ``autocast_context_manager()`` is the ``torch.autocast`` the forward runs in,
and ``precision="16-mixed"`` on the CPU becomes ``bf16-mixed`` with a warning (fp16 AMP is a GPU feature)."""

from __future__ import annotations

import pytest
import torch

from fulmen import Fabric, Trainer
from fulmen.plugins.precision import MixedPrecision
from fulmen.utilities.exceptions import MisconfigurationException


def test_16_mixed_gets_a_grad_scaler_for_its_device() -> None:
    plugin = MixedPrecision("16-mixed", "cpu")
    assert isinstance(plugin.scaler, torch.amp.GradScaler) and plugin.scaler._device == "cpu"
    own = torch.amp.GradScaler("cpu", init_scale=4.0)
    assert MixedPrecision("16-mixed", "cpu", scaler=own).scaler is own
    assert MixedPrecision("bf16-mixed", "cpu").scaler is None
    with pytest.raises(MisconfigurationException, match="bf16-mixed does not use a GradScaler"):
        MixedPrecision("bf16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


def test_autocast_context_manager() -> None:
    plugin = MixedPrecision("bf16-mixed", "cpu")
    ctx = plugin.autocast_context_manager()
    assert isinstance(ctx, torch.autocast) and ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16
    with ctx:
        out = torch.nn.Linear(2, 2)(torch.ones(1, 2))
    assert out.dtype == torch.bfloat16
    with plugin.forward_context():  # the forward runs in the same context
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16


def test_matches_lightnings_mixed_precision() -> None:
    pl = pytest.importorskip("pytorch_lightning")
    for precision in ("16-mixed", "bf16-mixed"):
        theirs = pl.plugins.precision.MixedPrecision(precision, "cpu")
        ours = MixedPrecision(precision, "cpu")
        assert type(theirs.scaler) is type(ours.scaler)
        a, b = theirs.autocast_context_manager(), ours.autocast_context_manager()
        assert (a.device, a.fast_dtype) == (b.device, b.fast_dtype)


def test_16_mixed_on_the_cpu_becomes_bf16_mixed() -> None:
    with pytest.warns(UserWarning, match=r"precision='16-mixed'.*not supported on the CPU.*'bf16-mixed'"):
        fabric = Fabric(accelerator="cpu", devices=1, precision="16-mixed")
    assert fabric.precision.precision == "bf16-mixed" and fabric.precision.scaler is None
    with pytest.warns(UserWarning, match="bf16-mixed"):
        trainer = Trainer(accelerator="cpu", precision=16, logger=False, enable_checkpointing=False)
    assert trainer.precision == "bf16-mixed" and trainer.scaler is None
    # an explicit plugin is the user's choice and is kept
    plugin = MixedPrecision("16-mixed", "cpu")
    assert Fabric(accelerator="cpu", devices=1, plugins=[plugin]).precision is plugin


def test_cpu_16_mixed_matches_lightning() -> None:
    lf = pytest.importorskip("lightning_fabric")
    with pytest.warns(UserWarning):
        theirs = lf.Fabric(accelerator="cpu", devices=1, precision="16-mixed")
    with pytest.warns(UserWarning):
        ours = Fabric(accelerator="cpu", devices=1, precision="16-mixed")
    assert theirs._precision.precision == ours.precision.precision == "bf16-mixed"
    assert theirs._precision.scaler is None and ours.precision.scaler is None

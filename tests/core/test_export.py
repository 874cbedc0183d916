"""Export: ONNX (checked with onnxruntime), TorchScript, torch.export and safetensors weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.export import (
    checkpoint_to_safetensors,
    load_weights,
    save_weights,
    to_onnx,
    to_torch_export,
    to_torchscript,
)


class Net(L.LightningModule):
    """Conv + BatchNorm + Dropout: outputs differ between train and eval mode, so mode handling is tested."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 8 * 8, 3)
        self.example_input_array = torch.randn(2, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(self.drop(x).flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trained_net(tmp_path: Path) -> Net:
    torch.manual_seed(0)
    net = Net()
    data = TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,)))
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(net, DataLoader(data, batch_size=4))
    return net


def eval_out(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    training = net.training
    net.eval()
    with torch.no_grad():
        out = net(x)
    net.train(training)
    return out


# ---------------------------------------------------------------------------------------------- ONNX


def test_onnx_matches_pytorch_in_onnxruntime_with_a_dynamic_batch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    net = trained_net(tmp_path)
    net.train()
    path = tmp_path / "sub" / "net.onnx"
    net.to_onnx(path, input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    assert net.training  # the mode is restored
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    for batch in (2, 5):
        x = torch.randn(batch, 1, 8, 8)
        (got,) = session.run(["logits"], {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), eval_out(net, x), rtol=1e-4, atol=1e-5)


def test_onnx_batch_dimension_is_dynamic_by_default(tmp_path: Path) -> None:
    """Exported with a batch of 3, run in onnxruntime with 5 and 1: dim 0 of every input and output is dynamic
    unless the user says otherwise (a rank-0 output stays a scalar)."""
    ort = pytest.importorskip("onnxruntime")

    class TwoInTwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.layer(x.flatten(1)) + y, x.sum()

    net = TwoInTwoOut().eval()
    path = tmp_path / "dyn.onnx"
    to_onnx(net, path, (torch.randn(3, 4, 2), torch.randn(3, 3)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.shape[0] for i in session.get_inputs()] == ["batch", "batch"]
    assert session.get_outputs()[0].shape == ["batch", 3] and session.get_outputs()[1].shape == []
    for batch in (5, 1):
        x, y = torch.randn(batch, 4, 2), torch.randn(batch, 3)
        names = [i.name for i in session.get_inputs()]
        got, total = session.run(None, {names[0]: x.numpy(), names[1]: y.numpy()})
        with torch.no_grad():
            want, want_total = net(x, y)
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(total), want_total, rtol=1e-4, atol=1e-4)

    # the user's names are kept; the user's dynamic_axes wins: {} exports fixed shapes
    net2 = trained_net(tmp_path)
    named = tmp_path / "named.onnx"
    net2.to_onnx(named, torch.randn(3, 1, 8, 8), input_names=["img"], output_names=["logits"])
    session = ort.InferenceSession(str(named), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"img": torch.randn(5, 1, 8, 8).numpy()})
    assert got.shape == (5, 3)
    fixed = tmp_path / "fixed.onnx"
    net2.to_onnx(fixed, torch.randn(3, 1, 8, 8), dynamic_axes={})
    session = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [3, 1, 8, 8]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {session.get_inputs()[0].name: torch.randn(5, 1, 8, 8).numpy()})


def test_onnx_dynamic_batch_with_constant_and_fixed_outputs(tmp_path: Path) -> None:
    """Outputs the exporter names with bare numbers, a constant output and a reshape to a fixed size still export;
    the batch-dependent output follows the batch."""
    ort = pytest.importorskip("onnxruntime")

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 2))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return x @ self.w.t(), self.w * 1, x.view(3, -1)

    path = tmp_path / "mixed.onnx"
    to_onnx(Mixed(), path, torch.randn(3, 2))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: torch.randn(6, 2).numpy()})
    assert [o.shape for o in out] == [(6, 4), (4, 2), (3, 4)]


def test_onnx_falls_back_to_fixed_shapes_when_the_dynamic_export_fails(tmp_path: Path) -> None:
    """The first (fixed-shape, in-memory) export works and the dynamic one raises: the file is the fixed-shape
    export, with a warning naming the fix."""
    ort = pytest.importorskip("onnxruntime")

    class FailsSecondTrace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 3)
            self.traced = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.traced += 1
            if self.traced > 1:
                raise RuntimeError("this model cannot be traced twice")
            return self.layer(x)

    path = tmp_path / "fixed_fallback.onnx"
    with pytest.warns(UserWarning, match="dynamic batch dimension failed.*dynamic_axes"):
        to_onnx(FailsSecondTrace(), path, torch.randn(3, 2))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [3, 2]


def test_onnx_dynamo_batch_dimension_is_dynamic_by_default(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    net = trained_net(tmp_path)
    path = tmp_path / "dyn_dynamo.onnx"
    net.to_onnx(path, torch.randn(3, 1, 8, 8), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), eval_out(net, x), rtol=1e-4, atol=1e-5)


def test_onnx_with_an_explicit_sample_and_tuple_inputs(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")

    class TwoInputs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * 2 + b

    path = tmp_path / "two.onnx"
    to_onnx(TwoInputs(), path, (torch.ones(3), torch.ones(3)), input_names=["a", "b"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"a": torch.arange(3.0).numpy(), "b": torch.ones(3).numpy()})
    assert out.tolist() == [1.0, 3.0, 5.0]


def test_onnx_dynamo_returns_a_program_without_a_file(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    net = trained_net(tmp_path)
    program = net.to_onnx(dynamo=True)
    assert isinstance(program, torch.onnx.ONNXProgram)
    path = tmp_path / "dynamo.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = net.example_input_array
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), eval_out(net, x), rtol=1e-4, atol=1e-5)


def test_onnx_errors(tmp_path: Path) -> None:
    net = Net()
    with pytest.raises(MisconfigurationException, match="dynamo=True"):
        net.to_onnx()
    net.example_input_array = None
    with pytest.raises(MisconfigurationException, match="example_input_array"):
        net.to_onnx(tmp_path / "x.onnx")


# ---------------------------------------------------------------------------------------------- TorchScript


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("method", ["script", "trace"])
def test_torchscript_outputs_match_and_the_file_reloads(tmp_path: Path, method: str) -> None:
    net = trained_net(tmp_path)  # attached to a trainer: its properties must not break scripting
    net.train()
    path = tmp_path / f"{method}.pt"
    scripted = net.to_torchscript(path, method=method)
    assert net.training and isinstance(scripted, torch.jit.ScriptModule)
    x = torch.randn(3, 1, 8, 8)
    expected = eval_out(net, x)
    torch.testing.assert_close(scripted(x), expected)
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_on_a_detached_module_and_errors() -> None:
    net = Net()  # never attached to a Trainer: `trainer` would raise if scripting read it
    scripted = to_torchscript(net)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(scripted(x), eval_out(net, x))
    with pytest.raises(RuntimeError, match="not attached"):
        _ = net.trainer  # the scripting flag was removed again
    traced = net.to_torchscript(method="trace", example_inputs=torch.randn(4, 1, 8, 8))
    torch.testing.assert_close(traced(x), eval_out(net, x))
    with pytest.raises(MisconfigurationException, match="'script' or 'trace'"):
        net.to_torchscript(method="compile")
    net.example_input_array = None
    with pytest.raises(MisconfigurationException, match="example input"):
        net.to_torchscript(method="trace")


# ---------------------------------------------------------------------------------------------- torch.export


def test_torch_export_program_matches_and_round_trips_through_pt2(tmp_path: Path) -> None:
    net = trained_net(tmp_path)
    net.train()
    path = tmp_path / "net.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = to_torch_export(net, path, dynamic_shapes={"x": {0: batch}})
    assert net.training
    assert isinstance(program, torch.export.ExportedProgram)
    x = torch.randn(7, 1, 8, 8)
    expected = eval_out(net, x)
    torch.testing.assert_close(program.module()(x), expected)
    reloaded = torch.export.load(str(path))
    torch.testing.assert_close(reloaded.module()(x), expected)


def test_torch_export_keyword_inputs_and_missing_sample() -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return x * scale

    program = to_torch_export(Scale(), example_inputs={"x": torch.ones(2), "scale": torch.tensor(3.0)})
    assert program.module()(x=torch.ones(2), scale=torch.tensor(2.0)).tolist() == [2.0, 2.0]
    with pytest.raises(MisconfigurationException, match="example input"):
        to_torch_export(Scale())


# ---------------------------------------------------------------------------------------------- safetensors


def test_safetensors_weights_round_trip_and_read_with_safetensors(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    net = trained_net(tmp_path)
    path = tmp_path / "w" / "net.safetensors"
    save_weights(net, path, metadata={"format": "pt"})
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(net.state_dict())
        assert f.metadata() == {"format": "pt"}
        torch.testing.assert_close(f.get_tensor("head.weight"), net.head.weight.detach())
    fresh = Net()
    result = load_weights(fresh, path)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(eval_out(fresh, x), eval_out(net, x))


def test_checkpoint_to_safetensors(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    net = trained_net(tmp_path)
    ckpt = tmp_path / "model.ckpt"
    net.trainer.save_checkpoint(ckpt)
    out = tmp_path / "model.safetensors"
    checkpoint_to_safetensors(ckpt, out)
    fresh = Net()
    load_weights(fresh, out)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_weights(nn.Linear(2, 2), out)
    torch.save({"not": "a checkpoint"}, tmp_path / "other.ckpt")
    with pytest.raises(KeyError, match="state_dict"):
        checkpoint_to_safetensors(tmp_path / "other.ckpt", tmp_path / "x.safetensors")

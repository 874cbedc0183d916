"""Train a small CNN, then export it four ways and check each export against the PyTorch model.

    .venv/bin/python examples/export_example.py                    # files under ./export_example_out
    .venv/bin/python examples/export_example.py --out /tmp/export

What it shows:

* ``model.to_onnx(path)`` with a dynamic batch axis, run with onnxruntime (``pip install 'fulmen[onnx]'``);
* ``to_torch_export(model, path)`` - a ``torch.export`` program (``.pt2``), reloaded with ``torch.export.load``;
* ``model.to_torchscript(path)`` - TorchScript (``script`` or ``trace``), reloaded with ``torch.jit.load``;
* ``save_weights`` / ``load_weights`` - the weights alone as safetensors (``pip install 'fulmen[safetensors]'``),
  and ``checkpoint_to_safetensors`` converting a training checkpoint.

Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.utilities.export import checkpoint_to_safetensors, load_weights, save_weights, to_torch_export


class SmallCNN(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 8 * 8, 10))
        self.example_input_array = torch.randn(
            2, 1, 16, 16
        )  # used by every export below (batch > 1: dynamic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="export_example_out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    L.seed_everything(0)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256, 1, 16, 16, generator=g), torch.randint(0, 10, (256,), generator=g))
    model = SmallCNN()
    trainer = L.Trainer(
        default_root_dir=args.out,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=32))
    x = torch.randn(5, 1, 16, 16)
    expected = reference(model, x)

    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        import onnxruntime as ort

        path = os.path.join(args.out, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model.to_onnx(
                path, input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}}
            )
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"image": x.numpy()})
        print(f"ONNX        {path}: max |diff| = {(torch.from_numpy(got) - expected).abs().max():.2e}")
    else:
        print("ONNX        skipped (pip install 'fulmen[onnx]')")

    path = os.path.join(args.out, "model.pt2")
    program = to_torch_export(model, path, dynamic_shapes={"x": {0: torch.export.Dim("batch", max=1024)}})
    got = torch.export.load(path).module()(x)
    print(
        f"torch.export {path}: max |diff| = {(got - expected).abs().max():.2e} ({len(program.graph.nodes)} nodes)"
    )

    path = os.path.join(args.out, "model.ts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.to_torchscript(path)
        got = torch.jit.load(path)(x)
    print(f"TorchScript {path}: max |diff| = {(got - expected).abs().max():.2e}")

    if importlib.util.find_spec("safetensors"):
        path = os.path.join(args.out, "model.safetensors")
        save_weights(model, path, metadata={"arch": "SmallCNN"})
        fresh = SmallCNN()
        load_weights(fresh, path)
        print(f"safetensors {path}: max |diff| = {(reference(fresh, x) - expected).abs().max():.2e}")
        ckpt = os.path.join(args.out, "model.ckpt")
        trainer.save_checkpoint(ckpt)
        checkpoint_to_safetensors(ckpt, os.path.join(args.out, "from_ckpt.safetensors"))
        print(f"checkpoint -> safetensors: {os.path.join(args.out, 'from_ckpt.safetensors')}")
    else:
        print("safetensors skipped (pip install 'fulmen[safetensors]')")


if __name__ == "__main__":
    main()

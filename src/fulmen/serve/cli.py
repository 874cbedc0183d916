"""``fulmen serve``: serve a checkpoint's ``predict_step`` or a file that defines a ``LitAPI``.

    fulmen serve model.ckpt --model my_pkg.models:Net    # JSON {"input": [...]} -> {"output": [...]}
    fulmen serve app.py                                  # a file defining a LitAPI (or a LitServer)

The checkpoint is loaded safely (``weights_only=True``) by ``LightningModule.load_from_checkpoint``; the
class comes from ``--model`` or, when the checkpoint recorded it (LightningCLI's ``_class_path`` in the
hyperparameters), from the checkpoint. Binds 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from fulmen.serve.api import LitAPI
from fulmen.serve.server import LitServer

__all__ = ["CheckpointAPI", "load_app", "main"]


def _import_class(spec: str) -> type:
    module_name, sep, name = spec.partition(":")
    if not sep:
        module_name, _, name = spec.rpartition(".")
    if not module_name or not name:
        raise SystemExit(f"fulmen serve: --model {spec!r}: expected 'package.module:ClassName'.")
    sys.path.insert(0, os.getcwd())
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"fulmen serve: cannot import {spec!r} ({exc}); is its package on PYTHONPATH?") from exc
    return cls  # type: ignore[no-any-return]


class CheckpointAPI(LitAPI):
    """Serves a LightningModule checkpoint's ``predict_step``: ``{"input": nested list}`` -> ``{"output": ...}``.

    One request is one sample; requests are stacked into a batch (``max_batch_size``) and ``predict_step``
    receives the batch, as it does under ``trainer.predict``.
    """

    def __init__(self, checkpoint: str, model_class: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkpoint = checkpoint
        self.model_class = model_class

    def setup(self, device: str) -> None:
        import torch

        cls = _import_class(self.model_class)
        self.device = torch.device(device)
        self.model = cls.load_from_checkpoint(self.checkpoint, map_location=self.device)  # type: ignore[attr-defined]
        self.model.eval()

    def decode_request(self, request: Any, **kwargs: Any) -> Any:
        import torch

        if not isinstance(request, dict) or "input" not in request:
            raise ValueError('expected a JSON object {"input": <one sample as a (nested) list of numbers>}')
        return torch.as_tensor(request["input"])

    def batch(self, inputs: list[Any]) -> Any:
        import torch

        return torch.stack(inputs)

    def predict(self, x: Any, **kwargs: Any) -> Any:
        import torch

        single = self.max_batch_size == 1
        batch = (x[None] if single else x).to(self.device)
        with torch.inference_mode():
            out = self.model.predict_step(batch, 0)
        return out[0] if single else out

    def encode_response(self, output: Any, **kwargs: Any) -> Any:
        return {"output": output.tolist() if hasattr(output, "tolist") else output}


def _class_from_checkpoint(path: str) -> str | None:
    from fulmen.checkpoint import load

    hparams = load(path, map_location="cpu").get("hyper_parameters") or {}
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return str(class_path) if class_path else None


def load_app(path: str) -> tuple[list[LitAPI], LitServer | None]:
    """The LitAPIs (or the LitServer) a file defines. The file is imported as a module by its name, so the
    worker processes can import its classes too.

    Raises:
        SystemExit: the file defines no LitAPI.
    """
    file = Path(path).resolve()
    sys.path.insert(0, str(file.parent))
    module = importlib.import_module(file.stem)
    servers = [v for v in vars(module).values() if isinstance(v, LitServer)]
    if servers:
        return servers[0].lit_apis, servers[0]
    apis = [v for v in vars(module).values() if isinstance(v, LitAPI)]
    if not apis:
        classes = [
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, LitAPI) and v.__module__ == module.__name__
        ]
        if not classes:
            raise SystemExit(f"fulmen serve: {path} defines no LitAPI subclass (class MyAPI(fulmen.serve.LitAPI)).")
        apis = [cls() for cls in classes]
    return apis, None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fulmen serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("target", help="a checkpoint (.ckpt) or a Python file defining a LitAPI")
    p.add_argument("--model", help="the LightningModule class of a checkpoint, 'package.module:ClassName'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help="required in X-API-Key on every route but /health (default: $LIT_SERVER_API_KEY)",
    )
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--workers-per-device", type=int, default=None, help="worker processes per device (default 1)")
    p.add_argument("--max-batch-size", type=int, default=None, help="requests per predict call (default 1)")
    p.add_argument("--batch-timeout", default=None, help="seconds, or 'auto' (an adaptive window); default 0")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a request gets a 504 (default 30)")
    p.add_argument(
        "--dockerfile",
        metavar="DIR",
        help="write a Dockerfile, requirements and Kubernetes manifests for this endpoint into DIR, and exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    batch_timeout: Any = args.batch_timeout if args.batch_timeout in (None, "auto") else float(args.batch_timeout)
    devices: Any = int(args.devices) if str(args.devices).isdigit() else args.devices
    target = args.target
    if not os.path.exists(target):
        raise SystemExit(f"fulmen serve: {target!r} does not exist; give a checkpoint file or a Python file.")
    if args.dockerfile:
        from fulmen.serve.deploy import write_deployment

        for written in write_deployment(args.dockerfile, target, args, port=args.port):
            print(f"wrote {written}")
        return 0
    server: LitServer | None = None
    if target.endswith(".py"):
        apis, server = load_app(target)
    else:
        model_class = args.model or _class_from_checkpoint(target)
        if model_class is None:
            raise SystemExit(
                f"fulmen serve: {target} does not record its LightningModule class; pass --model package.module:ClassName."
            )
        apis = [
            CheckpointAPI(
                os.path.abspath(target),
                model_class,
                max_batch_size=args.max_batch_size or 1,
                batch_timeout=0.0 if batch_timeout is None else batch_timeout,
            )
        ]
    if server is None:
        server = LitServer(
            apis if len(apis) > 1 else apis[0],
            accelerator=args.accelerator,
            devices=devices,
            workers_per_device=args.workers_per_device or 1,
            timeout=30.0 if args.timeout is None else args.timeout,
            api_key=args.api_key,
        )
    elif args.api_key:
        server.api_key = args.api_key
    server.run(host=args.host, port=args.port)
    return 0

"""From ``trainer.fit`` to an HTTP endpoint: train the digits CNN, then serve it with fulmen.serve.

    .venv/bin/python examples/serve_digits.py train          # writes digits.ckpt (about a minute on 2 cores)
    .venv/bin/python examples/serve_digits.py serve          # http://127.0.0.1:8000/predict, batched
    .venv/bin/python examples/serve_digits.py demo           # train if needed, serve, send the test digits, stop

    curl -X POST http://127.0.0.1:8000/predict -H 'Content-Type: application/json' \\
         -d '{"image": [0,0,5,13,9,1,0,0, 0,0,13,15,10,15,5,0, 0,3,15,2,0,11,8,0, 0,4,12,0,0,8,8,0,
                        0,5,8,0,0,9,8,0, 0,4,11,0,1,12,7,0, 0,2,14,5,10,12,0,0, 0,0,6,13,10,0,0,0]}'

The same checkpoint also serves without writing any code:
``fulmen serve digits.ckpt --model digits_demo:DigitsCNN`` (from examples/, so the class is importable)
answers ``{"input": [[[...8x8...]]]}`` with ``predict_step``'s output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from digits_demo import DigitsCNN, DigitsDataModule  # noqa: E402

import fulmen as L  # noqa: E402
import fulmen.serve as ls  # noqa: E402

CKPT = Path(os.environ.get("DIGITS_CKPT", "digits.ckpt"))


def train(epochs: int = 6) -> None:
    L.seed_everything(42)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(DigitsCNN(), DigitsDataModule())
    trainer.save_checkpoint(CKPT)
    print(f"wrote {CKPT}")


class DigitsAPI(ls.LitAPI):
    """JSON ``{"image": 64 pixel values 0..16}`` -> ``{"digit": d, "probability": p}``; requests are batched."""

    def setup(self, device):
        self.model = DigitsCNN.load_from_checkpoint(str(CKPT.resolve()), map_location=device).eval()
        self.device = device

    def decode_request(self, request):
        pixels = torch.tensor(request["image"], dtype=torch.float32)
        if pixels.numel() != 64:
            raise ValueError(f"'image' must have 64 pixel values (8x8), got {pixels.numel()}")
        return pixels.view(1, 8, 8) / 16.0  # the scaling DigitsDataModule applies

    def predict(self, x):
        with torch.inference_mode():
            return self.model(x.to(self.device)).softmax(-1)

    def encode_response(self, probabilities):
        digit = int(probabilities.argmax())
        return {"digit": digit, "probability": round(float(probabilities[digit]), 4)}


def serve(port: int = 8000) -> None:
    server = ls.LitServer(DigitsAPI(max_batch_size=16, batch_timeout="auto"), accelerator="auto", timeout=10)
    server.run(port=port)


def demo(port: int = 8000) -> int:
    if not CKPT.exists():
        train()
    proc = subprocess.Popen([sys.executable, __file__, "serve", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = digits.data[-100:], digits.target[-100:]
        correct = 0
        for image, label in zip(images, labels):
            request = urllib.request.Request(
                url + "/predict", json.dumps({"image": image.tolist()}).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as r:
                correct += json.loads(r.read())["digit"] == int(label)
        print(f"served {len(labels)} digits over HTTP: {correct} correct")
        return 0
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    if command == "train":
        train()
    elif command == "serve":
        serve(port)
    elif command == "demo":
        sys.exit(demo(port))
    else:
        raise SystemExit(f"unknown command {command!r}: expected train, serve or demo")

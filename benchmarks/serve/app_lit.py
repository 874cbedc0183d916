"""The same LitAPI under fulmen.serve or LitServe: ``FRAMEWORK=fulmen|litserve MODEL=... BATCH=1|8 PORT=...``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if os.environ.get("FRAMEWORK") == "litserve":
    import litserve as ls
else:
    import fulmen.serve as ls

import torch
from models import build


class BenchAPI(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(1)
        self.model = build(os.environ.get("MODEL", "linear"))

    def decode_request(self, request):
        return torch.tensor(request["input"], dtype=torch.float32)

    def predict(self, x):
        with torch.inference_mode():
            if x.dim() == 1:  # no batching: one sample
                return self.model(x[None])[0]
            return self.model(x)

    def encode_response(self, output):
        return {"output": output.tolist()}


if __name__ == "__main__":
    batch = int(os.environ.get("BATCH", "1"))
    timeout = os.environ.get("BATCH_TIMEOUT", "0.01")
    api = BenchAPI(max_batch_size=batch, batch_timeout=timeout if timeout == "auto" else float(timeout))
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=int(os.environ.get("WORKERS", "2")),
        timeout=float(os.environ.get("SERVE_TIMEOUT", "30")),
    )
    server.run(port=int(os.environ["PORT"]), log_level="warning")

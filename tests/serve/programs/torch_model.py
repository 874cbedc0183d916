# LitServe docs "serve a PyTorch model": setup moves the model to its device; batching stacks tensors.
import os

import torch
from torch import nn

import fulmen.serve as ls


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.linear.weight.data.fill_(2.0)
        self.linear.bias.data.fill_(1.0)

    def forward(self, x):
        return self.linear(x)


class PyTorchAPI(ls.LitAPI):
    def setup(self, device):
        self.device = device
        self.model = Linear().to(device).eval()

    def decode_request(self, request):
        return torch.tensor([float(request["input"])], device=self.device)

    def predict(self, x):
        with torch.inference_mode():
            return self.model(x)

    def encode_response(self, output):
        return {"output": output.item()}


if __name__ == "__main__":
    api = PyTorchAPI(max_batch_size=8, batch_timeout=0.01)
    server = ls.LitServer(api, accelerator="auto", devices=1, workers_per_device=2)
    server.run(port=int(os.environ.get("PORT", 8000)))

# LitServe docs "batching": max_batch_size/batch_timeout on the LitAPI; predict receives a list.
import os

import numpy as np

import fulmen.serve as ls


class SimpleBatchedAPI(ls.LitAPI):
    def setup(self, device):
        self.model = lambda x: x**2

    def decode_request(self, request):
        return np.asarray(request["input"])

    def predict(self, x):
        result = self.model(x)
        return result

    def encode_response(self, output):
        return {"output": float(output), "batched": True}


if __name__ == "__main__":
    api = SimpleBatchedAPI(max_batch_size=4, batch_timeout=0.05)
    server = ls.LitServer(api, accelerator="cpu")
    server.run(port=int(os.environ.get("PORT", 8000)))

# LitServe docs "OpenAI spec", with fulmen's demo Transformer as a (tiny, untrained) character generator.
import os

import torch

import fulmen.serve as ls
from fulmen.demos.transformer import Transformer

CHARS = [chr(c) for c in range(32, 127)]  # printable ASCII: the tiny model's vocabulary


class TinyGenerator(ls.LitAPI):
    def setup(self, device):
        torch.manual_seed(0)
        self.device = device
        self.model = Transformer(vocab_size=len(CHARS), ninp=32, nhead=2, nhid=64, nlayers=1, dropout=0.0)
        self.model.to(device).eval()

    def predict(self, messages, max_tokens=12):
        prompt = messages[-1]["content"] or " "
        ids = [CHARS.index(c) if c in CHARS else 0 for c in prompt]
        with torch.no_grad():
            for _ in range(max_tokens):
                x = torch.tensor([ids], device=self.device)
                logp = self.model(x, x).view(len(ids), -1)[-1]
                nxt = int(logp.argmax())
                ids.append(nxt)
                yield CHARS[nxt]


if __name__ == "__main__":
    server = ls.LitServer(TinyGenerator(spec=ls.OpenAISpec()), accelerator="cpu")
    server.run(port=int(os.environ.get("PORT", 8000)))

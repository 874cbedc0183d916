"""A small causal transformer language model on synthetic token sequences (no download, no dropout)."""

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class CountingSequences(Dataset):
    """Sequences ``start, start + step, ...`` modulo the vocabulary: learnable next-token structure."""

    def __init__(self, n: int, length: int, vocab: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        self.tokens = (start + step * torch.arange(length + 1)) % vocab

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return self.tokens[i, :-1], self.tokens[i, 1:]


class TinyGPT(L.LightningModule):
    def __init__(
        self, vocab: int = 32, d_model: int = 32, n_heads: int = 2, n_layers: int = 2, max_len: int = 16
    ):
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(1, max_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens):
        t = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.embed(tokens) * math.sqrt(self.hparams.d_model) + self.pos[:, :t]
        return self.head(self.blocks(h, mask=mask, is_causal=True))

    def _loss(self, batch):
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.01)
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


if __name__ == "__main__":
    L.seed_everything(7)
    train = DataLoader(CountingSequences(128, 12, 32, seed=0), batch_size=16)
    val = DataLoader(CountingSequences(32, 12, 32, seed=1), batch_size=16)
    trainer = L.Trainer(
        max_steps=20, val_check_interval=4, gradient_clip_val=1.0, enable_progress_bar=False, logger=False
    )
    model = TinyGPT()
    trainer.fit(model, train, val)
    print(f"metric val_loss {trainer.callback_metrics['val_loss'].item():.10e}")
    print(f"metric global_step {trainer.global_step}")

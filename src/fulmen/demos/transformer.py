"""A small transformer language model demo (mirrors ``lightning.pytorch.demos.transformer``).

:class:`WikiText2` reads a local copy of the WikiText-2 training text: fulmen's demos never download.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fulmen.core.module import LightningModule
from fulmen.utilities.exceptions import NotSupportedYetError

__all__ = ["Dictionary", "LightningTransformer", "PositionalEncoding", "Transformer", "WikiText2", "tokenize"]

_WIKITEXT2_VOCAB = 33278


def _causal_mask(size: int) -> Tensor:
    """``0`` on and below the diagonal, ``-inf`` above: position ``i`` sees positions ``<= i`` only."""
    return torch.full((size, size), float("-inf")).triu(diagonal=1)


class PositionalEncoding(nn.Module):
    """Sinusoidal position signal plus dropout.

    As in Lightning's demo, the table is built on first use (not a buffer, so it is not in the state dict)
    and the signal added is the one at position ``seq_len`` for every token; kept so the demo's numbers
    match Lightning's.
    """

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.dim = dim
        self.max_len = max_len
        self.pe: Tensor | None = None

    def _table(self, device: torch.device) -> Tensor:
        position = torch.arange(self.max_len, dtype=torch.float, device=device)[:, None]
        frequency = torch.exp(
            torch.arange(0, self.dim, 2, device=device).float() * (-math.log(10000.0) / self.dim)
        )
        table = torch.zeros(self.max_len, self.dim, device=device)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        return table[None]

    def forward(self, x: Tensor) -> Tensor:
        if self.pe is None:
            self.pe = self._table(x.device)
        out: Tensor = self.dropout(x + self.pe[:, x.size(1)])
        return out


class Transformer(nn.Module):
    """Embedding + positional encoding + ``nn.Transformer`` (batch first) + a linear decoder to log-probs."""

    def __init__(
        self,
        vocab_size: int = _WIKITEXT2_VOCAB,
        ninp: int = 200,
        nhead: int = 2,
        nhid: int = 200,
        nlayers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.embedding = nn.Embedding(vocab_size, ninp)
        self.transformer = nn.Transformer(
            d_model=ninp,
            nhead=nhead,
            num_encoder_layers=nlayers,
            num_decoder_layers=nlayers,
            dim_feedforward=nhid,
            dropout=dropout,
            batch_first=True,
        )
        self.decoder = nn.Linear(ninp, vocab_size)
        self.ninp = ninp
        self.vocab_size = vocab_size
        self.src_mask: Tensor | None = None

    def generate_square_subsequent_mask(self, size: int) -> Tensor:
        return _causal_mask(size)

    def forward(self, inputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        length = inputs.shape[1]
        if self.src_mask is None or self.src_mask.size(0) != length:
            self.src_mask = _causal_mask(length).to(inputs.device)
        if mask is None:
            mask = _causal_mask(length).to(inputs.device)
        scale = math.sqrt(self.ninp)
        src = self.pos_encoder(self.embedding(inputs) * scale)
        tgt = self.pos_encoder(self.embedding(target) * scale)
        output = self.decoder(self.transformer(src, tgt, tgt_mask=mask))
        return F.log_softmax(output, dim=-1).view(-1, self.vocab_size)


class Dictionary:
    """Word <-> index, in order of first appearance."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        index = self.word2idx.get(word)
        if index is None:
            index = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return index

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize(path: Path) -> tuple[Tensor, Dictionary]:
    """Split a text file on whitespace, with ``<eos>`` after each line; returns (token ids, dictionary)."""
    dictionary = Dictionary()
    with open(path, encoding="utf8") as file:
        ids = [dictionary.add_word(word) for line in file for word in [*line.split(), "<eos>"]]
    return torch.tensor(ids, dtype=torch.int64), dictionary


class WikiText2(Dataset[tuple[Tensor, Tensor]]):
    """(input, next-token target) blocks of ``block_size`` tokens from ``data_dir/wikitext-2.txt``.

    Raises:
        NotSupportedYetError: the file is missing (fulmen's demos do not download; place the WikiText-2
            ``train.txt`` there yourself).
    """

    def __init__(self, data_dir: Path = Path("./data"), block_size: int = 35, download: bool = True) -> None:
        super().__init__()
        self.path = Path(data_dir) / "wikitext-2.txt"
        if not self.path.exists():
            raise NotSupportedYetError(
                f"WikiText2: {self.path} does not exist, and fulmen's demos do not download data. Fix: save the "
                "WikiText-2 train.txt (from the PyTorch examples repository) at that path."
            )
        self.data, self.dictionary = tokenize(self.path)
        self.block_size = block_size

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def __len__(self) -> int:
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        return self.data[start : start + self.block_size], self.data[start + 1 : start + self.block_size + 1]


class LightningTransformer(LightningModule):
    """:class:`Transformer` trained with next-token NLL and SGD (lr 0.1) on :class:`WikiText2`."""

    def __init__(self, vocab_size: int = _WIKITEXT2_VOCAB) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        out: Tensor = self.model(inputs, target)
        return out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        return F.nll_loss(self(inputs, target), target.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)

    def prepare_data(self) -> None:
        WikiText2()

    def train_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        return DataLoader(WikiText2())

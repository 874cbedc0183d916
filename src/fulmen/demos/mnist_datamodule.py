"""``MNIST``: Lightning's small MNIST demo dataset (``lightning.pytorch.demos.mnist_datamodule.MNIST``).

The data is the processed form Lightning's demo uses: ``<root>/MNIST/processed/{training,test}.pt``, each a
``(images uint8 [N, 28, 28], labels [N])`` tuple. With ``download=True`` a missing file is fetched from
Lightning's public bucket (network access needed once); otherwise a missing file is a clear error.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

_URL = "https://pl-public-data.s3.amazonaws.com/MNIST/processed/"


class MNIST(Dataset[tuple[torch.Tensor, int]]):
    """MNIST digits as ``(image float [1, 28, 28], label int)``.

    Args:
        root: the folder holding ``MNIST/processed/``.
        train: the 60k training images, else the 10k test images.
        normalize: ``(mean, std)`` applied to pixel values scaled to [0, 1]; None keeps raw 0-255 floats.
        download: fetch the file when it is missing.
        **kwargs: accepted and ignored (Lightning's demo ignores ``transform=`` too).

    Raises:
        FileNotFoundError: the file is missing and ``download`` is False.
    """

    RESOURCES = ("training.pt", "test.pt")
    TRAIN_FILE_NAME = "training.pt"
    TEST_FILE_NAME = "test.pt"

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        normalize: tuple[float, float] | None = (0.1307, 0.3081),
        download: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.root = root
        self.train = train
        self.normalize = normalize
        folder = Path(root) / "MNIST" / "processed"
        path = folder / (self.TRAIN_FILE_NAME if train else self.TEST_FILE_NAME)
        if not path.is_file():
            if not download:
                raise FileNotFoundError(f"MNIST file {path} not found. Fix: pass download=True, or copy it there.")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".part-{os.getpid()}")
            urllib.request.urlretrieve(_URL + path.name, tmp)
            os.replace(tmp, path)
        self.data, self.targets = torch.load(path, weights_only=True)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        img = self.data[idx].float().unsqueeze(0)
        if self.normalize is not None and len(self.normalize) == 2:
            mean, std = self.normalize
            img = img.div(255.0).sub(mean).div(std)
        return img, int(self.targets[idx])

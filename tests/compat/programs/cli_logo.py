"""A script that prints Lightning's banner before training (``from lightning.pytorch import
cli_lightning_logo``), the way Lightning's own examples start their ``cli_main``."""

import contextlib
import io

from lightning.pytorch import Trainer, cli_lightning_logo, seed_everything
from lightning.pytorch.demos.boring_classes import BoringModel


class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        print(f"step {self.global_step} loss {out['loss'].item():.10e}")
        return out


if __name__ == "__main__":
    banner = io.StringIO()
    with contextlib.redirect_stdout(banner):
        cli_lightning_logo()
    print(banner.getvalue())
    print(f"metric banner_printed {len(banner.getvalue().strip().splitlines()) > 3}")
    seed_everything(4)
    model = Model()
    trainer = Trainer(max_steps=4, limit_val_batches=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    print(f"metric global_step {trainer.global_step}")
    print(f"metric weight_sum {model.layer.weight.sum().item():.10e}")

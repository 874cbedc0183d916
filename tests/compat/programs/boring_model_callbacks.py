"""The BoringModel from Lightning's demos with gradient accumulation, an LR monitor and a custom callback."""

from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger


class PrintLoss(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print(f"step {batch_idx} loss {outputs['loss'].item():.10e}")

    def on_train_epoch_end(self, trainer, pl_module):
        print(f"metric epoch{trainer.current_epoch}_global_step {trainer.global_step}")


class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("loss", out["loss"])
        return out


if __name__ == "__main__":
    seed_everything(2)
    trainer = Trainer(
        max_epochs=2,
        limit_train_batches=12,
        limit_val_batches=4,
        accumulate_grad_batches=3,
        log_every_n_steps=1,
        callbacks=[PrintLoss(), LearningRateMonitor(logging_interval="step")],
        logger=CSVLogger("logs"),
        enable_progress_bar=False,
    )
    model = Model()
    trainer.fit(model)
    print(f"metric global_step {trainer.global_step}")
    print(f"metric lr {trainer.optimizers[0].param_groups[0]['lr']:.10e}")
    print(f"metric lr_logged {trainer.callback_metrics['lr-SGD'].item():.10e}")
    print(f"metric weight_sum {model.layer.weight.sum().item():.10e}")

"""A small GAN in the style of Lightning's basic GAN example: two optimizers with manual optimization,
``self.save_hyperparameters()``, and generated samples sent to TensorBoard as images through
``self.logger.experiment.add_image`` on the default logger (TensorBoard when it is installed). The
event file is read back to check the tags written."""

import glob
import os

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Generator(nn.Module):
    def __init__(self, latent_dim, img_shape):
        super().__init__()
        self.img_shape = img_shape
        self.model = nn.Sequential(nn.Linear(latent_dim, 32), nn.LeakyReLU(0.2), nn.Linear(32, 16), nn.Tanh())

    def forward(self, z):
        return self.model(z).view(z.size(0), *self.img_shape)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, img):
        return self.model(img)


class GAN(LightningModule):
    def __init__(self, latent_dim: int = 8, lr: float = 2e-3, b1: float = 0.5, b2: float = 0.999):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent_dim, (1, 4, 4))
        self.discriminator = Discriminator()
        self.validation_z = torch.randn(6, latent_dim)

    def forward(self, z):
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        (imgs,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(imgs.shape[0], self.hparams.latent_dim).type_as(imgs)

        self.toggle_optimizer(opt_g)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z)), valid)
        self.log("g_loss", g_loss, prog_bar=True)
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        fake = torch.zeros(imgs.size(0), 1).type_as(imgs)
        real_loss = F.binary_cross_entropy_with_logits(self.discriminator(imgs), valid)
        fake_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z).detach()), fake)
        d_loss = (real_loss + fake_loss) / 2
        self.log("d_loss", d_loss, prog_bar=True)
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        print(f"step {self.global_step} loss {g_loss.item():.10e} {d_loss.item():.10e}")

    def configure_optimizers(self):
        lr, b1, b2 = self.hparams.lr, self.hparams.b1, self.hparams.b2
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(b1, b2))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(b1, b2))
        return [opt_g, opt_d], []

    def on_train_epoch_end(self):
        z = self.validation_z.type_as(self.generator.model[0].weight)
        samples = self(z)
        grid = torch.cat(list(samples), dim=2)  # the samples side by side: (1, 4, 24)
        self.logger.experiment.add_image("generated_images", (grid + 1) / 2, self.current_epoch)


if __name__ == "__main__":
    seed_everything(17)
    data = TensorDataset(torch.rand(24, 1, 4, 4) * 2 - 1)
    model = GAN()
    trainer = Trainer(max_epochs=2, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)
    trainer.fit(model, DataLoader(data, batch_size=8))
    print(f"metric logger {type(trainer.logger).__name__}")
    print(f"metric log_dir {os.path.relpath(trainer.logger.log_dir)}")
    print(f"metric global_step {trainer.global_step}")
    with open(os.path.join(trainer.logger.log_dir, "hparams.yaml")) as f:
        print(f"metric hparams_yaml {' '.join(sorted(line.strip() for line in f if line.strip()))}")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = glob.glob(os.path.join(trainer.logger.log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    print(f"metric image_tags {tags['images']}")
    images = events.Images("generated_images")
    print(f"metric image_steps {[im.step for im in images]} {images[-1].width}x{images[-1].height}")
    print(f"metric scalar_tags {' '.join(sorted(tags['scalars']))}")
    print(f"metric g_loss_logged {len(events.Scalars('g_loss'))}")

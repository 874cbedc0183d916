"""A tiny GAN (2-D ring of gaussians) with manual optimization: two optimizers, toggle/untoggle, clipping."""

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def ring(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    angles = torch.randint(0, 8, (n,), generator=g).float() * (2 * math.pi / 8)
    centers = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * 2
    return centers + 0.05 * torch.randn(n, 2, generator=g)


class GAN(pl.LightningModule):
    def __init__(self, latent_dim: int = 4, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(latent_dim, 16), nn.ReLU(), nn.Linear(16, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, z):
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.latent_dim)

        self.toggle_optimizer(opt_d)
        fake = self(z).detach()
        d_real = self.discriminator(real)
        d_fake = self.discriminator(fake)
        d_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + (
            F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        d_gen = self.discriminator(self(z))
        g_loss = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)
        print(f"step {self.global_step} loss {d_loss.item():.10e} {g_loss.item():.10e}")

    def configure_optimizers(self):
        lr = self.hparams.lr
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        return [opt_g, opt_d]


if __name__ == "__main__":
    pl.seed_everything(42)
    loader = DataLoader(TensorDataset(ring(256, 0)), batch_size=32)
    model = GAN()
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(model, loader)
    with torch.no_grad():
        samples = model(torch.randn(512, 4, generator=torch.Generator().manual_seed(1)))
    print(f"metric sample_radius {samples.norm(dim=1).mean().item():.10e}")
    print(f"metric global_step {trainer.global_step}")

"""Training script for the SLURM requeue tests: the model and data of ``_preempt_script.py`` under a SLURM job.

Usage: _slurm_script.py ROOT OUT ENV DEVICES
  ENV: ``detect`` (the environment is detected from SLURM's variables), ``off`` (plugins=[SLURMEnvironment(
  auto_requeue=False)]) or a signal name such as ``SIGHUP`` (plugins=[SLURMEnvironment(requeue_signal=...)]).
  DEVICES: processes per job (2: two tasks started like srun, ranks from SLURM_PROCID).
"""

import logging
import signal
import sys

import torch
from _preempt_script import Net
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.plugins.environments import SLURMEnvironment


def main(root: str, out: str, env: str, devices: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    L.seed_everything(3, verbose=False)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(48, 5, generator=g), torch.randn(48, 1, generator=g))
    model = Net()
    if env == "detect":
        plugins = None
    elif env == "off":
        plugins = [SLURMEnvironment(auto_requeue=False)]
    else:
        plugins = [SLURMEnvironment(requeue_signal=signal.Signals[env])]
    trainer = L.Trainer(max_steps=36, default_root_dir=root, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        accelerator="cpu", devices=devices, plugins=plugins)
    trainer.fit(model, DataLoader(ds, batch_size=4, shuffle=True))
    if trainer.is_global_zero:
        torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

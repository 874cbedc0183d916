"""A Fabric pretraining-style loop that measures its FLOPs with ``measure_flops`` on the meta device and
reports throughput with ``ThroughputMonitor`` (``lightning.fabric.utilities.throughput``), as litgpt's
pretraining scripts do. Timings vary run to run; the counts and the metric names do not."""

import time

import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger
from lightning.fabric.utilities.throughput import ThroughputMonitor, measure_flops
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, vocab)

    def forward(self, idx):
        return self.proj(torch.tanh(self.emb(idx)))


def main():
    fabric = Fabric(accelerator="cpu", devices=1, loggers=CSVLogger("logs", name="throughput"))
    fabric.seed_everything(1)
    batch, seq = 4, 8
    with torch.device("meta"):
        meta_model = TinyLM()
        x = torch.randint(0, 32, (batch, seq))
        fwd_flops = measure_flops(meta_model, lambda: meta_model(x))
        fwd_bwd_flops = measure_flops(meta_model, lambda: meta_model(x), lambda y: y.sum())
    print(f"metric fwd_flops {fwd_flops}")
    print(f"metric fwd_bwd_flops {fwd_bwd_flops}")

    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = fabric.setup(model, optimizer)
    monitor = ThroughputMonitor(fabric, window_size=2)
    start = time.perf_counter()
    data = torch.randint(0, 32, (6, batch, seq + 1), generator=torch.Generator().manual_seed(0))
    metrics = {}
    for step, chunk in enumerate(data):
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 32), targets.reshape(-1))
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step} loss {loss.item():.10e}")
        monitor.update(
            time=time.perf_counter() - start + step,  # strictly increasing even on a coarse clock
            batches=step + 1,
            samples=(step + 1) * batch,
            lengths=(step + 1) * batch * seq,
            flops=fwd_bwd_flops,
        )
        metrics = monitor.compute_and_log(step=step)
    print(f"metric throughput_keys {' '.join(sorted(metrics))}")
    print(f"metric samples {metrics['samples']}")
    print(f"metric batches {metrics['batches']}")
    fabric.logger.finalize("success")


if __name__ == "__main__":
    main()

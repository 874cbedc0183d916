"""``fulmen.utilities.throughput``: Throughput's rolling-window metrics (vs Lightning's), the Fabric monitor,
``measure_flops`` on the meta device and the peak-FLOPs table."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from fulmen.utilities.throughput import (
    Throughput,
    ThroughputMonitor,
    _MonotonicWindow,
    get_available_flops,
    measure_flops,
)


def _feed(throughputs: list[Throughput], rng: random.Random, lengths: bool, flops: bool, n: int) -> list[list[dict]]:
    t = b = s = tokens = 0.0
    out: list[list[dict]] = [[] for _ in throughputs]
    for _ in range(n):
        t += rng.random() + 0.1
        b += 1
        s += rng.randint(1, 4)
        tokens += s * 2
        kwargs = {"time": t, "batches": int(b), "samples": int(s)}
        if lengths:
            kwargs["lengths"] = int(tokens)
        if flops:
            kwargs["flops"] = rng.randint(1, 50)
        for throughput, record in zip(throughputs, out):
            throughput.update(**kwargs)
            record.append(throughput.compute())
    return out


def test_throughput_metrics_match_lightning() -> None:
    real = pytest.importorskip("lightning_fabric.utilities.throughput")
    rng = random.Random(0)
    for _ in range(100):
        kwargs = {
            "window_size": rng.choice([2, 3, 5]),
            "world_size": rng.choice([1, 2, 4]),
            "available_flops": rng.choice([None, 100.0]),
            "separator": rng.choice(["/", "|"]),
        }
        ours, theirs = _feed(
            [Throughput(**kwargs), real.Throughput(**kwargs)], rng, rng.random() < 0.5, rng.random() < 0.5, 8
        )
        for a, b in zip(ours, theirs):
            assert a.keys() == b.keys()
            assert all(a[k] == pytest.approx(b[k]) for k in a)


def test_throughput_rates_and_names() -> None:
    throughput = Throughput(available_flops=50, world_size=2, window_size=2)
    throughput.update(time=1.0, batches=1, samples=2, lengths=8, flops=10)
    assert throughput.compute() == {"time": 1.0, "batches": 1, "samples": 2, "lengths": 8}  # window not full
    throughput.update(time=3.0, batches=3, samples=6, lengths=24, flops=10)
    assert throughput.compute() == {
        "time": 3.0,
        "batches": 3,
        "samples": 6,
        "lengths": 24,
        "device/batches_per_sec": 1.0,
        "device/samples_per_sec": 2.0,
        "device/items_per_sec": 8.0,
        "batches_per_sec": 2.0,
        "samples_per_sec": 4.0,
        "items_per_sec": 16.0,
        "flops_per_sec": 10.0,  # (10 + 10) * 2 processes, minus the first update's, over 2 s
        "device/flops_per_sec": 5.0,
        "device/mfu": 0.1,
    }
    throughput.reset()
    assert throughput.compute() == {}


def test_throughput_rejects_bad_updates() -> None:
    throughput = Throughput(window_size=2)
    with pytest.raises(ValueError, match=r"samples \(1\) to be greater or equal than batches \(2\)"):
        throughput.update(time=1, batches=2, samples=1)
    with pytest.raises(ValueError, match=r"lengths \(1\) to be greater or equal than samples \(2\)"):
        throughput.update(time=1, batches=2, samples=2, lengths=1)
    throughput.update(time=1, batches=1, samples=1)
    with pytest.raises(ValueError, match="Expected the value to increase"):
        throughput.update(time=1, batches=2, samples=2)
    with pytest.raises(ValueError, match="window_size"):
        Throughput(window_size=1)
    with pytest.raises(ValueError, match="world_size"):
        Throughput(world_size=0)
    mixed = Throughput(window_size=3)
    mixed.update(time=1, batches=1, samples=1)
    with pytest.raises(RuntimeError, match="same number of samples"):
        mixed.update(time=2, batches=2, samples=2, lengths=4)


def test_monotonic_window() -> None:
    window: _MonotonicWindow[int] = _MonotonicWindow(maxlen=3)
    for value in (1, 2, 3, 4):
        window.append(value)
    assert window == [2, 3, 4] and window[-2:] == [3, 4]
    with pytest.raises(ValueError, match="increase"):
        window.append(4)
    with pytest.raises(NotImplementedError):
        window[0] = 10


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_measure_flops_on_meta_device() -> None:
    with torch.device("meta"):
        model = _Model()
        x = torch.randn(4, 32)
    forward = measure_flops(model, lambda: model(x))
    both = measure_flops(model, lambda: model(x), lambda y: y.sum())
    assert forward == 2 * 4 * 32 * 16  # one matmul: 2 * batch * in * out
    assert isinstance(both, int) and both > forward
    real = pytest.importorskip("lightning_fabric.utilities.throughput")
    assert real.measure_flops(model, lambda: model(x)) == forward
    assert real.measure_flops(model, lambda: model(x), lambda y: y.sum()) == both


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.5e12),
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.5e12),
        ("NVIDIA A100-SXM4-80GB", torch.float16, 312e12),
        ("Tesla T4", torch.float16, 65e12),
        ("Tesla V100-SXM2-16GB", torch.float32, 15.7e12),
        ("NVIDIA A10G", torch.float32, 31.2e12),
    ],
)
def test_available_flops_table(monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype, expected: float) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (7, 0))  # no tf32 switch
    assert get_available_flops(torch.device("cuda"), dtype) == int(expected)


def test_available_flops_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_available_flops(torch.device("cpu"), torch.float32) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "CocoNut 9000")
    with pytest.warns(UserWarning, match="FLOPs not found for 'CocoNut 9000'"):
        assert get_available_flops(torch.device("cuda"), torch.float32) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla T4")
    with pytest.warns(UserWarning, match="does not support torch.bfloat16"):
        assert get_available_flops(torch.device("cuda"), torch.bfloat16) is None


class _RecordingLogger:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.calls.append((dict(metrics), step))

    def log_hyperparams(self, *args: object, **kwargs: object) -> None: ...

    def save(self) -> None: ...

    def finalize(self, status: str) -> None: ...


def test_throughput_monitor_logs_through_fabric() -> None:
    import fulmen

    logger = _RecordingLogger()
    fabric = fulmen.Fabric(accelerator="cpu", devices=1, loggers=logger)
    monitor = ThroughputMonitor(fabric, window_size=2, separator="|")
    assert monitor.available_flops is None and monitor.world_size == 1
    for i in range(1, 4):
        monitor.update(time=float(i), batches=i, samples=3 * i)
        monitor.compute_and_log()
    monitor.update(time=10.0, batches=10, samples=30)
    monitor.compute_and_log(step=42)
    assert [step for _, step in logger.calls] == [0, 1, 2, 42]
    assert logger.calls[0][0] == {"time": 1.0, "batches": 1, "samples": 3}
    assert logger.calls[1][0]["device|samples_per_sec"] == 3.0
    assert monitor.step == 42

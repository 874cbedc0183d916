"""The CUDA workload (issue 16): fulmen against a hand-written AMP loop and Lightning, on one GPU.

    .venv/bin/python benchmarks/gpu_bench.py --out OUTDIR                    # on a GPU machine (a few minutes)
    .venv/bin/python benchmarks/gpu_bench.py --out OUTDIR --docs docs/benchmarks.md  # and write the table there
    .venv/bin/python benchmarks/gpu_bench.py --smoke --out /tmp/x            # CPU, tiny sizes, seconds (the suite)

Workloads: ``cnn`` (a ResNet-ish CNN on 32x32 images) and ``gpt`` (fulmen's demo ``Transformer``,
``fulmen.demos.transformer``, as a next-token model), each with ``bf16-mixed`` and ``16-mixed``.
Contestants: the hand-written loop (``torch.autocast`` + a ``GradScaler`` for 16-mixed), fulmen
``minimal`` and ``defaults`` (the settings of benchmarks/contestants.py: defaults log the loss with
``prog_bar=True`` every step) and Lightning (pytorch-lightning) the same two ways when installed.

What is measured, per run (a fresh model from seed 0, batches already on the device):

* samples/s over the steady state: from the start of step ``warmup`` to the start of the last step,
  with a ``torch.cuda.synchronize()`` at both ends (the same two syncs for everyone; per-run costs
  such as Trainer construction, the model summary or the epoch-end checkpoint are outside the window);
* peak GPU memory (``torch.cuda.max_memory_allocated``) over the whole run.

Rounds are interleaved (every contestant once per round, the order reversed every other round) after a
discarded warm-up round (none in a smoke run); the table shows the median over rounds of the ratio to the hand-written loop's
samples/s in the same round, and the median peak memory minus the hand-written loop's.

``--only curves`` (part of the default run on a GPU): fulmen fits the cnn in 32-true plainly, with the
network ``torch.compile``d, and with ``strategy="fsdp"`` (world size 1), and compares the per-step losses.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from contestants import _quiet, lightning_available, lightning_version  # noqa: E402
from machine import ROOT, git_revision, median  # noqa: E402
from workloads import Batches  # noqa: E402

DOCS_START, DOCS_END = "<!-- gpu-bench:start -->", "<!-- gpu-bench:end -->"
GOAL_RATIO, GOAL_EXTRA_MB = 0.99, 0.0  # fulmen defaults vs the hand-written loop (issue 16)


# --------------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNetish(nn.Module):
    """A small ResNet (CIFAR-style: stem, three stages of two blocks, global pooling, a linear head)."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(
            _Block(w, w, 1), _Block(w, w, 1), _Block(w, 2 * w, 2), _Block(2 * w, 2 * w, 1),
            _Block(2 * w, 4 * w, 2), _Block(4 * w, 4 * w, 1),
        )
        self.head = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class GPT(nn.Module):
    """fulmen's demo Transformer as a next-token model: ``net((tokens, targets))`` gives log-probs."""

    def __init__(self, vocab: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        from fulmen.demos.transformer import Transformer

        self.model = Transformer(vocab_size=vocab, ninp=dim, nhead=heads, nhid=4 * dim, nlayers=layers, dropout=0.0)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, targets = batch
        return self.model(tokens, targets)


@dataclass
class GpuWorkload:
    key: str
    title: str
    batch_size: int
    steps: int
    warmup: int  # steps before the timed window
    make_net: Callable[[], nn.Module]
    make_batch: Callable[[torch.Generator], tuple[Any, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def make_data(self, device: torch.device) -> Batches:
        gen = torch.Generator().manual_seed(1)
        batches = []
        for _ in range(self.steps):
            x, y = self.make_batch(gen)
            x = tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)
            batches.append((x, y.to(device)))
        return Batches(batches)


def _cnn(smoke: bool) -> GpuWorkload:
    bs, width, size = (4, 4, 8) if smoke else (256, 64, 32)

    def batch(gen: torch.Generator) -> tuple[Any, torch.Tensor]:
        return torch.randn(bs, 3, size, size, generator=gen), torch.randint(0, 10, (bs,), generator=gen)

    return GpuWorkload(
        "cnn", f"ResNet-ish CNN (width {width}, {size}x{size} images, batch {bs})", bs,
        4 if smoke else 120, 1 if smoke else 20, lambda: ResNetish(width), batch, F.cross_entropy,
    )


def _gpt(smoke: bool) -> GpuWorkload:
    bs, seq, vocab, dim, heads, layers = (2, 8, 50, 16, 2, 1) if smoke else (32, 128, 8192, 256, 4, 2)

    def batch(gen: torch.Generator) -> tuple[Any, torch.Tensor]:
        tokens = torch.randint(0, vocab, (bs, seq + 1), generator=gen)
        x, y = tokens[:, :-1], tokens[:, 1:]
        return (x, y), y.reshape(-1)

    return GpuWorkload(
        "gpt", f"small GPT (demo Transformer: dim {dim}, {layers}+{layers} layers, seq {seq}, vocab {vocab}, "
        f"batch {bs})", bs, 4 if smoke else 120, 1 if smoke else 20,
        lambda: GPT(vocab, dim, heads, layers), batch, F.nll_loss,
    )


WORKLOADS = {"cnn": _cnn, "gpt": _gpt}


# --------------------------------------------------------------------------------------------------
# the clock and the contestants
# --------------------------------------------------------------------------------------------------
class _Clock:
    """Marks the start of step ``warmup`` and of the last step, after a device sync (on a GPU)."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.last, self.device = warmup, steps - 1, device
        self.step = 0
        self.t0 = self.t1 = float("nan")

    def tick(self) -> None:
        if self.step in (self.warmup, self.last):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if self.step == self.warmup:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()
        self.step += 1


@dataclass
class Measured:
    samples_per_s: float
    peak_mb: float
    final_loss: float


def _autocast_dtype(precision: str) -> torch.dtype:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]


def run_hand(wl: GpuWorkload, precision: str, device: torch.device, root: str) -> tuple[nn.Module, _Clock, Any]:
    net = wl.make_net().to(device)
    data = wl.make_data(device)
    clock = _Clock(wl.warmup, wl.steps, device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    dtype = _autocast_dtype(precision)
    net.train()
    loss = None
    for x, y in data:
        clock.tick()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype):
            loss = wl.loss(net(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    return net, clock, loss


def _framework(name: str, minimal: bool) -> Callable[..., tuple[nn.Module, _Clock, Any]]:
    def run(wl: GpuWorkload, precision: str, device: torch.device, root: str) -> tuple[nn.Module, _Clock, Any]:
        if name == "fulmen":
            import fulmen as L
        else:
            import pytorch_lightning as L  # type: ignore[no-redef]
        clock = _Clock(wl.warmup, wl.steps, device)
        last: dict[str, Any] = {}

        class Module(L.LightningModule):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.net = wl.make_net()

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                clock.tick()
                x, y = batch
                loss = wl.loss(self.net(x), y)
                if not minimal:
                    self.log("loss", loss, prog_bar=True)
                last["loss"] = loss
                return loss

            def configure_optimizers(self) -> Any:
                return torch.optim.AdamW(self.parameters(), lr=1e-3)

        kwargs: dict[str, Any] = dict(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, precision=precision,
            default_root_dir=root,
        )
        if minimal:
            kwargs.update(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False)
        module = Module()
        trainer = L.Trainer(**kwargs)
        trainer.fit(module, wl.make_data(device))
        return module.net, clock, last.get("loss")

    return run


def contestants(with_lightning: bool) -> dict[str, tuple[str, Callable[..., Any]]]:
    out: dict[str, tuple[str, Callable[..., Any]]] = {
        "hand": ("hand-written AMP loop", run_hand),
        "fulmen_min": ("fulmen, minimal", _framework("fulmen", True)),
        "fulmen_def": ("fulmen, defaults", _framework("fulmen", False)),
    }
    if with_lightning and lightning_available():
        out["lightning_min"] = (f"Lightning {lightning_version()}, minimal", _framework("lightning", True))
        out["lightning_def"] = (f"Lightning {lightning_version()}, defaults", _framework("lightning", False))
    return out


def measure(fn: Callable[..., Any], wl: GpuWorkload, precision: str, device: torch.device, root: str) -> Measured:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    with _quiet():
        net, clock, loss = fn(wl, precision, device, root)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    timed_steps = clock.last - clock.warmup
    if clock.step != wl.steps:
        raise RuntimeError(f"expected {wl.steps} training steps, ran {clock.step}")
    rate = timed_steps * wl.batch_size / (clock.t1 - clock.t0)
    final = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float("nan")
    del net
    return Measured(rate, peak, final)


# --------------------------------------------------------------------------------------------------
# loss curves: torch.compile and fsdp (world size 1) against the plain fit
# --------------------------------------------------------------------------------------------------
def loss_curves(device: torch.device, smoke: bool, root: str) -> dict[str, Any]:
    import fulmen as L

    wl = _cnn(smoke)
    variants: dict[str, dict[str, Any]] = {"plain": {}, "compile": {"compile": True}}
    if device.type == "cuda":
        variants["fsdp"] = {"strategy": "fsdp"}
    curves: dict[str, Any] = {}
    for name, opts in variants.items():
        losses: list[float] = []

        class Module(L.LightningModule):
            def __init__(self, compiled: bool) -> None:
                super().__init__()
                self.net = wl.make_net()
                if compiled:
                    # smoke: dynamo without inductor's code generation (seconds on the CPU, not minutes)
                    self.net = torch.compile(self.net, backend="eager" if smoke else "inductor")
                self.losses: list[torch.Tensor] = []

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                loss = wl.loss(self.net(x), y)
                self.losses.append(loss.detach())
                return loss

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=0.01)

        torch.manual_seed(0)
        try:
            module = Module(bool(opts.get("compile")))
            trainer = L.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=root, strategy=opts.get("strategy", "auto"),
            )
            with _quiet():
                trainer.fit(module, wl.make_data(device))
            losses = [float(t.float().cpu()) for t in module.losses]
            curves[name] = {"losses": losses}
        except Exception as exc:  # recorded, not fatal: the other variants still run
            curves[name] = {"error": f"{type(exc).__name__}: {exc}"}
    plain = curves.get("plain", {}).get("losses")
    for name, entry in curves.items():
        if name != "plain" and plain and "losses" in entry:
            entry["max_abs_diff_vs_plain"] = max(abs(a - b) for a, b in zip(plain, entry["losses"]))
    return curves


# --------------------------------------------------------------------------------------------------
# the run and its table
# --------------------------------------------------------------------------------------------------
def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        gpu = f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        gpu = "no GPU (CPU smoke run: not a measurement)"
    lv = lightning_version()
    return "; ".join([
        gpu, f"torch {torch.__version__}", f"Lightning (pytorch-lightning) {lv}" if lv else "Lightning not installed",
        f"fulmen {git_revision()}", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    ])


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Device: {results['device']}", "",
        f"Steady-state samples/s as a ratio to the hand-written AMP loop (median of {results['rounds']} "
        "interleaved rounds; goal for fulmen defaults >= 0.99x) and peak GPU memory beyond the hand-written "
        "loop's (goal +0 MB beyond the logged values).", "",
        "| workload | precision | contestant | samples/s | ratio to hand | peak MB | extra MB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['workload']} | {row['precision']} | {row['title']} | {row['samples_per_s']:.0f} | "
            f"{row['ratio']:.3f}x | {row['peak_mb']:.0f} | {row['extra_mb']:+.0f} |"
        )
    curves = results.get("curves")
    if curves:
        lines += ["", "Loss curves of the cnn (fulmen, 32-true) against the plain fit:", ""]
        for name, entry in curves.items():
            if name == "plain":
                continue
            shown = entry.get("error") or f"max |loss - plain loss| over the steps: {entry['max_abs_diff_vs_plain']:.2e}"
            lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"


def write_docs(path: str, text: str) -> None:
    with open(path) as f:
        doc = f.read()
    if DOCS_START not in doc or DOCS_END not in doc:
        raise SystemExit(f"{path} has no {DOCS_START} ... {DOCS_END} block to replace; add one under '## GPU'")
    head, rest = doc.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    with open(path, "w") as f:
        f.write(head + DOCS_START + "\n" + text + DOCS_END + tail)


def _write(out: str, results: dict[str, Any]) -> str:
    text = table(results)
    with open(os.path.join(out, "gpu_bench.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "gpu_bench.md"), "w") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for gpu_bench.json and gpu_bench.md")
    ap.add_argument("--from-json", default=None, help="render an earlier run's gpu_bench.json (with --docs: into the docs)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, one round (tests the script)")
    ap.add_argument("--workloads", default="cnn,gpt")
    ap.add_argument("--precisions", default=None, help="default bf16-mixed,16-mixed (smoke: bf16-mixed)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds after one warm-up round (default 3)")
    ap.add_argument("--only", default="loops,curves", help="loops, curves or both")
    ap.add_argument("--no-lightning", action="store_true")
    ap.add_argument("--docs", default=None, help="also write the table into this markdown file's gpu-bench block")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            text = table(json.load(f))
        print(text)
        if args.docs:
            write_docs(args.docs if os.path.isabs(args.docs) else os.path.join(ROOT, args.docs), text)
        return 0
    if not args.out:
        ap.error("--out is required (or --from-json)")

    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    else:
        raise SystemExit("no CUDA device: run this on a GPU machine, or pass --smoke for the CPU check")
    precisions = (args.precisions or ("bf16-mixed" if args.smoke else "bf16-mixed,16-mixed")).split(",")
    rounds = args.rounds if args.rounds is not None else (1 if args.smoke else 3)
    os.makedirs(args.out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="gpu_bench_runs_")  # the frameworks' logs and checkpoints: not results
    parts = set(args.only.split(","))
    runners = contestants(with_lightning=not args.no_lightning)
    results: dict[str, Any] = {"device": device_line(device), "rounds": rounds, "rows": [], "smoke": args.smoke}

    if "loops" in parts:
        for wkey in args.workloads.split(","):
            if wkey not in WORKLOADS:
                raise SystemExit(f"unknown workload {wkey!r}; choose from {sorted(WORKLOADS)}")
            wl = WORKLOADS[wkey](args.smoke)
            for precision in precisions:
                per: dict[str, list[Measured]] = {k: [] for k in runners}
                order = list(runners)
                # round 0 warms up (lazy CUDA init, cuDNN autotuning) and is dropped; a smoke run has none
                for r in range(1 if args.smoke else 0, rounds + 1):
                    for key in order if r % 2 == 0 else order[::-1]:
                        m = measure(runners[key][1], wl, precision, device, root)
                        if r > 0:
                            per[key].append(m)
                        print(f"[{wkey} {precision} round {r}] {key}: {m.samples_per_s:.1f} samples/s, "
                              f"peak {m.peak_mb:.0f} MB", flush=True)
                hand = per["hand"]
                for key, (title, _) in runners.items():
                    ratios = [m.samples_per_s / h.samples_per_s for m, h in zip(per[key], hand)]
                    results["rows"].append({
                        "workload": wkey, "precision": precision, "contestant": key, "title": title,
                        "samples_per_s": median([m.samples_per_s for m in per[key]]), "ratio": median(ratios),
                        "ratios": ratios, "peak_mb": median([m.peak_mb for m in per[key]]),
                        "extra_mb": median([m.peak_mb - h.peak_mb for m, h in zip(per[key], hand)]),
                        "final_loss": [m.final_loss for m in per[key]], "workload_title": wl.title,
                    })
                _write(args.out, results)  # after each block: a run stopped by its time limit keeps what it measured
    if "curves" in parts:
        results["curves"] = loss_curves(device, args.smoke, root)

    text = _write(args.out, results)
    print(text)
    if args.docs:
        write_docs(args.docs if os.path.isabs(args.docs) else os.path.join(ROOT, args.docs), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Lightning programs, unmodified, under ``fulmen run`` and (when installed) under the real Lightning.

Each program in ``programs/`` is written as a Lightning 2.x user writes it and prints ``step <i> loss <v>...``
per training step and ``metric <name> <value>`` at the end. Every program runs as a subprocess: under
``python -m fulmen run`` always, and under the real Lightning too when ``pytorch-lightning`` is installed
(the dev extra pins 2.6.1). All runs start at once (the processes are independent); the whole corpus takes
about 130 CPU-seconds (about a minute on an otherwise idle 2-core machine). A program that needs environment variables (``PL_TRAINER_*``) gets them
on both sides (``Program.env``); one that starts processes of its own (DDP) gets a Lightning reference process
of its own (``Program.isolated``). Files a program writes (TensorBoard event files and their tags,
``hparams.yaml``, checkpoint names, prediction files) are read back by the program and printed as metrics,
so they are compared like any other value.

Tolerances: with shuffle off and no dropout every step loss and every metric agrees to 1e-6
(``math.isclose(rel_tol=1e-6, abs_tol=1e-6)``; in practice they are bitwise equal). The one exception is the
tuner, whose learning-rate range test is deliberately not Lightning's (see docs/migration.md): there the
batch size found must be equal and the suggested learning rate within a factor of 3.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
REFERENCE = HERE / "_lightning_reference.py"
HAS_LIGHTNING = importlib.util.find_spec("pytorch_lightning") is not None
TOL = 1e-6


@dataclass(frozen=True)
class Program:
    name: str
    args: tuple[str, ...] = ()
    needs: str | None = None  # a fulmen module built by another issue; absent -> xfail
    compare: dict[str, Callable[[object, object], bool]] = field(default_factory=dict)  # metric -> check
    exact: bool = True  # all step losses and all other metrics agree to TOL
    env: tuple[tuple[str, str], ...] = ()  # environment variables the program runs with (both frameworks)
    isolated: bool = False  # under Lightning, run in a reference process of its own
    requires: tuple[str, ...] = ()  # third-party packages the program imports (all in the dev extra); absent -> skip


def _within_factor(factor: float) -> Callable[[object, object], bool]:
    def check(a: object, b: object) -> bool:
        assert isinstance(a, float) and isinstance(b, float)
        return a > 0 and b > 0 and max(a / b, b / a) <= factor

    return check


def _equal(a: object, b: object) -> bool:
    return a == b


CORPUS = [
    Program("autoencoder"),
    Program("gan_manual_optimization"),
    Program("transformer_lm"),
    Program("multiple_val_dataloaders"),
    Program(
        "cli_yaml",
        args=(
            "fit",
            "--config",
            str(PROGRAMS / "cli_yaml.yaml"),
            "--trainer.max_epochs=3",
            "--model.lr=0.05",
        ),
        needs="fulmen.cli",
    ),
    Program("datamodule_transforms"),
    Program("early_stopping_checkpointing"),
    Program(
        "tuner",
        needs="fulmen.tuner",
        exact=False,
        compare={"batch_size": _equal, "lr_suggestion": _within_factor(3.0)},
    ),
    Program("fabric_loop"),
    Program("resume_from_checkpoint"),
    Program("boring_model_callbacks"),
    Program("loop_progress_callback"),
    Program("fit_twice"),
    Program("training_step_no_batch_idx"),
    Program("validate_datamodule_positional"),
    Program("cli_logo"),
    Program(
        "trainer_env_defaults",
        env=(
            ("PL_TRAINER_MAX_EPOCHS", "3"),
            ("PL_TRAINER_LIMIT_TRAIN_BATCHES", "4"),
            ("PL_TRAINER_LOG_EVERY_N_STEPS", "2"),
        ),
    ),
    Program("prediction_writer"),
    Program("fabric_lr_scheduler"),
    Program("fabric_throughput"),  # prints counts and metric names only (the throughput values are timings)
    Program("gan_tensorboard_images", requires=("tensorboard",)),
    Program(
        "cli_module_injection",
        args=("fit", "--config", str(PROGRAMS / "cli_module_injection.yaml")),
        needs="fulmen.cli",
    ),
    Program("hydra_template", requires=("hydra", "omegaconf")),
    Program("torchmetrics_logging", requires=("torchmetrics",)),
    Program("finetuning_backbone"),
    # Lightning's DDP launcher re-runs the script in a child process and changes the parent's environment:
    # it gets a reference process of its own
    Program("ddp_cpu_two_processes", isolated=True),
]


def _env(extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    env = dict(os.environ)
    # one thread per process: the runs go in parallel, and thread count must not change float reductions
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONWARNINGS="ignore")
    env.pop("FULMEN_COMPAT_SCRIPT", None)
    env.update(extra)
    return env


def _fulmen_run(program: str, args: tuple[str, ...], cwd: Path, done: Path | None = None,
                extra_env: tuple[tuple[str, str], ...] = ()) -> str:
    """``python -m fulmen run programs/<program>.py args`` in ``cwd``; returns stdout (raises on failure)."""
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        # -X importtime lists every module imported: proof that Lightning itself never loaded (see below)
        [sys.executable, "-X", "importtime", "-m", "fulmen", "run", str(PROGRAMS / f"{program}.py"), *args],
        cwd=cwd,
        env=_env(extra_env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done is not None:
        done.touch()  # a Lightning job waiting on this run's checkpoint may start (even on failure: it then fails)
    if result.returncode != 0:
        raise AssertionError(
            f"{program} {' '.join(args)} under fulmen exited {result.returncode}\n--- stdout\n"
            f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    # modules only the real Lightning has (fulmen run maps public module names only, never these private ones)
    assert not re.search(r"\|\s+(lightning_fabric\._graveyard|pytorch_lightning\.loops)\b", result.stderr), (
        f"{program}: the real Lightning was imported under fulmen run"
    )
    assert re.search(r"\|\s+fulmen\.(trainer\.trainer|fabric\.fabric)$", result.stderr, re.MULTILINE), (
        f"{program}: no fulmen"
    )
    return result.stdout


class _LightningJobs:
    """Programs run on the real Lightning, several per process (importing Lightning costs seconds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: list[list[dict[str, object]]] = [[], []]  # two processes, so both halves run at once
        self.shared = len(self.jobs)  # the processes that run several jobs (isolated jobs get one each)
        self.outputs: dict[str, tuple[int, Path]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[BinaryIO] = []

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for log in self.logs:
            log.close()

    def add(
        self, key: str, program: str, args: tuple[str, ...], cwd: Path, wait_for: Path | None = None,
        env: tuple[tuple[str, str], ...] = (), isolated: bool = False,
    ) -> None:
        out = self.root / f"{key.replace(':', '_')}.out"
        if isolated:
            self.jobs.append([])
            index = len(self.jobs) - 1
        else:
            shared = range(self.shared)
            index = min(shared, key=lambda i: len(self.jobs[i])) if wait_for is None else 1
        self.jobs[index].append(
            {
                "script": str(PROGRAMS / f"{program}.py"),
                "args": list(args),
                "cwd": str(cwd),
                "out": str(out),
                "wait_for": str(wait_for) if wait_for else None,
                "env": dict(env),
            }
        )
        self.outputs[key] = (index, out)

    def start(self) -> None:
        for i, jobs in enumerate(self.jobs):
            # jobs that wait for a fulmen run go last, so they never hold up the others
            jobs.sort(key=lambda job: job["wait_for"] is not None)
            spec = self.root / f"jobs{i}.json"
            spec.write_text(json.dumps(jobs))
            log = open(self.root / f"jobs{i}.log", "wb")  # noqa: SIM115 - closed in close()
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(REFERENCE), "--jobs", str(spec)],
                    env=_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def result(self, key: str) -> str:
        """Wait for one job (not the whole process: a job's ``.rc`` file appears when it is done)."""
        index, out = self.outputs[key]
        rc_file = Path(str(out) + ".rc")
        deadline = time.monotonic() + 600
        while not rc_file.exists() and self.procs[index].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        text = out.read_text() if out.exists() else ""
        if not rc_file.exists() or rc_file.read_text() != "0":
            log = (self.root / f"jobs{index}.log").read_text()[-4000:]
            raise AssertionError(f"{key} under Lightning failed\n--- stdout\n{text[-4000:]}\n--- log\n{log}")
        return text


@dataclass
class Runs:
    fulmen: dict[str, Future[str]]
    lightning: _LightningJobs | None

    def __getitem__(self, key: str) -> str:
        if key in self.fulmen:
            return self.fulmen[key].result()
        assert self.lightning is not None, key
        return self.lightning.result(key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Start every run of the corpus at once; each test waits for the ones it reads."""
    root = tmp_path_factory.mktemp("corpus")
    first, second = ("--phase", "first", "--dir", "ckpts"), ("--phase", "second", "--dir", "ckpts")
    lightning = _LightningJobs(root) if HAS_LIGHTNING else None
    if lightning is not None:
        for p in CORPUS:
            if any(importlib.util.find_spec(m) is None for m in p.requires):
                continue
            lightning.add(
                f"{p.name}:lightning", p.name, p.args, root / f"{p.name}_lightning", env=p.env, isolated=p.isolated
            )
        # checkpoints across frameworks: Lightning writes and fulmen resumes, and the reverse
        lightning.add("resume:lightning-first", "resume_from_checkpoint", first, root / "l2f")
        lightning.add(
            "resume:lightning-second",
            "resume_from_checkpoint",
            second,
            root / "f2l",
            wait_for=root / "f2l.done",
        )
        lightning.start()

    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    fulmen: dict[str, Future[str]] = {}
    if lightning is not None:
        fulmen["resume:fulmen-first"] = pool.submit(
            _fulmen_run, "resume_from_checkpoint", first, root / "f2l", root / "f2l.done"
        )
    for p in CORPUS:
        if any(importlib.util.find_spec(m) is None for m in p.requires):
            continue
        fulmen[f"{p.name}:fulmen"] = pool.submit(
            _fulmen_run, p.name, p.args, root / f"{p.name}_fulmen", None, p.env
        )
    if lightning is not None:

        def lightning_then_fulmen() -> str:
            lightning.result("resume:lightning-first")
            return _fulmen_run("resume_from_checkpoint", second, root / "l2f")

        fulmen["resume:fulmen-second"] = pool.submit(lightning_then_fulmen)
    else:
        fulmen["resume:fulmen-first"] = pool.submit(
            _fulmen_run, "resume_from_checkpoint", first, root / "f2f"
        )
    yield Runs(fulmen, lightning)
    pool.shutdown(wait=True, cancel_futures=True)
    if lightning is not None:
        lightning.close()


def parse(stdout: str) -> tuple[list[tuple[str, list[float]]], dict[str, object]]:
    """``(steps, metrics)``: the ``step`` lines in order, and the ``metric`` lines (floats where they parse)."""
    steps: list[tuple[str, list[float]]] = []
    metrics: dict[str, object] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "step" and parts[2] == "loss":
            steps.append((parts[1], [float(v) for v in parts[3:]]))
        elif len(parts) >= 3 and parts[0] == "metric":
            raw = line.split(maxsplit=2)[2]
            try:
                metrics[parts[1]] = float(raw)
            except ValueError:
                metrics[parts[1]] = raw
    return steps, metrics


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)
    return a == b


def assert_same(fulmen_out: str, lightning_out: str, program: Program) -> None:
    f_steps, f_metrics = parse(fulmen_out)
    l_steps, l_metrics = parse(lightning_out)
    assert set(f_metrics) == set(l_metrics), (
        f"metrics printed differ: {sorted(f_metrics)} vs {sorted(l_metrics)}"
    )
    for name, check in program.compare.items():
        assert check(f_metrics[name], l_metrics[name]), (
            f"{name}: fulmen {f_metrics[name]} vs Lightning {l_metrics[name]}"
        )
    if not program.exact:
        return
    assert len(f_steps) == len(l_steps), f"{len(f_steps)} steps under fulmen, {len(l_steps)} under Lightning"
    for i, ((f_id, f_vals), (l_id, l_vals)) in enumerate(zip(f_steps, l_steps)):
        assert f_id == l_id and len(f_vals) == len(l_vals), (
            f"step line {i}: {f_id} {f_vals} vs {l_id} {l_vals}"
        )
        for fv, lv in zip(f_vals, l_vals):
            assert _close(fv, lv), f"step line {i} (step {f_id}): fulmen {f_vals} vs Lightning {l_vals}"
    for name in f_metrics:
        assert _close(f_metrics[name], l_metrics[name]), (
            f"{name}: fulmen {f_metrics[name]} vs Lightning {l_metrics[name]}"
        )


@pytest.mark.parametrize("program", CORPUS, ids=[p.name for p in CORPUS])
def test_program_runs_on_fulmen_like_on_lightning(program: Program, runs: Runs) -> None:
    missing = [m for m in program.requires if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{program.name} needs {missing} (pip install -e '.[dev]')")
    if program.needs is not None and importlib.util.find_spec(program.needs) is None:
        pytest.xfail(f"{program.needs} is not in this fulmen yet (built by another issue)")
    fulmen_out = runs[f"{program.name}:fulmen"]
    steps, metrics = parse(fulmen_out)
    assert metrics, f"{program.name} printed no metrics under fulmen:\n{fulmen_out[-2000:]}"
    assert steps or not program.exact
    if not HAS_LIGHTNING:
        pytest.skip("pytorch-lightning is not installed: ran under fulmen only")
    assert_same(fulmen_out, runs[f"{program.name}:lightning"], program)


def test_corpus_is_complete() -> None:
    assert len(CORPUS) >= 22
    assert {p.name for p in CORPUS} == {p.stem for p in PROGRAMS.glob("*.py")}


@pytest.mark.parametrize("writer", ["fulmen", "lightning"])
def test_resume_across_frameworks(writer: str, runs: Runs) -> None:
    """A checkpoint written by one framework resumes in the other exactly as Lightning resumes its own."""
    if not HAS_LIGHTNING:
        assert parse(runs["resume:fulmen-first"])[1]["first_global_step"] == 8.0
        pytest.skip("pytorch-lightning is not installed")
    reader = "lightning" if writer == "fulmen" else "fulmen"
    crossed = runs[f"resume:{writer}-first"] + runs[f"resume:{reader}-second"]
    # Lightning writing and resuming its own checkpoint, in one process: the reference
    reference = runs["resume_from_checkpoint:lightning"]
    assert_same(crossed, reference, Program("resume_from_checkpoint"))
    assert parse(crossed)[1]["global_step"] == 16.0

"""The sweep driver: asks Optuna for parameters, runs each trial as a subprocess of the unmodified script.

The driver keeps no state of its own: the study (its storage) holds the trials, their parameters and
states; each trial folder ``DIR/trial_NNN/`` holds its command, logs, checkpoints and result. Killing the
driver therefore loses nothing, and running it again continues: finished trials are kept, a trial that
was running is started again with the same parameters and resumes from its last checkpoint
(``FULMEN_AUTO_RESUME=1`` in its context), and new trials are asked until there are ``trials``.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fulmen.sweep.context import PROGRESS_FILE, RESULT_FILE, TrialContext, read_json, write_json
from fulmen.sweep.engine import make_pruner, make_sampler, make_storage, optuna, redact
from fulmen.sweep.placement import Slot, plan
from fulmen.sweep.space import SearchSpace, is_expression, parse_expression

SPEC_ATTR = "fulmen_sweep"
META_FILE = "sweep.json"
# a trial stopped by a signal (preemption checkpoint written, or killed): resumed, not counted as a failure
_INTERRUPTED = {-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGUSR1,
                128 + signal.SIGINT}


_MAX_INTERRUPTIONS = 10


class SweepError(RuntimeError):
    """The sweep cannot go on (bad definition, a metric the script never logs, another sweep in the folder)."""


@dataclass
class Options:
    """The sweep command's options (see ``fulmen sweep --help``)."""

    script: str = ""
    script_args: list[str] = field(default_factory=list)
    trials: int | None = None
    parallel: int = 1
    devices_per_trial: int = 1
    trials_per_device: int = 1
    accelerator: str = "auto"
    metric: str = "val_loss"
    mode: str = "min"
    objective: str = "last"
    sampler: str = "auto"
    pruner: str = "median"
    name: str | None = None
    dir: str | None = None
    storage: str | None = None
    retries: int = 0
    timeout: float | None = None
    seed: int | None = None
    config: str | None = None
    quiet: bool = False
    worker: str | None = None  # a named worker of a shared (PostgreSQL) study
    heartbeat: int | None = None


def split_args(args: list[str]) -> tuple[list[str], list[tuple[int, str, str]], SearchSpace]:
    """The script's arguments: the template, where each swept value goes ``(index, prefix, name)``, the space."""
    space = SearchSpace()
    holes: list[tuple[int, str, str]] = []
    for i, token in enumerate(args):
        prefix, value = "", token
        if token.startswith("-") and "=" in token:
            prefix, value = token.split("=", 1)
            prefix += "="
        if not is_expression(value):
            continue
        if prefix:
            flag = prefix[:-1]
        elif i > 0 and args[i - 1].startswith("-") and "=" not in args[i - 1]:
            flag = args[i - 1]
        else:
            flag = f"arg{i}"
        name = flag.lstrip("-")
        space.add(parse_expression(value, name))
        holes.append((i, prefix, name))
    return list(args), holes, space


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def fill(template: list[str], holes: list[tuple[int, str, str]], params: dict[str, Any]) -> list[str]:
    args = list(template)
    for index, prefix, name in holes:
        args[index] = prefix + format_value(params[name])
    return args


def trial_folder(root: str, number: int, user_attrs: dict[str, Any] | None = None) -> str:
    """``root/trial_NNN``; a retried trial (a stale one of a dead worker) keeps the folder of the one it retries."""
    name = (user_attrs or {}).get("folder") or f"trial_{number:03d}"
    return os.path.join(root, name)


@dataclass
class _Running:
    number: int
    trial_id: int
    params: dict[str, Any]
    slot: Slot
    proc: subprocess.Popen[bytes]
    folder: str
    started: float
    last_progress: Any = None


class Sweep:
    """One sweep: its definition, study, slots and running trials. :meth:`run` drives it to the end."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        if not opts.script:
            raise SweepError("no script given. Usage: fulmen sweep [options] SCRIPT.py [script args]")
        script = os.path.abspath(opts.script)
        if not os.path.isfile(script):
            raise SweepError(f"the script {opts.script!r} does not exist. Fix: check the path.")
        self.script = script
        if opts.mode not in ("min", "max"):
            raise SweepError(f"--mode {opts.mode!r} is not known; expected min or max.")
        if opts.objective not in ("last", "best"):
            raise SweepError(f"--objective {opts.objective!r} is not known; expected last or best.")
        self.template, self.holes, self.space = split_args(opts.script_args)
        if opts.config:
            from fulmen.sweep.space import load_config

            cfg = load_config(opts.config)
            extra = SearchSpace.from_mapping(cfg.get("parameters") or {})
            for p in extra.params:
                name = p.name.lstrip("-")
                flag = p.name if p.name.startswith("-") else f"--{name}"
                if flag in self.template or any(t.startswith(flag + "=") for t in self.template):
                    raise SweepError(f"{flag} is given both on the command line and in --config. Fix: keep one.")
                self.template += [flag, p.text]
                self.holes.append((len(self.template) - 1, "", name))
                self.space.add(parse_expression(p.text, name))
        if not self.space.params:
            raise SweepError(
                "nothing to sweep: no script argument is a search expression. Fix: e.g. "
                "--lr 'loguniform(1e-5, 1e-1)' or --layers '[2, 4, 8]' after the script."
            )
        sampler = opts.sampler
        if sampler == "auto":
            sampler = "grid" if all(p.finite for p in self.space.params) and any(
                p.kind == "list" or p.count for p in self.space.params) else "tpe"
        from fulmen.sweep.engine import PRUNERS, SAMPLERS, check_choice

        try:
            self.sampler = check_choice("--sampler", sampler, SAMPLERS)
            check_choice("--pruner", opts.pruner, PRUNERS)
            if self.sampler == "grid":
                self.space.grid(0)  # every parameter must be finite: the error names the continuous one
        except ValueError as exc:
            raise SweepError(str(exc)) from None
        self.name = opts.name or os.path.splitext(os.path.basename(script))[0]
        self.dir = os.path.abspath(opts.dir or os.path.join("sweeps", self.name))
        self.storage_url = opts.storage or f"sqlite:///{os.path.join(self.dir, 'study.db')}"
        # a shared storage (PostgreSQL, or any worker): trials of other workers are theirs; a dead worker's are
        # found by their stopped heartbeats, failed as stale and retried (Optuna's RetryFailedTrialCallback)
        self.shared = opts.worker is not None or not self.storage_url.startswith("sqlite")
        if self.shared and opts.heartbeat is None:
            opts.heartbeat = 10
        self.slots = plan(opts.parallel, opts.devices_per_trial, opts.trials_per_device, opts.accelerator)
        self.argv: list[str] | None = None  # the command (without --storage): what resume and workers rerun
        self.running: dict[int, _Running] = {}
        self.interruptions: dict[int, int] = {}  # a trial killed again and again (OOM killer) ends as a failure
        self.stopping = False
        self.best: tuple[float, int] | None = None

    # ------------------------------------------------------------------ definition
    def definition(self) -> dict[str, Any]:
        """What makes two commands the same sweep (checked when a folder or a study is reused)."""
        return {
            "script": self.script, "args": self.template, "holes": [list(h) for h in self.holes],
            "space": [[p.name, p.text] for p in self.space.params], "metric": self.opts.metric,
            "mode": self.opts.mode, "objective": self.opts.objective, "sampler": self.sampler,
            "pruner": self.opts.pruner,
        }

    def _open_study(self) -> Any:
        op = optuna()
        os.makedirs(self.dir, exist_ok=True)
        self.storage = make_storage(self.storage_url, heartbeat=self.opts.heartbeat)
        study = op.create_study(
            study_name=self.name, storage=self.storage, direction="minimize" if self.opts.mode == "min" else "maximize",
            load_if_exists=True, pruner=make_pruner(self.opts.pruner), sampler=op.samplers.RandomSampler(),
        )
        mine = self.definition()
        saved = study.user_attrs.get(SPEC_ATTR)
        if saved is None:
            seed = self.opts.seed if self.opts.seed is not None else random.randrange(2**31)
            study.set_user_attr(SPEC_ATTR, {**mine, "seed": seed, "argv": self.argv})
            saved = study.user_attrs[SPEC_ATTR]
        else:
            theirs = {k: saved.get(k) for k in mine}
            if theirs != mine:
                diff = [k for k in mine if theirs[k] != mine[k]]
                raise SweepError(
                    f"the sweep {self.name!r} in {self.dir} was started by another command (different "
                    f"{', '.join(diff)}: {', '.join(f'{k}={theirs[k]!r}' for k in diff)}). Fix: run that command "
                    "again to resume it, or pick a new --dir/--name for this one."
                )
            if self.opts.seed is not None and self.opts.seed != saved["seed"]:
                raise SweepError(f"--seed {self.opts.seed} differs from the seed {saved['seed']} this sweep started with.")
        self.seed = int(saved["seed"])
        return study

    def _total(self) -> int:
        if self.opts.trials is not None:
            return self.opts.trials
        if self.sampler == "grid":
            return self.space.grid_size(self.seed)
        return 10

    # ------------------------------------------------------------------ the loop
    def run(self) -> Any:
        """Run (or resume) the sweep to the end; returns the Optuna study.

        Raises:
            SweepError: the definition is bad, the folder belongs to another sweep, or a trial showed that the
                script never logs the metric.
        """
        os.makedirs(self.dir, exist_ok=True)
        lock = open(os.path.join(self.dir, ".driver.lock"), "w")  # noqa: SIM115 - held for the whole run
        if not self.shared:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise SweepError(
                    f"another `fulmen sweep` is driving {self.dir} right now. Fix: wait for it, or use "
                    "`fulmen sweep worker` with a shared --storage to add workers."
                ) from None
        study = self._open_study()
        meta = {"name": self.name, "storage": redact(self.storage_url), "argv": self.argv}
        write_json(os.path.join(self.dir, META_FILE), meta)
        total = self._total()
        if self.sampler == "grid" and total > self.space.grid_size(self.seed):
            raise SweepError(f"--trials {total} is more than the grid's {self.space.grid_size(self.seed)} points.")
        self._say(f"sweep {self.name!r}: {total} trials of {os.path.basename(self.script)}, {len(self.slots)} at a "
                  f"time, study in {redact(self.storage_url)}, folder {self.dir}")
        deadline = time.time() + self.opts.timeout if self.opts.timeout is not None else None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        if threading.current_thread() is threading.main_thread():
            for s in previous:
                signal.signal(s, self._on_signal)
        heartbeat = self._start_heartbeat() if self.opts.heartbeat else None
        try:
            self._loop(study, total, deadline)
        finally:
            if heartbeat is not None:
                heartbeat.set()
            if threading.current_thread() is threading.main_thread():
                for s, h in previous.items():
                    signal.signal(s, h)
            lock.close()
        if self.stopping:
            self._say("sweep stopped: run the same command (or `fulmen sweep resume DIR`) to continue.")
            raise SystemExit(128 + signal.SIGTERM)
        self._say(self._best_line(study))
        return study

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for r in self.running.values():  # each trial writes its last checkpoint and exits
            try:
                os.killpg(r.proc.pid, signal.SIGTERM)
            except OSError:
                pass

    def _loop(self, study: Any, total: int, deadline: float | None) -> None:
        op = optuna()
        TrialState = op.trial.TrialState
        if self.shared:
            op.storages.fail_stale_trials(study)
        # trials a previous driver left running: started again with their parameters (they resume)
        left = [] if self.shared else study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        resumable, folder_of = [], {}
        for t in left:
            if set(t.params) != set(self.space.names):  # killed inside ask: its parameters are drawn now
                t = self._complete_params(study, t)
            folder = trial_folder(self.dir, t.number, t.user_attrs)
            self._wait_for_old_process(folder)
            result = read_json(os.path.join(folder, RESULT_FILE))
            if result is not None and result.get("state") in ("complete", "pruned"):  # done, not yet told
                self._record(study, t.number, result, 0.0)
            else:
                resumable.append(t)
                folder_of[t.number] = folder
        try:  # the best so far includes the trials of earlier runs
            self.best = (float(study.best_trial.value), study.best_trial.number)
        except ValueError:
            self.best = None
        free = list(self.slots)
        last_stale_check = time.time()
        while True:
            while free and not self.stopping:
                if resumable:
                    t = resumable.pop(0)
                    self._launch(t.number, _storage_id(t), dict(t.params), folder_of[t.number], free.pop(0), resumed=True)
                    continue
                if deadline is not None and time.time() > deadline:
                    break
                asked = self._ask(study, total)
                if asked is None:
                    break
                number, trial_id, params, folder, retry = asked
                self._launch(number, trial_id, params, folder, free.pop(0), resumed=retry)
            if not self.running:
                if self.stopping or not self._more(study, total, deadline):
                    return
                time.sleep(1.0)  # other workers' trials still run: one may die and come back here as a retry
            time.sleep(0.1)
            if self.shared and time.time() - last_stale_check > (self.opts.heartbeat or 10):
                last_stale_check = time.time()
                op.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and its retry enqueued
            for number, r in list(self.running.items()):
                self._show_progress(r)
                rc = r.proc.poll()
                if rc is None:
                    continue
                del self.running[number]
                again = self._finish(study, r, rc)
                if again and not self.stopping:
                    self._launch(r.number, r.trial_id, r.params, r.folder, r.slot, resumed=True)
                else:
                    free.append(r.slot)
                    free.sort(key=lambda s: s.index)

    def _more(self, study: Any, total: int, deadline: float | None) -> bool:
        """Whether trials may still come: a shared study's running trials can fail as stale and be retried."""
        if not self.shared or (deadline is not None and time.time() > deadline):
            return False
        op = optuna()
        states = {t.state for t in study.get_trials(deepcopy=False)}
        return op.trial.TrialState.RUNNING in states or op.trial.TrialState.WAITING in states

    def _ask(self, study: Any, total: int) -> tuple[int, int, dict[str, Any], str, bool] | None:
        op = optuna()
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == op.trial.TrialState.WAITING]
        # a retry of a stale trial takes that trial's place: it does not count as one more
        asked = [t for t in trials if t.state != op.trial.TrialState.WAITING and "failed_trial" not in t.system_attrs]
        if len(asked) >= total and not waiting:
            return None
        if self.sampler == "grid" and not waiting:
            # the n-th point of the crossed grid (shuffled by the seed) is enqueued: a failed point is not
            # sampled again (Optuna's GridSampler would rerun it as a new trial; --retries reruns it in place)
            study.enqueue_trial(self._grid_points()[len(trials)])
            study.sampler = make_sampler("random", self.seed)
        else:
            # a sampler seeded by the trial's number: the same seed gives the same trials, across kills and reruns
            study.sampler = make_sampler(self.sampler, self.seed + len(trials))
        trial = study.ask()
        params = self.space.suggest(trial, self.seed)
        # the samplers are rebuilt for each ask; between asks a neutral one takes the tells (GridSampler's
        # after_trial calls study.stop(), which Optuna refuses outside study.optimize)
        study.sampler = optuna().samplers.RandomSampler(seed=self.seed)
        retry = "folder" in trial.user_attrs  # a stale trial's retry: it continues in that trial's folder
        folder = trial_folder(self.dir, trial.number, trial.user_attrs)
        trial.set_user_attr("folder", os.path.basename(folder))
        if self.opts.worker:
            trial.set_user_attr("worker", self.opts.worker)
        if retry:
            self._wait_for_old_process(folder)
        if self.opts.heartbeat:
            self.storage.record_heartbeat(_storage_id(trial))
        return trial.number, _storage_id(trial), params, folder, retry

    def _complete_params(self, study: Any, frozen: Any) -> Any:
        if self.sampler != "grid":
            study.sampler = make_sampler(self.sampler, self.seed + frozen.number)
        self.space.suggest(optuna().trial.Trial(study, _storage_id(frozen)), self.seed)
        study.sampler = make_sampler("random", self.seed)
        return study.get_trials(deepcopy=False)[frozen.number]

    def _grid_points(self) -> list[dict[str, Any]]:
        grid = self.space.grid(self.seed)
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        random.Random(self.seed).shuffle(points)
        return points

    def _wait_for_old_process(self, folder: str) -> None:
        """A trial of a killed driver gets SIGTERM and checkpoints: wait for it before starting it again."""
        info = read_json(os.path.join(folder, "process.json")) or {}
        pid, token = info.get("pid"), info.get("token")
        deadline = time.time() + 120
        # alive while /proc/PID/environ still holds its token (a reused pid or a zombie does not)
        while pid and token and token in _environ(int(pid)) and time.time() < deadline:
            time.sleep(0.2)

    def _launch(self, number: int, trial_id: int, params: dict[str, Any], folder: str, slot: Slot,
                resumed: bool) -> None:
        os.makedirs(folder, exist_ok=True)
        ctx = TrialContext(
            storage=self.storage_url, study=self.name, trial_id=trial_id, number=number, metric=self.opts.metric,
            mode=self.opts.mode, dir=folder, pruner=self.opts.pruner, objective=self.opts.objective,
        )
        args = fill(self.template, self.holes, params)
        cmd = [sys.executable, "-m", "fulmen", "run", self.script, *args]
        token = f"{self.name}:{number}:{time.time_ns()}"
        env = {**os.environ, **ctx.to_env(resume=resumed), **slot.env(), "FULMEN_SWEEP_TOKEN": token}
        if os.path.exists(os.path.join(folder, RESULT_FILE)) and not resumed:
            os.remove(os.path.join(folder, RESULT_FILE))
        write_json(os.path.join(folder, "trial.json"), {
            "number": number, "params": params, "command": cmd, "placement": slot.describe(),
        })
        with open(os.path.join(folder, "stdout.log"), "ab") as out, open(os.path.join(folder, "stderr.log"), "ab") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    preexec_fn=slot.preexec(), start_new_session=True)
        write_json(os.path.join(folder, "process.json"), {"pid": proc.pid, "token": token})
        # the progress a killed run left is not news: only reports of this run are shown
        self.running[number] = _Running(number, trial_id, params, slot, proc, folder, time.time(),
                                        read_json(os.path.join(folder, PROGRESS_FILE)))
        shown = " ".join(f"{k}={_short(v)}" for k, v in params.items())
        self._say(f"trial {number} {'resumed' if resumed else 'started'}: {shown} [{slot.describe()}]")

    def _finish(self, study: Any, r: _Running, rc: int) -> bool:
        """Record a trial that ended; True to run it again (resume after an interruption, or a retry)."""
        op = optuna()
        result = read_json(os.path.join(r.folder, RESULT_FILE))
        took = time.time() - r.started
        if result is not None and result.get("state") == "error":
            study.tell(r.number, state=op.trial.TrialState.FAIL, skip_if_finished=True)
            raise SweepError(f"trial {r.number} failed: {result['error']}")
        if rc == 0 and result is not None:
            self._record(study, r.number, result, took)
            return False
        if self.stopping:
            self._say(f"trial {r.number} stopped (exit {rc}); it resumes from its last checkpoint next time")
            return False
        self.interruptions[r.number] = self.interruptions.get(r.number, 0) + 1
        if rc in _INTERRUPTED and self.interruptions[r.number] <= _MAX_INTERRUPTIONS:
            self._say(f"trial {r.number} was interrupted (exit {rc}): resuming it from its last checkpoint")
            return True
        trial = op.trial.Trial(study, r.trial_id)
        attempts = int(study.get_trials(deepcopy=False)[r.number].user_attrs.get("attempts", 0)) + 1
        trial.set_user_attr("attempts", attempts)
        why = "exited without reporting" if rc == 0 else f"was killed {_MAX_INTERRUPTIONS + 1} times" if rc in _INTERRUPTED else f"crashed (exit {rc})"
        tail = _tail(os.path.join(r.folder, "stderr.log"))
        if attempts <= self.opts.retries:
            self._say(f"trial {r.number} {why}; retry {attempts}/{self.opts.retries}. stderr: {r.folder}/stderr.log")
            return True
        study.tell(r.number, state=op.trial.TrialState.FAIL, skip_if_finished=True)
        self._say(f"trial {r.number} failed: {why}; stderr saved in {r.folder}/stderr.log\n{tail}")
        return False

    def _record(self, study: Any, number: int, result: dict[str, Any], took: float) -> None:
        op = optuna()
        if result["state"] == "pruned":
            study.tell(number, state=op.trial.TrialState.PRUNED, skip_if_finished=True)
            self._say(f"trial {number} pruned after {result.get('steps')} reports ({took:.1f}s)")
            return
        value = float(result["value"])
        study.tell(number, value, skip_if_finished=True)
        if self.best is None or (value < self.best[0] if self.opts.mode == "min" else value > self.best[0]):
            self.best = (value, number)
        self._say(f"trial {number} complete: {self.opts.metric}={value:.6g} ({took:.1f}s)")

    # ------------------------------------------------------------------ output
    def _show_progress(self, r: _Running) -> None:
        if self.opts.quiet:
            return
        progress = read_json(os.path.join(r.folder, PROGRESS_FILE))
        if progress is None or progress == r.last_progress:
            return
        r.last_progress = progress
        best = f" | best so far {self.best[0]:.6g} (trial {self.best[1]})" if self.best else ""
        shown = " ".join(f"{k}={_short(v)}" for k, v in r.params.items())
        self._say(f"trial {r.number} [{shown}] epoch {progress.get('epoch')} "
                  f"{self.opts.metric}={progress.get('value', float('nan')):.6g}{best}")

    def _best_line(self, study: Any) -> str:
        try:
            t = study.best_trial
        except ValueError:
            return "sweep finished: no trial completed."
        return f"sweep finished. best: trial {t.number} {self.opts.metric}={t.value:.6g} {t.params}"

    def _say(self, line: str) -> None:
        if not self.opts.quiet:
            print(f"[sweep] {line}", flush=True)

    def _start_heartbeat(self) -> threading.Event:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(1, (self.opts.heartbeat or 10) // 2)):
                for r in list(self.running.values()):
                    try:
                        self.storage.record_heartbeat(r.trial_id)
                    except Exception:  # noqa: BLE001 - a finished trial: nothing to beat for
                        pass

        threading.Thread(target=beat, daemon=True, name="fulmen-sweep-heartbeat").start()
        return stop


def _environ(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _storage_id(trial: Any) -> int:
    """A trial's id in the storage (what ``optuna.trial.Trial(study, id)`` and heartbeats take). Optuna exposes it
    only as ``_trial_id`` (its own integrations read it the same way); one place to change if it ever moves."""
    return int(trial._trial_id)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


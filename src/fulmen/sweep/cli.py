"""``fulmen sweep``: run an unmodified script over a search space; inspect, export, plot, resume, add workers.

    fulmen sweep [options] SCRIPT.py [script args]   # a script argument whose value is an expression is swept
    fulmen sweep resume DIR                          # run a stopped sweep on (same as its command again)
    fulmen sweep worker NAME --storage URL           # one more worker on a shared (PostgreSQL) study
    fulmen sweep status DIR [--format table|csv|json] [--output FILE]
    fulmen sweep best DIR
    fulmen sweep plot DIR [--output-dir D]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any

from fulmen.sweep.context import RESULT_FILE, read_json
from fulmen.sweep.driver import META_FILE, SPEC_ATTR, Options, Sweep, SweepError, trial_folder
from fulmen.sweep.engine import PRUNERS, SAMPLERS, make_storage, optuna, redact
from fulmen.sweep.space import SearchExpressionError

_SUB = ("status", "best", "plot", "resume", "worker")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fulmen sweep",
        description="Run many trials of one unmodified script: every script argument whose value is a search "
        "expression (uniform(a, b), loguniform(a, b), int(a, b[, step]), choice(x, ...), [x, y, ...]; "
        "uniform/loguniform take a count: uniform(a, b, 20)) is swept. Subcommands: resume DIR, worker NAME, "
        "status DIR, best DIR, plot DIR.",
    )
    a = p.add_argument
    a("--trials", type=int, help="how many trials (default: the grid's size for grids, else 10)")
    a("--parallel", type=int, default=1, help="trials at once, each on its own devices or cores (default 1)")
    a("--devices-per-trial", type=int, default=1, help="GPUs (or core groups) per trial (default 1)")
    a("--trials-per-device", type=int, default=1, help="trials that may share one GPU (default 1)")
    a("--accelerator", default="auto", choices=("auto", "cpu", "gpu", "cuda"), help="where trials run")
    a("--metric", default="val_loss", help="the logged metric to optimize (default val_loss)")
    a("--mode", default="min", help="min or max (default min)")
    a("--objective", default="last", help="the trial's value: its last or its best report (default last)")
    a("--sampler", default="auto", help=f"auto, {', '.join(SAMPLERS)} (auto: grid when every parameter is a "
      "list or counted, else tpe)")
    a("--pruner", default="median", help=f"{', '.join(PRUNERS)} (default median)")
    a("--name", help="the study's name (default: the script's name)")
    a("--dir", help="the sweep folder (default sweeps/NAME)")
    a("--storage", help="an Optuna storage URL (default: sqlite in the sweep folder); postgresql://... for many "
      "machines")
    a("--retries", type=int, default=0, help="reruns of a crashed trial before it counts as failed (default 0)")
    a("--timeout", type=float, help="start no new trial after this many seconds")
    a("--seed", type=int, help="the sampler's seed: the same seed gives the same trials")
    a("--heartbeat", type=int, help="seconds between a shared storage's heartbeats (default 10); a trial silent "
      "for 3 beats is stale: failed and retried by another worker")
    a("--config", help="a YAML file with a 'parameters:' mapping of argument -> expression")
    a("--quiet", action="store_true", help="no live lines")
    a("script", help="the script to run (SCRIPT.py)")
    a("script_args", nargs=argparse.REMAINDER, help="its arguments; expressions are swept")
    return p


def options_from_argv(argv: list[str]) -> Options:
    ns = _parser().parse_args(argv)
    return Options(
        script=ns.script, script_args=list(ns.script_args), trials=ns.trials, parallel=ns.parallel,
        devices_per_trial=ns.devices_per_trial, trials_per_device=ns.trials_per_device, accelerator=ns.accelerator,
        metric=ns.metric, mode=ns.mode, objective=ns.objective, sampler=ns.sampler, pruner=ns.pruner, name=ns.name,
        dir=ns.dir, storage=ns.storage, retries=ns.retries, timeout=ns.timeout, seed=ns.seed, config=ns.config,
        quiet=ns.quiet, heartbeat=ns.heartbeat,
    )


def _without_storage(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        if tok == "--storage" and i + 1 < len(argv):
            skip = True
            continue
        if tok.startswith("--storage="):
            continue
        out.append(tok)
    return out


def run_sweep(argv: list[str], **overrides: Any) -> Any:
    opts = options_from_argv(argv)
    for k, v in overrides.items():
        setattr(opts, k, v)
    sweep = Sweep(opts)
    sweep.argv = _without_storage(argv)  # what `resume` and workers rerun: never the password
    return sweep.run()


def main(argv: list[str]) -> int:
    """The ``fulmen sweep`` console entry; returns the exit code."""
    try:
        if argv and argv[0] in _SUB:
            return int(globals()[f"_cmd_{argv[0]}"](argv[1:]) or 0)
        run_sweep(argv)
        return 0
    except (SweepError, SearchExpressionError, ValueError, FileNotFoundError, ModuleNotFoundError) as exc:
        print(f"fulmen sweep: error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------- reading a sweep folder
def _meta(folder: str) -> dict[str, Any]:
    meta = read_json(os.path.join(folder, META_FILE))
    if meta is None:
        raise SweepError(f"{folder!r} is not a sweep folder (no {META_FILE}). Fix: pass the --dir of a sweep.")
    return meta


def _load(folder: str, storage: str | None) -> Any:
    meta = _meta(folder)
    url = storage or meta["storage"]
    if "***" in url:
        raise SweepError(f"the sweep's storage {url} needs its password. Fix: pass --storage URL.")
    return _load_study(meta["name"], url)


def _load_study(name: str, url: str) -> Any:
    try:
        return optuna().load_study(study_name=name, storage=make_storage(url))
    except KeyError:
        raise SweepError(f"there is no study {name!r} in {redact(url)}. Fix: check the name and --storage.") from None


def _folder_args(argv: list[str], extra: dict[str, dict[str, Any]] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fulmen sweep <command>")
    p.add_argument("dir", help="the sweep folder")
    p.add_argument("--storage", help="the storage URL (when it needs a password)")
    for name, kw in (extra or {}).items():
        p.add_argument(name, **kw)
    return p.parse_args(argv)


def rows(study: Any, folder: str) -> list[dict[str, Any]]:
    """One row per trial: trial, state, params, value, epochs, duration (s), checkpoint."""
    out = []
    for t in study.get_trials(deepcopy=False):
        result = read_json(os.path.join(trial_folder(folder, t.number, t.user_attrs), RESULT_FILE)) or {}
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        out.append({
            "trial": t.number, "state": t.state.name, "params": dict(t.params), "value": t.value,
            "epochs": result.get("epochs"), "duration": None if duration is None else round(duration, 2),
            "checkpoint": result.get("best_checkpoint") or "",
        })
    return out


def _cmd_status(argv: list[str]) -> int:
    ns = _folder_args(argv, {"--format": {"default": "table", "choices": ("table", "csv", "json")},
                             "--output": {"help": "write to this file instead of the terminal"}})
    study = _load(ns.dir, ns.storage)
    table = rows(study, os.path.abspath(ns.dir))
    if ns.format == "json":
        text = json.dumps(table, indent=2, default=str)
    elif ns.format == "csv":
        buf = io.StringIO()
        names = sorted({k for r in table for k in r["params"]})
        w = csv.writer(buf)
        w.writerow(["trial", "state", *names, "value", "epochs", "duration", "checkpoint"])
        for r in table:
            w.writerow([r["trial"], r["state"], *[r["params"].get(n, "") for n in names], r["value"], r["epochs"],
                        r["duration"], r["checkpoint"]])
        text = buf.getvalue()
    else:
        text = _table(table)
    if ns.output:
        with open(ns.output, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


def _table(table: list[dict[str, Any]]) -> str:
    head = ["trial", "state", "params", "value", "epochs", "duration", "checkpoint"]

    def cell(r: dict[str, Any], k: str) -> str:
        v = r[k]
        if k == "params":
            return " ".join(f"{n}={f'{x:.4g}' if isinstance(x, float) else x}" for n, x in v.items())
        if isinstance(v, float):
            return f"{v:.6g}"
        return "" if v is None else str(v)

    cells = [[cell(r, k) for k in head] for r in table]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cmd_best(argv: list[str]) -> int:
    ns = _folder_args(argv)
    study = _load(ns.dir, ns.storage)
    try:
        t = study.best_trial
    except ValueError:
        print("no trial has completed yet")
        return 1
    result = read_json(os.path.join(trial_folder(os.path.abspath(ns.dir), t.number, t.user_attrs), RESULT_FILE)) or {}
    print(json.dumps({"trial": t.number, "value": t.value, "params": t.params,
                      "checkpoint": result.get("best_checkpoint") or ""}, indent=2, default=str))
    return 0


def _cmd_plot(argv: list[str]) -> int:
    ns = _folder_args(argv, {"--output-dir": {"help": "where the HTML files go (default: the sweep folder)"}})
    study = _load(ns.dir, ns.storage)
    out = ns.output_dir or ns.dir
    os.makedirs(out, exist_ok=True)
    vis = optuna().visualization
    if not vis.is_available():
        raise SweepError("fulmen sweep plot draws with plotly, which is not installed. Fix: pip install plotly.")
    written = []
    for name, fn in (("history", vis.plot_optimization_history), ("parallel_coordinate", vis.plot_parallel_coordinate),
                     ("importances", vis.plot_param_importances)):
        try:
            fig = fn(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need 2+ completed trials
            print(f"skipped {name}: {exc}")
            continue
        path = os.path.join(out, f"{name}.html")
        fig.write_html(path)
        written.append(path)
    print("\n".join(written))
    return 0


def _cmd_resume(argv: list[str]) -> int:
    ns = _folder_args(argv)
    meta = _meta(ns.dir)
    saved = meta.get("argv")
    if not saved:
        raise SweepError(f"{ns.dir!r} does not record the command that started it. Fix: run that command again.")
    extra = ["--storage", ns.storage] if ns.storage else []
    if "***" in meta["storage"] and not extra:
        raise SweepError(f"the sweep's storage {meta['storage']} needs its password. Fix: pass --storage URL.")
    run_sweep(extra + list(saved))
    return 0


def _cmd_worker(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fulmen sweep worker")
    p.add_argument("name", help="the study's name (the sweep's --name)")
    p.add_argument("--storage", required=True, help="the shared storage URL (postgresql://...)")
    p.add_argument("--worker", default=None, help="this worker's name (default: host:pid)")
    p.add_argument("--dir", help="the sweep folder on this machine (default: the one the sweep was started with)")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between heartbeats (default 10)")
    p.add_argument("--parallel", type=int, help="trials at once on this machine")
    ns = p.parse_args(argv)
    study = _load_study(ns.name, ns.storage)
    spec = study.user_attrs.get(SPEC_ATTR)
    if not spec or not spec.get("argv"):
        raise SweepError(f"the study {ns.name!r} in {redact(ns.storage)} was not started by `fulmen sweep`.")
    import socket

    overrides: dict[str, Any] = {"storage": ns.storage, "worker": ns.worker or f"{socket.gethostname()}:{os.getpid()}",
                                 "heartbeat": ns.heartbeat}
    if ns.dir:
        overrides["dir"] = ns.dir
    if ns.parallel:
        overrides["parallel"] = ns.parallel
    run_sweep(list(spec["argv"]), **overrides)
    return 0

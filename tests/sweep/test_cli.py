"""`fulmen sweep` on unmodified scripts: argparse and LightningCLI (Lightning imports), trial folders, the
metric a script never logs, crashes and retries, placement on disjoint cores, and bad input before any trial."""

from __future__ import annotations

import json
import os

import pytest
from tests.sweep.conftest import ARGPARSE, LIGHTNING_CLI, sweep

pytest.importorskip("optuna", reason="the sweep tests need the fulmen[sweep] extra (optuna)")


def status(folder) -> list[dict]:
    return json.loads(sweep("status", str(folder), "--format", "json").stdout)


def test_argparse_script_grid_sweep_on_disjoint_cores_trial_folders_and_status(tmp_path):
    d, rec = tmp_path / "s", tmp_path / "rec"
    rec.mkdir()
    parallel = "2" if len(os.sched_getaffinity(0)) >= 2 else "1"
    out = sweep("--dir", str(d), "--seed", "3", "--parallel", parallel, ARGPARSE, "--hidden", "[2, 3]", "--lr", "0.05",
                "--epochs", "2", "--record", str(rec)).stdout
    seen = [json.loads(p.read_text()) for p in rec.iterdir()]
    assert len(seen) == 2
    if parallel == "2":  # the two trials ran at once, each pinned to its own cores with that many torch threads
        assert not set(seen[0]["cores"]) & set(seen[1]["cores"])
        assert [s["threads"] for s in seen] == [len(os.sched_getaffinity(0)) // 2] * 2
    assert "sweep finished. best: trial" in out and "epoch 1 val_loss=" in out  # live lines
    rows = status(d)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]  # auto sampler: a grid of the list
    assert sorted(r["params"]["hidden"] for r in rows) == [2, 3]
    for r in rows:
        folder = d / f"trial_{r['trial']:03d}"
        trial = json.loads((folder / "trial.json").read_text())
        cmd = trial["command"]
        assert cmd[cmd.index("--hidden") + 1] == str(r["params"]["hidden"]) and "--lr" in cmd and "0.05" in cmd
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "checkpoints" / "best.ckpt").is_file()
        assert r["checkpoint"] == str(folder / "checkpoints" / "best.ckpt") and r["epochs"] == 2
        result = json.loads((folder / "result.json").read_text())
        assert result["value"] == pytest.approx(r["value"]) and result["steps"] == 2
    best = json.loads(sweep("best", str(d)).stdout)
    assert best["value"] == min(r["value"] for r in rows) and best["checkpoint"].endswith("best.ckpt")
    csv_text = sweep("status", str(d), "--format", "csv").stdout
    assert csv_text.splitlines()[0] == "trial,state,hidden,value,epochs,duration,checkpoint"
    table = sweep("status", str(d)).stdout
    assert "COMPLETE" in table and "hidden=2" in table
    out = tmp_path / "plots"
    written = sweep("plot", str(d), "--output-dir", str(out)).stdout
    assert (out / "history.html").is_file() and (out / "parallel_coordinate.html").is_file(), written
    assert "plotly" in (out / "history.html").read_text()[:5000].lower()


def test_lightning_cli_script_with_lightning_imports(tmp_path):
    d = tmp_path / "cli"
    sweep("--dir", str(d), "--trials", "1", "--seed", "0", LIGHTNING_CLI, "fit", "--model.lr",
          "loguniform(1e-3, 1e-1)", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false")
    (row,) = status(d)
    assert row["state"] == "COMPLETE" and 1e-3 <= row["params"]["model.lr"] <= 1e-1
    assert (d / "trial_000" / "checkpoints" / "last.ckpt").is_file()
    assert (d / "trial_000" / "lightning_logs").is_dir()  # the logger writes in the trial folder, not the cwd


def test_metric_never_logged_fails_with_the_logged_names_and_stops(tmp_path):
    d = tmp_path / "m"
    proc = sweep("--dir", str(d), "--trials", "3", "--metric", "val_acc", ARGPARSE, "--lr", "uniform(0.01, 0.1)",
                 "--epochs", "1", check=False)
    assert proc.returncode == 2
    assert "'val_acc' was never logged" in proc.stderr and "logged: val_loss" in proc.stderr
    assert [r["state"] for r in status(d)] == ["FAIL"]  # no further trial started


def test_crash_saves_stderr_retries_and_the_sweep_goes_on(tmp_path):
    d = tmp_path / "c"
    proc = sweep("--dir", str(d), "--retries", "1", "--pruner", "none", ARGPARSE, "--lr", "[0.01, 0.5]",
                 "--crash-above", "0.1", "--epochs", "1")
    rows = {r["params"]["lr"]: r for r in status(d)}
    assert rows[0.01]["state"] == "COMPLETE" and rows[0.5]["state"] == "FAIL"
    stderr = (d / f"trial_{rows[0.5]['trial']:03d}" / "stderr.log").read_text()
    assert stderr.count("crash requested: lr=0.5") == 2  # the run and its one retry
    assert "retry 1/1" in proc.stdout and "failed: crashed" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "uniform(1e-3, x)"], "a bound must be a number"),
        (["--sampler", "bayes", "--lr", "[1]"], "--sampler 'bayes' is not known"),
        (["--pruner", "early", "--lr", "[1]"], "--pruner 'early' is not known"),
        (["--mode", "up", "--lr", "[1]"], "--mode 'up' is not known"),
        (["--parallel", "999", "--lr", "[1]"], "need at least one core each"),
        (["--lr", "0.1"], "nothing to sweep"),
        (["--sampler", "grid", "--lr", "uniform(0, 1)"], "is continuous: a grid cannot cross it"),
        (["--storage", "postgresql://me:s3cret@127.0.0.1:1/db", "--lr", "[1]"], "cannot open the storage"),
    ],
)
def test_bad_input_is_an_error_before_any_trial(tmp_path, args, message):
    opts = [a for a in args if a.startswith("--") and a not in ("--lr",)]
    sweep_opts, script_args = [], []
    it = iter(args)
    for a in it:
        (script_args if a == "--lr" else sweep_opts).extend([a, next(it)])
    proc = sweep("--dir", str(tmp_path / "b"), *sweep_opts, ARGPARSE, *script_args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout
    assert not list(tmp_path.glob("b/trial_*"))
    del opts


def test_missing_script_and_folder_of_another_sweep(tmp_path):
    proc = sweep("--dir", str(tmp_path / "x"), str(tmp_path / "nope.py"), "--lr", "[1]", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    d = tmp_path / "y"
    # --timeout 0: the sweep is defined (its study and folder) but starts no trial
    out = sweep("--dir", str(d), "--name", "n", "--timeout", "0", ARGPARSE, "--lr", "[0.01]", "--epochs", "1").stdout
    assert "no trial completed" in out and not list(d.glob("trial_*"))
    proc = sweep("--dir", str(d), "--name", "n", ARGPARSE, "--lr", "[0.02]", "--epochs", "1", check=False)
    assert proc.returncode == 2 and "was started by another command (different args, space" in proc.stderr
    assert status(d) == []


def test_a_second_driver_on_the_same_folder_is_refused(tmp_path):
    import fcntl

    d = tmp_path / "busy"
    d.mkdir()
    with open(d / ".driver.lock", "w") as held:  # what a running driver holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = sweep("--dir", str(d), ARGPARSE, "--lr", "[0.01]", check=False)
    assert proc.returncode == 2 and "another `fulmen sweep` is driving" in proc.stderr
    assert not list(d.glob("trial_*"))


def test_config_file_errors_before_any_trial(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("parameters:\n  --lr: uniform(0.01, 0.1)\n")
    proc = sweep("--dir", str(tmp_path / "c1"), "--config", str(cfg), ARGPARSE, "--lr", "[0.01]", check=False)
    assert proc.returncode == 2 and "--lr is given both on the command line and in --config" in proc.stderr
    cfg.write_text("parameters:\n  hidden: int(1, x)\n")
    proc = sweep("--dir", str(tmp_path / "c2"), "--config", str(cfg), ARGPARSE, check=False)
    assert proc.returncode == 2 and "bad search expression for hidden" in proc.stderr and "^" in proc.stderr
    assert not list(tmp_path.glob("c*/trial_*"))

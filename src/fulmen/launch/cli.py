"""``fulmen launch`` / ``fulmen runs`` / ``fulmen logs`` / ``fulmen stop``.

fulmen launch --target slurm|kubernetes|skypilot|local [--nodes N] [--devices D] [--time T] [--partition P]
              [--spot] [--env K=V ...] [--dir RUN_DIR] [--dry-run] [--wait] SCRIPT.py [script args]
fulmen runs [--root DIR]
fulmen logs ID [-f] [--root DIR]
fulmen stop ID [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import uuid
import warnings
from typing import Any

from fulmen.launch import targets
from fulmen.launch.config import (
    TARGETS,
    LaunchConfig,
    LaunchError,
    check_reachable,
    mismatch_warnings,
    remote_folders,
)
from fulmen.launch.record import find_records, read_record, write_record
from fulmen.launch.specs import spec_text, submit_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fulmen launch",
        description="Run an unmodified training script on a scheduler (or here) with checkpoint/resume across "
        "preemptions. Writes the job spec and a record into the run folder, then submits it with the target's "
        "tool; with --dry-run, or without the tool, prints the spec and the command to submit it.",
    )
    a = p.add_argument
    a("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    a("--nodes", type=int, default=1, help="machines (default 1)")
    a("--devices", type=int, default=1, help="processes (GPUs) per machine (default 1)")
    a("--accelerator", default="gpu", choices=("gpu", "cpu"), help="what a device is (default gpu)")
    a("--gpu-type", default="A100", help="the GPU model for SkyPilot (default A100)")
    a("--time", help="wall-clock limit [D-]HH:MM:SS (SLURM)")
    a("--partition", help="the SLURM partition")
    a("--spot", action="store_true", help="spot/preemptible instances (SkyPilot, Kubernetes spot tolerations)")
    a("--env", action="append", default=[], metavar="K=V", help="an environment variable for every process")
    a("--dir", help="the run folder (default ./launches/NAME)")
    a("--name", help="the job name (default: the script's name)")
    a("--image", default="pytorch/pytorch:latest", help="the container image (Kubernetes)")
    a("--checkpoint-dir", help="FULMEN_DEFAULT_ROOT_DIR of the job (default: the run folder for slurm/local)")
    a("--signal-seconds", type=int, default=90, help="SIGUSR1 this long before the SLURM time limit (default 90)")
    a("--max-restarts", type=int, default=100, help="reruns after a preemption (local, torchrun; default 100)")
    a("--dry-run", action="store_true", help="write and print the spec and the submit command; submit nothing")
    a("--no-check-buckets", action="store_true", help="do not check that remote checkpoint folders are reachable")
    a("--wait", action="store_true", help="SLURM: wait for the job to end; exit 1 with its log if it failed")
    a("script", help="the training script")
    a("args", nargs=argparse.REMAINDER, help="the script's arguments")
    return p


def main(argv: list[str]) -> int:
    """``fulmen launch``: returns the exit code (2 on bad input, before anything is submitted)."""
    ns = _parser().parse_args(argv)
    try:
        config = LaunchConfig.create(
            ns.target,
            ns.script,
            script_args=ns.args,
            nodes=ns.nodes,
            devices=ns.devices,
            accelerator=ns.accelerator,
            gpu_type=ns.gpu_type,
            time=ns.time,
            partition=ns.partition,
            spot=ns.spot,
            env=ns.env,
            run_dir=ns.dir,
            name=ns.name,
            image=ns.image,
            checkpoint_dir=ns.checkpoint_dir,
            signal_seconds=ns.signal_seconds,
            max_restarts=ns.max_restarts,
        )
    except LaunchError as err:
        print(f"fulmen launch: error: {err}", file=sys.stderr)
        return 2
    if not ns.no_check_buckets:
        try:
            for url in remote_folders(config):
                check_reachable(url)
        except LaunchError as err:
            print(f"fulmen launch: error: {err}", file=sys.stderr)
            return 2
    for message in mismatch_warnings(config):
        warnings.warn(message, UserWarning, stacklevel=1)
        print(f"fulmen launch: warning: {message}", file=sys.stderr)
    return launch(config, dry_run=ns.dry_run, wait=ns.wait)


def launch(config: LaunchConfig, dry_run: bool = False, wait: bool = False) -> int:
    """Write the spec and the record, then submit (or run, for ``local``); returns an exit code."""
    os.makedirs(config.run_dir, exist_ok=True)
    filename, text = spec_text(config)
    spec_path = os.path.join(config.run_dir, filename)
    with open(spec_path, "w", encoding="utf-8") as f:
        f.write(text)
    command = submit_command(config, spec_path)
    record: dict[str, Any] = {
        "id": os.path.basename(config.run_dir),
        "launch_id": uuid.uuid4().hex[:8],
        "target": config.target,
        "command": config.script_command(),
        "submit": command,
        "spec": spec_path,
        "job_id": None,
        "status": "WRITTEN",
        "checkpoint_dir": config.checkpoint_dir,
        "nodes": config.nodes,
        "devices": config.devices,
        "created": time.time(),
    }
    write_record(config.run_dir, record)
    tool = targets.tool_for(config.target)
    if dry_run or not targets.tool_available(config.target):
        why = "--dry-run" if dry_run else f"{tool!r} is not installed here"
        print(f"# {spec_path} ({why}: nothing submitted)\n{text}")
        print(f"# submit it with:\n{shlex.join(command)}")
        return 0
    if config.target == "local":
        record.update(status="RUNNING", supervisor_pid=os.getpid())
        write_record(config.run_dir, record)
        print(f"fulmen launch: running {shlex.join(config.script_command())} here (log: {config.run_dir}/job.log)")
        rc = targets.run_local(config, config.run_dir)
        state = read_record(config.run_dir)["status"]
        print(f"fulmen launch: {record['id']} {state} (exit code {rc})")
        if rc != 0 and state == "FAILED":
            print(targets.tail(os.path.join(config.run_dir, "job.log")), file=sys.stderr)
        return rc
    try:
        job_id = targets.submit(config, command)
    except LaunchError as err:
        write_record(config.run_dir, {**record, "status": "SUBMIT_FAILED", "error": str(err)})
        print(f"fulmen launch: error: {err}", file=sys.stderr)
        return 1
    record.update(job_id=job_id, status="SUBMITTED")
    write_record(config.run_dir, record)
    print(f"fulmen launch: submitted {record['id']} as {config.target} job {job_id} (record: {config.run_dir})")
    if wait and config.target == "slurm":
        state = targets.wait_slurm(config.run_dir, job_id)
        print(f"fulmen launch: job {job_id} {state}")
        if state != "COMPLETED":
            print(targets.tail(targets.log_path(config.run_dir, record)), file=sys.stderr)
            return 1
    return 0


def _root_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--root", default="launches", help="the folder of run folders (default ./launches)")
    return p


def _find(root: str, run_id: str) -> tuple[str, dict[str, Any]]:
    for run_dir, record in find_records(root):
        if run_id in (record.get("id"), str(record.get("job_id")), run_dir):
            return run_dir, record
    raise LaunchError(f"no launch {run_id!r} under {os.path.abspath(root)}. Fix: `fulmen runs --root DIR` lists them.")


def runs_main(argv: list[str]) -> int:
    """``fulmen runs``: every launch under ``--root`` with its live status."""
    ns = _root_parser("fulmen runs").parse_args(argv)
    rows = [
        (r.get("id", "?"), r.get("target", "?"), str(r.get("job_id") or "-"), targets.status(r), d)
        for d, r in find_records(ns.root)
    ]
    print(f"{'ID':<24} {'TARGET':<11} {'JOB':<12} {'STATUS':<12} FOLDER")
    for row in rows:
        print(f"{row[0]:<24} {row[1]:<11} {row[2]:<12} {row[3]:<12} {row[4]}")
    return 0


def logs_main(argv: list[str]) -> int:
    """``fulmen logs ID [-f]``: print (and follow) a launch's log."""
    p = _root_parser("fulmen logs")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true")
    ns = p.parse_args(argv)
    try:
        run_dir, record = _find(ns.root, ns.id)
    except LaunchError as err:
        print(f"fulmen logs: error: {err}", file=sys.stderr)
        return 2
    path = targets.log_path(run_dir, record)
    if path is None:
        hint = {
            "kubernetes": f"kubectl logs -f job/{record.get('job_id')}",
            "skypilot": f"sky jobs logs --name {record.get('job_id')}",
        }.get(str(record.get("target")), "")
        print(f"fulmen logs: the {record.get('target')} log lives on the cluster: {hint}", file=sys.stderr)
        return 1
    if ns.follow:
        targets.follow(path, lambda: targets.status(read_record(run_dir)))
    else:
        sys.stdout.write(targets.tail(path, lines=10**9))
    return 0


def stop_main(argv: list[str]) -> int:
    """``fulmen stop ID``: cancel a launch (the local job saves its checkpoint and is not rerun)."""
    p = _root_parser("fulmen stop")
    p.add_argument("id")
    ns = p.parse_args(argv)
    try:
        run_dir, record = _find(ns.root, ns.id)
        command = targets.stop(run_dir, record)
    except LaunchError as err:
        print(f"fulmen stop: error: {err}", file=sys.stderr)
        return 2
    print(f"fulmen stop: {' '.join(command)}")
    return 0

"""The run record: ``<run folder>/launch.json``, one per launch (id, target, command, job id, status, checkpoints).

The record is the only state the launcher keeps: ``fulmen runs``/``logs``/``stop`` read it and ask the
scheduler (or the local process) for the live status.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

RECORD_FILE = "launch.json"


def write_record(run_dir: str, record: dict[str, Any]) -> str:
    """Write ``record`` atomically (temporary name, rename); returns its path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RECORD_FILE)
    record = {**record, "updated": time.time()}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_record(run_dir: str) -> dict[str, Any]:
    with open(os.path.join(run_dir, RECORD_FILE), encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def update_record(run_dir: str, **changes: Any) -> dict[str, Any]:
    record = read_record(run_dir)
    record.update(changes)
    write_record(run_dir, record)
    return record


def find_records(root: str) -> list[tuple[str, dict[str, Any]]]:
    """``(run folder, record)`` for every launch under ``root`` (a run folder itself, or a folder of them)."""
    out = []
    candidates = [root] + [os.path.join(root, d) for d in sorted(os.listdir(root))] if os.path.isdir(root) else []
    for d in candidates:
        if os.path.isfile(os.path.join(d, RECORD_FILE)):
            try:
                out.append((d, read_record(d)))
            except (OSError, ValueError):
                continue
    return out

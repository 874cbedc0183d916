"""The trial context: how a trial process (an unmodified script) learns it is a sweep trial.

The driver starts every trial with these variables set; processes a launcher starts (DDP ranks) inherit them:

- ``FULMEN_SWEEP_TRIAL``: a JSON :class:`TrialContext` (storage, study, trial id, metric, mode, folder, pruner).
- ``FULMEN_CALLBACKS=fulmen.sweep.callback:trial_callbacks``: the Trainer's public extension point
  (``fulmen.trainer.lifecycle.environment_callbacks``) calls that factory while the Trainer is built, so the script's Trainer gets the reporting/pruning callback and a checkpoint in the trial folder.
- ``FULMEN_DEFAULT_ROOT_DIR``: the trial folder, where the Trainer writes its logs and checkpoints
  unless the script names a folder.
- ``FULMEN_AUTO_RESUME=1`` when the trial ran before: ``fit`` resumes from the trial's last checkpoint (a
  trial that was interrupted continues with the same parameters instead of starting again).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

ENV = "FULMEN_SWEEP_TRIAL"
CALLBACKS_ENTRY = "fulmen.sweep.callback:trial_callbacks"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class TrialContext:
    """What a trial process needs to report to the study; passed in :data:`ENV` as JSON."""

    storage: str
    study: str
    trial_id: int
    number: int
    metric: str
    mode: str  # "min" | "max"
    dir: str
    pruner: str = "median"
    objective: str = "last"  # "last" | "best"

    def to_env(self, resume: bool) -> dict[str, str]:
        """The variables a trial process gets; ``resume`` when the trial ran before (it continues)."""
        return {
            ENV: json.dumps(asdict(self)),
            "FULMEN_CALLBACKS": CALLBACKS_ENTRY,
            "FULMEN_DEFAULT_ROOT_DIR": self.dir,
            "FULMEN_AUTO_RESUME": "1" if resume else "0",
        }

    @classmethod
    def from_env(cls) -> TrialContext | None:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        return cls(**json.loads(raw))

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.dir, "checkpoints")


def write_json(path: str, data: dict[str, Any]) -> None:
    """Atomic: a reader (the driver) never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

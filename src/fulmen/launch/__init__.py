"""Launch: the same script from a laptop to a cluster (``fulmen launch``), and back after every preemption.

Per target a pure function from a :class:`LaunchConfig` to a spec (:mod:`fulmen.launch.specs`: an sbatch
script, a Kubernetes manifest, a SkyPilot task), a thin submitter per tool (:mod:`fulmen.launch.targets`)
and a run record on disk (:mod:`fulmen.launch.record`). The preemption contract itself stays in the Trainer
(it handles SIGTERM/SIGUSR1, checkpoints and resumes); launch only arranges that the scheduler sends the
signal and reruns the job. Uses fulmen's public API only. See docs/launch.md.
"""

from __future__ import annotations

from fulmen.launch.config import TARGETS, LaunchConfig, LaunchError, mismatch_warnings
from fulmen.launch.specs import kubernetes_manifest, sbatch_script, skypilot_task, spec_text, submit_command

__all__ = [
    "TARGETS",
    "LaunchConfig",
    "LaunchError",
    "kubernetes_manifest",
    "mismatch_warnings",
    "sbatch_script",
    "skypilot_task",
    "spec_text",
    "submit_command",
]

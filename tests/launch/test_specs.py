"""Spec generators: pure functions of the launch config, checked as text, with the target's own parser where it
installs (the ``kubernetes`` client's models), and by running the command each spec starts so that fulmen's
cluster environment detects the ranks and world size in it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fulmen.launch import (
    LaunchConfig,
    LaunchError,
    kubernetes_manifest,
    mismatch_warnings,
    sbatch_script,
    skypilot_task,
)
from fulmen.launch.config import uses_lightning_imports
from fulmen.launch.specs import kubernetes_yaml, skypilot_yaml, spec_text, submit_command

HERE = Path(__file__).parent
TRAIN = HERE / "_train.py"
PROBE = HERE / "_probe.py"


def _config(target: str, **kw: object) -> LaunchConfig:
    return LaunchConfig.create(target, str(TRAIN), **{"script_args": ["out.pt", "2", "10", "0"], **kw})


def test_sbatch_script_has_the_preemption_options_and_one_task_per_device(tmp_path: Path) -> None:
    cfg = _config(
        "slurm", nodes=4, devices=8, time="4:00:00", partition="gpu", run_dir=str(tmp_path), env=["WANDB_MODE=offline"]
    )
    text = sbatch_script(cfg)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for opt in (
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--time=4:00:00",
        "--partition=gpu",
        "--signal=B:USR1@90",
        "--requeue",
        "--open-mode=append",
        f"--output={tmp_path}/slurm-%j.out",
    ):
        assert f"#SBATCH {opt}" in lines, opt
    assert f"srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} {TRAIN} out.pt 2 10 0 &" in lines
    assert "export WANDB_MODE=offline" in lines
    assert f"export FULMEN_DEFAULT_ROOT_DIR={tmp_path}" in lines  # checkpoints in the run folder
    assert "FULMEN_AUTO_RESUME" not in text  # a fresh sbatch starts from scratch; a requeue resumes by itself
    assert any("trap" in line and "USR1" in line for line in lines)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid shell
    cpu = sbatch_script(_config("slurm", accelerator="cpu", devices=2, run_dir=str(tmp_path)))
    assert "--gpus-per-node" not in cpu and "#SBATCH --ntasks-per-node=2" in cpu and "--time" not in cpu


def test_sbatch_tasks_are_detected_as_slurm_with_the_job_world_size(tmp_path: Path) -> None:
    # the variables srun sets for task 5 of a 4 x 8 job (real srun runs in test_slurm.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD", "LOCAL_"))}
    env.update(
        SLURM_NTASKS="32",
        SLURM_PROCID="13",
        SLURM_LOCALID="5",
        SLURM_NODEID="1",
        SLURM_JOB_ID="77",
        SLURM_NODELIST="localhost",
        SLURM_JOB_NAME="train",
    )
    out = tmp_path / "probe.jsonl"
    subprocess.run([sys.executable, str(PROBE), str(out)], env=env, check=True, timeout=120)
    got = json.loads(out.read_text())
    assert got["env"] == "SLURMEnvironment" and got["rank"] == 13 and got["world"] == 32 and got["node"] == 1


def test_kubernetes_manifest_is_an_indexed_job_and_headless_service_the_client_models_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(HERE.parent.parent)  # the project folder: the image's working folder
    kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client is in fulmen[dev]")
    cfg = _config("kubernetes", nodes=3, devices=4, image="me/train:1", grace_seconds=300, spot=True)
    service, job = kubernetes_manifest(cfg)
    api = kubernetes.client.ApiClient()
    for obj, model in ((service, "V1Service"), (job, "V1Job")):
        parsed = api._ApiClient__deserialize(obj, model)  # the client's own (OpenAPI) models
        # nothing dropped: every field we wrote is one the model knows, with the right type
        assert api.sanitize_for_serialization(parsed) == obj
    assert service["spec"]["clusterIP"] == "None"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and pod["terminationGracePeriodSeconds"] == 300
    container = pod["containers"][0]
    assert container["image"] == "me/train:1" and container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    cmd = container["command"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=3" in cmd and "--nproc-per-node=4" in cmd and "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd
    assert "--rdzv-endpoint=train-0.train:29400" in cmd
    assert cmd[-5:] == ["tests/launch/_train.py", "out.pt", "2", "10", "0"]  # relative to the working folder
    assert {"name": "FULMEN_AUTO_RESUME", "value": "1"} in container["env"]
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[1]["onExitCodes"]["values"] == [138, 143]  # preemption exits do not count as failures
    docs = list(yaml.safe_load_all(kubernetes_yaml(cfg)))
    assert docs == [service, job] and "&id" not in kubernetes_yaml(cfg)


# SkyPilot's documented task schema (docs.skypilot.co, "YAML configuration"): the keys fulmen writes must be in it
_SKY_TASK_KEYS = {
    "name",
    "workdir",
    "num_nodes",
    "resources",
    "envs",
    "secrets",
    "file_mounts",
    "setup",
    "run",
    "volumes",
    "config",
    "service",
}
_SKY_RESOURCE_KEYS = {
    "cloud",
    "infra",
    "region",
    "zone",
    "accelerators",
    "accelerator_args",
    "cpus",
    "memory",
    "instance_type",
    "use_spot",
    "job_recovery",
    "disk_size",
    "disk_tier",
    "ports",
    "image_id",
    "labels",
    "any_of",
    "ordered",
    "autostop",
    "network_tier",
}


def test_skypilot_task_matches_the_documented_schema() -> None:
    cfg = _config("skypilot", nodes=2, devices=8, spot=True, gpu_type="H100")
    task = skypilot_task(cfg)
    assert set(task) <= _SKY_TASK_KEYS and set(task["resources"]) <= _SKY_RESOURCE_KEYS
    assert task["num_nodes"] == 2 and task["resources"]["accelerators"] == "H100:8"
    assert task["resources"]["use_spot"] is True
    assert task["resources"]["job_recovery"]["strategy"] in ("FAILOVER", "EAGER_NEXT_REGION")
    assert all(isinstance(v, str) for v in task["envs"].values()) and task["envs"]["FULMEN_AUTO_RESUME"] == "1"
    assert yaml.safe_load(skypilot_yaml(cfg)) == task
    assert "--node-rank=$SKYPILOT_NODE_RANK" in task["run"] and "--nproc-per-node=8" in task["run"]
    cpu = skypilot_task(_config("skypilot", accelerator="cpu"))
    assert "accelerators" not in cpu["resources"] and cpu["resources"]["use_spot"] is False


def test_skypilot_task_parses_with_skypilots_own_parser(tmp_path: Path) -> None:
    """Runs where SkyPilot is importable (it is not in fulmen[dev]: it would change packages the project pins, e.g.
    uvicorn and click; checked by hand with skypilot 0.14.1 installed apart, see docs/launch.md)."""
    sky = pytest.importorskip("sky", reason="SkyPilot is not installed (not part of fulmen[dev])")
    path = tmp_path / "task.yaml"
    path.write_text(skypilot_yaml(_config("skypilot", nodes=2, devices=8, spot=True, gpu_type="H100")))
    task = sky.Task.from_yaml(str(path))
    (res,) = list(task.resources)
    assert task.num_nodes == 2 and res.use_spot and res.accelerators == {"H100": 8}
    assert task.envs["FULMEN_AUTO_RESUME"] == "1"


def _run_with_python_on_path(tmp_path: Path, argv: list[str], env: dict[str, str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "python"  # the image's `python` (a symlink would lose the virtual environment)
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    exe.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD", "LOCAL_"))}
    clean.update(env, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    r = subprocess.run(argv, env=clean, cwd=os.getcwd(), capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.parametrize("target", ["kubernetes", "skypilot"])
def test_the_torchrun_each_spec_starts_is_detected_with_ranks_and_world_size(tmp_path: Path, target: str) -> None:
    """Run the spec's own command (pod 0 of a 1-node job with 2 processes) with the probe as the script."""
    out = tmp_path / "probe.jsonl"
    cfg = LaunchConfig.create(target, str(PROBE), script_args=[str(out)], devices=2, accelerator="cpu", name="probe")
    if target == "kubernetes":
        container = kubernetes_manifest(cfg)[1]["spec"]["template"]["spec"]["containers"][0]
        argv = [
            a.replace("$(JOB_COMPLETION_INDEX)", "0").replace("probe-0.probe", "127.0.0.1")
            for a in container["command"]
        ]
        env = {e["name"]: e["value"] for e in container["env"]}
        _run_with_python_on_path(tmp_path, argv, env)
    else:
        task = skypilot_task(cfg)
        env = {**task["envs"], "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1"}
        _run_with_python_on_path(tmp_path, ["bash", "-c", task["run"]], env)
    rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["rank"])
    assert [(r["env"], r["rank"], r["world"], r["local"]) for r in rows] == [
        ("TorchElasticEnvironment", 0, 2, 0),
        ("TorchElasticEnvironment", 1, 2, 1),
    ]
    assert {r["resume"] for r in rows} == {"1"}


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="unknown launch target 'slurmm'.*slurm\\|kubernetes"):
        LaunchConfig.create("slurmm", str(TRAIN))
    with pytest.raises(LaunchError, match="does not exist"):
        LaunchConfig.create("slurm", str(tmp_path / "nope.py"))
    with pytest.raises(LaunchError, match="--nodes=0"):
        LaunchConfig.create("slurm", str(TRAIN), nodes=0)
    with pytest.raises(LaunchError, match="--time 'soon'"):
        LaunchConfig.create("slurm", str(TRAIN), time="soon")
    with pytest.raises(LaunchError, match="--env 'NOEQUALS'"):
        LaunchConfig.create("slurm", str(TRAIN), env=["NOEQUALS"])
    assert list(tmp_path.iterdir()) == []


def test_nodes_and_devices_contradicting_the_scripts_trainer_are_named(tmp_path: Path) -> None:
    script = tmp_path / "fixed.py"
    script.write_text("import fulmen as L\ntrainer = L.Trainer(devices=4, num_nodes=2, accelerator='gpu')\n")
    warnings = mismatch_warnings(LaunchConfig.create("slurm", str(script), devices=8, nodes=2))
    assert len(warnings) == 1
    assert "--devices 8 contradicts the script's Trainer(devices=4)" in warnings[0]
    both = mismatch_warnings(LaunchConfig.create("slurm", str(script), devices=2, nodes=1))
    assert any("--nodes 1" in w and "num_nodes=2" in w for w in both)
    assert mismatch_warnings(LaunchConfig.create("slurm", str(script), devices=4, nodes=2)) == []


def test_lightning_scripts_run_under_fulmen_run(tmp_path: Path) -> None:
    script = tmp_path / "pl.py"
    script.write_text("import lightning.pytorch as pl\n")
    cfg = LaunchConfig.create("local", str(script), script_args=["--x", "1"])
    assert uses_lightning_imports(str(script))
    assert cfg.script_command() == [sys.executable, "-m", "fulmen", "run", str(script), "--x", "1"]
    assert not uses_lightning_imports(str(TRAIN))


def test_spec_file_names_and_submit_commands(tmp_path: Path) -> None:
    expected = {
        "slurm": ("job.sbatch", "sbatch"),
        "kubernetes": ("job.yaml", "kubectl"),
        "skypilot": ("task.yaml", "sky"),
        "local": ("job.sh", "bash"),
    }
    for target, (name, tool) in expected.items():
        cfg = _config(target, run_dir=str(tmp_path / target))
        assert spec_text(cfg)[0] == name
        assert submit_command(cfg, name)[0] == tool
    assert shutil.which("bash")

"""`fulmen serve ... --dockerfile DIR`: Dockerfile, requirements and Kubernetes manifests, parsed and checked
(no Docker daemon or cluster needed)."""

from __future__ import annotations

import subprocess
import sys

import yaml
from tests.serve._support import HERE


def test_dockerfile_requirements_and_kubernetes_manifests(tmp_path):
    out = tmp_path / "deploy"
    app = HERE / "apps" / "file_app.py"
    cmd = [
        sys.executable,
        "-m",
        "fulmen",
        "serve",
        str(app),
        "--dockerfile",
        str(out),
        "--port",
        "9000",
        "--max-batch-size",
        "8",
        "--batch-timeout",
        "auto",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Dockerfile", "file_app.py", "k8s.yaml", "requirements.txt"]
    docker = (out / "Dockerfile").read_text().splitlines()
    assert docker[0].startswith("FROM python:")
    assert "COPY file_app.py ." in docker and "EXPOSE 9000" in docker
    cmd_line = next(line for line in docker if line.startswith("CMD "))
    assert yaml.safe_load(cmd_line[4:]) == [  # the exec form is a JSON list
        "fulmen",
        "serve",
        "file_app.py",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--max-batch-size",
        "8",
        "--batch-timeout",
        "auto",
    ]
    reqs = (out / "requirements.txt").read_text().split()
    assert reqs[0].startswith("fulmen[serve]==") and reqs[1].startswith("torch==")
    deployment, service = yaml.safe_load_all((out / "k8s.yaml").read_text())
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 9000}
    assert container["ports"][0]["containerPort"] == 9000
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["optional"] is True  # no key in the manifest
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert service["spec"]["ports"][0]["targetPort"] == 9000
    assert deployment["spec"]["replicas"] >= 2

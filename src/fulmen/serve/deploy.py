"""``fulmen serve ... --dockerfile DIR``: a Dockerfile, requirements and Kubernetes manifests for an endpoint.

Pure functions from the serve arguments to text (tested as text and with PyYAML); nothing here talks to
Docker or a cluster. Several replicas behind the Service (or any load balancer) is how serving grows past
one machine; the probes hit ``/health``, which is 200 only when every worker of the replica is alive.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

__all__ = ["dockerfile", "kubernetes_manifests", "requirements", "write_deployment"]


def _name(target: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(target).stem.lower()).strip("-")
    return (stem or "endpoint")[:40]


def requirements() -> str:
    import torch

    from fulmen.__about__ import __version__

    torch_version = torch.__version__.split("+")[0]
    return f"fulmen[serve]=={__version__}\ntorch=={torch_version}\n"


def _serve_command(target: str, args: Any, port: int) -> list[str]:
    cmd = ["fulmen", "serve", Path(target).name, "--host", "0.0.0.0", "--port", str(port)]
    if getattr(args, "model", None):
        cmd += ["--model", args.model]
    for flag, attr in (
        ("--max-batch-size", "max_batch_size"),
        ("--batch-timeout", "batch_timeout"),
        ("--workers-per-device", "workers_per_device"),
        ("--timeout", "timeout"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def dockerfile(target: str, args: Any, port: int = 8000) -> str:
    cmd = ", ".join(f'"{c}"' for c in _serve_command(target, args, port))
    model_note = (
        "# The checkpoint's LightningModule class must be importable in the image: COPY its package here too.\n"
        if not target.endswith(".py")
        else ""
    )
    return (
        "FROM python:3.11-slim\n"
        "WORKDIR /app\n"
        "COPY requirements.txt .\n"
        "RUN pip install --no-cache-dir -r requirements.txt\n"
        f"COPY {Path(target).name} .\n"
        f"{model_note}"
        f"EXPOSE {port}\n"
        "# the API key, if any, comes from the environment (LIT_SERVER_API_KEY), never from the image\n"
        f"CMD [{cmd}]\n"
    )


def kubernetes_manifests(target: str, port: int = 8000, replicas: int = 2, image: str | None = None) -> str:
    name = f"fulmen-{_name(target)}"
    probe = {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 5, "timeoutSeconds": 2}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 60,  # SIGTERM drains the requests in flight
                    "containers": [
                        {
                            "name": "server",
                            "image": image or f"{name}:latest",
                            "ports": [{"containerPort": port, "name": "http"}],
                            "env": [
                                {
                                    "name": "LIT_SERVER_API_KEY",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": f"{name}-api-key", "key": "key", "optional": True}
                                    },
                                }
                            ],
                            "readinessProbe": {**probe, "initialDelaySeconds": 5, "failureThreshold": 2},
                            "livenessProbe": {**probe, "initialDelaySeconds": 60, "failureThreshold": 6},
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": port, "name": "http"}]},
    }
    return yaml.safe_dump_all([deployment, service], sort_keys=False)


def write_deployment(directory: str, target: str, args: Any, port: int = 8000) -> list[Path]:
    """Write ``Dockerfile``, ``requirements.txt``, ``k8s.yaml`` and a copy of ``target`` into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "Dockerfile": dockerfile(target, args, port),
        "requirements.txt": requirements(),
        "k8s.yaml": kubernetes_manifests(target, port),
    }
    written = []
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(out / name)
    copy = out / Path(target).name
    if Path(target).resolve() != copy.resolve():
        shutil.copy2(target, copy)
    written.append(copy)
    return written

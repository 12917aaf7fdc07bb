"""The images, checked with the real tools and no Docker engine: both Dockerfiles (hadolint), their
shape, .dockerignore, the GPU image's requirements and build check.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from tests.integration.shipping_tools import (
    DOCKER,
    ROOT,
    dockerfile_instructions,
    run,
    settings_from_env,
    tool,
)

# ---------------------------------------------------------------------------------------------- Dockerfiles


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

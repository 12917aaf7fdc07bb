"""Security: API key (Bearer, constant time, optional on probes), no path traversal, no shell or eval, safe defaults."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import LiveServer, leftover_uploads
from tests.e2e.test_errors import assert_problem
from tests.e2e.test_metrics_batching import counter

pytestmark = pytest.mark.slow
KEY = "k3y-for-tests-only"
SERVICE = Path(__file__).resolve().parents[2] / "service"


@pytest.fixture(scope="module")
def locked_server(tiny_repo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    overrides = {"model_repo": tiny_repo_template, "api_key": KEY, "protect_operations": True,
                 "decode_workers": 1, "poll_interval_s": 0, "cpu_threads": 1,
                 "upload_dir": tmp_path_factory.mktemp("locked_uploads")}
    with LiveServer(overrides) as live:
        yield live


def test_api_key_bearer_and_closed_probes(locked_server: LiveServer, videos: dict[str, Path]) -> None:
    data, mp4 = videos["c"].read_bytes(), {"content-type": "video/mp4"}
    with locked_server.client() as http:
        for path in ("/healthz", "/readyz", "/metrics", "/models"):
            missing = http.get(path)
            assert_problem(missing, 401, "unauthorized")
            assert missing.headers["www-authenticate"] == 'Bearer realm="tsm"'
            assert "X-API-Key" in missing.json()["detail"] and "Bearer" in missing.json()["detail"]
            assert_problem(http.get(path, headers={"authorization": f"Bearer {KEY}x"}), 401, "unauthorized")
            assert http.get(path, headers={"authorization": f"Bearer {KEY}"}).status_code == 200, path
            assert http.head(path).status_code == 401, path  # the HEAD route keeps the GET's key check
            assert http.head(path, headers={"authorization": f"Bearer {KEY}"}).status_code == 200, path
        for wrong in ("k", KEY[:-1], KEY + KEY, "Basic " + KEY, KEY.upper(), "é" * 20):
            value = wrong if wrong.startswith("Basic") else f"Bearer {wrong}"
            headers = {**mp4, "authorization": value.encode("latin-1")}  # bytes: non-ASCII keys too
            assert_problem(http.post("/classify", content=data, headers=headers), 401, "unauthorized")
        ok = http.post("/classify", content=data, headers={**mp4, "authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200, ok.text
        assert leftover_uploads(locked_server) == []


@pytest.mark.parametrize("given", ["no key", "a wrong key"])
def test_refused_key_counted_once(locked_server: LiveServer, videos: dict[str, Path], given: str) -> None:
    """A 401 on /classify (answered before the route runs) is one request with status 401 and one refusal: a wrong
    key too, or guessing would not show on a dashboard."""
    key = {"authorization": f"Bearer {KEY}"}
    sent = {"content-type": "video/mp4", **({"x-api-key": "wrong"} if given == "a wrong key" else {})}
    with locked_server.client() as http:
        before = http.get("/metrics", headers=key).text
        assert_problem(http.post("/classify", content=videos["c"].read_bytes(), headers=sent), 401, "unauthorized")
        after = http.get("/metrics", headers=key).text
    for name, labels in (("tsm_requests_total", {"model": "", "version": "", "status": "401"}),
                         ("tsm_rejected_requests_total", {"reason": "unauthorized"})):
        assert counter(after, name, **labels) - counter(before, name, **labels) == 1, name


def test_probes_open_by_default(strict_server: LiveServer) -> None:
    with strict_server.client() as http:
        assert http.get("/healthz").status_code == 200 and http.get("/metrics").status_code == 200


def test_key_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key check compares fixed-size digests with ``secrets.compare_digest`` (no length or prefix leak)."""
    import secrets
    from types import SimpleNamespace

    from service.api import deps
    from service.errors import UnauthorizedError
    from service.metrics import Metrics
    from service.settings import ServiceSettings

    seen: list[tuple[int, int]] = []
    real = secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(deps.secrets, "compare_digest", spy)
    res = SimpleNamespace(settings=ServiceSettings(api_key=KEY), metrics=Metrics(process=False))
    asyncio.run(deps.require_api_key(res, None, f"Bearer {KEY}"))  # type: ignore[arg-type]
    for wrong in ("x", KEY * 10):
        with pytest.raises(UnauthorizedError):
            asyncio.run(deps.require_api_key(res, wrong, None))  # type: ignore[arg-type]
    assert seen == [(32, 32)] * 3


TRAVERSALS = ["..", "../..", "../../etc/passwd", "/etc/passwd", "tiny/../tiny", "..%2F..", "tiny/1", "~root",
              ".cache", "%00", "tiny\x00", "a" * 65]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_cannot_leave_the_repository(strict_server: LiveServer, videos: dict[str, Path],
                                                  name: str) -> None:
    with strict_server.client() as http:
        r = http.post("/classify", params={"model": name}, content=videos["c"].read_bytes(),
                      headers={"content-type": "video/mp4"})
        assert r.status_code in (400, 404), r.text
        r = http.get(f"/models/{quote(name, safe='')}")  # encoded, so the client does not normalise it
        assert r.status_code in (400, 404), r.text
        r = http.post("/classify", files={"file": (name, videos["c"].read_bytes(), "video/mp4")},
                      data={"model": name, "version": "1"})
        assert r.status_code in (400, 404), r.text
    assert leftover_uploads(strict_server) == []


def test_client_filename_never_becomes_a_path(strict_server: LiveServer, videos: dict[str, Path],
                                              tmp_path: Path) -> None:
    target = tmp_path / "planted.mp4"
    with strict_server.client() as http:
        r = http.post("/classify", files={"file": (str(target), videos["c"].read_bytes(), "video/mp4")})
    assert r.status_code == 200 and not target.exists()


# The one child process the service starts itself: the TensorRT conversion, ``[sys.executable, "-m",
# "service.trt_convert", <cache folder>]`` with no shell (tests/integration/test_trt_convert.py pins that argv).
CHILD_PROCESS = {"trt_convert.py"}


def test_nothing_reaches_a_shell_or_eval() -> None:
    """No eval/exec/compile, shell, os.system/popen or subprocess anywhere in the service code, but the TensorRT
    conversion's child."""
    banned_calls = {"eval", "exec", "compile", "__import__", "system", "popen", "Popen", "run", "call",
                    "check_output", "check_call", "getoutput", "getstatusoutput"}
    offenders = []
    for file in SERVICE.rglob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                banned = ("pickle", "shlex", "pty") if file.name in CHILD_PROCESS else ("subprocess", "pickle",
                                                                                          "shlex", "pty")
                if any(n and n.split(".")[0] in banned for n in names):
                    offenders.append(f"{file.name}:{node.lineno} imports {names}")
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
                if name in ("eval", "exec", "compile", "__import__") and not owner:
                    offenders.append(f"{file.name}:{node.lineno} calls {name}")
                if owner == "subprocess" and name == "run" and file.name in CHILD_PROCESS:
                    continue
                if owner in ("os", "subprocess") and name in banned_calls:
                    offenders.append(f"{file.name}:{node.lineno} calls {owner}.{name}")
            if isinstance(node, ast.keyword) and node.arg == "shell":
                offenders.append(f"{file.name}:{node.lineno} passes shell=")
    assert not offenders, offenders


def test_defaults_are_safe() -> None:
    from service.settings import ServiceSettings

    s = ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.host == "127.0.0.1"
    assert s.max_upload_bytes <= 512 * 1024 * 1024
    assert s.max_video_duration_s <= 3600 and s.max_video_pixels <= 3840 * 2160
    assert s.decode_timeout_s <= 60 and s.decode_memory_mb <= 8192 and s.upload_timeout_s <= 300
    assert s.request_deadline_ms <= 60_000 and s.queue_capacity <= 1024


@pytest.mark.parametrize("bad", [{"api_key": "short"}, {"max_video_pixels": 10**12}, {"max_upload_bytes": 2**40},
                                 {"max_video_duration_s": 10**7}, {"decode_memory_mb": 10**7}])
def test_unsafe_settings_refused(bad: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from service.settings import ServiceSettings

    with pytest.raises(ValidationError):
        ServiceSettings(**bad)


@pytest.mark.parametrize(("env", "message"), [
    ({"TSM_API_KEY": "sekret"}, "api_key must be at least 8 characters"),
    ({"TSM_DECODE_WORKERS": "0"}, "TSM_DECODE_WORKERS: Input should be greater than or equal to 1")])
def test_tsm_serve_refuses_bad_settings_in_a_line_without_echoing_them(env: dict[str, str], message: str) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "service.cli"], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert message in done.stderr and next(iter(env.values())) not in done.stderr.replace(message, "")


def test_no_cors_headers_unless_origins_are_configured(locked_server: LiveServer) -> None:
    with locked_server.client() as http:
        preflight = http.options("/classify", headers={"origin": "https://app.example.com",
                                                       "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers and preflight.status_code in (401, 405)


def test_the_client_cli_takes_the_key_from_the_environment(locked_server: LiveServer, videos: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from service.client import main

    monkeypatch.delenv("TSM_API_KEY", raising=False)
    assert main([str(videos["c"]), "--url", locked_server.url]) == 1
    assert "401 unauthorized" in capsys.readouterr().err
    monkeypatch.setenv("TSM_API_KEY", KEY)  # not on the command line, where ps and the shell history show it
    assert main([str(videos["c"]), "--url", locked_server.url]) == 0, capsys.readouterr().err

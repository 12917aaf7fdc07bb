"""``tsm-serve`` start-up: what it says of a wrong repository, a misspelt variable, Python warnings, a port in use."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_NAME, LiveServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
MP4 = {"content-type": "video/mp4"}


@pytest.fixture(scope="module", autouse=True)
def _paddle_imported_here() -> None:
    """Paddle imported first by a LiveServer's thread (the app looks for a GPU) leaves this thread in static mode,
    and exporting the tiny model here fails: import it here first."""
    import paddle  # noqa: F401


class Serve:
    """``python -m service.cli`` in a subprocess on a port it picks (TSM_PORT=0), its stderr collected as it
    comes: the test learns the port from the log, as an operator would."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), new_session: bool = False,
                 stdout: Path | None = None, program: tuple[str, ...] = ("-m", "service.cli")) -> None:
        with open(stdout or os.devnull, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *program, *args], cwd=ROOT, text=True,
                                         env={**os.environ, "TSM_PORT": "0", "TSM_DECODE_WORKERS": "1", **env},
                                         stdout=out, stderr=subprocess.PIPE, start_new_session=new_session)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def url(self, timeout_s: float = 90) -> str:
        """The address the server says it listens on, once it does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                if found := re.search(r"Uvicorn running on (http://\S+)", line):
                    return found.group(1)
            time.sleep(0.1)
        raise AssertionError("the server did not start:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)


@pytest.fixture(scope="module")
def misconfigured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, str, Path]]:
    """One server started wrong in two ways: TSM_MODEL_REPO names no folder and TSM_MAX_BATCHSIZE is misspelt."""
    missing = tmp_path_factory.mktemp("repo") / "nosuch"
    server = Serve({"TSM_MODEL_REPO": str(missing), "TSM_MAX_BATCHSIZE": "8", "TSM_LOG_FORMAT": "json"})
    try:
        yield server, server.url(), missing
    finally:
        server.stop()


def test_a_missing_model_repository_is_named_at_start_and_in_the_503(misconfigured: tuple[Serve, str, Path]) -> None:
    server, url, missing = misconfigured
    warnings = [json.loads(line)["message"] for line in server.lines if '"WARNING"' in line]
    assert f"the model repository {missing} does not exist (TSM_MODEL_REPO): no model can load from it; it is " \
           "scanned again every 5 s" in warnings, warnings
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/readyz").status_code == 503  # started all the same: the volume may be filled later
        r = http.post("/classify", content=b"\x00" * 1024, headers=MP4)
    assert r.status_code == 503 and r.json()["type"] == "not-ready", r.text
    assert r.json()["detail"] == "no model is loaded yet: the model repository does not exist"  # no server path


def test_a_request_is_logged_once_as_a_record_with_its_fields(misconfigured: tuple[Serve, str, Path]) -> None:
    server, url, _ = misconfigured
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/classify/batch", content=b"\x00" * 1024, headers={**MP4, "x-request-id": "log-me-1"})
    assert r.status_code == 503
    deadline = time.monotonic() + 10
    while not (mine := [json.loads(line) for line in server.lines if '"log-me-1"' in line]):
        assert time.monotonic() < deadline, "the request was not logged"
        time.sleep(0.05)
    assert len(mine) == 1, mine
    record = mine[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", record["time"]), record  # UTC, ms
    assert {k: record[k] for k in ("level", "path", "model", "version", "status", "type")} == {
        "level": "WARNING", "path": "/classify/batch", "model": None, "version": None, "status": 503,
        "type": "not-ready"}
    assert isinstance(record["duration_ms"], float)
    assert record["message"].endswith(": " + r.json()["detail"])  # the reason, as the client got it


def test_a_misspelt_variable_is_warned_about_with_the_closest_setting(misconfigured: tuple[Serve, str, Path]) -> None:
    server, _, _ = misconfigured
    warnings = [json.loads(line)["message"] for line in server.lines if '"WARNING"' in line]
    assert "TSM_MAX_BATCHSIZE is not a setting (did you mean TSM_MAX_BATCH_SIZE?); it is ignored" in warnings


def test_paddles_import_warning_is_left_out_and_every_line_is_a_json_record(
        misconfigured: tuple[Serve, str, Path]) -> None:
    """Paddle warns at import that ccache is missing (a Python UserWarning): noise on every start, filtered. That
    other warnings still become records is tests/unit/test_logs.py's."""
    server, _, _ = misconfigured
    records = [json.loads(line) for line in server.lines]  # every line a JSON object: no bare warning text
    assert records and not [r for r in records if "ccache" in r["message"]]


def test_with_a_model_served_every_line_of_the_log_is_a_json_record(tiny_repo_template: Path,
                                                                    tmp_path: Path) -> None:
    """Making a predictor, Paddle's C++ code prints to stdout; those lines must come out as records too."""
    stdout = tmp_path / "stdout"
    server = Serve({"TSM_MODEL_REPO": str(tiny_repo_template), "TSM_LOG_FORMAT": "json"}, stdout=stdout)
    try:
        with httpx.Client(base_url=server.url(), timeout=30) as http:
            assert http.get("/readyz").status_code == 200
    finally:
        server.stop()
    assert stdout.read_text() == ""
    records = [json.loads(line) for line in server.lines]  # every line a JSON object
    assert any(r["logger"] == "paddle" for r in records), "Paddle printed nothing: this test checks nothing"
    assert records[-1]["message"].startswith("Finished server process")  # the records kept coming to the end


def test_a_model_repository_that_is_a_file_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "models.tar"
    repo.write_bytes(b"not a folder")
    with LiveServer({"model_repo": repo, "decode_workers": 1, "poll_interval_s": 0}) as live, \
            live.client() as http:
        r = http.post("/classify", content=b"\x00" * 1024, headers=MP4)
    assert f"the model repository {repo} is not a folder (TSM_MODEL_REPO): no model can load from it" in caplog.text
    assert r.status_code == 503 and r.json()["detail"] == "no model is loaded yet: the model repository is not a " \
                                                          "folder", r.text


def test_an_unnamed_request_when_the_only_version_failed_gets_its_error(model_repo: Path) -> None:
    (model_repo / TINY_NAME / "1" / "model.pdiparams").write_bytes(b"truncated")
    with LiveServer({"model_repo": model_repo, "decode_workers": 1, "poll_interval_s": 0}) as live, \
            live.client() as http:
        error = http.get("/models").json()["models"][0]["error"]
        r = http.post("/classify", content=b"\x00" * 1024, headers=MP4)
    assert error and r.status_code == 503, r.text
    assert r.json()["detail"] == f"no model is loaded yet: {TINY_NAME} version 1 failed ({error})"


def test_a_port_in_use_fails_before_loading_the_model_and_names_the_address(tiny_repo_template: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "TSM_MODEL_REPO": str(tiny_repo_template), "TSM_DECODE_WORKERS": "1",
               "TSM_LOG_FORMAT": "text"}
        done = subprocess.run([sys.executable, "-m", "service.cli", "--port", str(port)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (f"tsm-serve: cannot listen on 127.0.0.1:{port}: Address already in use "
                                            "(another process listens there; choose another --port or TSM_PORT)")
    assert "serving tiny" not in done.stderr and "Waiting for application startup" not in done.stderr


def test_a_port_taken_while_the_model_loads_fails_in_one_line_and_stops_the_workers(
        tiny_repo_template: Path) -> None:
    """Two servers started at the same moment on one port both bind (SO_REUSEADDR, neither listening yet); the
    one that listens second must fail as clearly as a port already in use, not with a traceback."""
    with socket.socket() as rival:
        rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rival.bind(("127.0.0.1", 0))
        port = rival.getsockname()[1]
        server = Serve({"TSM_MODEL_REPO": str(tiny_repo_template), "TSM_LOG_FORMAT": "text"},
                       args=("--port", str(port)))
        try:
            deadline = time.monotonic() + 60
            while not any("Waiting for application startup" in line for line in server.lines):
                assert time.monotonic() < deadline and server.proc.poll() is None, "\n".join(server.lines)
                time.sleep(0.05)
            rival.listen()  # while the server loads and warms its model
            code = server.proc.wait(timeout=120)
        finally:
            server.stop()
    text = "\n".join(server.lines)
    assert code == 3 and "Traceback" not in text, text[-3000:]
    assert (f"tsm-serve: cannot listen on 127.0.0.1:{port}: Address already in use (another process listens "
            "there; choose another --port or TSM_PORT)") in text
    assert "Application shutdown complete" in text and "Uvicorn running on" not in text


def test_ctrl_c_in_a_terminal_ends_the_server_and_its_workers_quietly(tiny_repo_template: Path) -> None:
    """Ctrl+C signals the terminal's whole process group: the server, the forkserver and the decoder workers."""
    server = Serve({"TSM_MODEL_REPO": str(tiny_repo_template), "TSM_DECODE_WORKERS": "2", "TSM_LOG_FORMAT": "text"},
                   new_session=True)
    try:
        with httpx.Client(base_url=server.url(), timeout=30) as http:
            assert http.get("/readyz").status_code == 200
        os.killpg(server.proc.pid, signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()
    text = "\n".join(server.lines)
    assert "Application shutdown complete" in text and "Traceback" not in text and "KeyboardInterrupt" not in text, \
        text[-3000:]


# tsm-serve whose version 2 takes two minutes to load (as a long warm-up or an engine build would)
_SLOW_SECOND_VERSION = """
import time
import service.app

real = service.app.default_factory


def slow(settings):
    make = real(settings)

    def made(path, manifest):
        if path.name == "2":
            time.sleep(120)
        return make(path, manifest)
    return made


service.app.default_factory = slow
from service.cli import serve
serve()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl+C", "SIGTERM"])
def test_a_stop_while_a_version_loads_ends_the_server_without_waiting_for_the_load(tiny_repo_template: Path,
                                                                                   tmp_path: Path,
                                                                                   signum: int) -> None:
    """The interpreter's exit joined the loading thread: Ctrl+C waited for the whole load. SIGTERM exits 143; both
    leave no multiprocessing folder behind."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo_template, repo)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = Serve({"TSM_MODEL_REPO": str(repo), "TSM_POLL_INTERVAL_S": "0.2", "TSM_LOG_FORMAT": "text",
                    "TMPDIR": str(temporary)}, new_session=True, program=("-c", _SLOW_SECOND_VERSION))
    try:
        with httpx.Client(base_url=server.url(), timeout=30) as http:
            shutil.copytree(repo / "tiny" / "1", repo / "tiny" / ".2")
            manifest = json.loads((repo / "tiny" / ".2" / "manifest.json").read_text())
            (repo / "tiny" / ".2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
            (repo / "tiny" / ".2").rename(repo / "tiny" / "2")
            deadline = time.monotonic() + 30
            while (2, "loading") not in [(m["version"], m["state"]) for m in http.get("/models").json()["models"]]:
                assert time.monotonic() < deadline, "version 2 never started loading"
                time.sleep(0.1)
        os.killpg(server.proc.pid, signum)
        start = time.monotonic()
        assert server.proc.wait(timeout=60) == (0 if signum == signal.SIGINT else 128 + signal.SIGTERM)
        took = time.monotonic() - start
    finally:
        server.stop()
    text = "\n".join(server.lines)
    assert took < 20, took  # not the load's two minutes
    assert "a model version was still loading" in text and "Traceback" not in text, text[-3000:]
    assert list(temporary.iterdir()) == []  # the exit handlers ran: multiprocessing's folder is gone


"""The compose stack's nginx config, run by a real nginx in front of a real server on loopback.

Only what cannot exist here is changed: the upstream address (Docker's DNS name ``api`` becomes the test
server's port), the listening port, and the folders nginx writes (pid, temp files) moved into the test's own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port

pytestmark = pytest.mark.slow

CONF = Path(__file__).resolve().parents[2] / "docker" / "nginx" / "nginx.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.fail("nginx is missing: apt-get install -y nginx (./run.sh test installs it)")
    return found


def local_conf(folder: Path, upstream: str, port: int, max_body: str | None = None) -> Path:
    """The shipped config with its upstream, port and writable paths made local (and optionally a smaller
    body limit, so that the proxy's own 413 is reachable without sending 1.6 GB)."""
    text = CONF.read_text()
    text = text.replace("set $api_upstream http://api:8000;", f"set $api_upstream {upstream};")
    text = re.sub(r"^(\s*)listen 8000;", rf"\1listen 127.0.0.1:{port};", text, flags=re.M)
    text = text.replace("pid /tmp/nginx.pid;", f"pid {folder}/nginx.pid;")
    temps = "".join(f"    {kind}_temp_path {folder}/{kind};\n" for kind in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = text.replace("http {\n", "http {\n" + temps, 1)
    if max_body:
        text = re.sub(r"client_max_body_size \S+;", f"client_max_body_size {max_body};", text)
    for needed in ("set $api_upstream", f"listen 127.0.0.1:{port}", f"pid {folder}"):
        assert needed in text, f"the shipped nginx.conf changed shape: {needed!r} not substituted"
    conf = folder / "nginx.conf"
    conf.write_text(text)
    return conf


class Proxy:
    def __init__(self, folder: Path, upstream: str, max_body: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = local_conf(folder, upstream, self.port, max_body)
        check = subprocess.run([nginx_binary(), "-t", "-c", str(conf), "-p", str(folder), "-e", "stderr"],
                               capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(folder), "-e", "stderr",
                                         "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/nginx-health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.process.stderr.read() if self.process.stderr else ''}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture
def proxied(tiny_repo_template: Path, tmp_path: Path) -> Iterator[tuple[LiveServer, Proxy]]:
    with LiveServer({"model_repo": tiny_repo_template, "poll_interval_s": 0, "decode_workers": 1,
                     "cpu_threads": 1}) as live:
        proxy = Proxy(tmp_path / "nginx", live.url)
        try:
            yield live, proxy
        finally:
            proxy.stop()


def assert_proxy_problem(response: httpx.Response, status: int, type_: str, request_id: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()  # valid JSON: the detail's apostrophes and the request id are escaped right
    assert (body["type"], body["status"]) == (type_, status) and body["title"] and len(body["detail"]) > 20
    assert body["request_id"] == response.headers["x-request-id"] == request_id
    return body


def test_requests_and_the_services_errors_pass_through(proxied: tuple[LiveServer, Proxy],
                                                       videos: dict[str, Path]) -> None:
    _, proxy = proxied
    with httpx.Client(base_url=proxy.url, timeout=60) as http:
        answer = http.post("/classify", files={"file": ("a.mp4", videos["a"].read_bytes(), "video/mp4")},
                           headers={"X-Request-ID": "proxy-test-1"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "proxy-test-1" == answer.json()["request_id"]
        assert len(answer.headers.get_list("x-request-id")) == 1
        refused = http.post("/classify", content=b"text", headers={"content-type": "text/plain"})
        assert refused.status_code == 415 and refused.json()["type"] == "unsupported-media-type"  # the replica's
        assert http.get("/readyz").status_code == 200
        assert_proxy_problem(http.get("/metrics", headers={"X-Request-ID": "m-1"}), 404, "not-found", "m-1")


def test_the_proxys_own_refusals_are_problem_documents(proxied: tuple[LiveServer, Proxy], tmp_path: Path,
                                                       videos: dict[str, Path]) -> None:
    live, _ = proxied
    small = Proxy(tmp_path / "small", live.url, max_body="64k")
    try:
        with httpx.Client(base_url=small.url, timeout=60) as http:
            big = http.post("/classify", content=b"\0" * (200 * 1024), headers={"content-type": "video/mp4",
                                                                                "X-Request-ID": "big-1"})
            assert "client_max_body_size" in assert_proxy_problem(big, 413, "upload-too-large", "big-1")["detail"]
    finally:
        small.stop()
    nowhere = Proxy(tmp_path / "nowhere", f"http://127.0.0.1:{free_port()}")  # no replica listens there
    try:
        with httpx.Client(base_url=nowhere.url, timeout=60) as http:
            down = http.post("/classify", files={"file": ("a.mp4", videos["a"].read_bytes(), "video/mp4")},
                             headers={"X-Request-ID": "down-1"})
            assert_proxy_problem(down, 502, "no-replica", "down-1")
            assert down.headers["retry-after"] == "5"
            # A client's id that is no plain token would break the JSON (or add fields to it): nginx's own instead.
            odd = http.post("/classify", content=b"x", headers={"content-type": "video/mp4",
                                                                "X-Request-ID": 'a"b\\c", "type": "x'})
            body = odd.json()  # valid JSON
            assert body["type"] == "no-replica" and re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
            assert odd.headers["x-request-id"] == body["request_id"]
    finally:
        nowhere.stop()

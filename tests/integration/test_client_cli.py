"""``tsm-classify`` as scripts use it: JSON lines that match the inputs, one-line errors, honest exit codes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.client import ClassifyError, Client, UnexpectedReplyError, _in_order, main
from tests.conftest import LiveServer

ROOT = Path(__file__).parents[2]


class _NotOurService(BaseHTTPRequestHandler):
    """Another server on the port the user gave: HTML, foreign JSON, a proxy's 502 page, or silence."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        server: _OtherServer = self.server  # type: ignore[assignment]
        if self.path.startswith("/slow"):
            server.arrived.set()
            time.sleep(30)
            return
        if self.path.startswith(("/together", "/busy")):
            self._like_the_service(server)
            return
        status, kind, body = {"/html": (200, "text/html", b"<html>hello</html>"),
                              "/foreign": (200, "application/json", b'{"ok": true}'),
                              "/proxy": (502, "text/html", b"<html>Bad Gateway</html>")}[self.path.split("?")[0]
                                                                                        .removesuffix("/classify")]
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _like_the_service(self, server: _OtherServer) -> None:
        """/together: an answer after 0.3 s, counting the requests in flight at once; /busy: 503 with Retry-After
        0 while ``server.busy`` says so, then an answer."""
        with server.lock:
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            busy = self.path.startswith("/busy") and server.busy > 0
            server.busy -= busy
        if self.path.startswith("/together"):
            time.sleep(0.3)
        status, body = (server.busy_status, {"type": "queue-full", "detail": "busy"}) if busy else \
            (200, {"model": "m", "version": 1, "predictions": [{"label": self.path, "score": 1.0}]})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/problem+json" if busy else "application/json")
        if busy:
            self.send_header("retry-after", server.retry_after)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with server.lock:
            server.in_flight -= 1

    def log_message(self, *_: object) -> None:
        pass


class _OtherServer(ThreadingHTTPServer):
    daemon_threads = True
    arrived = threading.Event()  # a request reached /slow
    lock = threading.Lock()
    in_flight = most_in_flight = 0  # requests being answered, and the most at once
    busy = 0  # /busy answers this many more requests busy_status
    busy_status = 503  # 429 is a rate limiter's (a proxy's) way of saying it
    retry_after = "0"  # with this Retry-After

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def other() -> Iterator[_OtherServer]:
    httpd = _OtherServer(("127.0.0.1", 0), _NotOurService)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


@pytest.fixture
def other_server(other: _OtherServer) -> str:
    return other.url


def test_an_answer_that_is_not_the_services_is_a_failure(other_server: str, videos: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    clip = str(videos["a"])
    for prefix in ("/html", "/foreign"):
        assert main([clip, "--url", other_server + prefix, "--json"]) == 1
        line = json.loads(capsys.readouterr().out)
        assert line["file"] == clip and line["error"]["type"] == "unexpected-reply", line
        assert "TSM service" in line["error"]["detail"]
        with Client(other_server + prefix) as client, pytest.raises(UnexpectedReplyError):
            client.classify(clip)
    assert main([clip, "--url", other_server + "/foreign"]) == 1  # text mode: one line, no KeyError traceback
    err = capsys.readouterr().err
    assert "unexpected-reply" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with Client(other_server + "/proxy") as client, pytest.raises(ClassifyError) as proxy:
        client.classify(clip)
    assert proxy.value.status == 502 and proxy.value.type == "not-json" and "Bad Gateway" in str(proxy.value)


def test_a_wrong_url_or_option_is_one_line_and_exit_2(videos: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(videos["a"]), "--url", "http://127.0.0.1:notaport"]) == 2
    err = capsys.readouterr().err
    assert "not a valid URL" in err and "Traceback" not in err
    for option in (["--top-k", "0"], ["--timeout", "-1"]):
        with pytest.raises(SystemExit) as usage:
            main([str(videos["a"]), *option])
        assert usage.value.code == 2 and "must be above 0" in capsys.readouterr().err
    # The usual slips with --url: no scheme (httpx: "unsupported protocol 'localhost://'"), the endpoint's URL
    # (a 404 "Not Found" from the server): each is named, with the URL to give instead.
    for url, says in (("localhost:18301", "is not an http:// or https:// URL: give the service's base URL, e.g. "
                                          "http://localhost:18301"),
                      ("http://localhost:18301/classify", "is an endpoint: give the service's base URL "
                                                          "(http://localhost:18301); the client adds /classify"),
                      ("http://h:1/classify/batch/", "base URL (http://h:1)")):
        with pytest.raises(SystemExit) as usage:
            main([str(videos["a"]), "--url", url])
        assert usage.value.code == 2 and says in capsys.readouterr().err


def test_the_timeout_option_bounds_a_silent_server(other_server: str, videos: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert main([str(videos["a"]), "--url", other_server + "/slow", "--timeout", "0.5", "--json"]) == 1
    assert time.monotonic() - start < 10  # not the default 120 s
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "timeout"


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_ctrl_c_ends_the_client_without_a_traceback(other: _OtherServer, videos: dict[str, Path],
                                                     concurrency: str) -> None:
    """At once: requests in flight (each would wait 30 s here) are not waited for."""
    arrived, other_server = other.arrived, other.url
    arrived.clear()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGINT as a terminal sends it: a test run started in the background (`cmd &`) ignores it, and so would the
    # client it starts
    proc = subprocess.Popen([sys.executable, "-m", "service.client", str(videos["a"]), str(videos["c"]), "--url",
                             other_server + "/slow", "--concurrency", concurrency], stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert arrived.wait(30), "the client never reached the server"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert time.monotonic() - start < 10


def test_concurrency_keeps_that_many_in_flight_and_the_order(other: _OtherServer, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    for i in range(7):
        files.append(tmp_path / f"v{i}.mp4")
        files[-1].write_bytes(b"x" * (100 + i))
    other.most_in_flight = 0
    assert main([*map(str, files), "--url", other.url + "/together", "--json", "--concurrency", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == list(map(str, files))
    assert other.most_in_flight == 3
    other.most_in_flight = 0
    assert main([str(files[0]), str(files[1]), "--url", other.url + "/together", "--json"]) == 0
    assert other.most_in_flight == 1  # the default: one at a time
    with Client(other.url + "/together", connections=2) as few:  # httpx's pool bounds what is in flight
        other.most_in_flight = 0
        list(_in_order(lambda video: (video, few.classify(video), None), files[:4], 4))
        assert other.most_in_flight == 2


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_server_is_asked_again_after_its_retry_after(other: _OtherServer, videos: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    monkeypatch.setattr(other, "busy_status", status)
    other.busy = 2
    assert main([str(videos["a"]), "--url", other.url + "/busy", "--json"]) == 0  # the default: 2 retries
    assert json.loads(capsys.readouterr().out)["predictions"] and other.busy == 0
    other.busy = 1
    assert main([str(videos["a"]), "--url", other.url + "/busy", "--json", "--retries", "0"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == {"status": status, "type": "queue-full", "detail": "busy"}
    other.busy = 3
    waits: list[float] = []
    with Client(other.url + "/busy", retries=2, sleep=waits.append) as client, \
            pytest.raises(ClassifyError) as refused:
        client.classify(videos["a"])
    assert refused.value.status == status and refused.value.retry_after_s == 0 and waits == [0, 0]
    with pytest.raises(ValueError, match="retries must be 0 or more"):
        Client(other.url, retries=-1)


@pytest.mark.parametrize(("retry_after", "least"), [("2", 2.0), ("100", 30.0)])
def test_clients_told_the_same_retry_after_come_back_apart(other: _OtherServer, videos: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch, retry_after: str,
                                                           least: float) -> None:
    """Every client a full queue refuses hears the same Retry-After: each waits at least that (at most 30 s), plus
    a random part of up to half of it, so their second tries don't all arrive at once to be refused again."""
    monkeypatch.setattr(other, "retry_after", retry_after)
    waits: list[list[float]] = []
    for seed in range(4):
        other.busy, mine = 3, []
        with Client(other.url + "/busy", retries=2, sleep=mine.append, rng=random.Random(seed)) as client, \
                pytest.raises(ClassifyError):
            client.classify(videos["a"])
        waits.append(mine)
    every = [w for mine in waits for w in mine]
    assert len(every) == 8 and all(least <= w <= 1.5 * least for w in every), every
    assert len({round(w, 6) for w in every}) == 8  # no two tries at the same instant


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_json_lines_match_the_inputs_in_order(server: LiveServer, videos: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], concurrency: str) -> None:
    bad = tmp_path / "not-video.mp4"
    bad.write_bytes(b"nope" * 100)
    missing = tmp_path / "missing.mp4"
    inputs = [str(videos["a"]), str(bad), str(missing), str(videos["c"])]
    assert main([*inputs, "--url", server.url, "--json", "--top-k", "1", "--concurrency", concurrency]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == inputs
    assert lines[0]["model"] == "tiny" and len(lines[0]["predictions"]) == 1 and "error" not in lines[0]
    assert lines[1]["error"] == {"status": 422, "type": "undecodable-video", "detail": lines[1]["error"]["detail"]}
    assert lines[2]["error"]["status"] is None and lines[2]["error"]["type"] == "file"
    assert lines[3]["predictions"] and "error" not in lines[3]


@pytest.mark.slow
def test_version_0_is_sent_and_refused_not_dropped(server: LiveServer, videos: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(videos["a"]), "--url", server.url, "--version", "0"]) == 1
    err = capsys.readouterr().err
    assert "400 bad-parameter" in err and "version" in err

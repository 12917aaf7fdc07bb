"""Every error status over real HTTP, each with its problem JSON (type, title, detail)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.videos import write_audio_only

pytestmark = pytest.mark.slow


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == type_ and body["status"] == status
    assert body["title"] and len(body["detail"]) > 10
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_bad_parameters_400(server: LiveServer, videos: dict[str, Path]) -> None:
    data = videos["a"].read_bytes()
    with server.client() as http:
        for params in ({"top_k": 0}, {"top_k": 6}, {"top_k": "many"}, {"version": "x"}):
            r = http.post("/classify", params=params, content=data, headers={"content-type": "video/mp4"})
            assert_problem(r, 400, "bad-parameter")
        r = http.post("/classify", files={"file": ("a.mp4", data, "video/mp4")}, data={"top_k": "-3"})
        assert_problem(r, 400, "bad-parameter")
        r = http.post("/classify", files={"other": ("a.mp4", data, "video/mp4")})
        assert_problem(r, 400, "bad-parameter")
        r = http.post("/classify", content=b"", headers={"content-type": "video/mp4"})
        assert_problem(r, 400, "bad-parameter")


def test_unknown_model_or_version_404(server: LiveServer, videos: dict[str, Path]) -> None:
    data = videos["a"].read_bytes()
    with server.client() as http:
        r = http.post("/classify", params={"model": "nope"}, content=data, headers={"content-type": "video/mp4"})
        assert_problem(r, 404, "model-not-found")
        r = http.post("/classify", params={"version": 7}, content=data, headers={"content-type": "video/mp4"})
        assert_problem(r, 404, "version-not-found")
        assert_problem(http.get("/models/nope"), 404, "model-not-found")
        assert http.get("/no/such/route").status_code == 404


def test_the_routers_own_404_and_405_say_what_to_do_and_allow_every_method_of_the_path(server: LiveServer) -> None:
    """Their detail was their title ("Method Not Allowed"), and a path served by a GET and a HEAD route allowed
    only the first one's method (POST /readyz: "Allow: HEAD")."""
    with server.client() as http:
        missing = assert_problem(http.get("/no/such/route"), 404, "not-found")
        readyz, healthz, classify = http.post("/readyz"), http.post("/healthz"), http.get("/classify")
    assert missing["detail"] == "no route answers /no/such/route; the API's routes are listed at /openapi.json"
    for response, path, allow in ((readyz, "/readyz", "GET, HEAD"), (healthz, "/healthz", "GET, HEAD"),
                                  (classify, "/classify", "POST")):
        body = assert_problem(response, 405, "method-not-allowed")
        assert response.headers["allow"] == allow
        assert body["detail"] == f"{response.request.method} is not allowed on {path}; it answers {allow}"


def test_every_get_route_answers_head_with_its_headers_and_no_body(server: LiveServer) -> None:
    """Monitors probe with HEAD: /metrics, /models and /models/{name} answered 405."""
    with server.client() as http:
        for path in ("/metrics", "/models", "/models/tiny", "/healthz", "/openapi.json"):
            get, head = http.get(path), http.head(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
        assert http.head("/models/nope").status_code == 404
        assert set(http.get("/openapi.json").json()["paths"]["/metrics"]) == {"get"}  # HEAD stays out of the schema


def test_upload_over_limit_413(server: LiveServer) -> None:
    big = b"\0" * (server.settings.max_upload_bytes + 1)
    with server.client() as http:
        assert_problem(http.post("/classify", content=big, headers={"content-type": "video/mp4"}),
                       413, "upload-too-large")
        assert_problem(http.post("/classify", files={"file": ("big.mp4", big, "video/mp4")}), 413, "upload-too-large")

        def chunks():  # no Content-Length: the cap must hold while streaming
            for _ in range(5):
                yield b"\0" * (server.settings.max_upload_bytes // 4)

        assert_problem(http.post("/classify", content=chunks(), headers={"content-type": "video/mp4"}),
                       413, "upload-too-large")


def test_not_a_video_415(server: LiveServer, videos: dict[str, Path]) -> None:
    data = videos["a"].read_bytes()
    with server.client() as http:
        assert_problem(http.post("/classify", content=data, headers={"content-type": "text/plain"}),
                       415, "unsupported-media-type")
        assert_problem(http.post("/classify", files={"file": ("a.txt", data, "text/plain")}),
                       415, "unsupported-media-type")
        assert_problem(http.post("/classify", json={"video": "x"}), 415, "unsupported-media-type")


def test_undecodable_or_no_video_stream_422(server: LiveServer, tmp_path: Path) -> None:
    audio = write_audio_only(tmp_path / "audio.mp4").read_bytes()
    with server.client() as http:
        r = http.post("/classify", content=b"\x00\x01garbage" * 300, headers={"content-type": "video/mp4"})
        raw = assert_problem(r, 422, "undecodable-video")
        named = assert_problem(http.post("/classify", files={"file": ("holiday.mp4", b"\x00\x01garbage" * 300,
                                                                      "video/mp4")}), 422, "undecodable-video")
        # the client's name for its upload, never the server's temporary file
        assert raw["detail"].startswith("the upload: ") and named["detail"].startswith("'holiday.mp4': ")
        assert "tsm-upload" not in raw["detail"] + named["detail"]
        assert raw["detail"].count("the upload") == 1 and "Errno" not in raw["detail"], raw["detail"]
        body = assert_problem(http.post("/classify", content=audio, headers={"content-type": "video/mp4"}),
                              422, "undecodable-video")
        assert "no video stream" in body["detail"]
        metrics = http.get("/metrics").text
    assert 'tsm_decode_failures_total{reason="no_video_stream"}' in metrics


def test_video_limits_422(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    overrides = {"model_repo": tiny_repo_template, "max_video_duration_s": 1.0, "max_video_pixels": 160 * 120,
                 "decode_workers": 1}
    with LiveServer(overrides) as live, live.client() as http:
        long = http.post("/classify", content=videos["b"].read_bytes(), headers={"content-type": "video/mp4"})
        ok = http.post("/classify", content=videos["a"].read_bytes(), headers={"content-type": "video/mp4"})
    assert "over the limit" in assert_problem(long, 422, "video-limit-exceeded")["detail"]
    assert ok.status_code == 200


def test_api_key_401(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    overrides = {"model_repo": tiny_repo_template, "api_key": "s3cret-key", "decode_workers": 1}
    data = videos["a"].read_bytes()
    with LiveServer(overrides) as live, live.client() as http:
        assert_problem(http.post("/classify", content=data, headers={"content-type": "video/mp4"}),
                       401, "unauthorized")
        assert_problem(http.post("/classify", content=data, headers={"content-type": "video/mp4",
                                                                     "x-api-key": "wrong-key"}), 401, "unauthorized")
        assert_problem(http.get("/models"), 401, "unauthorized")
        assert http.get("/healthz").status_code == 200  # probes stay open
        ok = http.post("/classify", content=data, headers={"content-type": "video/mp4",
                                                            "authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200
        assert http.get("/models", headers={"x-api-key": "s3cret-key"}).status_code == 200


def test_full_queue_503_at_once_and_deadline_504(tiny_repo_template: Path, videos: dict[str, Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Capacity 1 and a 5 s batching window: the first clip waits, the second is refused at once;
    the first then passes its 4 s deadline while still queued."""
    # The deadline leaves time (on a slow machine too) for the second request to be uploaded and decoded while
    # the first is still queued; the batching window outlasts it.
    overrides = {"model_repo": tiny_repo_template, "queue_capacity": 1, "max_batch_size": 4,
                 "max_queue_delay_ms": 5000, "request_deadline_ms": 4000, "decode_workers": 2,
                 "decode_timeout_s": 3.9, "upload_timeout_s": 3.9}  # stage timeouts must be below the deadline
    data = videos["a"].read_bytes()
    with LiveServer(overrides) as live, live.client() as http, concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(http.post, "/classify", content=data, headers={"content-type": "video/mp4"})
        batcher = live.resources.repository.serving["tiny"].batcher
        deadline = time.monotonic() + 10
        while batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth == 1, "the first clip never reached the batcher's queue"
        start = time.monotonic()
        second = http.post("/classify", content=data, headers={"content-type": "video/mp4"})
        refused_in = time.monotonic() - start
        body = assert_problem(second, 503, "queue-full")
        # Refused before its decode (its upload included, slow under load), not queued until its own 4 s
        # deadline: half of that tells the two apart.
        assert second.headers["retry-after"] == "1" and refused_in < 2.0, refused_in
        assert "retry" in body["detail"]
        assert_problem(first.result(), 504, "deadline-exceeded")
        metrics = http.get("/metrics").text
    assert 'tsm_rejected_requests_total{reason="queue-full"} 1.0' in metrics
    assert 'tsm_stage_duration_seconds_count{stage="decode"} 1.0' in metrics  # the refused clip was not decoded
    assert "TSM_QUEUE_CAPACITY (1) is below TSM_MAX_BATCH_SIZE (4): a batch is taken from that queue, so none holds " \
           "more than 1 clip" in caplog.text  # what this test relies on, said at start-up
    assert 'tsm_requests_total{model="tiny",status="504",version="1"} 1.0' in metrics
    assert "deadline-exceeded" not in metrics  # a passed deadline is not a refusal (tsm_rejected_requests_total)


def test_killed_decoder_fails_only_its_request(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    import os
    import signal

    from tests.e2e.helpers import slow_decode

    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "decode_timeout_s": 20}
    data = videos["a"].read_bytes()
    with LiveServer(overrides, decode_task=slow_decode) as live, live.client() as http, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool_ = live.resources.pool
        old_pids = pool_.pids()
        pending = pool.submit(http.post, "/classify", content=data, headers={"content-type": "video/mp4"})
        deadline = time.monotonic() + 10
        while not pool_.busy_pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pool_.busy_pids()[0], signal.SIGKILL)
        body = assert_problem(pending.result(), 422, "decoder-crashed")
        assert "died" in body["detail"]
        after = http.post("/classify", content=data, headers={"content-type": "video/mp4"})
        assert after.status_code == 200, after.text
        assert pool_.pids() != old_pids and pool_.replaced == 1


def test_hung_decoder_times_out_422(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    from tests.e2e.helpers import slow_decode

    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "decode_timeout_s": 0.5}
    with LiveServer(overrides, decode_task=slow_decode) as live, live.client() as http:
        start = time.monotonic()
        r = http.post("/classify", content=videos["a"].read_bytes(), headers={"content-type": "video/mp4"})
        assert time.monotonic() - start < 2.5
        assert_problem(r, 422, "decode-timeout")
        assert live.resources.pool.replaced == 1
        assert 'tsm_decode_failures_total{reason="timeout"} 1.0' in http.get("/metrics").text


def test_a_full_upload_folder_503_and_nothing_left(strict_server: LiveServer, videos: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Every upload file written to /dev/full, whose writes fail with the kernel's ENOSPC as a full disk's do."""
    import service.upload
    from tests.conftest import leftover_uploads

    real_new_file = service.upload._new_file

    def on_a_full_disk(*args: object) -> tuple[object, object]:
        item, fh = real_new_file(*args)  # type: ignore[arg-type]
        fh.close()  # the file exists, as a partial upload's would; its bytes go nowhere
        return item, open("/dev/full", "wb")  # closed by the upload code

    data = videos["c"].read_bytes()
    assert len(data) * 2 < strict_server.settings.max_upload_bytes
    monkeypatch.setattr(service.upload, "_new_file", on_a_full_disk)
    with strict_server.client() as http:
        for response in (http.post("/classify", content=data, headers={"content-type": "video/mp4"}),
                         http.post("/classify", files={"file": ("a.mp4", data, "video/mp4")}),
                         http.post("/classify/batch", files=[("files", ("a.mp4", data, "video/mp4"))] * 2)):
            body = assert_problem(response, 503, "upload-storage-full")
            assert "no room to store the upload" in body["detail"] and response.headers["retry-after"] == "5"
        assert leftover_uploads(strict_server) == []
        assert "no space left for uploads in" in caplog.text  # the operator hears of it, not only the client
        monkeypatch.undo()
        assert http.post("/classify", content=data, headers={"content-type": "video/mp4"}).status_code == 200
        metrics = http.get("/metrics").text
    assert 'tsm_rejected_requests_total{reason="upload-storage-full"} 3.0' in metrics


def test_a_video_type_the_server_does_not_accept_is_not_called_not_a_video(tiny_repo_template: Path,
                                                                          videos: dict[str, Path]) -> None:
    data = videos["a"].read_bytes()
    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1,
                 "allowed_content_types": ["video/mp4", "application/octet-stream"]}
    with LiveServer(overrides) as live, live.client() as http:
        for response in (http.post("/classify", content=data, headers={"content-type": "video/webm"}),
                         http.post("/classify", files={"file": ("a.webm", data, "video/webm")})):
            detail = assert_problem(response, 415, "unsupported-media-type")["detail"]
            assert "'video/webm'" in detail and "not among the types this server accepts" in detail
            assert "video/mp4, application/octet-stream" in detail and "not a video" not in detail
        text = assert_problem(http.post("/classify", content=data, headers={"content-type": "text/plain"}), 415,
                              "unsupported-media-type")["detail"]
        assert "'text/plain' is not a video" in text

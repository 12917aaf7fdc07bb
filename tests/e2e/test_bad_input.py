"""Bad input over real HTTP: each gets its 4xx problem JSON, no upload file is left, the server keeps serving."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import STRICT_UPLOAD_BYTES, LiveServer, leftover_uploads, pool_healthy
from tests.e2e.test_errors import assert_problem
from tests.e2e.test_metrics_batching import counter
from tests.videos import bad_videos

pytestmark = pytest.mark.slow
MP4 = {"content-type": "video/mp4"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, int, str]]:
    return bad_videos(tmp_path_factory.mktemp("bad_videos"))


@pytest.fixture(scope="module")
def good(videos: dict[str, Path]) -> bytes:
    return videos["c"].read_bytes()


@pytest.fixture(autouse=True)
def _still_serving(strict_server: LiveServer, good: bytes):
    """After every case: no upload left on disk, every decoder alive, and a good video still classifies."""
    yield
    assert leftover_uploads(strict_server) == []
    assert pool_healthy(strict_server)
    with strict_server.client() as http:
        assert http.post("/classify", content=good, headers=MP4).status_code == 200


CASES = ["text", "random_bytes", "png_image", "audio_only", "truncated_head_only", "unknown_codec",
         "huge_dimensions_claim", "huge_duration_claim", "resolution_bomb", "resolution_bomb_ts"]


@pytest.mark.parametrize("name", CASES)
def test_corpus_item_refused(strict_server: LiveServer, corpus: dict[str, tuple[bytes, int, str]], name: str) -> None:
    body, status, type_ = corpus[name]
    assert len(body) <= STRICT_UPLOAD_BYTES, len(body)
    with strict_server.client() as http:
        problem = assert_problem(http.post("/classify", content=body, headers=MP4), status, type_)
    assert "/" not in problem["detail"].replace("w/", ""), problem["detail"]  # no server path leaks out


def test_an_image_is_named_as_an_image(strict_server: LiveServer, corpus: dict[str, tuple[bytes, int, str]]) -> None:
    with strict_server.client() as http:
        detail = http.post("/classify", content=corpus["png_image"][0], headers=MP4).json()["detail"]
        metrics = http.get("/metrics").text
    assert "the file is an image (png_pipe), not a video" in detail
    assert 'tsm_decode_failures_total{reason="not_a_video"}' in metrics


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bit_flipped_mp4_never_5xx(strict_server: LiveServer, good: bytes, seed: int) -> None:
    import numpy as np

    data = bytearray(good)
    rng = np.random.default_rng(seed)
    for at in rng.integers(0, len(data), size=16):
        data[at] ^= 1 << int(rng.integers(0, 8))
    with strict_server.client() as http:
        r = http.post("/classify", content=bytes(data), headers=MP4)
    assert r.status_code in (200, 422), r.text


def test_empty_and_zero_byte_multipart_400(strict_server: LiveServer) -> None:
    with strict_server.client() as http:
        assert_problem(http.post("/classify", content=b"", headers=MP4), 400, "bad-parameter")
        assert_problem(http.post("/classify", files={"file": ("empty.mp4", b"", "video/mp4")}), 400, "bad-parameter")
        assert_problem(http.post("/classify", files={"other": ("a.mp4", b"x" * 100, "video/mp4")}),
                       400, "bad-parameter")
        assert_problem(http.post("/classify", data={"top_k": "1"}, files={}), 415, "unsupported-media-type")


def test_wrong_or_missing_content_type_415(strict_server: LiveServer, good: bytes) -> None:
    with strict_server.client() as http:
        assert_problem(http.post("/classify", content=good, headers={"content-type": "text/plain"}),
                       415, "unsupported-media-type")
        assert_problem(http.post("/classify", content=good), 415, "unsupported-media-type")
        assert_problem(http.post("/classify", files={"file": ("a.png", good, "image/png")}),
                       415, "unsupported-media-type")


def test_just_over_the_size_limit_413(strict_server: LiveServer) -> None:
    cap = STRICT_UPLOAD_BYTES
    with strict_server.client() as http:
        assert_problem(http.post("/classify", content=b"\0" * (cap + 1), headers=MP4), 413, "upload-too-large")
        assert_problem(http.post("/classify", content=b"\0" * cap, headers=MP4), 422, "undecodable-video")

        def stream():  # no Content-Length: the cap holds while streaming
            yield b"\0" * cap
            yield b"\0"

        assert_problem(http.post("/classify", content=stream(), headers=MP4), 413, "upload-too-large")


def test_a_streamed_multipart_body_is_capped_even_in_parts_it_skips(strict_server: LiveServer, good: bytes) -> None:
    """Without a Content-Length, unknown parts (read past, kept nowhere) still count towards the body's cap."""
    boundary = b"b0undary"
    junk = b"x" * (16 * 1024)

    def body(junk_parts: int):  # a generator: httpx sends it chunked
        for _ in range(junk_parts):
            yield (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="junk"; filename="j.bin"\r\n'
                   b"Content-Type: video/mp4\r\n\r\n" + junk + b"\r\n")
        yield (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
               b"Content-Type: video/mp4\r\n\r\n" + good + b"\r\n--" + boundary + b"--\r\n")

    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    with strict_server.client() as http:
        assert http.post("/classify", content=body(1), headers=headers).status_code == 200
        over = 2 * STRICT_UPLOAD_BYTES // len(junk) + 1  # twice the cap in skipped parts alone
        response = http.post("/classify", content=body(over), headers=headers)
    problem = assert_problem(response, 413, "upload-too-large")
    assert "multipart body is over the limit" in problem["detail"]
    assert leftover_uploads(strict_server) == []


def test_a_file_part_without_a_filename_is_still_the_file(strict_server: LiveServer, good: bytes) -> None:
    with strict_server.client() as http:
        response = http.post("/classify", files={"file": (None, good, "video/mp4")})  # curl -F 'file=<a.mp4'
    assert response.status_code == 200, response.text
    assert response.json()["predictions"]


def finish_http_response(sock: socket.socket, data: bytes, deadline: float) -> httpx.Response:
    """The HTTP/1.1 response whose first bytes ``data`` were read off ``sock``: reads the rest of its head and
    its Content-Length body (by ``deadline``) and returns it parsed."""
    def body_missing() -> bool:
        head, sep, body = data.partition(b"\r\n\r\n")
        return not sep or len(body) < _content_length(head)

    while body_missing():
        assert time.monotonic() < deadline, f"no complete response in time: {data[:300]!r}"
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        assert chunk, f"the server closed the connection mid-response: {data[:300]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body[:_content_length(head)])


def _content_length(head: bytes) -> int:
    for line in head.decode("latin-1").lower().split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.partition(":")[2])
    return 0


def test_slow_upload_gets_408_and_no_file(strict_server: LiveServer) -> None:
    """A client trickling bytes past the upload deadline (1.5 s here) is answered 408; its file is removed."""
    host, port = "127.0.0.1", strict_server.settings.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: 10000\r\n\r\n")
        start, reply = time.monotonic(), b""
        sock.settimeout(0.3)
        while time.monotonic() - start < 6 and b"\r\n\r\n" not in reply:
            try:
                sock.sendall(b"\0" * 10)
                reply += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - start
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        response = finish_http_response(sock, reply, time.monotonic() + 5)
    assert_problem(response, 408, "upload-timeout")  # the problem JSON body, not just the status line
    assert 1.2 < elapsed < 5, elapsed
    assert leftover_uploads(strict_server) == []


def test_an_option_given_twice_differently_is_400_and_alike_is_fine(strict_server: LiveServer, good: bytes) -> None:
    with strict_server.client() as http:
        r = http.post("/classify", params={"top_k": 2}, files={"file": ("c.mp4", good, "video/mp4")},
                      data={"top_k": "3"})
        same = http.post("/classify", params={"top_k": 2}, files={"file": ("c.mp4", good, "video/mp4")},
                         data={"top_k": "2"})
    detail = assert_problem(r, 400, "bad-parameter")["detail"]
    assert detail == "top_k is given twice, '2' in the query and '3' in the form; give it once"
    assert same.status_code == 200 and len(same.json()["predictions"]) == 2


@pytest.mark.parametrize("path", ["/classify", "/classify/batch"])
def test_an_option_repeated_in_the_query_or_the_form_is_400_unless_alike(strict_server: LiveServer, good: bytes,
                                                                         path: str) -> None:
    """FastAPI keeps a repeated query parameter's last value, the form parser its last field: silently."""
    file = {"files" if path.endswith("batch") else "file": ("c.mp4", good, "video/mp4")}
    with strict_server.client() as http:
        query = http.post(f"{path}?top_k=1&top_k=2", files=file)
        form = http.post(path, files=[*file.items(), ("top_k", (None, "1")), ("top_k", (None, "3"))])
        model = http.post(f"{path}?model=tiny&model=nope", files=file)
        many = http.post(f"{path}?" + "&".join(f"top_k={k}" for k in range(1, 200)), files=file)
        alike = http.post(f"{path}?top_k=2&top_k=2", files=[*file.items(), ("top_k", (None, "2"))])
        # An empty value is no value (as ?model= alone), and fields that are no option may repeat.
        blanks = http.post(f"{path}?model=&model=tiny&top_k=&top_k=2",
                           files=[*file.items(), ("model", (None, "")), ("model", (None, "tiny")),
                                  ("note", (None, "a")), ("note", (None, "b"))])
    assert assert_problem(query, 400, "bad-parameter")["detail"] == \
        "top_k is given 2 times in the query, '1', '2'; give it once"
    assert assert_problem(form, 400, "bad-parameter")["detail"] == \
        "top_k is given 2 times in the form, '1', '3'; give it once"
    assert "model is given 2 times in the query" in assert_problem(model, 400, "bad-parameter")["detail"]
    assert assert_problem(many, 400, "bad-parameter")["detail"] == \
        "top_k is given 199 times in the query, '1', '2', '3', ...; give it once"  # not all 199 echoed
    assert alike.status_code == 200, alike.text
    assert blanks.status_code == 200, blanks.text
    result = alike.json()["results"][0]["result"] if path.endswith("batch") else alike.json()
    assert len(result["predictions"]) == 2


def test_a_multipart_body_cut_before_its_closing_boundary_is_400_not_classified(strict_server: LiveServer,
                                                                                 good: bytes) -> None:
    """python-multipart's finalize() checks nothing: the cut file was decoded as far as it went and answered 200
    (an MPEG-TS cut in half: 46 of its 100 frames classified)."""
    head = (b'--BND\r\nContent-Disposition: form-data; name="file"; filename="c.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n")
    whole = head + good + b"\r\n--BND--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=BND"}
    with strict_server.client() as http:
        cut = http.post("/classify", content=whole[: len(head) + len(good) // 2], headers=headers)
        no_end = http.post("/classify", content=head + good + b"\r\n", headers=headers)
        complete = http.post("/classify", content=whole, headers=headers)
    for response in (cut, no_end):
        assert assert_problem(response, 400, "bad-parameter")["detail"] == (
            "the multipart body ends before its closing boundary '--BND--': the upload is incomplete; send it again")
    assert complete.status_code == 200, complete.text


def test_a_boundary_over_rfc_2046s_70_characters_is_400_not_an_internal_error(strict_server: LiveServer,
                                                                               good: bytes) -> None:
    boundary = "b" * 300
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.mp4"\r\n'
            f"Content-Type: video/mp4\r\n\r\n").encode() + good + f"\r\n--{boundary}--\r\n".encode()
    with strict_server.client() as http:
        response = http.post("/classify", content=body,
                             headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert assert_problem(response, 400, "bad-parameter")["detail"] == (
        "the multipart boundary is 300 characters long; at most 70 (RFC 2046)")


def test_a_part_without_a_name_is_named_as_such(strict_server: LiveServer) -> None:
    body = b"--BND\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 2000 + b"\r\n--BND--\r\n"
    with strict_server.client() as http:
        response = http.post("/classify", content=body, headers={"content-type": "multipart/form-data; boundary=BND"})
    assert assert_problem(response, 400, "bad-parameter")["detail"] == (
        "a multipart part has no name: each part needs a Content-Disposition header with name=")


@pytest.mark.parametrize("field", ["top_k", "version"])
@pytest.mark.parametrize("value", ["\u00b2", "\u0663"])  # superscript two (int() refuses it), Arabic-Indic three
def test_option_with_non_ascii_digits_400(strict_server: LiveServer, good: bytes, field: str, value: str) -> None:
    """Form options take ASCII digits only: str.isdigit() also passes digits int() refuses or reads differently."""
    with strict_server.client() as http:
        r = http.post("/classify", files={"file": ("c.mp4", good, "video/mp4")}, data={field: value})
    detail = assert_problem(r, 400, "bad-parameter")["detail"]
    assert field in detail and "positive integer" in detail


@pytest.mark.parametrize("field", ["top_k", "version"])
@pytest.mark.parametrize("value", ["1_0", " 2", "+2", "\u0663"])  # int() reads every one of them
def test_query_option_not_in_plain_digits_400(strict_server: LiveServer, good: bytes, field: str, value: str) -> None:
    """Query options as strict as form options: what int() alone would accept is refused, naming the option."""
    with strict_server.client() as http:
        r = http.post("/classify", params={field: value}, content=good, headers=MP4)
        assert http.post("/classify", params={field: "1"}, content=good, headers=MP4).status_code == 200
    detail = assert_problem(r, 400, "bad-parameter")["detail"]
    assert field in detail and "digits 0-9" in detail, detail


def test_every_refused_request_counted_once(strict_server: LiveServer, good: bytes) -> None:
    """400s from query validation (before the route runs) count like the route's own: once as a request, once
    as a refusal."""
    with strict_server.client() as http:
        before = http.get("/metrics").text
        assert_problem(http.post("/classify", params={"top_k": 0}, content=good, headers=MP4), 400, "bad-parameter")
        assert_problem(http.post("/classify", params={"version": "x"}, content=good, headers=MP4),
                       400, "bad-parameter")
        assert_problem(http.post("/classify", files={"file": ("c.mp4", good, "video/mp4")}, data={"top_k": "0"}),
                       400, "bad-parameter")
        after = http.get("/metrics").text
    requests = {"model": "", "version": "", "status": "400"}
    assert counter(after, "tsm_requests_total", **requests) - counter(before, "tsm_requests_total", **requests) == 3
    rejected = {"reason": "bad-parameter"}
    assert (counter(after, "tsm_rejected_requests_total", **rejected)
            - counter(before, "tsm_rejected_requests_total", **rejected)) == 3


def test_client_gone_mid_upload_is_cancelled_not_refused(strict_server: LiveServer) -> None:
    """A client that hangs up during its upload counts as 499 and cancelled at stage upload, not as a bad request."""
    cancelled, gone = {"stage": "upload"}, {"model": "", "version": "", "status": "499"}
    with strict_server.client() as http:
        before = http.get("/metrics").text
        with socket.create_connection(("127.0.0.1", strict_server.settings.port), timeout=10) as sock:
            sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                         b"Content-Length: 10000\r\n\r\n" + b"\0" * 100)
            time.sleep(0.2)  # the route is now waiting for the rest of the body
        after, deadline = http.get("/metrics").text, time.monotonic() + 5
        while counter(after, "tsm_requests_total", **gone) == counter(before, "tsm_requests_total", **gone) \
                and time.monotonic() < deadline:  # the server notices the hang-up on its own time
            time.sleep(0.1)
            after = http.get("/metrics").text
    series = {"cancelled upload": ("tsm_cancelled_requests_total", cancelled),
              "499": ("tsm_requests_total", gone), "400": ("tsm_requests_total", {**gone, "status": "400"}),
              "refused": ("tsm_rejected_requests_total", {"reason": "bad-parameter"})}
    changes = {key: counter(after, name, **labels) - counter(before, name, **labels)
               for key, (name, labels) in series.items()}
    assert changes == {"cancelled upload": 1, "499": 1, "400": 0, "refused": 0}

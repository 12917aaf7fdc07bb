"""POST /classify over real HTTP: multipart and raw body, top_k, request ids, and the numeric path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.contract.manifest import Manifest
from service.contract.preprocess import preprocess_clip
from service.contract.sampling import test_indices as sampling_indices
from service.decoding import read_clip
from tests.conftest import TINY_LABELS, TINY_NAME, LiveServer
from tests.oracles import paddle_logits

pytestmark = pytest.mark.slow


def offline_scores(repo: Path, video: Path) -> np.ndarray:
    """Independent oracle: read_clip -> preprocess_clip -> a fresh Paddle predictor -> softmax."""
    folder = repo / TINY_NAME / "1"
    manifest = Manifest.read(folder)
    frames, _, _ = read_clip(video, manifest.preprocessing)
    clip = preprocess_clip(frames, manifest.preprocessing)[None]
    logits = paddle_logits(folder, clip)[0].astype(np.float64)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def test_multipart_classify(server: LiveServer, videos: dict[str, Path], tiny_repo_template: Path) -> None:
    with server.client() as http, videos["a"].open("rb") as fh:
        response = http.post("/classify", files={"file": ("a.mp4", fh, "video/mp4")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == TINY_NAME and body["version"] == 1
    assert response.headers["x-request-id"] == body["request_id"]
    preds = body["predictions"]
    assert len(preds) == 5  # default top_k 5 == the label count here
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert {p["label"] for p in preds} == set(TINY_LABELS)
    assert all(TINY_LABELS[p["class_id"]] == p["label"] for p in preds)
    video = body["video"]
    assert (video["num_frames"], video["width"], video["height"]) == (24, 160, 120)
    assert video["fps"] == pytest.approx(25.0)
    assert video["duration_s"] == pytest.approx(24 / 25)
    assert video["sampled_indices"] == sampling_indices(24, 8)
    assert set(body["timings_ms"]) == {"upload", "decode", "queue", "inference", "postprocess", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["decode"] > 0
    # The service's numbers are exactly read_clip -> preprocess_clip -> predictor -> softmax.
    expected = offline_scores(tiny_repo_template, videos["a"])
    got = np.zeros(len(TINY_LABELS))
    for p in preds:
        got[p["class_id"]] = p["score"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_raw_body_top_k_and_client_request_id(server: LiveServer, videos: dict[str, Path]) -> None:
    data = videos["b"].read_bytes()
    with server.client() as http:
        response = http.post("/classify", params={"top_k": 2}, content=data,
                             headers={"content-type": "video/mp4", "x-request-id": "client-id-42"})
        octet = http.post("/classify", content=data, headers={"content-type": "application/octet-stream"})
        form = http.post("/classify", files={"file": ("b.mp4", data, "video/mp4")}, data={"top_k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 2
    assert body["request_id"] == "client-id-42" == response.headers["x-request-id"]
    assert body["video"]["num_frames"] == 40
    assert octet.status_code == 200 and len(octet.json()["predictions"]) == 5
    assert form.status_code == 200 and len(form.json()["predictions"]) == 3
    # The same video gives the same scores whatever way it was sent.
    assert body["predictions"] == octet.json()["predictions"][:2]


def test_rotated_phone_video_is_upright(server: LiveServer, videos: dict[str, Path]) -> None:
    with server.client() as http:
        response = http.post("/classify", content=videos["portrait"].read_bytes(),
                             headers={"content-type": "video/mp4"})
    assert response.status_code == 200, response.text
    video = response.json()["video"]
    assert (video["width"], video["height"], video["rotation"]) == (120, 160, 90)


def test_batch_endpoint_answers_each_file(server: LiveServer, videos: dict[str, Path]) -> None:
    files = [("files", ("a.mp4", videos["a"].read_bytes(), "video/mp4")),
             ("files", ("junk.mp4", b"this is not a video at all" * 50, "video/mp4")),
             ("files", ("empty.mp4", b"", "video/mp4")),
             ("files", ("c.mp4", videos["c"].read_bytes(), "video/mp4"))]
    with server.client() as http:
        response = http.post("/classify/batch", files=files, params={"top_k": 1})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.mp4", "junk.mp4", "empty.mp4", "c.mp4"]
    assert [r["status"] for r in results] == [200, 422, 400, 200]
    assert len(results[0]["result"]["predictions"]) == 1
    assert results[3]["result"]["video"]["num_frames"] == 12
    assert results[1]["error"]["type"] == "undecodable-video"
    assert results[1]["error"]["detail"]
    assert results[2]["error"]["type"] == "bad-parameter" and "empty" in results[2]["error"]["detail"]
    assert "retry_after_s" not in results[1]["error"] and "retry_after_s" not in results[2]["error"]  # no wait


def test_a_batch_larger_than_the_decoder_queue_is_answered_whole(tiny_repo_template: Path,
                                                                 videos: dict[str, Path]) -> None:
    """One decoder and one queue slot, four files: an idle server must not turn away the batch's own files."""
    files = [("files", (f"{i}.mp4", videos["a"].read_bytes(), "video/mp4")) for i in range(4)]
    with LiveServer({"model_repo": tiny_repo_template, "decode_workers": 1, "decode_queue_capacity": 1}) as live, \
            live.client() as http:
        response = http.post("/classify/batch", files=files)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [200] * 4, response.text


def test_models_health_and_openapi(server: LiveServer) -> None:
    with server.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}  # liveness only: no counts it did not compute
        head = http.head("/healthz"), http.head("/readyz")  # load balancers' checks may send HEAD
        assert [(r.status_code, r.content) for r in head] == [(200, b""), (200, b"")]
        ready = http.get("/readyz")
        models = http.get("/models").json()["models"]
        one = http.get(f"/models/{TINY_NAME}").json()["models"]
        schema = http.get("/openapi.json").json()
    assert ready.json() == {"status": "ready", "models_ready": 1, "decoders_ready": 2}  # no detail when ready
    assert [(m["name"], m["version"], m["state"]) for m in models] == [(TINY_NAME, 1, "ready")]
    assert models[0]["device"] == "cpu" and models[0]["manifest"]["labels"] == TINY_LABELS
    assert one == models
    assert {"/classify", "/classify/batch", "/models", "/models/{name}", "/healthz", "/readyz",
            "/metrics"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert "429" not in schema["paths"]["/classify"]["post"]["responses"]  # overload is a 503, never a 429
    query = {q["name"]: q["schema"] for q in schema["paths"]["/classify"]["post"]["parameters"]}
    assert {"type": "integer", "minimum": 1, "maximum": 10_000} in query["top_k"]["anyOf"]  # digits-only stays int

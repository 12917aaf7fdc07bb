"""Service parts on their own: settings validation, rotation, temp-file cleanup, the client, the repository.
The batcher: test_batcher.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.batcher import BatchPolicy
from service.decoding import read_frames, read_frames_pyav, rotate_frames
from service.settings import ServiceSettings
from tests.conftest import LiveServer, leftover_uploads
from tests.videos import make_video, pattern_frames


@pytest.mark.parametrize("bad", [
    {"precision": "int8"}, {"device": "cpu", "tensorrt": True}, {"max_batch_size": 0},
    {"api_key": "short"}, {"default_model": "../etc"}, {"model_versions": {"tiny": 0}},
    {"allowed_content_types": ["video"]}, {"upload_dir": "/nonexistent/uploads"}])
def test_settings_refuse_unsafe_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ServiceSettings(**bad)


@pytest.mark.parametrize(("env", "message"), [
    ({"TSM_UPLOAD_DIR": "/nonexistent/up"}, "TSM_UPLOAD_DIR: Value error, /nonexistent/up is not a writable folder"),
    ({"TSM_MODEL_VERSIONS": "tiny=3"}, "TSM_MODEL_VERSIONS: not valid JSON"),
    ({"TSM_PORT": "eighty"}, "TSM_PORT: Input should be a valid integer")])
def test_tsm_serve_names_a_refused_variable_in_one_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                        message: str) -> None:
    from service.cli import serve

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        serve([])
    first, second, *rest = str(exit_info.value.code).splitlines()
    assert first == "tsm-serve: refused settings:" and second.startswith(f"  {message}") and not rest


def test_content_types_may_be_one_type_or_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSM_ALLOWED_CONTENT_TYPES", "video/mp4")
    assert ServiceSettings().allowed_content_types == ["video/mp4"]
    monkeypatch.setenv("TSM_ALLOWED_CONTENT_TYPES", "video/mp4, Video/WebM")
    assert ServiceSettings().allowed_content_types == ["video/mp4", "video/webm"]
    monkeypatch.setenv("TSM_ALLOWED_CONTENT_TYPES", '["video/*"]')
    assert ServiceSettings().allowed_content_types == ["video/*"]


def test_log_level_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSM_LOG_LEVEL", "debug")
    assert ServiceSettings().log_level == "DEBUG"
    monkeypatch.setenv("TSM_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError):
        ServiceSettings()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSM_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("TSM_MODEL_VERSIONS", '{"tiny": 2}')
    s = ServiceSettings()
    assert s.max_batch_size == 16 and s.model_versions == {"tiny": 2}
    assert s.content_type_allowed("video/mp4; codecs=avc1") and not s.content_type_allowed("text/plain")
    assert s.content_type_allowed("Video/MP4")  # media types are case-insensitive (RFC 9110)
    assert all(f.description for f in ServiceSettings.model_fields.values())


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_honoured(tmp_path: Path, rotation: int) -> None:
    source = pattern_frames(12, 160, 96)
    path = make_video(tmp_path / "r.mp4", num_frames=12, width=160, height=96, rotation=rotation)
    frames, info, _ = read_frames(path, lambda n: [4])
    upright = np.rot90(source[4:5], k=rotation // 90, axes=(1, 2))  # the oracle: rotate the source pixels
    assert frames.shape == upright.shape and info.rotation == rotation
    assert (info.width, info.height) == (upright.shape[2], upright.shape[1])
    assert np.abs(frames.astype(int) - upright).mean() < 6  # H.264 at crf 18: small coding error only
    pyav, _, _ = read_frames_pyav(path, lambda n: [4])  # the fallback decoder, rotated by us, agrees
    assert np.abs(rotate_frames(pyav, rotation).astype(int) - frames).mean() < 2


@pytest.mark.slow
def test_upload_temp_files_removed(strict_server: LiveServer, videos: dict[str, Path]) -> None:
    """Every upload's temporary file is gone once it is answered: a classified video, an undecodable one, and
    one streamed without Content-Length that crosses the size cap after its file was created."""
    mp4 = {"content-type": "video/mp4"}
    cap = strict_server.settings.max_upload_bytes
    folder = strict_server.settings.upload_dir
    assert folder is not None
    seen_mid_stream: list[str] = []

    def oversized() -> Iterator[bytes]:  # chunked: the server only learns the size while streaming
        yield b"\0" * 1024
        deadline = time.monotonic() + 10
        while not (names := leftover_uploads(strict_server)):  # the server is now writing our file
            assert time.monotonic() < deadline, "the upload's temporary file never appeared"
            time.sleep(0.01)
        seen_mid_stream.extend(names)
        yield b"\0" * cap  # over the cap: refused mid-stream, the partial file must go

    assert leftover_uploads(strict_server) == []
    with strict_server.client() as http:
        r = http.post("/classify", content=videos["a"].read_bytes(), headers=mp4)
        assert r.status_code == 200, r.text
        assert leftover_uploads(strict_server) == []
        r = http.post("/classify", content=b"junk" * 100, headers=mp4)
        assert r.status_code == 422 and r.json()["type"] == "undecodable-video", r.text
        assert leftover_uploads(strict_server) == []
        r = http.post("/classify", content=oversized(), headers=mp4)
        assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        assert r.status_code == 413 and r.json()["type"] == "upload-too-large", r.text
        assert "over the limit" in r.json()["detail"]  # the streaming check, not the Content-Length one
    assert len(seen_mid_stream) == 1 and seen_mid_stream[0].startswith("tsm-upload-"), seen_mid_stream
    assert leftover_uploads(strict_server) == []


@pytest.mark.slow
def test_client_cli(server, videos: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from service.client import ClassifyError, Client, main

    assert main([str(videos["a"]), str(videos["c"]), "--url", server.url, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("(tiny v1)") == 2 and len(out.strip().splitlines()) == 6
    bad = videos["a"].parent / "not-video.mp4"
    bad.write_bytes(b"nope" * 100)
    assert main([str(bad), "--url", server.url]) == 1
    assert "undecodable-video" in capsys.readouterr().err
    with Client(server.url) as client:
        batch = client.classify_batch([videos["a"], str(bad)], top_k=1, version=1)  # a str path too
        one = client.classify(str(videos["c"]), top_k=1)
        with pytest.raises(ClassifyError) as refused:
            client.classify_batch([videos["a"]], version=2)  # the version is sent: v2 is not served
    assert [r["status"] for r in batch["results"]] == [200, 422] and one["version"] == 1
    assert (refused.value.status, refused.value.type) == (404, "version-not-found")


@pytest.mark.slow
def test_client_leaves_top_k_to_the_server(tmp_path: Path, videos: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Against a 3-label model, the CLI and client without a top_k get the server's default, not a 400."""
    from service.client import Client, main
    from tests.conftest import LiveServer, export_tiny

    export_tiny(tmp_path, labels=["archery", "bowling", "cooking"])
    overrides = {"model_repo": tmp_path, "decode_workers": 1, "cpu_threads": 1, "poll_interval_s": 0,
                 "max_queue_delay_ms": 5}
    with LiveServer(overrides) as live:
        assert main([str(videos["c"]), "--url", live.url]) == 0, capsys.readouterr().err
        with Client(live.url) as client:
            one = client.classify(videos["c"])
            batch = client.classify_batch([videos["c"]])
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3
    assert len(one["predictions"]) == 3
    assert [len(r["result"]["predictions"]) for r in batch["results"]] == [3]


def test_a_manifest_of_a_newer_schema_is_refused_in_one_line(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A hand-made version whose manifest says schema_version 99 is failed with the reason, not served; the
    refusal reads as one sentence in the log, /models and the 503's detail (no predictor is ever built)."""
    from service.contract.manifest import SCHEMA_VERSION, Manifest, Preprocessing
    from service.metrics import Metrics
    from service.repository import ModelRepository

    folder = tmp_path / "demo" / "1"
    folder.mkdir(parents=True)
    Manifest(name="demo", version=1, labels=["a", "b"], preprocessing=Preprocessing()).write(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**raw, "schema_version": 99}))
    for file in ("model.json", "model.pdiparams"):  # present, so only the manifest can stop the load
        (folder / file).write_bytes(b"")

    def factory(*_: object) -> None:
        raise AssertionError("a refused manifest must not reach the predictor")

    async def scenario() -> tuple[list[dict], str]:
        repo = ModelRepository(tmp_path, Metrics(process=False), factory, BatchPolicy(2, 5, 8), warmup_runs=1)
        await repo.start()
        try:
            return repo.describe(), repo.nothing_served()
        finally:
            await repo.close()

    models, why = run(scenario())
    sentence = (f"ValueError: manifest schema_version 99 is newer than this code reads ({SCHEMA_VERSION}): upgrade "
                "the service (or the training code) that reads it")
    assert [(m["version"], m["state"], m["error"]) for m in models] == [(1, "failed", sentence)]
    assert why == f"demo version 1 failed ({sentence})"
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused demo version 1")]
    assert len(refusals) == 1 and refusals[0].endswith(f": {sentence}") and "\n" not in refusals[0], refusals


def test_a_repository_closed_mid_load_marks_the_version_and_returns(tiny_repo_template: Path, tmp_path: Path) -> None:
    """Shutting down while a new version loads (a long warm-up, a TensorRT build) left it 'loading' and its poll
    task unawaited; the load's thread is let go (tsm-serve's re-raised SIGTERM ends the process without it)."""
    import shutil
    import threading

    from service.metrics import Metrics
    from service.repository import ModelRepository

    started, release = threading.Event(), threading.Event()

    def slow_factory(*_: object) -> None:
        started.set()
        release.wait(10)
        raise RuntimeError("only reached if the test failed to stop it")

    async def scenario() -> tuple[list[tuple[int, str, str]], float]:
        repo = ModelRepository(tmp_path / "repo", Metrics(process=False), slow_factory, BatchPolicy(2, 5, 8),
                               warmup_runs=1, poll_interval_s=0.05)
        (tmp_path / "repo").mkdir()
        await repo.start()
        shutil.copytree(tiny_repo_template / "tiny", tmp_path / "repo" / "tiny")
        while not started.is_set():
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        await repo.close()
        took = time.monotonic() - t0
        return [(m["version"], m["state"], m["error"]) for m in repo.describe()], took

    try:
        versions, took = run(scenario())
    finally:
        release.set()
    assert versions == [(1, "failed", "the server shut down while it loaded")]
    assert took < 1.0


def test_scores_of_large_logits_are_finite_probabilities() -> None:
    """exp() of a logit above ~89 overflows float32: unshifted, such a clip's scores were NaN (a 500)."""
    import numpy as np

    from service.predictor import softmax

    scores = softmax(np.array([[1000.0, 0.0, 999.0], [0.0, 0.0, 0.0]], np.float32))
    np.testing.assert_allclose(scores, [[1 / (1 + np.exp(-1)), 0.0, np.exp(-1) / (1 + np.exp(-1))], [1 / 3] * 3],
                               rtol=1e-6)

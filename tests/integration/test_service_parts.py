"""Service parts on their own: settings validation, the batcher's futures, rotation, temp-file cleanup."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from service.batcher import BatchPolicy, BatchResult, DynamicBatcher
from service.decode_worker import DecodedClip
from service.decoding import VideoInfo, read_frames, read_frames_pyav, rotate_frames
from service.errors import DeadlineExceededError, InferenceFailedError, QueueFullError
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
    assert all(f.description for f in ServiceSettings.model_fields.values())


def run(coro):
    return asyncio.run(coro)


def test_batcher_batches_and_answers_each_future() -> None:
    calls: list[int] = []

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :2] * 2

    async def main() -> list:
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=3, max_queue_delay_ms=200, queue_capacity=10))
        b.start()
        futures = [b.submit(np.full((2, 2), i, np.float32), time.monotonic() + 5) for i in range(5)]
        results = await asyncio.gather(*futures)
        await b.close()
        return results

    results = run(main())
    assert calls == [3, 2]
    assert [r.output.tolist() for r in results] == [[2 * i, 2 * i] for i in range(5)]
    assert [r.batch_size for r in results] == [3, 3, 3, 2, 2]


def test_batcher_failed_batch_fails_every_future_and_queue_bound() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    async def main() -> None:
        b = DynamicBatcher(broken, BatchPolicy(max_batch_size=2, max_queue_delay_ms=50, queue_capacity=2))
        b.start()
        futures = [b.submit(np.zeros(1, np.float32), time.monotonic() + 5) for _ in range(2)]
        with pytest.raises(QueueFullError):
            b.submit(np.zeros(1, np.float32), time.monotonic() + 5)
        for f in futures:
            with pytest.raises(InferenceFailedError, match="device lost"):
                await f
        expired = b.submit(np.zeros(1, np.float32), time.monotonic() - 1)
        with pytest.raises(DeadlineExceededError):
            await expired
        await b.close()

    run(main())


def test_batcher_wrong_row_count_fails_the_batch_and_keeps_going() -> None:
    """A model answering N-1 rows for N clips fails all N futures (no clip gets another's row), and the batcher's
    task survives to run the next batch."""
    calls: list[int] = []

    def short_once(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        rows = batch.reshape(len(batch), -1)[:, :2] * 2
        return rows[:-1] if len(calls) == 1 else rows

    async def main() -> tuple[list[BaseException | BatchResult], list[BatchResult], bool]:
        b = DynamicBatcher(short_once, BatchPolicy(max_batch_size=3, max_queue_delay_ms=100, queue_capacity=10))
        b.start()
        first = [b.submit(np.full((2, 2), i, np.float32), time.monotonic() + 5) for i in range(3)]
        failed = await asyncio.wait_for(asyncio.gather(*first, return_exceptions=True), 5)
        second = [b.submit(np.full((2, 2), i, np.float32), time.monotonic() + 5) for i in (7, 8)]
        results = await asyncio.wait_for(asyncio.gather(*second), 5)
        assert b._task is not None
        alive = not b._task.done()
        await b.close()
        return failed, results, alive

    failed, results, alive = run(main())
    assert calls == [3, 2]
    assert all(isinstance(f, InferenceFailedError) for f in failed), failed
    for f in failed:
        assert str(f) == "inference failed for a batch of 3: the model returned 2 rows for a batch of 3"
        assert isinstance(f, InferenceFailedError) and f.status == 503 and f.retry_after_s == 1
    assert alive
    assert [r.output.tolist() for r in results] == [[14, 14], [16, 16]]
    assert [r.batch_size for r in results] == [2, 2]


def test_a_batch_that_fails_before_inference_fails_its_requests_and_the_loop_goes_on() -> None:
    """np.stack (a MemoryError; here clips that do not stack) sat outside the batch's try: the loop task ended,
    so every later request was admitted and never answered, and close() raised."""
    async def main() -> tuple[list[BaseException | BatchResult], BatchResult]:
        b = DynamicBatcher(lambda x: x.reshape(len(x), -1)[:, :3], BatchPolicy(4, 20, 64), "v1")
        b.start()
        far = time.monotonic() + 60
        bad = [b.submit(np.zeros(shape, np.float32), far) for shape in ((2, 3), (3, 3))]
        failed = await asyncio.wait_for(asyncio.gather(*bad, return_exceptions=True), 5)
        later = await asyncio.wait_for(b.submit(np.ones((2, 3), np.float32), far), 5)
        await b.close()  # raised the loop's ValueError before
        return failed, later

    failed, later = run(main())
    assert [type(f) for f in failed] == [InferenceFailedError] * 2
    assert "all input arrays must have the same shape" in str(failed[0]) and failed[0].retry_after_s == 1
    assert later.output.tolist() == [1, 1, 1]


def test_requests_that_gave_up_neither_fill_the_queue_nor_the_depth_gauge() -> None:
    """While a long batch ran, queued clips whose requests had gone (deadline, client) still counted: a live request
    was refused 'queue full' by nobody, and the queue-depth gauge kept them until the batch ended."""
    reported: list[int] = []

    def slow(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.5)
        return batch.reshape(len(batch), -1)[:, :1]

    async def main() -> None:
        b = DynamicBatcher(slow, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0, queue_capacity=2),
                           on_depth=reported.append)
        b.start()
        far = time.monotonic() + 60
        running = b.submit(np.zeros(1, np.float32), far)
        await asyncio.sleep(0.1)  # taken into the running batch
        gave_up = [b.submit(np.zeros(1, np.float32), far) for _ in range(2)]
        with pytest.raises(QueueFullError):
            b.admit()
        for future in gave_up:
            future.cancel()
        await asyncio.sleep(0)  # the futures' callbacks
        assert b.depth == 0 and reported[-1] == 0  # during the batch, not after it
        b.admit()
        live = b.submit(np.ones(1, np.float32), far)
        assert (await asyncio.wait_for(live, 5)).output.tolist() == [1.0] and (await running).batch_size == 1
        await b.close()

    run(main())


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
    from service.batcher import BatchPolicy
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


class _InstantPool:
    """A decode pool whose decode takes ``busy_s`` of the event loop's own time (a loaded loop), counted by call."""

    def __init__(self, busy_s: float) -> None:
        self.busy_s, self.calls = busy_s, 0

    def run(self, *_: object) -> Coroutine[Any, Any, DecodedClip]:
        self.calls += 1
        return self._decode()

    async def _decode(self) -> DecodedClip:
        time.sleep(self.busy_s)  # blocks the loop: the deadline passes with no timer able to fire
        return DecodedClip(np.zeros((2, 3), np.float32), VideoInfo(8, 25.0, 64, 64, "fake"), [0])


@pytest.mark.parametrize(("deadline_s", "busy_s", "stage"), [(0.1, 0.15, "inference"), (-0.01, 0.0, "decoding")])
def test_a_spent_deadline_starts_nothing_more(deadline_s: float, busy_s: float, stage: str) -> None:
    """The clip was queued before the time left for inference was looked at: the request got its 504 with its
    clip still queued, to be run for nobody. Likewise a decode was asked for on a spent deadline."""
    from service.metrics import Metrics
    from service.pipeline import Deadline, classify_file
    from service.upload import UploadedFile

    batches: list[int] = []

    async def main() -> tuple[int, int]:
        b = DynamicBatcher(lambda x: (batches.append(len(x)), np.zeros((len(x), 1), np.float32))[1],
                           BatchPolicy(1, 1, 64), "v1")
        b.start()
        mv = SimpleNamespace(manifest=SimpleNamespace(preprocessing=None, labels=["a"]), batcher=b, name="m",
                             version=1)
        pool = _InstantPool(busy_s)
        with pytest.raises(DeadlineExceededError, match=f"the request deadline passed before {stage}"):
            await classify_file(UploadedFile(Path("/nonexistent"), "x.mp4", "video/mp4"), mv, pool, None,
                                Metrics(process=False), Deadline(time.monotonic() + deadline_s), 1, "r", 0.0, 0.0)
        depth = b.depth
        await b.close()
        return depth, pool.calls

    depth, decodes = run(main())
    assert depth == 0 and batches == []
    assert decodes == (1 if stage == "inference" else 0)


def test_a_repository_closed_mid_load_marks_the_version_and_returns(tiny_repo_template: Path, tmp_path: Path) -> None:
    """Shutting down while a new version loads (a long warm-up, a TensorRT build) left it 'loading' and its poll
    task unawaited; the load's thread is let go (tsm-serve's re-raised SIGTERM ends the process without it)."""
    import shutil
    import threading

    from service.batcher import BatchPolicy
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

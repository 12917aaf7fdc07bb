"""Shared fixtures: one tiny exported TSM model per session, real MP4s, a live uvicorn server."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.videos import make_video


@pytest.fixture(autouse=True)
def _no_log_handler_on_a_closed_stream() -> Iterator[None]:
    """create_app puts a stderr handler on the root logger, holding the stderr of the test that made it: pytest's
    capture, closed once that test ends. A later test's log records (httpx's) then printed "--- Logging error ---"
    tracebacks into its own captured output (seen running test_service_parts with test_client_cli)."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)


TINY_LABELS = ["archery", "bowling", "cooking", "dancing", "surfing"]
TINY_NAME = "tiny"


def export_tiny(repo: Path, seed: int = 0, labels: list[str] | None = None, crops: int = 1,
                name: str = TINY_NAME) -> Path:
    """Export ``build_tsm(18, K, num_seg=8, base_width=8)`` (crop 112, short side 128, ``crops`` test-time crops)
    into ``repo``."""
    import paddle

    from service.contract.manifest import Manifest, ModelIO, Preprocessing
    from training.export import export_to_repo
    from training.tsm import build_tsm

    labels = labels or TINY_LABELS
    paddle.seed(seed)
    model = build_tsm(18, num_classes=len(labels), num_seg=8, base_width=8)
    manifest = Manifest(name=name, version=1, labels=labels, backbone="ResNetTSM-18", depth=18, base_width=8,
                        preprocessing=Preprocessing(num_seg=8, short_side=128, crop_size=112, spatial_crops=crops),
                        io=ModelIO(input_shape=(-1, 8 * crops, 3, 112, 112)))
    return export_to_repo(model, repo, manifest)


@pytest.fixture(scope="session")
def tiny_repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model_repo with ``tiny/1`` exported once per session (copy it before changing it)."""
    repo = tmp_path_factory.mktemp("model_repo_template")
    export_tiny(repo)
    return repo


@pytest.fixture
def model_repo(tiny_repo_template: Path, tmp_path: Path) -> Path:
    """A private copy of the template repository for tests that publish or break versions."""
    repo = tmp_path / "model_repo"
    shutil.copytree(tiny_repo_template, repo)
    return repo


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real H.264 MP4s: a few plain ones, a rotated phone-style one, and a long-ish one."""
    root = tmp_path_factory.mktemp("videos")
    return {
        "a": make_video(root / "a.mp4", num_frames=24, seed=1),
        "b": make_video(root / "b.mp4", num_frames=40, width=176, height=144, seed=2),
        "c": make_video(root / "c.mp4", num_frames=12, width=128, height=96, seed=3),
        "portrait": make_video(root / "portrait.mp4", num_frames=20, rotation=90, seed=4),
    }


def free_port() -> int:
    """A port free now, for a server in a subprocess (one in this process gets a bound socket instead)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """``create_app(settings)`` under a real uvicorn server on loopback, in a background thread."""

    def __init__(self, settings_overrides: dict[str, Any], **app_kwargs: Any) -> None:
        import uvicorn

        from service.app import create_app
        from service.settings import ServiceSettings

        # Bound here and handed to uvicorn: a port only picked free now and bound later could be taken by
        # another process (a parallel test run, a subprocess server) in between.
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.settings = ServiceSettings(**{"port": port, "log_format": "text", **settings_overrides})
        self.app = create_app(self.settings, **app_kwargs)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None,
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="uvicorn")

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()  # uvicorn closes it on shutdown; this covers a server that never started

    @property
    def resources(self) -> Any:
        return self.app.state.resources

    def client(self, timeout: float = 60, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def server(tiny_repo_template: Path) -> Iterator[LiveServer]:
    """The shared server: the tiny model, small upload cap, batching allowed (50 ms window)."""
    overrides = {"model_repo": tiny_repo_template, "max_upload_bytes": 256 * 1024, "max_batch_size": 4,
                 "max_queue_delay_ms": 50, "poll_interval_s": 0, "decode_workers": 2, "cpu_threads": 1}
    with LiveServer(overrides) as live:
        yield live


STRICT_UPLOAD_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def strict_server(tiny_repo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with tight limits and a private upload folder (so a leaked upload file shows).

    Uploads <= 64 KiB within 1.5 s, frames <= 640x480, videos <= 60 s; shared by the bad-input,
    fuzz and fault tests.
    """
    uploads = tmp_path_factory.mktemp("uploads")
    overrides = {"model_repo": tiny_repo_template, "max_upload_bytes": STRICT_UPLOAD_BYTES,
                 "upload_timeout_s": 1.5, "upload_dir": uploads, "max_video_pixels": 640 * 480,
                 "max_video_duration_s": 60.0, "poll_interval_s": 0, "decode_workers": 2, "cpu_threads": 1,
                 "max_queue_delay_ms": 5}
    with LiveServer(overrides) as live:
        yield live


def leftover_uploads(live: LiveServer) -> list[str]:
    """Files left in the server's private upload folder (should be none between requests)."""
    folder = live.settings.upload_dir
    assert folder is not None
    return sorted(p.name for p in Path(folder).iterdir())


def pool_healthy(live: LiveServer) -> bool:
    """Every decoder worker process is alive."""
    pool = live.resources.pool
    with pool._lock:
        workers = list(pool._workers)
    return len(workers) == pool.size and all(w.alive() for w in workers)

"""Model versions that fail to load or warm up: the old version keeps serving, and a failed version is tried
again when its files change or after the back-off."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY_NAME, LiveServer, export_tiny
from tests.e2e.helpers import metric, wait_until

pytestmark = pytest.mark.slow
MP4 = {"content-type": "video/mp4"}


class FailingWarmup:
    """Wraps the real predictor factory; versions in ``fail`` raise during warm-up."""

    def __init__(self, settings: Any, fail: set[int]) -> None:
        from service.backends import default_factory

        self.inner, self.fail = default_factory(settings), fail

    def __call__(self, version_dir: Path, manifest: Any) -> Any:
        predictor = self.inner(version_dir, manifest)
        if int(version_dir.name) in self.fail:
            def broken(*_: Any) -> int:
                raise RuntimeError("warm-up failed (injected)")
            predictor.warm_up = broken
        return predictor


def test_failing_new_versions_keep_the_old_one_serving(model_repo: Path, videos: dict[str, Path]) -> None:
    """v2 fails warm-up, v3 is half-written, an exporter's staging folder lies around: v1 serves throughout."""
    from service.settings import ServiceSettings

    overrides = {"model_repo": model_repo, "poll_interval_s": 0.2, "decode_workers": 1, "cpu_threads": 1}
    factory = FailingWarmup(ServiceSettings(**overrides), fail={2})
    good = videos["c"].read_bytes()
    with LiveServer(overrides, predictor_factory=factory) as live, live.client() as http:
        assert http.post("/classify", content=good, headers=MP4).json()["version"] == 1
        export_tiny(model_repo, seed=3)  # -> tiny/2, which fails warm-up
        half = model_repo / TINY_NAME / ".copying-3"
        half.mkdir()
        (half / "model.pdmodel").write_bytes(b"\0" * 10)  # no manifest, no params: a copy stuck half way
        half.rename(model_repo / TINY_NAME / "3")  # in one step: changing files would make it be tried again
        staging = model_repo / TINY_NAME / ".stage-interrupted"
        staging.mkdir()
        (staging / "model.pdiparams").write_bytes(b"\0" * 10)
        deadline = time.monotonic() + 30
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(http.post("/classify", content=good, headers=MP4).json().get("version"))
            states = {m["version"]: m["state"] for m in http.get(f"/models/{TINY_NAME}").json()["models"]}
            if states == {1: "ready", 2: "failed", 3: "failed"}:
                break
        assert states == {1: "ready", 2: "failed", 3: "failed"}, states
        assert set(statuses) == {1}
        assert http.get("/readyz").status_code == 200
        models = {m["version"]: m for m in http.get(f"/models/{TINY_NAME}").json()["models"]}
        assert "warm-up failed" in models[2]["error"]
        metrics = http.get("/metrics").text
    assert metric(metrics, 'tsm_model_loads_total{model="tiny",result="failed"}') == 2.0


def test_a_failed_version_is_tried_again_once_its_files_change(model_repo: Path, videos: dict[str, Path]) -> None:
    """v2 fails its warm-up; the cause goes away but nothing retries it until its files change (the default
    back-off is 30 s), then the next scan loads it and it serves."""
    from service.settings import ServiceSettings

    overrides = {"model_repo": model_repo, "poll_interval_s": 0.2, "decode_workers": 1, "cpu_threads": 1}
    factory = FailingWarmup(ServiceSettings(**overrides), fail={2})
    good = videos["c"].read_bytes()
    with LiveServer(overrides, predictor_factory=factory) as live, live.client() as http:
        export_tiny(model_repo, seed=3)
        def version_state() -> dict[int, str]:
            return {m["version"]: m["state"] for m in http.get(f"/models/{TINY_NAME}").json()["models"]}

        wait_until(lambda: version_state().get(2) == "failed", 30)
        factory.fail.clear()
        time.sleep(1.0)  # five scans
        assert version_state() == {1: "ready", 2: "failed"}
        manifest = model_repo / TINY_NAME / "2" / "manifest.json"
        # The copy is written again, seen as a newer mtime (what the scan compares, with the size). Set in one
        # step: a rewrite truncates first, and a scan that read it empty would fail the version once more.
        stat = manifest.stat()
        os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        wait_until(lambda: http.post("/classify", content=good, headers=MP4).json().get("version") == 2, 30)
        metrics = http.get("/metrics").text
    assert metric(metrics, 'tsm_model_loads_total{model="tiny",result="failed"}') == 1.0
    assert metric(metrics, 'tsm_model_loads_total{model="tiny",result="ok"}') == 2.0


def test_a_failed_version_is_tried_again_after_the_back_off(model_repo: Path) -> None:
    """Straight on the repository: no retry before ``retry_failed_s``, a retry after it, the wait doubling."""
    import asyncio

    from service.batcher import BatchPolicy
    from service.metrics import Metrics
    from service.repository import ModelRepository
    from service.settings import ServiceSettings

    factory = FailingWarmup(ServiceSettings(model_repo=model_repo, cpu_threads=1), fail={1})

    async def scenario() -> list[str]:
        repo = ModelRepository(model_repo, Metrics(process=False), factory, BatchPolicy(2, 5, 8),
                               warmup_runs=1, retry_failed_s=0.5)
        seen = []
        await repo.start()  # attempt 1 fails
        await repo.poll_once()  # too early: not tried
        seen.append(repo.describe()[0]["state"])
        await asyncio.sleep(0.6)
        await repo.poll_once()  # attempt 2 fails: the next wait is 1 s
        await asyncio.sleep(0.6)
        await repo.poll_once()  # too early again
        seen.append(f"{repo.describe()[0]['state']} after {repo.others[(TINY_NAME, 1)].failures}")
        factory.fail.clear()
        await asyncio.sleep(0.5)
        await repo.poll_once()  # attempt 3 loads
        seen.append(repo.describe()[0]["state"])
        await repo.close()
        return seen

    assert asyncio.run(scenario()) == ["failed", "failed after 2", "ready"]


def test_a_copy_that_completes_during_a_failed_load_is_tried_again(model_repo: Path) -> None:
    """The load saw half a copy and failed; the copy finished meanwhile: the next scan tries again at once (no
    30 s back-off). Then the version's folder is deleted: the model is unknown again (404), not "not ready"."""
    import asyncio
    import shutil

    from service.batcher import BatchPolicy
    from service.errors import ModelNotFoundError
    from service.metrics import Metrics
    from service.repository import ModelRepository
    from service.settings import ServiceSettings

    inner = FailingWarmup(ServiceSettings(model_repo=model_repo, cpu_threads=1), fail=set())
    attempts = []

    def factory(version_dir: Path, manifest: Any) -> Any:
        predictor = inner(version_dir, manifest)
        attempts.append(version_dir)
        if len(attempts) == 1:
            (version_dir / "labels.txt").write_text((version_dir / "labels.txt").read_text())  # the copy lands

            def broken(*_: Any) -> int:
                raise RuntimeError("half a copy (injected)")
            predictor.warm_up = broken
        return predictor

    async def scenario() -> tuple[str, str]:
        repo = ModelRepository(model_repo, Metrics(process=False), factory, BatchPolicy(2, 5, 8), warmup_runs=1,
                               retry_failed_s=100)
        await repo.start()
        first = repo.describe()[0]["state"]
        await repo.poll_once()
        second = repo.describe()[0]["state"]
        await repo.close()
        return first, second

    assert asyncio.run(scenario()) == ("failed", "ready")

    async def deleted() -> None:
        inner.fail.add(1)
        repo = ModelRepository(model_repo, Metrics(process=False), inner, BatchPolicy(2, 5, 8), warmup_runs=1)
        await repo.start()
        shutil.rmtree(model_repo / TINY_NAME / "1")
        await repo.poll_once()
        with pytest.raises(ModelNotFoundError):
            repo.resolve(TINY_NAME, None)
        await repo.close()

    asyncio.run(deleted())

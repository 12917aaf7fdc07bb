"""Hot reload under traffic: a new version is swapped in with no failed request; broken ones are refused."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_NAME, LiveServer, export_tiny

pytestmark = pytest.mark.slow


class Traffic:
    """Two client threads posting videos back to back, recording (status, version) per thread."""

    def __init__(self, live: LiveServer, video: bytes) -> None:
        self.live, self.video = live, video
        self.results: list[list[tuple[int, int | None, str]]] = [[], []]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(2)]

    def _run(self, i: int) -> None:
        with self.live.client() as http:
            while not self.stop.is_set():
                r = http.post("/classify", content=self.video, headers={"content-type": "video/mp4"})
                version = r.json().get("version") if r.status_code == 200 else None
                self.results[i].append((r.status_code, version, r.text[:200]))

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def versions(self) -> set[int | None]:
        return {v for rows in self.results for _, v, _ in rows}


def wait_for(predicate, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def states(live: LiveServer) -> dict[int, str]:
    with live.client() as http:
        return {m["version"]: m["state"] for m in http.get(f"/models/{TINY_NAME}").json()["models"]}


def test_new_version_swapped_in_under_traffic(model_repo: Path, videos: dict[str, Path]) -> None:
    overrides = {"model_repo": model_repo, "poll_interval_s": 0.2, "max_queue_delay_ms": 20}
    with LiveServer(overrides) as live, Traffic(live, videos["c"].read_bytes()) as traffic:
        wait_for(lambda: len(traffic.results[0]) >= 3)
        published = export_tiny(model_repo, seed=7)  # the real exporter: staged in dot folders, then renamed
        assert published.name == "2"
        wait_for(lambda: 2 in traffic.versions())
        wait_for(lambda: states(live) == {2: "ready"})  # version 1 drained and unloaded
        n = sum(len(rows) for rows in traffic.results)
        wait_for(lambda: sum(len(rows) for rows in traffic.results) >= n + 4)

        # A version whose manifest lists 3 labels for a 5-output model is refused; 2 keeps serving.
        staged = model_repo / TINY_NAME / ".stage-broken"
        shutil.copytree(published, staged)
        manifest = json.loads((staged / "manifest.json").read_text())
        manifest["labels"], manifest["version"] = ["x", "y", "z"], 3
        (staged / "manifest.json").write_text(json.dumps(manifest))
        staged.rename(model_repo / TINY_NAME / "3")
        # And one with an unreadable manifest.
        (model_repo / TINY_NAME / "4").mkdir()
        (model_repo / TINY_NAME / "4" / "manifest.json").write_text("{not json")
        wait_for(lambda: states(live) == {2: "ready", 3: "failed", 4: "failed"})
        n = sum(len(rows) for rows in traffic.results)
        wait_for(lambda: sum(len(rows) for rows in traffic.results) >= n + 4)
        with live.client() as http:
            models = {m["version"]: m for m in http.get("/models").json()["models"]}
            metrics = http.get("/metrics").text
            ready = http.get("/readyz").status_code
    failures = [row for rows in traffic.results for row in rows if row[0] != 200]
    assert not failures, failures
    assert traffic.versions() == {1, 2}
    for rows in traffic.results:  # once a thread saw version 2, it never went back to 1
        seen = [v for _, v, _ in rows]
        assert seen == sorted(seen)
    assert "3 labels" in models[3]["error"] and models[4]["error"]
    assert 'tsm_model_loads_total{model="tiny",result="failed"} 2.0' in metrics
    assert 'tsm_model_loads_total{model="tiny",result="ok"} 2.0' in metrics
    assert 'version="1"' not in metrics.split("tsm_model_info")[-1].split("\n# ")[0]
    assert ready == 200


def test_highest_broken_version_at_start_falls_back(model_repo: Path, videos: dict[str, Path]) -> None:
    broken = model_repo / TINY_NAME / "2"
    shutil.copytree(model_repo / TINY_NAME / "1", broken)
    (broken / "model.pdiparams").write_bytes(b"truncated")
    with LiveServer({"model_repo": model_repo, "decode_workers": 1}) as live:
        assert states(live) == {1: "ready", 2: "failed"}
        with live.client() as http:
            r = http.post("/classify", content=videos["a"].read_bytes(), headers={"content-type": "video/mp4"})
        assert r.status_code == 200 and r.json()["version"] == 1


def test_no_model_not_ready(tmp_path: Path, videos: dict[str, Path]) -> None:
    with LiveServer({"model_repo": tmp_path, "decode_workers": 1}) as live, live.client() as http:
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200
        r = http.post("/classify", content=videos["a"].read_bytes(), headers={"content-type": "video/mp4"})
        assert r.status_code == 503 and r.json()["type"] == "not-ready" and r.headers["retry-after"]


def test_default_model_not_loaded_yet_is_503_and_an_unknown_one_404(tmp_path: Path, videos: dict[str, Path]) -> None:
    """TSM_DEFAULT_MODEL names a model the repository does not hold yet: retry later, not "no such model"."""
    with LiveServer({"model_repo": tmp_path, "decode_workers": 1, "default_model": TINY_NAME}) as live, \
            live.client() as http:
        mp4 = {"content-type": "video/mp4"}
        r = http.post("/classify", content=videos["a"].read_bytes(), headers=mp4)
        assert r.status_code == 503 and r.json()["type"] == "not-ready" and r.headers["retry-after"]
        assert TINY_NAME in r.json()["detail"]
        r = http.post("/classify", params={"model": "nope"}, content=videos["a"].read_bytes(), headers=mp4)
        assert r.status_code == 404 and r.json()["type"] == "model-not-found"


def test_a_model_whose_only_version_failed_is_503_with_the_reason(model_repo: Path, videos: dict[str, Path]) -> None:
    (model_repo / TINY_NAME / "1" / "model.pdiparams").write_bytes(b"truncated")
    with LiveServer({"model_repo": model_repo, "decode_workers": 1}) as live, live.client() as http:
        r = http.post("/classify", params={"model": TINY_NAME}, content=videos["a"].read_bytes(),
                      headers={"content-type": "video/mp4"})
        assert r.status_code == 503 and r.json()["type"] == "not-ready"
        assert "version 1 failed" in r.json()["detail"]

"""Hot reload under traffic: a new version is swapped in with no failed request; broken ones are refused."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.decode_worker import DecodedClip, decode_task
from tests.conftest import TINY_NAME, LiveServer, export_tiny
from tests.e2e.test_metrics_batching import counter

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


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def states(live: LiveServer) -> dict[int, str]:
    """The model's versions and their states; {} while the service knows none of them (404)."""
    with live.client() as http:
        r = http.get(f"/models/{TINY_NAME}")
    if r.status_code == 404:
        assert r.json()["type"] == "model-not-found"
        return {}
    return {m["version"]: m["state"] for m in r.json()["models"]}


HOLD = b"HOLD"
HOLD_MAX_S = 600
"""Longest a held decode waits for ``go``: far beyond any machine's need, since the test always touches ``go``
(in a ``finally``), so only a broken test ever waits this long."""


def held_decode(path: str, *args: Any) -> DecodedClip:
    """The real decode task (runs in a decoder worker). An upload ``HOLD<folder>\\n`` instead touches
    ``<folder>/started``, waits (at most ``HOLD_MAX_S``) until ``<folder>/go`` exists, then decodes
    ``<folder>/video.mp4``: a request that holds its lease on a model version for as long as the test wants."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.startswith(HOLD):
        return decode_task(path, *args)
    folder = Path(head[len(HOLD):].split(b"\n", 1)[0].decode())
    (folder / "started").touch()
    deadline = time.monotonic() + HOLD_MAX_S
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return decode_task(str(folder / "video.mp4"), *args)


def versions_seen(live: LiveServer) -> dict[int, tuple[str, int]]:
    """version -> (state, requests holding a lease on it)."""
    with live.client() as http:
        return {m["version"]: (m["state"], m["inflight"]) for m in http.get(f"/models/{TINY_NAME}").json()["models"]}


def model_info(text: str) -> list[tuple[str, str, float]]:
    """Every tsm_model_info series in an exposition, as (model, version, value)."""
    return sorted((s.labels["model"], s.labels["version"], s.value) for family in text_string_to_metric_families(text)
                  if family.name == "tsm_model_info" for s in family.samples)


def test_new_version_swapped_in_under_traffic(model_repo: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    """v2 is published under traffic: new requests move to it with no failure, while a request that leased v1
    before the swap (held in its decode) still finishes on v1, and only then is v1 unloaded."""
    from service.contract.manifest import Manifest
    from training.export import publish

    hold = tmp_path / "hold"
    hold.mkdir()
    shutil.copy(videos["c"], hold / "video.mp4")
    # Exporting (saving and probing the model) took ~55 s under CPU load while the request was held, past every
    # 60 s limit around it: export now, outside the polled repository, and only publish it (the exporter's
    # own move, numbering and rename, quick) while the request is held.
    exported = export_tiny(tmp_path / "exports", seed=7)
    # Limits on the held request far beyond need, so that only a broken swap fails it: it returns soon after
    # ``go`` is touched, which the test always does.
    overrides = {"model_repo": model_repo, "poll_interval_s": 0.2, "max_queue_delay_ms": 20, "decode_workers": 3,
                 "decode_timeout_s": HOLD_MAX_S, "request_deadline_ms": 2 * HOLD_MAX_S * 1000}
    mp4 = {"content-type": "video/mp4"}
    with LiveServer(overrides, decode_task=held_decode) as live, Traffic(live, videos["c"].read_bytes()) as traffic, \
            live.client() as http, live.client(timeout=2 * HOLD_MAX_S) as patient, ThreadPoolExecutor(1) as pool:
        wait_for(lambda: len(traffic.results[0]) >= 3)
        held = pool.submit(patient.post, "/classify", content=HOLD + str(hold).encode() + b"\n", headers=mp4)
        try:
            wait_for(lambda: (hold / "started").exists())  # it holds a lease on version 1 now
            published = publish(model_repo, exported, Manifest.read(exported))
            assert published.name == "2"
            wait_for(lambda: 2 in traffic.versions())
            n = sum(len(rows) for rows in traffic.results)
            wait_for(lambda: sum(len(rows) for rows in traffic.results) >= n + 4)  # the drain has had its chance
            during_drain = versions_seen(live)
            info_during_drain = model_info(http.get("/metrics").text)
            held_done_early = held.done()
        finally:
            (hold / "go").touch()
        held_response = held.result(timeout=2 * HOLD_MAX_S)
        wait_for(lambda: states(live) == {2: "ready"})  # version 1 drained and unloaded
        info_after_drain = model_info(http.get("/metrics").text)
        n = sum(len(rows) for rows in traffic.results)
        wait_for(lambda: sum(len(rows) for rows in traffic.results) >= n + 4)

        # A version whose manifest lists 3 labels for a 5-output model is refused; 2 keeps serving.
        staged = model_repo / TINY_NAME / ".stage-broken"
        shutil.copytree(published, staged)
        manifest = json.loads((staged / "manifest.json").read_text())
        manifest["labels"], manifest["version"] = ["x", "y", "z"], 3
        (staged / "manifest.json").write_text(json.dumps(manifest))
        staged.rename(model_repo / TINY_NAME / "3")
        # And one with an unreadable manifest, also renamed into place whole: a scan between creating the folder
        # and writing its manifest would fail it once more (a third failed load).
        staged = model_repo / TINY_NAME / ".stage-unreadable"
        staged.mkdir()
        (staged / "manifest.json").write_text("{not json")
        staged.rename(model_repo / TINY_NAME / "4")
        wait_for(lambda: states(live) == {2: "ready", 3: "failed", 4: "failed"})
        n = sum(len(rows) for rows in traffic.results)
        wait_for(lambda: sum(len(rows) for rows in traffic.results) >= n + 4)
        models = {m["version"]: m for m in http.get("/models").json()["models"]}
        metrics = http.get("/metrics").text
        ready = http.get("/readyz").status_code
    # While the held request ran, version 1 was draining (not unloaded) with its one lease, still exported.
    assert not held_done_early, held.result().text
    assert during_drain.get(1) == ("draining", 1) and during_drain[2][0] == "ready", during_drain
    assert [version for _, version, _ in info_during_drain] == ["1", "2"], info_during_drain
    # The held request finished on the version it leased; only then was version 1 released.
    assert held_response.status_code == 200, held_response.text
    assert held_response.json()["version"] == 1
    assert info_after_drain == [("tiny", "2", 1.0)]
    failures = [row for rows in traffic.results for row in rows if row[0] != 200]
    assert not failures, failures
    assert traffic.versions() == {1, 2}
    for rows in traffic.results:  # once a thread saw version 2, it never went back to 1
        seen = [v for _, v, _ in rows]
        assert seen == sorted(seen)
    assert "3 labels" in models[3]["error"] and models[4]["error"]
    assert counter(metrics, "tsm_model_loads_total", model="tiny", result="failed") == 2
    assert counter(metrics, "tsm_model_loads_total", model="tiny", result="ok") == 2
    assert model_info(metrics) == [("tiny", "2", 1.0)]  # the refused versions 3 and 4 never show
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


def test_a_version_missing_a_file_its_manifest_lists_is_not_served(model_repo: Path) -> None:
    """A folder copied file by file (not renamed into place whole) must not serve before its last file lands."""
    partial = model_repo / TINY_NAME / "2"
    shutil.copytree(model_repo / TINY_NAME / "1", partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["onnx_file"], manifest["version"] = "model.onnx", 2  # still being copied
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with LiveServer({"model_repo": model_repo, "decode_workers": 1}) as live:
        assert states(live) == {1: "ready", 2: "failed"}
        with live.client() as http:
            failed = [m for m in http.get("/models").json()["models"] if m["version"] == 2]
    assert "model.onnx is missing" in json.dumps(failed), failed


def test_no_model_not_ready(tmp_path: Path, videos: dict[str, Path]) -> None:
    with LiveServer({"model_repo": tmp_path, "decode_workers": 1}) as live, live.client() as http:
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["detail"] == (
            "no model is loaded yet: the model repository holds no <name>/<version>/ folder")  # why, as /classify
        assert int(not_ready.headers["retry-after"]) > 0  # a load balancer's or client's back-off
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


def _classify(http: Any, video: Path, **params: str) -> Any:
    return http.post("/classify", params=params, content=video.read_bytes(), headers={"content-type": "video/mp4"})


def test_removing_the_serving_version_falls_back_to_the_highest_other(model_repo: Path,
                                                                       videos: dict[str, Path]) -> None:
    export_tiny(model_repo, seed=7)  # version 2
    export_tiny(model_repo, seed=8)  # version 3
    with LiveServer({"model_repo": model_repo, "poll_interval_s": 0.2, "decode_workers": 1}) as live, \
            live.client() as http:
        assert states(live) == {3: "ready"}
        shutil.rmtree(model_repo / TINY_NAME / "3")  # an operator rolls back
        wait_for(lambda: states(live) == {2: "ready"})
        r = _classify(http, videos["a"])
        assert r.status_code == 200 and r.json()["version"] == 2
        assert model_info(http.get("/metrics").text) == [("tiny", "2", 1.0)]


def test_unnamed_requests_go_to_the_only_model_and_are_refused_when_there_are_several(
        model_repo: Path, videos: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Where an unnamed request goes depends on the repository only, so a replica started later answers alike."""
    def names(ready_only: bool = True) -> set[str]:
        return {m["name"] for m in http.get("/models").json()["models"] if m["state"] == "ready" or not ready_only}

    several = "the repository holds several models (other, tiny); choose one with the 'model' parameter (or the " \
              "server's TSM_DEFAULT_MODEL)"
    with LiveServer({"model_repo": model_repo, "poll_interval_s": 0.2, "decode_workers": 1}) as live, \
            live.client() as http:
        assert _classify(http, videos["a"]).json()["model"] == TINY_NAME
        assert _classify(http, videos["a"], model="").json()["model"] == TINY_NAME  # ?model= is not a name
        export_tiny(model_repo, name="other")
        wait_for(lambda: names() == {TINY_NAME, "other"})
        r = _classify(http, videos["a"])
        assert r.status_code == 400 and r.json()["type"] == "bad-parameter" and r.json()["detail"] == several
        assert caplog.text.count("the repository now holds several models (other, tiny)") == 1
        assert _classify(http, videos["a"], model="other").json()["model"] == "other"
        with LiveServer({"model_repo": model_repo, "decode_workers": 1}) as fresh, fresh.client() as http2:
            assert _classify(http2, videos["a"]).json()["detail"] == several  # a replica started now: the same
        shutil.rmtree(model_repo / "other")
        wait_for(lambda: names(ready_only=False) == {TINY_NAME})  # drained and unloaded
        depths = http.get("/metrics").text
        assert 'tsm_queue_depth{model="tiny"}' in depths and 'tsm_queue_depth{model="other"}' not in depths
        r = _classify(http, videos["a"], model="other")
        assert r.status_code == 404 and r.json()["type"] == "model-not-found"
        assert _classify(http, videos["a"]).json()["model"] == TINY_NAME


def test_a_default_model_keeps_unnamed_requests_when_another_is_published(model_repo: Path,
                                                                          videos: dict[str, Path]) -> None:
    export_tiny(model_repo, name="other")
    with LiveServer({"model_repo": model_repo, "decode_workers": 1, "default_model": "other"}) as live, \
            live.client() as http:
        assert _classify(http, videos["a"]).json()["model"] == "other"


def test_a_mistyped_default_model_is_not_ready_and_says_which_models_there_are(
        model_repo: Path, videos: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """TSM_DEFAULT_MODEL=tnyi beside a repository holding tiny: ready it is not (every unnamed request would get
    503), and the operator and the client learn why; once a model of that name is published it serves."""
    problem = "TSM_DEFAULT_MODEL is 'tnyi', which the repository does not hold (it holds: tiny)"
    staged = model_repo.parent / "staged"  # exported before the server starts (Paddle first in its thread)
    export_tiny(staged, name="tnyi")
    with LiveServer({"model_repo": model_repo, "poll_interval_s": 0.1, "decode_workers": 1,
                     "default_model": "tnyi"}) as live, live.client() as http:
        ready = http.get("/readyz")
        assert ready.status_code == 503 and problem in ready.json()["detail"]
        r = _classify(http, videos["a"])
        assert r.status_code == 503 and r.json()["type"] == "not-ready" and problem in r.json()["detail"]
        assert _classify(http, videos["a"], model=TINY_NAME).status_code == 200  # named requests are served
        time.sleep(0.5)  # five scans
        assert caplog.text.count(f"{problem}: requests that name no model get 503") == 1, caplog.text[-2000:]
        (staged / "tnyi").rename(model_repo / "tnyi")  # published at once, as an export's rename is
        wait_for(lambda: http.get("/readyz").status_code == 200)
        assert _classify(http, videos["a"]).json()["model"] == "tnyi"


def test_the_serving_version_removed_with_nothing_to_fall_back_to_keeps_serving_and_says_so_once(
        model_repo: Path, videos: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    broken = model_repo / TINY_NAME / "2"
    shutil.copytree(model_repo / TINY_NAME / "1", broken)
    (broken / "model.pdiparams").write_bytes(b"not parameters")
    with LiveServer({"model_repo": model_repo, "poll_interval_s": 0.1, "decode_workers": 1}) as live, \
            live.client() as http:  # version 2 is tried again after 30 s, or when its files change
        wait_for(lambda: states(live) == {1: "ready", 2: "failed"})
        shutil.rmtree(model_repo / TINY_NAME / "1")
        time.sleep(1.0)  # ten scans
        r = _classify(http, videos["a"])
        assert r.status_code == 200 and r.json()["version"] == 1
    said = "tiny version 1 was removed from the repository: no other valid version, so it keeps serving from " \
           "memory until one is published"
    assert caplog.text.count(said) == 1, caplog.text[-2000:]


def test_a_pin_to_a_version_the_repository_lacks_is_explained(model_repo: Path, videos: dict[str, Path],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    problem = "tiny is pinned to version 9 (TSM_MODEL_VERSIONS), which the repository does not hold"
    overrides = {"model_repo": model_repo, "poll_interval_s": 0.1, "decode_workers": 1,
                 "model_versions": {TINY_NAME: 9}}
    with LiveServer(overrides) as live, live.client() as http:
        for params in ({}, {"model": TINY_NAME}):
            r = _classify(http, videos["a"], **params)
            assert r.status_code == 503 and r.json()["type"] == "not-ready" and problem in r.json()["detail"]
        r = http.get(f"/models/{TINY_NAME}")
        assert r.status_code == 404 and problem in r.json()["detail"]
        time.sleep(0.5)  # a few more scans: the warning is not repeated (the requests' own lines quote it too)
        assert [r.getMessage() for r in caplog.records if r.name == "service.repository"].count(problem) == 1
        shutil.copytree(model_repo / TINY_NAME / "1", model_repo / TINY_NAME / "9")
        wait_for(lambda: states(live) == {9: "ready"})
        assert _classify(http, videos["a"]).json()["version"] == 9
    assert "tiny version 9: its manifest says version 1 (a copied folder?); it serves as version 9" in caplog.text

"""A model published with three test-time crops, served over real HTTP: its scores are the mean of what the
same weights give each crop on its own, cropped and normalised here by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.contract.manifest import Manifest
from service.contract.preprocess import center_crop, scale
from service.decoding import read_clip
from tests.conftest import TINY_LABELS, TINY_NAME, LiveServer, export_tiny
from tests.oracles import paddle_logits
from tests.videos import make_video

pytestmark = pytest.mark.slow

THREE = "tiny3"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of weights published twice: ``tiny`` (centre crop) and ``tiny3`` (three crops)."""
    root = tmp_path_factory.mktemp("crops_repo")
    export_tiny(root)
    export_tiny(root, crops=3, name=THREE)
    return root


@pytest.fixture(scope="module")
def live(repo: Path) -> Iterator[LiveServer]:
    overrides = {"model_repo": repo, "poll_interval_s": 0, "decode_workers": 1, "cpu_threads": 1,
                 "default_model": TINY_NAME}
    with LiveServer(overrides) as server:
        yield server


def _normalised(images: list[np.ndarray]) -> np.ndarray:
    x = np.stack(images).astype(np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(0, 3, 1, 2)


def _hand_made_crops(video: Path, spec_source: Manifest) -> list[np.ndarray]:
    """Left, centre and right crops of the sampled frames, each float32 [1, T, 3, c, c]."""
    spec = spec_source.preprocessing
    frames, _, _ = read_clip(video, spec)
    scaled = [scale(Image.fromarray(f), spec.short_side) for f in frames]
    c = spec.crop_size
    w, h = scaled[0].size
    top = (h - c) // 2
    boxes = [(0, top, c, top + c), None, (w - c, top, w, top + c)]
    return [_normalised([np.asarray(center_crop(img, c) if box is None else img.crop(box)) for img in scaled])[None]
            for box in boxes]


def _scores(response_json: dict[str, object]) -> np.ndarray:
    got = np.zeros(len(TINY_LABELS))
    for p in response_json["predictions"]:  # type: ignore[attr-defined]
        got[p["class_id"]] = p["score"]
    return got


def test_a_three_crop_model_scores_the_mean_of_its_crops(live: LiveServer, repo: Path, tmp_path: Path) -> None:
    video = make_video(tmp_path / "wide.mp4", num_frames=24, width=320, height=120, seed=5)  # 341x128 scaled
    one_crop = repo / TINY_NAME / "1"
    crops = _hand_made_crops(video, Manifest.read(repo / THREE / "1"))
    logits = np.mean([paddle_logits(one_crop, c)[0] for c in crops], axis=0).astype(np.float64)
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    with live.client() as http:
        answers = {}
        for name in (TINY_NAME, THREE):
            with video.open("rb") as fh:
                response = http.post("/classify", params={"model": name},
                                     files={"file": ("wide.mp4", fh, "video/mp4")})
            assert response.status_code == 200, response.text
            answers[name] = _scores(response.json())
        listed = {m["name"]: m for m in http.get("/models").json()["models"]}
    np.testing.assert_allclose(answers[THREE], expected, atol=1e-5)
    assert not np.allclose(answers[TINY_NAME], expected, atol=1e-3)  # the centre crop alone answers otherwise
    assert listed[THREE]["manifest"]["preprocessing"]["spatial_crops"] == 3
    assert listed[TINY_NAME]["manifest"]["preprocessing"]["spatial_crops"] == 1

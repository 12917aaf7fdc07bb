"""The bounds on a multipart form's other parts: how many fields, how long each, how many files per request."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveServer, leftover_uploads
from tests.e2e.test_errors import assert_problem

pytestmark = pytest.mark.slow


def _fields(count: int, length: int = 1) -> dict[str, str]:
    return {f"note{i}": "a" * length for i in range(count)}


def test_at_most_32_form_fields(strict_server: LiveServer, videos: dict[str, Path]) -> None:
    video = {"file": ("c.mp4", videos["c"].read_bytes(), "video/mp4")}
    with strict_server.client() as http:
        assert http.post("/classify", files=video, data=_fields(32)).status_code == 200
        problem = assert_problem(http.post("/classify", files=video, data=_fields(33)), 400, "bad-parameter")
    assert problem["detail"] == "too many form fields"
    assert leftover_uploads(strict_server) == []


def test_a_form_field_is_at_most_1024_bytes(strict_server: LiveServer, videos: dict[str, Path]) -> None:
    video = {"file": ("c.mp4", videos["c"].read_bytes(), "video/mp4")}
    with strict_server.client() as http:
        assert http.post("/classify", files=video, data={"note": "a" * 1024}).status_code == 200
        problem = assert_problem(http.post("/classify", files=video, data={"note": "a" * 1025}), 400, "bad-parameter")
    assert problem["detail"] == "form field 'note' is longer than 1024 bytes"


def test_classify_takes_one_file_and_the_batch_its_maximum(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    """A second file was classified never and answered nothing about: refused, as is one over the batch's cap."""
    one = ("c.mp4", videos["c"].read_bytes(), "video/mp4")
    with LiveServer({"model_repo": tiny_repo_template, "max_batch_files": 2, "decode_workers": 1,
                     "poll_interval_s": 0}) as live, live.client() as http:
        problem = assert_problem(http.post("/classify", files=[("file", one), ("file", one)]), 400, "bad-parameter")
        assert problem["detail"] == "one file per request; send several to /classify/batch"
        assert http.post("/classify/batch", files=[("files", one)] * 2).status_code == 200
        problem = assert_problem(http.post("/classify/batch", files=[("files", one)] * 3), 400, "bad-parameter")
        assert problem["detail"] == "at most 2 files per request"

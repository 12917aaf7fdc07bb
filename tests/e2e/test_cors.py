"""CORS for browser pages on listed origins: preflights answered before the key check, errors readable too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.e2e.test_errors import assert_problem

pytestmark = pytest.mark.slow
KEY = "k3y-for-cors-tests"
APP = "https://app.example.com"


@pytest.fixture(scope="module")
def cors_server(tiny_repo_template: Path) -> Any:
    overrides = {"model_repo": tiny_repo_template, "api_key": KEY, "decode_workers": 1, "poll_interval_s": 0,
                 "cpu_threads": 1, "cors_origins": f"{APP}/, http://localhost:3000"}  # as an operator writes it
    with LiveServer(overrides) as live:
        yield live


def test_a_listed_origin_may_classify_from_a_browser(cors_server: LiveServer, videos: dict[str, Path]) -> None:
    with cors_server.client() as http:
        preflight = http.options("/classify", headers={
            "origin": APP, "access-control-request-method": "POST",
            "access-control-request-headers": "x-api-key, content-type"})
        assert preflight.status_code == 200, preflight.text  # no key needed: browsers send none with a preflight
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "x-api-key" in allowed and "authorization" in allowed
        ok = http.post("/classify", content=videos["c"].read_bytes(),
                       headers={"origin": APP, "x-api-key": KEY, "content-type": "video/mp4"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP
        assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()
        refused = http.post("/classify", content=b"x", headers={"origin": "http://localhost:3000"})
        assert_problem(refused, 401, "unauthorized")  # the page can read why, not just a CORS failure
        assert refused.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_an_unlisted_origin_gets_no_cors_headers(cors_server: LiveServer) -> None:
    with cors_server.client() as http:
        preflight = http.options("/classify", headers={"origin": "https://evil.example",
                                                       "access-control-request-method": "POST"})
        assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
        probe = http.get("/healthz", headers={"origin": "https://evil.example"})
        assert probe.status_code == 200 and "access-control-allow-origin" not in probe.headers

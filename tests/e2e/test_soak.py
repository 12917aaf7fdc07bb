"""A short soak (about 17 s): the checks of ``python -m tests.benchmarks.soak`` at 2x capacity, hot reload included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.soak import check, report, run_soak

pytestmark = pytest.mark.slow


def test_short_soak_at_twice_capacity(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    result = run_soak(tiny_repo_template, videos["b"].read_bytes(), seconds=6, capacity_s=2.5, deadline_ms=5000)
    problems = check(result, p99_ms=2000, rss_growth_mb=150, fd_growth=5)
    assert not problems, report(result, problems)
    assert result.by_status().keys() <= {200, 503} and len(result.failures()) == 0
    assert not result.reload_window_failures() and result.versions == {1, 2}

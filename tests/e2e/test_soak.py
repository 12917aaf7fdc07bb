"""A short soak (about 17 s): the checks of ``python -m tests.benchmarks.soak`` at 2x capacity, hot reload included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.soak import check, report, run_soak

pytestmark = pytest.mark.slow

DEADLINE_MS = 5000


def test_short_soak_at_twice_capacity(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    # Version 2 is published a quarter of the way in (not halfway, as the 120 s benchmark does): loading and
    # warming it under 2x load took 2.6 s on 2 busy cores, and it must serve before the 8 s of traffic end.
    result = run_soak(tiny_repo_template, videos["b"].read_bytes(), seconds=8, capacity_s=2.5,
                      deadline_ms=DEADLINE_MS, reload_at_fraction=0.25)
    # Limits relative to the 5 s deadline, not to this machine's speed (under CPU load the 503 p99 reached
    # 243 ms and the accepted p99 896 ms, and a CI machine may be slower still): an accepted request within
    # 4/5 of it, a refusal within 1/5 of it. A refusal that waited in a queue until the deadline still fails.
    problems = check(result, p99_ms=0.8 * DEADLINE_MS, rss_growth_mb=150, fd_growth=5,
                     fast_503_ms=0.2 * DEADLINE_MS)
    assert not problems, report(result, problems)
    assert result.by_status().keys() <= {200, 503} and len(result.failures()) == 0
    assert not result.reload_window_failures() and result.versions == {1, 2}

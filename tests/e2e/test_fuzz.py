"""Property-based fuzzing: mutated MP4 bytes never get a 5xx, never kill the decoder pool, never leak a file."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveServer, leftover_uploads, pool_healthy
from tests.videos import make_video

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def seed_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_video(tmp_path_factory.mktemp("fuzz") / "seed.mp4", num_frames=10, width=64, height=48).read_bytes()

@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    """A few edits: flip a byte, overwrite a run with one value, cut a range out, or truncate."""
    kinds = st.sampled_from(["flip", "run", "cut", "truncate", "dup"])
    edits = st.tuples(kinds, st.integers(0, size - 1), st.integers(1, 255))
    return draw(st.lists(edits, min_size=1, max_size=6))

def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, at, value in edits:
        if not out:  # a cut took everything: nothing left to edit (out[0] raised IndexError in the test itself)
            break
        at = at % len(out)
        if kind == "flip":
            out[at] ^= value
        elif kind == "run":
            out[at:at + value] = bytes([value]) * len(out[at:at + value])
        elif kind == "cut":
            del out[at:at + value * 4]
        elif kind == "truncate":
            del out[max(1, at):]
        else:  # duplicate a slice in place (box sizes now lie)
            out[at:at] = out[at:at + value]
    return bytes(out) or b"\0"

def test_mutated_mp4_never_5xx(strict_server: LiveServer, seed_bytes: bytes) -> None:
    statuses: list[int] = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(edits=mutations(len(seed_bytes)))
    def check(edits: list[tuple[str, int, int]]) -> None:
        body = mutate(seed_bytes, edits)
        with strict_server.client() as http:
            r = http.post("/classify", content=body, headers={"content-type": "video/mp4"})
        statuses.append(r.status_code)
        assert r.status_code in (200, 400, 422), (edits, r.status_code, r.text[:300])
        if r.status_code != 200:
            assert r.json()["type"] in ("undecodable-video", "video-limit-exceeded", "bad-parameter")
        assert leftover_uploads(strict_server) == []
        assert pool_healthy(strict_server)

    check()
    assert len(statuses) >= 30 and 422 in statuses  # it really fuzzed, and some mutants are refused
    # and the server still classifies the unmutated video
    with strict_server.client() as http:
        assert http.post("/classify", content=seed_bytes, headers={"content-type": "video/mp4"}).status_code == 200

def test_seed_video_is_small(seed_bytes: bytes) -> None:
    assert 1000 < len(seed_bytes) < 64 * 1024

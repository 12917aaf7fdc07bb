"""Stage timeouts and the request deadline: each timeout must be able to fire before the deadline does."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.settings import ServiceSettings

TIMING_ENV = ("TSM_DECODE_TIMEOUT_S", "TSM_UPLOAD_TIMEOUT_S", "TSM_REQUEST_DEADLINE_MS")


@pytest.fixture(autouse=True)
def _no_timing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TIMING_ENV:
        monkeypatch.delenv(name, raising=False)


def test_default_timeouts_fire_before_the_deadline() -> None:
    """A hung decoder gets the README's 422 and a trickling upload its 408, not the deadline's 504."""
    s = ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    deadline_s = s.request_deadline_ms / 1000
    assert s.decode_timeout_s < deadline_s and s.upload_timeout_s < deadline_s
    assert s.upload_timeout_s + s.decode_timeout_s < deadline_s  # both can fire within one request


@pytest.mark.parametrize(("overrides", "named"), [
    ({"decode_timeout_s": 30.0}, "decode_timeout_s"),  # equal to the default deadline
    ({"upload_timeout_s": 60.0}, "upload_timeout_s"),  # the old default
    ({"request_deadline_ms": 2000}, "decode_timeout_s"),  # a short deadline under the default timeouts
    ({"request_deadline_ms": 5000, "decode_timeout_s": 1, "upload_timeout_s": 5}, "upload_timeout_s"),
])
def test_timeout_not_below_the_deadline_is_refused(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ServiceSettings(**overrides)
    message = str(refused.value)
    assert named in message and "request_deadline_ms" in message, message


def test_short_deadline_from_the_environment_needs_short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSM_REQUEST_DEADLINE_MS", "2000")
    with pytest.raises(ValidationError, match="decode_timeout_s"):
        ServiceSettings()
    monkeypatch.setenv("TSM_DECODE_TIMEOUT_S", "1.5")
    monkeypatch.setenv("TSM_UPLOAD_TIMEOUT_S", "1.5")
    s = ServiceSettings()
    assert (s.request_deadline_ms, s.decode_timeout_s, s.upload_timeout_s) == (2000, 1.5, 1.5)


def test_cors_origins_are_listed_as_browsers_send_them() -> None:
    settings = ServiceSettings(cors_origins="https://app.example.com/, http://localhost:3000")  # type: ignore[arg-type]
    assert settings.cors_origins == ["https://app.example.com", "http://localhost:3000"]
    assert ServiceSettings(cors_origins='["*"]').cors_origins == ["*"]  # type: ignore[arg-type]
    assert ServiceSettings().cors_origins == []
    for wrong in ("app.example.com", "https://app.example.com/ui", "ftp://x.org"):
        with pytest.raises(ValueError, match="not a web origin"):
            ServiceSettings(cors_origins=wrong)  # type: ignore[arg-type]

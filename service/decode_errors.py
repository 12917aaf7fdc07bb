"""What a decoder raises, and how its text reaches a client: without server-side paths or FFmpeg's error numbers."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_ERRNO = re.compile(r"\[Errno -?\d+\] ")  # FFmpeg's AVERROR as an errno: a number no reader can use


class DecodeError(Exception):
    """The file is not a decodable video; ``reason`` is a short bounded label for metrics."""

    def __init__(self, message: str, reason: str = "undecodable") -> None:
        super().__init__(message)
        self.reason = reason


class LimitExceeded(DecodeError):  # noqa: N818 - a DecodeError kind, named for what happened
    """The video is over a configured duration or frame-size limit."""


class Truncated(DecodeError):  # noqa: N818 - a DecodeError kind, named for what happened
    """The file ends inside one of its MP4 boxes (an upload or a copy cut short), found when the sparse path could
    not read it: said instead of the last decoder's "Invalid data found when processing input", or instead of
    classifying the part there is (the full decode skips what it cannot decode)."""


def why(exc: BaseException, path: Path) -> str:
    """An exception's text without the server-side path of the file (clients see this text).

    FFmpeg's error number and PyAV's closing ``: '<file>'`` go too: our message names the file first.
    """
    text = str(exc).replace(str(path), path.name)
    # Only a named folder is stripped: the parent of a bare name is "." and that of /clip.mp4 is "/",
    # and removing those would eat every dot or slash of the message.
    if path.parent.name:
        text = text.replace(str(path.parent) + os.sep, "").replace(str(path.parent), "")
    text = _ERRNO.sub("", text).replace(f": '{path.name}'", "")
    return text[:300]


def reason_only(exc: BaseException, path: Path) -> str:
    """An error's text for a report that names ``path`` itself: without the file name our messages begin with.
    A library's own exception (PyAV's MemoryError, PIL's DecompressionBombError) keeps its type's name, which
    often says more than its text."""
    if not isinstance(exc, DecodeError | OSError | ValueError):
        text = why(exc, path)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path.name}: ")
    return text or type(exc).__name__


def require_file(path: Path) -> None:
    """Say "not found" for a missing file, which every decoder would report as undecodable."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise DecodeError(f"{path.name}: {what}", "not_found")


@contextmanager
def failures_as(path: Path, what: str) -> Iterator[None]:
    """Any error of a decoding library inside becomes a :class:`DecodeError` saying ``what`` failed, and why.

    Our own DecodeErrors pass as they are, and so does a MemoryError: that is the worker's memory cap, which the
    decode worker answers and retires on, not a broken file."""
    try:
        yield
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:
        raise DecodeError(f"{path.name}: {what} ({why(exc, path)})") from exc

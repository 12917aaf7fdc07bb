"""Stream an upload to temporary files in chunks under a byte cap (never whole in memory).

Two shapes: a raw body with a ``video/*`` (or ``application/octet-stream``) content type,
or ``multipart/form-data`` parsed incrementally with python-multipart, so file parts go to
disk chunk by chunk and small form fields (options) are kept. Temporary files are removed by
:meth:`Upload.cleanup`, which the route calls whatever happens; a failure while receiving
removes what was written so far before the error propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.contract.manifest import is_number
from service.errors import (
    BadParameterError,
    ClientClosedError,
    UnsupportedMediaTypeError,
    UploadStorageFullError,
    UploadTimeoutError,
    UploadTooLargeError,
)
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

MAX_BOUNDARY = 70  # RFC 2046's limit on a multipart boundary
MAX_FIELD_BYTES = 1024
MAX_FIELDS = 32
MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries and part headers on top of the files themselves
STORAGE_RETRY_AFTER_S = 5  # a full upload folder frees up as the requests in flight finish and remove their files


@dataclass
class UploadedFile:
    """One received video on disk; ``size`` in bytes, names as the client sent them."""

    path: Path
    filename: str | None
    content_type: str | None
    size: int = 0


@dataclass
class Upload:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)  # every value of each form field, in order
    seconds: float = 0.0

    def cleanup(self) -> None:
        for item in self.files:
            with contextlib.suppress(FileNotFoundError):
                item.path.unlink()


def _new_file(folder: Path | None, filename: str | None, content_type: str | None) -> tuple[UploadedFile, IO[bytes]]:
    # The server picks the name (the client's filename is kept as data only): nothing from a
    # request reaches the file system path.
    fd, name = tempfile.mkstemp(prefix="tsm-upload-", suffix=".video", dir=folder)
    return UploadedFile(Path(name), filename, content_type), os.fdopen(fd, "wb")


async def receive_upload(request: Request, settings: ServiceSettings, file_fields: tuple[str, ...],
                         max_files: int, timeout_s: float | None = None) -> Upload:
    """Receive the body within ``timeout_s``; raises 400/408/413/415/499 errors, and 503 when the upload folder is
    full, removing partial files first."""
    start = time.perf_counter()
    upload = Upload()
    timeout_s = settings.upload_timeout_s if timeout_s is None else min(timeout_s, settings.upload_timeout_s)
    try:
        await asyncio.wait_for(_receive_body(request, settings, upload, file_fields, max_files), max(timeout_s, 0.0))
    except TimeoutError as exc:
        upload.cleanup()
        raise UploadTimeoutError(
            f"the upload did not arrive within {timeout_s:.1f} s; send it faster or make it smaller") from exc
    except OSError as exc:
        upload.cleanup()
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # The server's disk, not the client's request: say so, log it for the operator, and let the client retry.
        log.error("no space left for uploads in %s (%s): refusing uploads until there is", _folder(settings), exc)
        raise UploadStorageFullError("the server has no room to store the upload right now (its upload folder "
                                     "is full); retry later", retry_after_s=STORAGE_RETRY_AFTER_S) from exc
    except ClientDisconnect as exc:
        upload.cleanup()
        # A gone client did nothing wrong with its parameters: count it as cancelled (499), like one that
        # leaves later, not as a refused bad request.
        raise ClientClosedError("the client disconnected before the upload finished", stage="upload") from exc
    except BaseException:
        upload.cleanup()
        raise
    upload.seconds = time.perf_counter() - start
    return upload


def _folder(settings: ServiceSettings) -> str:
    return str(settings.upload_dir or tempfile.gettempdir())


async def _receive_body(request: Request, settings: ServiceSettings, upload: Upload, file_fields: tuple[str, ...],
                        max_files: int) -> None:
    content_type = request.headers.get("content-type", "")
    declared = request.headers.get("content-length")
    cap = settings.max_upload_bytes
    if content_type.lower().startswith("multipart/form-data"):
        if declared and is_number(declared) and int(declared) > multipart_limit(cap, max_files):
            raise UploadTooLargeError(_multipart_too_large(cap, max_files, declared))
        await _receive_multipart(request, settings, upload, file_fields, max_files)
    elif settings.content_type_allowed(content_type):
        if declared and is_number(declared) and int(declared) > cap:
            raise UploadTooLargeError(f"the upload is {declared} bytes; the limit is {cap} bytes")
        await _receive_raw(request, settings, upload, content_type)
    else:
        raise UnsupportedMediaTypeError(
            f"content type {content_type or '(none)'!r} {_refused_because(content_type, settings)}; send the video "
            f"as the body with a type this server accepts ({', '.join(settings.allowed_content_types)}), or as the "
            "multipart field 'file'")


def _refused_because(content_type: str | None, settings: ServiceSettings) -> str:
    """'is not a video', or, for a video type the server's list leaves out, that it is not among those accepted."""
    if (content_type or "").lower().startswith("video/"):
        return "is not among the types this server accepts (TSM_ALLOWED_CONTENT_TYPES)"
    return "is not a video"


async def _receive_raw(request: Request, settings: ServiceSettings, upload: Upload, content_type: str) -> None:
    cap = settings.max_upload_bytes
    item, fh = _new_file(settings.upload_dir, None, content_type)
    upload.files.append(item)
    with fh:
        async for chunk in request.stream():
            item.size += len(chunk)
            if item.size > cap:
                raise UploadTooLargeError(f"the upload is over the limit of {cap} bytes")
            fh.write(chunk)  # local temp file: small page-cache writes, cheap enough for the loop
    if item.size == 0:
        raise BadParameterError("the request body is empty; send a video")


def multipart_limit(cap: int, max_files: int) -> int:
    """The largest multipart body accepted: every file at the cap, plus boundaries, headers and small fields."""
    return cap * max_files + MULTIPART_SLACK_BYTES


def _multipart_too_large(cap: int, max_files: int, size: str | None = None) -> str:
    files = f"{max_files} files" if max_files > 1 else "a file"
    head = f"the multipart body is {size} bytes, over" if size else "the multipart body is over"
    return f"{head} the limit of {multipart_limit(cap, max_files)} bytes ({files} of {cap} bytes at most, and fields)"


class _PartSink:
    """python-multipart callbacks: headers per part, file parts to disk, small fields to memory."""

    def __init__(self, settings: ServiceSettings, upload: Upload, file_fields: tuple[str, ...], max_files: int):
        self.settings, self.upload, self.file_fields, self.max_files = settings, upload, file_fields, max_files
        self.headers: dict[str, str] = {}
        self._field, self._value = b"", b""
        self.name: str | None = None
        self.value = bytearray()
        self.file: UploadedFile | None = None
        self.fh: IO[bytes] | None = None
        self.skip = False
        self.ended = False  # the closing boundary was read (python-multipart's finalize() checks nothing)

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        self.headers, self.value, self.name, self.file, self.fh, self.skip = {}, bytearray(), None, None, None, False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self.headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field, self._value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get("content-disposition", ""))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        if not self.name:
            raise BadParameterError("a multipart part has no name: each part needs a Content-Disposition header "
                                    "with name=")
        raw_name = options.get(b"filename", options.get(b"filename*"))
        if raw_name is None and self.name not in self.file_fields:
            return  # a form field (a file field's part is its file, with or without a filename)
        if self.name not in self.file_fields:
            self.skip = True  # an unknown file field: read past it, keep nothing
            return
        content_type = self.headers.get("content-type", "application/octet-stream")
        if not self.settings.content_type_allowed(content_type):
            why = _refused_because(content_type, self.settings)
            raise UnsupportedMediaTypeError(f"part {self.name!r} has content type {content_type!r}, which {why} "
                                            f"(accepted: {', '.join(self.settings.allowed_content_types)})")
        if len(self.upload.files) >= self.max_files:
            raise BadParameterError("one file per request; send several to /classify/batch" if self.max_files == 1
                                    else f"at most {self.max_files} files per request")
        filename = None if raw_name is None else raw_name.decode("utf-8", "replace")[:255]
        self.file, self.fh = _new_file(self.settings.upload_dir, filename, content_type)
        self.upload.files.append(self.file)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.skip:
            return
        if self.file is not None and self.fh is not None:
            self.file.size += end - start
            if self.file.size > self.settings.max_upload_bytes:
                raise UploadTooLargeError(
                    f"file {self.file.filename!r} is over the limit of {self.settings.max_upload_bytes} bytes")
            self.fh.write(data[start:end])
            return
        self.value += data[start:end]
        if len(self.value) > MAX_FIELD_BYTES:
            raise BadParameterError(f"form field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self.fh is not None:
            self.fh.close()
        elif self.name and not self.skip:
            if sum(map(len, self.upload.fields.values())) >= MAX_FIELDS:
                raise BadParameterError("too many form fields")
            self.upload.fields.setdefault(self.name, []).append(self.value.decode("utf-8", "replace"))

    def end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.fh is not None and not self.fh.closed:
            self.fh.close()


async def _receive_multipart(request: Request, settings: ServiceSettings, upload: Upload,
                             file_fields: tuple[str, ...], max_files: int) -> None:
    _, params = parse_options_header(request.headers["content-type"])
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadParameterError("the multipart content type has no boundary")
    if len(boundary) > MAX_BOUNDARY:  # python-multipart's own refusal of a longer one was an internal error
        raise BadParameterError(f"the multipart boundary is {len(boundary)} characters long; at most {MAX_BOUNDARY} "
                                "(RFC 2046)")
    sink = _PartSink(settings, upload, file_fields, max_files)
    parser = MultipartParser(boundary, sink.callbacks())  # type: ignore[arg-type]
    # Each file is capped as it arrives, but parts we skip are not: without a Content-Length only this bounds them.
    limit, received = multipart_limit(settings.max_upload_bytes, max_files), 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise UploadTooLargeError(_multipart_too_large(settings.max_upload_bytes, max_files))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadParameterError(f"the multipart body is malformed ({exc})") from exc
    finally:
        sink.close()
    if not sink.ended:  # a cut body's last file would otherwise be classified as if it were whole
        raise BadParameterError(f"the multipart body ends before its closing boundary "
                                f"'--{boundary.decode('latin-1')}--': the upload is incomplete; send it again")
    if not upload.files:
        raise BadParameterError(f"no video found: send it in the multipart field {file_fields[0]!r}")
    if max_files == 1 and upload.files[0].size == 0:  # a batch answers an empty file on its own
        raise BadParameterError("the uploaded file is empty; send a video")

"""Classification routes (thin): receive the upload, lease a model version, run the pipeline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from service.api.deps import Authorized, RequestIdDep, Resources, ResourcesDep
from service.api.errors import problem, problem_response, validation_error
from service.api.options import ModelName, TopK, Version, int_option, option, refuse_repeated_options
from service.api.schemas import BatchItem, BatchResponse, ClassifyResponse, Problem
from service.errors import BadParameterError, ClientClosedError, NotReadyError, ServiceError, UnauthorizedError
from service.metrics import Metrics
from service.pipeline import Deadline, classify_file
from service.upload import Upload, UploadedFile, receive_upload

log = logging.getLogger(__name__)
T = TypeVar("T")

_VIDEO_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "The video."},
        "top_k": {"type": "integer", "minimum": 1}, "model": {"type": "string"}, "version": {"type": "integer"}}}},
    "video/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
_BATCH_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "top_k": {"type": "integer", "minimum": 1}, "model": {"type": "string"}, "version": {"type": "integer"}}}},
    "video/*": {"schema": {"type": "string", "format": "binary"}},  # one video as the body, as /classify takes it
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text} for code, text in {
        400: "Bad parameters", 401: "Missing or wrong API key", 404: "Unknown model or version",
        408: "The upload arrived too slowly", 413: "Upload over the limit", 415: "Not a video",
        422: "Video cannot be decoded",
        503: "Overloaded or not ready", 504: "Deadline passed"}.items()}


@dataclass
class _Outcome:
    model: str = ""
    version: str = ""
    status: int = 200
    type: str = ""
    detail: str = ""


def _count_failure(metrics: Metrics, outcome: _Outcome, exc: Exception) -> None:
    """Status and type of the answer ``exc`` becomes; a gone client or a refusal is also counted as such."""
    error = validation_error(exc) if isinstance(exc, RequestValidationError) else exc
    if not isinstance(error, ServiceError):
        outcome.status, outcome.type = 500, ServiceError.type
        return
    outcome.status, outcome.type, outcome.detail = error.status, error.type, error.detail
    if isinstance(error, ClientClosedError):
        metrics.cancelled.labels(error.stage).inc()
    elif error.refusal and not isinstance(error, UnauthorizedError):  # the auth dependency counts its own 401s
        metrics.rejected.labels(error.type).inc()


@contextmanager
def _tracked(metrics: Metrics, path: str) -> Iterator[_Outcome]:
    """In-flight gauge, request counter, duration and the log line of one classification request."""
    outcome, start = _Outcome(), time.perf_counter()
    metrics.inflight.inc()
    try:
        yield outcome
    except Exception as exc:
        _count_failure(metrics, outcome, exc)
        raise
    finally:
        elapsed = time.perf_counter() - start
        metrics.inflight.dec()
        metrics.requests.labels(outcome.model, outcome.version, str(outcome.status)).inc()
        metrics.observe_request(outcome.status, elapsed)
        _log_answer(path, outcome, elapsed)


def _log_answer(path: str, outcome: _Outcome, elapsed_s: float) -> None:
    """One line a request: the reason of a refusal, so the log says which parameter; a 5xx is a warning. In
    JSON the same values are fields too, for a log store to filter on."""
    fields = {"path": path, "model": outcome.model or None, "version": outcome.version or None,
              "status": outcome.status, "type": outcome.type or None, "duration_ms": round(elapsed_s * 1000, 1)}
    why = f": {outcome.detail}" if outcome.detail else ""
    log.log(logging.WARNING if outcome.status >= 500 else logging.INFO,
            "POST %s model=%s version=%s status=%d type=%s in %.1f ms%s", path, outcome.model or "-",
            outcome.version or "-", outcome.status, outcome.type or "-", elapsed_s * 1000, why,
            extra={"fields": fields})


class _TrackedRoute(APIRoute):
    """Tracks every answer of the route, also those given before the endpoint runs (bad query parameters,
    a missing API key), which a ``with`` inside the endpoint never sees."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def tracked(request: Request) -> Response:
            resources: Resources = request.app.state.resources
            with _tracked(resources.metrics, request.url.path) as outcome:
                request.state.outcome = outcome  # the endpoint fills in the model version it leased
                try:
                    response = await handler(request)
                except asyncio.CancelledError:
                    # Only the server cancels a request (a client that leaves is a ClientClosedError): uvicorn
                    # does when the shutdown grace runs out. Answered, it gets a problem document and is
                    # counted as what it got, where uvicorn would send a bare 500 for a request logged as 200.
                    gone = NotReadyError("the server shut down before this request finished; retry it on "
                                         "another replica", retry_after_s=1)
                    _count_failure(resources.metrics, outcome, gone)
                    response = problem_response(gone)
                outcome.status = response.status_code
                return response

        return tracked


def _outcome(request: Request) -> _Outcome:
    outcome: _Outcome = request.state.outcome
    return outcome


router = APIRouter(tags=["classify"], route_class=_TrackedRoute)


def _admit(res: Resources, outcome: _Outcome, model: str | None) -> None:
    """The decoder pool's overload check; a refusal is counted under the model the request would have gone to
    (per-model dashboards count it), as far as the query says before the upload is read."""
    try:
        res.pool.admit()
    except ServiceError:
        outcome.model, outcome.version = res.repository.peek(model or None)
        raise


def _top_k(value: int | None, num_labels: int) -> int:
    if value is None:
        return min(5, num_labels)
    if value > num_labels:
        raise BadParameterError(f"top_k must be between 1 and {num_labels} (the model's label count), got {value}")
    return value


async def _receive(request: Request, res: Resources, fields: tuple[str, ...], max_files: int,
                   deadline: Deadline) -> Upload:
    """The upload, within the request deadline (and ``upload_timeout_s``): a trickling client gets 408."""
    upload = await receive_upload(request, res.settings, fields, max_files,
                                  timeout_s=max(0.0, deadline.at - time.monotonic()))
    res.metrics.observe_stage("upload", upload.seconds)
    for item in upload.files:
        res.metrics.upload_bytes.observe(item.size)
    return upload


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away (the body is already read, so only ``http.disconnect`` is left)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0)  # an empty trailing body message; keep waiting


async def _unless_disconnected(request: Request, res: Resources, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it if the client disconnects first (no decode or inference for nobody).

    Cancelling stops a request waiting for a decoder or queued for a batch; a decode already
    running in a worker finishes there and its result is dropped.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone = watcher.done() and not watcher.cancelled()
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    # From the watcher, not task.cancelled(): a cancelled gather() ends with CancelledError as its exception, not
    # as cancelled, and its re-raise would be taken for the server's own shutdown (a 503).
    if gone and (task.cancelled() or isinstance(task.exception(), asyncio.CancelledError)):
        raise ClientClosedError("the client disconnected before the answer; the request was cancelled",
                                stage="processing")
    return task.result()


@router.post("/classify", response_model=ClassifyResponse, dependencies=[Authorized], responses=_ERRORS,
             openapi_extra=_VIDEO_BODY, summary="Classify one video (multipart field 'file' or raw body)")
async def classify(request: Request, res: ResourcesDep, request_id: RequestIdDep, top_k: TopK = None,
                   model: ModelName = None, version: Version = None) -> ClassifyResponse:
    started = time.perf_counter()
    deadline = Deadline(time.monotonic() + res.settings.request_deadline_ms / 1000)
    outcome = _outcome(request)
    refuse_repeated_options(request)
    _admit(res, outcome, model)  # refuse an overloaded server's request before reading its body
    upload = await _receive(request, res, ("file",), 1, deadline)
    try:
        k = int_option("top_k", top_k, upload)
        want_version = int_option("version", version, upload)
        async with res.repository.lease(option("model", model, upload), want_version) as mv:
            outcome.model, outcome.version = mv.name, str(mv.version)
            assert mv.manifest is not None
            work = classify_file(upload.files[0], mv, res.pool, res.limits, res.metrics, deadline,
                                 _top_k(k, mv.manifest.num_classes), request_id, upload.seconds, started)
            return await _unless_disconnected(request, res, work)
    finally:
        upload.cleanup()


@router.post("/classify/batch", response_model=BatchResponse, dependencies=[Authorized], responses=_ERRORS,
             openapi_extra=_BATCH_BODY, summary="Classify several videos; each file is answered on its own")
async def classify_batch(request: Request, res: ResourcesDep, request_id: RequestIdDep, top_k: TopK = None,
                         model: ModelName = None, version: Version = None) -> BatchResponse:
    started = time.perf_counter()
    deadline = Deadline(time.monotonic() + res.settings.request_deadline_ms / 1000)
    outcome = _outcome(request)
    refuse_repeated_options(request)
    _admit(res, outcome, model)
    upload = await _receive(request, res, ("files", "file"), res.settings.max_batch_files, deadline)
    try:
        k = int_option("top_k", top_k, upload)
        async with res.repository.lease(option("model", model, upload),
                                        int_option("version", version, upload)) as mv:
            outcome.model, outcome.version = mv.name, str(mv.version)
            assert mv.manifest is not None
            k = _top_k(k, mv.manifest.num_classes)
            # At most one file a decoder in the pool at once: all at once would overflow a short decoder queue,
            # and an idle server would turn away the batch's own files as "queue full".
            gate = asyncio.Semaphore(res.pool.size)

            async def one(f: UploadedFile) -> ClassifyResponse:
                async with gate:
                    return await classify_file(f, mv, res.pool, res.limits, res.metrics, deadline, k, request_id,
                                               upload.seconds, started)

            videos = [f for f in upload.files if f.size > 0]
            decoded = await _unless_disconnected(request, res, asyncio.gather(*(one(f) for f in videos),
                                                                              return_exceptions=True))
    finally:
        upload.cleanup()
    answers = iter(decoded)  # in the order of the non-empty files
    empty = BadParameterError("the uploaded file is empty; send a video")
    results = [next(answers) if f.size > 0 else empty for f in upload.files]
    items = []
    for f, result in zip(upload.files, results, strict=True):
        if isinstance(result, ServiceError):
            items.append(BatchItem(filename=f.filename, status=result.status, error=problem(result)))
        elif isinstance(result, BaseException):
            raise result
        else:
            items.append(BatchItem(filename=f.filename, status=200, result=result))
    return BatchResponse(request_id=request_id, results=items)

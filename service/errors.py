"""One error base class with named subclasses; each maps to one HTTP status and one ``type``.

Raised anywhere in the service (upload, decode pool, batcher, repository) and turned into an
RFC 9457 problem body by the single handler in :mod:`service.api.errors`.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base: ``status`` and ``type`` are fixed per subclass; ``detail`` is a sentence for people.

    ``refusal``: the request was turned away before any inference (tsm_rejected_requests_total counts
    those); a request that was admitted and then failed, timed out or lost its client is not one.
    """

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    refusal: ClassVar[bool] = False

    def __init__(self, detail: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


class BadParameterError(ServiceError):
    status, type, title = 400, "bad-parameter", "Bad parameter"
    refusal = True


class UnauthorizedError(ServiceError):
    status, type, title = 401, "unauthorized", "Missing or wrong API key"
    refusal = True


class ModelNotFoundError(ServiceError):
    status, type, title = 404, "model-not-found", "Unknown model"
    refusal = True


class VersionNotFoundError(ServiceError):
    status, type, title = 404, "version-not-found", "Unknown or not serving model version"
    refusal = True


class UploadTimeoutError(ServiceError):
    status, type, title = 408, "upload-timeout", "The upload took too long"
    refusal = True


class UploadTooLargeError(ServiceError):
    status, type, title = 413, "upload-too-large", "Upload over the size limit"
    refusal = True


class UnsupportedMediaTypeError(ServiceError):
    status, type, title = 415, "unsupported-media-type", "Not a video"
    refusal = True


class UndecodableVideoError(ServiceError):
    """422: the file is not a video we can decode (bad data, no video stream, no frames).

    Not a ``refusal``: these have their own counter, tsm_decode_failures_total, by ``reason``.
    """

    status, type, title = 422, "undecodable-video", "The video cannot be decoded"

    def __init__(self, detail: str, reason: str = "undecodable") -> None:
        super().__init__(detail)
        self.reason = reason


class VideoLimitExceededError(UndecodableVideoError):
    status, type, title = 422, "video-limit-exceeded", "The video is too long or too large"


class DecoderCrashedError(UndecodableVideoError):
    status, type, title = 422, "decoder-crashed", "The decoder crashed on this video"


class DecodeTimeoutError(UndecodableVideoError):
    status, type, title = 422, "decode-timeout", "Decoding took too long"


class ClientClosedError(ServiceError):
    """499 (nginx's code): the client left before its answer; the answer goes nowhere, the work is cancelled."""

    status, type, title = 499, "client-closed-request", "The client closed the connection"

    def __init__(self, detail: str, stage: str) -> None:
        super().__init__(detail)
        self.stage = stage  # where the client left: upload or processing (tsm_cancelled_requests_total's label)


class QueueFullError(ServiceError):
    status, type, title = 503, "queue-full", "Overloaded: too many requests are waiting"
    refusal = True


class DecoderUnavailableError(ServiceError):
    """503: no decoder process could be started (the OS refused it); the decode pool keeps retrying."""

    status, type, title = 503, "decoder-unavailable", "No decoder process is available"
    refusal = True  # turned away before any decoding or inference


class UploadStorageFullError(ServiceError):
    """503: the upload folder (``TSM_UPLOAD_DIR``) ran out of space or quota while the body was stored."""

    status, type, title = 503, "upload-storage-full", "No room to store the upload"
    refusal = True  # turned away before any decoding or inference


class NotReadyError(ServiceError):
    status, type, title = 503, "not-ready", "No model is ready to serve"
    refusal = True


class InferenceFailedError(ServiceError):
    """503: the batch this request was in failed in the predictor (not the client's fault)."""

    status, type, title = 503, "inference-failed", "Inference failed"


class DeadlineExceededError(ServiceError):
    status, type, title = 504, "deadline-exceeded", "The request deadline passed"


def counted(n: int, noun: str) -> str:
    """``1 clip is`` / ``3 clips are``, for the details above."""
    return f"1 {noun} is" if n == 1 else f"{n} {noun}s are"

"""One video through the service: decode pool -> batcher -> softmax -> top-k.

The numeric path is exactly ``read_clip`` -> ``preprocess_clip`` (in a decode worker) ->
predictor (batched) -> :func:`softmax`; nothing else touches the numbers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from service.api.schemas import ClassifyResponse, Prediction, Timings, VideoFacts
from service.decode_pool import DecodePool
from service.decode_worker import DecodedClip, DecodeLimits
from service.errors import DeadlineExceededError, UndecodableVideoError
from service.metrics import Metrics
from service.model_version import ModelVersion
from service.predictor import softmax
from service.upload import UploadedFile


@dataclass(frozen=True)
class Deadline:
    """A point on the ``time.monotonic`` clock."""

    at: float

    def remaining(self, what: str) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(f"the request deadline passed before {what}")
        return left


async def classify_file(file: UploadedFile, mv: ModelVersion, pool: DecodePool, limits: DecodeLimits,
                        metrics: Metrics, deadline: Deadline, top_k: int, request_id: str, upload_s: float,
                        started: float) -> ClassifyResponse:
    """Classify one uploaded file with the leased version ``mv``; raises ServiceError kinds."""
    assert mv.manifest is not None and mv.batcher is not None
    manifest = mv.manifest
    mv.batcher.admit()  # a full inference queue refuses now, not after a decoder has worked for nothing
    t0 = time.perf_counter()
    # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation (the client gone) that arrives in the
    # loop turn its work finishes in. The remaining time is taken first, so nothing is started on a dead deadline.
    left = deadline.remaining("decoding")
    try:
        async with asyncio.timeout(left):
            decoded: DecodedClip = await pool.run(str(file.path), manifest.preprocessing, limits)
    except TimeoutError as exc:
        raise DeadlineExceededError("the request deadline passed while decoding") from exc
    except UndecodableVideoError as exc:
        metrics.decode_failures.labels(exc.reason).inc()
        # The decoder names the server's temporary file: the client knows its upload by its own name.
        exc.detail = exc.detail.replace(file.path.name, repr(file.filename) if file.filename else "the upload")
        raise
    decode_s = time.perf_counter() - t0
    metrics.observe_stage("decode", decode_s)

    left = deadline.remaining("inference")  # before submit: a clip queued for a request already answered 504
    future = mv.batcher.submit(decoded.clip, deadline.at)
    try:
        async with asyncio.timeout(left):
            result = await future
    except TimeoutError as exc:
        raise DeadlineExceededError("the request deadline passed while waiting for inference") from exc
    metrics.observe_stage("queue", result.queue_s)
    metrics.observe_stage("inference", result.inference_s)

    t1 = time.perf_counter()
    probs = softmax(result.output[np.newaxis].astype(np.float64))[0]  # [K], sums to 1
    order = np.argsort(-probs, kind="stable")[:top_k]
    predictions = [Prediction(label=manifest.labels[i], class_id=int(i), score=float(probs[i])) for i in order]
    post_s = time.perf_counter() - t1
    metrics.observe_stage("postprocess", post_s)

    info = decoded.info
    facts = VideoFacts(num_frames=info.num_frames, fps=info.fps, duration_s=info.duration_s, width=info.width,
                       height=info.height, rotation=info.rotation, decoder=info.backend,
                       sampled_indices=decoded.indices)
    ms = 1000.0
    timings = Timings(upload=upload_s * ms, decode=decode_s * ms, queue=result.queue_s * ms,
                      inference=result.inference_s * ms, postprocess=post_s * ms,
                      total=(time.perf_counter() - started) * ms)
    return ClassifyResponse(request_id=request_id, model=mv.name, version=mv.version, predictions=predictions,
                            video=facts, timings_ms=timings, batch_size=result.batch_size)

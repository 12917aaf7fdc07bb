"""Prometheus metrics on an injected registry; names are fixed (dashboards and alerts use them).

Labels stay bounded: ``model``/``version`` come from the repository (not from requests),
``status`` is the HTTP status code, ``status_class`` its first digit, ``stage`` and ``reason`` are short fixed
vocabularies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

STAGES = ("upload", "decode", "queue", "inference", "postprocess")
STATUS_CLASSES = ("2xx", "4xx", "5xx")
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
_BYTES = tuple(float(1024 * 4**i) for i in range(11))  # 1 KiB .. 1 GiB


class Metrics:
    """Every service metric, registered on ``registry`` (a fresh one per app, so tests don't share)."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        # A *_created series per counter and histogram doubles the exposition for no dashboard's use (Prometheus
        # ignores them); the switch is process-wide, which the service's process is.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.requests = Counter("tsm_requests", "Classification requests by outcome.",
                                ["model", "version", "status"], registry=r)
        # By status class: overload's fast 503s would pull the latency of answered requests down.
        self.request_duration = Histogram("tsm_request_duration_seconds", "Whole request time, seconds.",
                                          ["status_class"], buckets=_SECONDS, registry=r)
        self.stage_duration = Histogram("tsm_stage_duration_seconds", "Time per pipeline stage, seconds.",
                                        ["stage"], buckets=_SECONDS, registry=r)
        self.batch_size = Histogram("tsm_batch_size", "Clips per inference call.", buckets=_BATCH, registry=r)
        self.queue_depth = Gauge("tsm_queue_depth", "Clips waiting for inference.", ["model"], registry=r)
        self.inflight = Gauge("tsm_inflight_requests", "Classification requests in progress.", registry=r)
        # Where a CPU server saturates first: decoding. Read from the pool at each scrape (watch_decode_pool).
        self.decode_waiting = Gauge("tsm_decode_waiting", "Videos waiting for a free decoder process.", registry=r)
        self.decoders_busy = Gauge("tsm_decoders_busy", "Decoder processes decoding a video now.", registry=r)
        self.decode_failures = Counter("tsm_decode_failures", "Videos that could not be decoded, by reason.",
                                       ["reason"], registry=r)
        self.rejected = Counter("tsm_rejected_requests", "Requests refused before inference, by reason.",
                                ["reason"], registry=r)
        self.model_info = Gauge("tsm_model_info", "1 for each loaded model version and how it runs.",
                                ["model", "version", "backend", "device", "precision"], registry=r)
        self.model_loads = Counter("tsm_model_loads", "Model version loads by result (ok, failed).",
                                   ["model", "result"], registry=r)
        self.decoder_replacements = Counter(
            "tsm_decoder_replacements",
            "Decoder worker processes replaced, by reason (crashed, timeout, out_of_memory).", ["reason"], registry=r)
        self.cancelled = Counter("tsm_cancelled_requests", "Requests whose client left before the answer, by stage.",
                                 ["stage"], registry=r)
        self.upload_bytes = Histogram("tsm_upload_bytes", "Size of uploaded videos, bytes.", buckets=_BYTES,
                                      registry=r)
        for stage in STAGES:  # export every stage from the start, so rate() works from the first scrape
            self.stage_duration.labels(stage)
        for status_class in STATUS_CLASSES:
            self.request_duration.labels(status_class)

    def observe_request(self, status: int, seconds: float) -> None:
        self.request_duration.labels(f"{status // 100}xx").observe(seconds)

    def watch_decode_pool(self, waiting: Callable[[], int], busy: Callable[[], int]) -> None:
        self.decode_waiting.set_function(waiting)
        self.decoders_busy.set_function(busy)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_duration.labels(stage).observe(seconds)

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - start)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

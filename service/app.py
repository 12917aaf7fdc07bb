"""The app factory: ``create_app(settings)``; resources are opened in the lifespan, never at import."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import decode_worker
from service.api import health, routes
from service.api.deps import Resources
from service.api.errors import install_error_handlers, problem_json_in_openapi
from service.api.methods import include_routers
from service.backends import default_factory
from service.batcher import BatchPolicy
from service.decode_pool import DecodePool
from service.decode_worker import DecodeLimits
from service.logs import configure_logging, new_request_id, request_id_var
from service.metrics import Metrics
from service.repository import ModelRepository, PredictorFactory
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


class RequestIdMiddleware:
    """Give each HTTP request an id (the client's ``X-Request-ID`` when sane), log with it, echo it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        client = headers.get(b"x-request-id", b"").decode("latin-1") or None
        request_id = new_request_id(client)
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class SignalGuard:
    """Keep the server's SIGTERM/SIGINT handlers: importing Paddle installs its own, which kill the
    process at once (no graceful shutdown, in-flight requests cut). Re-installs the handlers seen
    at start; only the main thread may (under a test's background uvicorn there is nothing to keep).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.main = threading.current_thread() is threading.main_thread()
        self.handlers = {sig: signal.getsignal(sig) for sig in self.SIGNALS} if self.main else {}

    def restore(self) -> None:
        if not self.main or threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self.handlers.items():
            if handler is not None:
                signal.signal(sig, handler)


def create_app(settings: ServiceSettings, *, registry: CollectorRegistry | None = None,
               predictor_factory: PredictorFactory | None = None,
               decode_task: Callable[..., Any] = decode_worker.decode_task) -> FastAPI:
    """Build the service; ``predictor_factory`` and ``decode_task`` are seams for tests."""
    configure_logging(settings.log_level, settings.log_format)
    for advice in settings.advice():
        log.warning("%s", advice)
    metrics = Metrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        signals = SignalGuard()  # uvicorn's graceful-shutdown handlers, before Paddle is imported
        pool = DecodePool(settings.decode_workers, settings.decode_timeout_s, settings.decode_memory_mb,
                          task=decode_task,
                          on_replace=lambda reason: metrics.decoder_replacements.labels(reason).inc(),
                          queue_capacity=settings.decode_queue_capacity)
        pool.start()
        metrics.watch_decode_pool(lambda: pool.waiting, lambda: len(pool.busy_pids()))
        policy = BatchPolicy(settings.max_batch_size, settings.max_queue_delay_ms, settings.queue_capacity)
        repository = ModelRepository(
            settings.model_repo, metrics, predictor_factory or default_factory(settings), policy,
            pins=settings.model_versions, default_model=settings.default_model,
            warmup_runs=settings.warmup_runs, poll_interval_s=settings.poll_interval_s,
            after_load=signals.restore)
        limits = DecodeLimits(settings.max_video_duration_s, settings.max_video_pixels)
        app.state.resources = Resources(settings, metrics, repository, pool, limits)
        try:
            await repository.start()
            signals.restore()  # also when no version loaded (Paddle was imported to look for a GPU)
            if not repository.ready():
                log.warning("no model version is ready in %s; /readyz answers 503", settings.model_repo)
            yield
        finally:
            await repository.close()
            pool.close()

    app = FastAPI(title="TSM video classification", version="0.1.0", lifespan=lifespan,
                  description="Classify videos with TSM models from a model repository, with dynamic batching.")
    install_error_handlers(app)
    include_routers(app, routes.router, health.router)
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:  # outermost, so that errors and the auth's 401 carry the CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "HEAD", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After", "WWW-Authenticate"], max_age=600)
    problem_json_in_openapi(app)
    return app

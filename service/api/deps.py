"""Request dependencies as named ``Annotated`` aliases: the app's resources, auth, request id.

All ``async def``: they never block, and a plain ``def`` dependency costs a thread-pool hop per
request (under overload that alone saturated the event loop and the default 40-thread pool).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from service.decode_pool import DecodePool
from service.decode_worker import DecodeLimits
from service.errors import UnauthorizedError
from service.logs import request_id_var
from service.metrics import Metrics
from service.repository import ModelRepository
from service.settings import ServiceSettings


@dataclass
class Resources:
    """Everything the lifespan opened; routes reach it through :data:`ResourcesDep`."""

    settings: ServiceSettings
    metrics: Metrics
    repository: ModelRepository
    pool: DecodePool
    limits: DecodeLimits


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_request_id() -> str:
    return request_id_var.get() or ""


RequestIdDep = Annotated[str, Depends(get_request_id)]


async def require_api_key(resources: ResourcesDep,
                    x_api_key: Annotated[str | None, Header(description="The API key, when one is configured.")] = None,
                    authorization: Annotated[str | None, Header()] = None) -> None:
    """401 unless the configured key comes in ``X-API-Key`` or ``Authorization: Bearer <key>``."""
    expected = resources.settings.api_key
    if expected is None:
        return
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if given is None:
        resources.metrics.rejected.labels("unauthorized").inc()
        raise UnauthorizedError("this server needs an API key, in the X-API-Key header or as "
                                "'Authorization: Bearer <key>'")
    # Constant time, length included: compare fixed-size digests, not the keys themselves.
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    if not secrets.compare_digest(given_digest, hashlib.sha256(expected.get_secret_value().encode()).digest()):
        resources.metrics.rejected.labels("unauthorized").inc()
        raise UnauthorizedError("the API key is wrong")


async def require_api_key_for_operations(
        resources: ResourcesDep,
        x_api_key: Annotated[str | None, Header(description="The API key, when one is configured.")] = None,
        authorization: Annotated[str | None, Header()] = None) -> None:
    """Like :func:`require_api_key` for /healthz, /readyz, /metrics, but only with ``protect_operations``."""
    if resources.settings.protect_operations:
        await require_api_key(resources, x_api_key, authorization)


Authorized = Depends(require_api_key)
OperationsAuthorized = Depends(require_api_key_for_operations)

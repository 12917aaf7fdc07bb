"""Request dependencies as named ``Annotated`` aliases: the app's resources, auth, request id."""

from __future__ import annotations

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


def get_resources(request: Request) -> Resources:
    return request.app.state.resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def get_request_id() -> str:
    return request_id_var.get() or ""


RequestIdDep = Annotated[str, Depends(get_request_id)]


def require_api_key(resources: ResourcesDep,
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
        raise UnauthorizedError("this server needs an API key in the X-API-Key header")
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        resources.metrics.rejected.labels("unauthorized").inc()
        raise UnauthorizedError("the API key is wrong")


Authorized = Depends(require_api_key)

"""The one place errors become HTTP responses: RFC 9457 problem JSON with a stable ``type``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.methods import allowed_methods
from service.api.schemas import Problem
from service.errors import BadParameterError, ServiceError, UnauthorizedError
from service.logs import request_id_var

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
_HTTP_TYPES = {404: "not-found", 405: "method-not-allowed"}


def problem(error: ServiceError) -> Problem:
    return Problem(type=error.type, title=error.title, status=error.status, detail=error.detail,
                   request_id=request_id_var.get(), retry_after_s=error.retry_after_s)


def problem_response(error: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else {}
    if isinstance(error, UnauthorizedError):  # RFC 9110: a 401 names the scheme that would be accepted
        headers["WWW-Authenticate"] = 'Bearer realm="tsm"'
    return JSONResponse(problem(error).model_dump(), status_code=error.status, headers=headers,
                        media_type=PROBLEM_JSON)


def validation_error(exc: RequestValidationError) -> BadParameterError:
    """What FastAPI's parameter validation failure is answered as: a 400 naming each bad parameter."""
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    return BadParameterError("; ".join(parts) or "invalid parameters")


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses a route can answer (bodies: :class:`Problem`)."""
    text = {400: "Bad parameters", 401: "Missing or wrong API key", 404: "Unknown model or version",
            503: "Not ready"}
    return {code: {"model": Problem, "description": text.get(code, "Error")} for code in codes}


def problem_json_in_openapi(app: FastAPI) -> None:
    """Document error bodies as ``application/problem+json`` (what the handlers send), not ``application/json``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in str(responses.get("422", "")):  # we answer those 400, as a problem
                    del responses["422"]
                    responses.setdefault("400", {"description": "Bad parameters", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
                for status, response in responses.items():
                    content = response.get("content", {})
                    if status[:1] in "45" and "application/json" in content:
                        content[PROBLEM_JSON] = content.pop("application/json")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _routing_detail(request: Request, exc: StarletteHTTPException, allowed: str) -> str:
    """A sentence for the router's own 404 and 405 (``allowed``: the path's methods), whose detail is only their
    title."""
    path = request.url.path[:200]
    if exc.status_code == 404:
        return f"no route answers {path}; the API's routes are listed at /openapi.json"
    if exc.status_code == 405:
        return f"{request.method[:20]} is not allowed on {path}; it answers {allowed}"
    return str(exc.detail)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        detail = _routing_detail(request, exc, headers.get("Allow", ""))
        body = Problem(type=_HTTP_TYPES.get(exc.status_code, f"http-{exc.status_code}"), title=str(exc.detail),
                       status=exc.status_code, detail=detail, request_id=request_id_var.get())
        return JSONResponse(body.model_dump(), status_code=exc.status_code, media_type=PROBLEM_JSON,
                            headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem_response(ServiceError("an unexpected error occurred; it has been logged"))

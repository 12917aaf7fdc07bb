"""HTTP methods the routes answer: HEAD wherever GET is (FastAPI adds none), and the ``Allow`` of a 405.

Starlette answers a method no route of the path takes with the first matching route's methods only, so a path
served by a GET route and a HEAD route said ``Allow: HEAD``; ``allowed_methods`` is every route's.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope


def include_routers(app: FastAPI, *routers: APIRouter) -> None:
    """Include ``routers`` with a HEAD route beside each GET route that has none, and keep them for
    ``allowed_methods`` (the app's own route list holds included routers, not their routes)."""
    for router in routers:
        _add_head_routes(router)
        app.include_router(router)
    app.state.api_routers = [*getattr(app.state, "api_routers", []), *routers]


def _add_head_routes(router: APIRouter) -> None:
    """HEAD, out of the schema: monitors and load balancers probe with it. The GET endpoint answers; the server
    sends its headers without the body."""
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    with_head = {r.path for r in routes if "HEAD" in r.methods}
    for route in routes:
        if "GET" in route.methods and route.path not in with_head:
            own = route.dependencies[len(router.dependencies):]  # add_api_route puts the router's in front again
            router.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False,
                                 dependencies=own, response_class=route.response_class, name=f"{route.name}_head")


def _routes(app: FastAPI) -> Iterator[BaseRoute]:
    yield from (r for r in app.router.routes if isinstance(r, Route))  # /docs, /openapi.json
    for router in getattr(app.state, "api_routers", []):
        yield from router.routes


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods some route of this request's path answers (empty when no route has the path)."""
    methods: set[str] = set()
    for route in _routes(app):
        match, _ = route.matches(scope)  # PARTIAL: the path matches, the method does not
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)

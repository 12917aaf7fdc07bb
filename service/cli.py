"""``tsm-serve``: run the service under uvicorn with :class:`ServiceSettings` (``TSM_*`` env vars)."""

from __future__ import annotations

import argparse

import uvicorn

from service.app import create_app
from service.settings import ServiceSettings


def serve(argv: list[str] | None = None) -> None:
    """Start uvicorn; ``--host``/``--port``/``--model-repo`` override the environment."""
    parser = argparse.ArgumentParser(prog="tsm-serve", description="Serve TSM models over HTTP.")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-repo")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = ServiceSettings(**overrides)
    app = create_app(settings)
    # One uvicorn worker: batching needs every request of a model in one process.
    # SIGTERM: uvicorn stops accepting, lets in-flight requests finish for up to shutdown_grace_s,
    # then runs the lifespan shutdown (batchers drain, decoder workers stop) and exits.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.shutdown_grace_s)


if __name__ == "__main__":
    serve()

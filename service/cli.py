"""``tsm-serve``: run the service under uvicorn with :class:`ServiceSettings` (``TSM_*`` env vars)."""

from __future__ import annotations

import argparse
import re
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

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
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        sys.exit(settings_error(exc))
    except SettingsError as exc:  # a value that should be JSON is not (its cause: the decoder's complaint)
        sys.exit(unreadable_setting(exc))
    app = create_app(settings)
    # One uvicorn worker: batching needs every request of a model in one process.
    # SIGTERM: uvicorn stops accepting, lets in-flight requests finish for up to shutdown_grace_s,
    # then runs the lifespan shutdown (batchers drain, decoder workers stop) and exits.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.shutdown_grace_s)


def settings_error(exc: ValidationError) -> str:
    """One line a refused setting, named as its environment variable, without the value given (it may be the
    API key)."""
    lines = [f"TSM_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
             for e in exc.errors(include_input=False, include_url=False)]
    return "tsm-serve: refused settings:\n  " + "\n  ".join(lines)


def unreadable_setting(exc: SettingsError) -> str:
    """The variable whose value could not be parsed, and why, without the value."""
    field = re.search(r'field "(\w+)"', str(exc))
    name = f"TSM_{field.group(1).upper()}" if field else "a TSM_ variable"
    why = f" ({exc.__cause__})" if exc.__cause__ else ""
    return f"tsm-serve: refused settings:\n  {name}: not valid JSON{why}"


if __name__ == "__main__":
    serve()

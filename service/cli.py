"""``tsm-serve``: run the service under uvicorn with :class:`ServiceSettings` (``TSM_*`` env vars)."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import functools
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Collection
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError
from uvicorn.lifespan.on import LifespanOn

from service.app import create_app
from service.logs import stdout_into_log
from service.settings import ServiceSettings, unknown_variables

log = logging.getLogger("service.cli")  # not __name__: under `python -m` that is "__main__"
FLAGS = {"host": "--host", "port": "--port", "model_repo": "--model-repo"}  # setting -> its command-line flag
STARTUP_FAILURE = 3  # uvicorn's exit status when the app's start-up fails


def parser() -> argparse.ArgumentParser:
    """The flags, helped by the settings' own descriptions and defaults (one source for both, and the README)."""
    fields = ServiceSettings.model_fields
    every = ", ".join(f"TSM_{name.upper()}" for name in fields)
    parser = argparse.ArgumentParser(
        prog="tsm-serve", description="Serve TSM models over HTTP.",
        epilog=f"Every setting is a TSM_* environment variable (a flag overrides its variable); the README's "
               f"Settings table gives each one's default and meaning. An empty variable counts as unset. The "
               f"variables: {every}.")
    for name, flag in FLAGS.items():
        field = fields[name]
        text = f"{field.description} Default: {field.default}; environment variable TSM_{name.upper()}."
        parser.add_argument(flag, type=int if name == "port" else str, help=text.replace("%", "%%"))
    return parser


def serve(argv: list[str] | None = None) -> None:
    """Start uvicorn; ``--host``/``--port``/``--model-repo`` override the environment."""
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = load_settings("tsm-serve", overrides)
    except SettingsRefusedError as exc:
        sys.exit(str(exc))
    app = create_app(settings)  # configures logging: the warnings below come out in TSM_LOG_FORMAT
    stdout_into_log()  # before the lifespan makes the predictors
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    sock = bind(settings.host, settings.port)
    config = uvicorn.Config(app, host=settings.host, port=sock.getsockname()[1], log_config=None,
                            access_log=False, timeout_graceful_shutdown=settings.shutdown_grace_s)
    # One uvicorn worker: batching needs every request of a model in one process.
    # SIGTERM: uvicorn stops accepting, lets in-flight requests finish for up to shutdown_grace_s,
    # then runs the lifespan shutdown (batchers drain, decoder workers stop) and exits.
    config.load()
    config.lifespan_class = functools.partial(_ListenOnceStarted, sockets=[sock])
    server = _Server(config)
    # Once shut down, uvicorn re-raises the signal it handled, with the handler it found in place. Ctrl+C's
    # KeyboardInterrupt is no crash. SIGTERM's default action killed the process before its exit handlers ran,
    # leaving multiprocessing's folder ($TMPDIR/pymp-*) behind at every stop: it only notes the signal instead.
    signal.signal(signal.SIGTERM, server.note_sigterm)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not (server.started or server.terminated):
        sys.exit(STARTUP_FAILURE)
    code = 128 + signal.SIGTERM if server.terminated else 0  # what a shell (and Kubernetes) reports for SIGTERM
    _exit_without_waiting_for_loads(code)
    sys.exit(code)


def _exit_without_waiting_for_loads(code: int) -> None:
    """Shut down with a version still loading (a long warm-up, an engine build), the interpreter's exit would wait
    for that thread: Ctrl+C or SIGTERM then hung for the whole load. The exit handlers still run (they join no
    thread; multiprocessing's removes its folder)."""
    loading = [t.name for t in threading.enumerate() if t.name.startswith("tsm-infer-") and t.is_alive()]
    if loading:
        log.warning("exiting without waiting for %s: a model version was still loading", ", ".join(loading))
        atexit._run_exitfuncs()  # os._exit skips them
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the app's lifespan loads and warms up the models: a port in use fails the
    start in a second instead of after that. Not listening yet (uvicorn listens once the models are ready), so
    connections are refused until then, as before."""
    where = host_port(host, port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:  # an unknown host name
        sys.exit(f"tsm-serve: cannot listen on {where}: {exc.strerror or exc}")
    try:
        # As uvicorn and asyncio do: a restart need not wait for the old process's connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        sys.exit(cannot_listen(where, exc))
    return sock


def cannot_listen(where: str, exc: OSError) -> str:
    """One line for a refused bind or listen, with what to do when the port is taken."""
    hint = " (another process listens there; choose another --port or TSM_PORT)" \
        if exc.errno == errno.EADDRINUSE else ""
    return f"tsm-serve: cannot listen on {where}: {exc.strerror or exc}{hint}"


class _ListenOnceStarted(LifespanOn):
    """The app's start-up, then ``listen()`` on the bound sockets. Two servers started at the same moment on one
    port both bind (SO_REUSEADDR, neither listening yet); the second to listen is refused, and uvloop's
    ``create_server`` would lose that error and leave a server that is not listening."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config)
        self.sockets = sockets

    async def startup(self) -> None:
        await super().startup()
        if self.should_exit:
            return
        try:
            for sock in self.sockets:
                sock.listen(self.config.backlog)
        except OSError as exc:
            self.logger.error("%s", cannot_listen(host_port(self.config.host, self.config.port), exc))
            await self.shutdown()  # the models' batchers and decoder workers
            self.should_exit = True  # uvicorn exits with STARTUP_FAILURE


class _Server(uvicorn.Server):
    """uvicorn names the address it listens on only for a socket it bound itself: say it here (the port too when
    TSM_PORT=0 picked one), once the models are loaded and the server accepts connections. ``terminated``: a
    SIGTERM reached tsm-serve's own handler (re-raised by uvicorn after its graceful shutdown, or come before
    uvicorn's handler was in place)."""

    terminated = False

    def note_sigterm(self, signum: int, frame: object) -> None:
        """Raises nothing: an exception from a signal handler can land in the event loop's own code (uvloop logs
        it there and drops it) or in the exit handlers."""
        self.terminated = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.terminated:  # before uvicorn's handler was in place: shut down as it would
            self.should_exit = True
        await super().startup(sockets)
        if self.started and sockets:
            url = f"http://{host_port(self.config.host, sockets[0].getsockname()[1])}"
            logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", url)


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (as URLs write it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SettingsRefusedError(ValueError):
    """The environment's (or the flags') settings are refused: the message names each variable and why."""


def load_settings(program: str, overrides: dict[str, Any] | None = None) -> ServiceSettings:
    """The service's settings from the environment (``overrides`` from flags), or :class:`SettingsRefusedError` with
    the lines ``program`` prints: tsm-serve's, and evaluate-model's, which scores as the server would serve."""
    overrides = overrides or {}
    try:
        return ServiceSettings(**overrides)
    except ValidationError as exc:
        raise SettingsRefusedError(settings_error(exc, given=overrides, program=program)) from None
    except SettingsError as exc:  # a value that should be JSON is not (its cause: the decoder's complaint)
        raise SettingsRefusedError(unreadable_setting(exc, program)) from None


def settings_error(exc: ValidationError, given: Collection[str] = (), program: str = "tsm-serve") -> str:
    """One line a refused setting, named as its environment variable (and its flag when ``given`` on the command
    line), without the value given (it may be the API key). A check across settings names each setting its message
    mentions."""
    def label(field: str) -> str:
        name = f"TSM_{field.upper()}"
        return f"{FLAGS[field]} ({name})" if field in given and field in FLAGS else name

    lines: list[str] = []
    for e in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in e["loc"]]
        if loc:
            names = label(loc[0]) + "".join(f"[{p}]" for p in loc[1:])  # TSM_MODEL_VERSIONS[tiny]
        else:
            mentioned = sorted((m.start(), f) for f in ServiceSettings.model_fields
                               if (m := re.search(rf"\b{f}\b", e["msg"])))
            names = ", ".join(label(f) for _, f in mentioned) or "settings"
        lines.append(f"{names}: {e['msg']}")
    return f"{program}: refused settings:\n  " + "\n  ".join(lines)


def unreadable_setting(exc: SettingsError, program: str = "tsm-serve") -> str:
    """The variable whose value could not be parsed, and why, without the value."""
    field = re.search(r'field "(\w+)"', str(exc))
    name = f"TSM_{field.group(1).upper()}" if field else "a TSM_ variable"
    why = f" ({exc.__cause__})" if exc.__cause__ else ""
    return f"{program}: refused settings:\n  {name}: not valid JSON{why}"


if __name__ == "__main__":
    serve()

"""Logging: JSON lines (or plain text) carrying the request id of the request being served."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
import warnings
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id(client_value: str | None) -> str:
    """Keep a client's own id when it is a sane token (bounded, printable), else make one."""
    if client_value and _CLIENT_ID.fullmatch(client_value):
        return client_value
    return uuid.uuid4().hex


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, milliseconds), level, logger, message, request_id, a record's own
    ``fields`` (``extra={"fields": {...}}``), exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    """Install one stderr handler on the root logger (replacing earlier ones from this function); Python warnings
    go through it too."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tsm", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._tsm = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # warnings.warn (Paddle's "No ccache found" at import) would print its own two plain lines to stderr, breaking
    # the one-record-a-line format; routed through the "py.warnings" logger it is a WARNING record like any other.
    # Lines that Paddle's C++ code prints to stdout are made records by stdout_into_log (tsm-serve calls it).
    logging.captureWarnings(True)
    ignore_paddle_build_warnings()


def ignore_paddle_build_warnings() -> None:
    """Paddle warns at import that ccache (a C++ compiler cache for building custom operators) is missing: nothing
    here compiles operators, so on every start it was a WARNING about nothing."""
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)


def stdout_into_log(logger_name: str = "paddle") -> None:
    """Turn every line this process and its children write to file descriptor 1 into an INFO record. Paddle's
    C++ code prints to std::cout (``ReduceMeanCheckIfOneDNNSupport`` as each predictor is made), which would put
    bare lines among the JSON records of a container's log. The service itself writes nothing to stdout."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)
    log = logging.getLogger(logger_name)

    def forward() -> None:
        with open(read_end, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if text := line.rstrip():
                    log.info("%s", text)

    threading.Thread(target=forward, name="stdout-into-log", daemon=True).start()

"""A request's options (top_k, model, version): from the query or the form, each given once, integers in the
digits 0-9. Whichever of two different values won silently, the client would not get what it meant half the
time, so a second, different value is refused wherever it is given; an empty value is not given."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from pydantic import BeforeValidator

from service.errors import BadParameterError
from service.upload import Upload

OPTIONS = ("top_k", "model", "version")
DIGITS_ONLY = "must be a positive integer written in the digits 0-9"  # query and form integers alike


def _digits_only(value: Any) -> Any:
    """Query integers as strictly as form fields: int() alone would also read '1_0', ' 2', '+2' and '٣'."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError(DIGITS_ONLY)
    return value


Digits = BeforeValidator(_digits_only)
TopK = Annotated[int | None, Query(ge=1, le=10_000, description="How many classes to return (default 5)."), Digits]
ModelName = Annotated[str | None, Query(max_length=64, description="Model name (default: TSM_DEFAULT_MODEL, or the "
                                                                    "repository's only model; empty is not given).")]
Version = Annotated[int | None, Query(ge=1, description="The version the answer must come from: 404 unless it is the "
                                                        "one serving (a check; TSM_MODEL_VERSIONS pins one)."), Digits]


def _given_once(name: str, values: list[str], where: str) -> str | None:
    """The one value of ``values`` that is not empty, or None; different ones are refused (at most three shown)."""
    given = [v for v in values if v.strip()]
    if len({v.strip() for v in given}) > 1:
        shown = ", ".join(repr(v[:64]) for v in given[:3]) + (", ..." if len(given) > 3 else "")
        raise BadParameterError(f"{name} is given {len(given)} times in the {where}, {shown}; give it once")
    return given[0] if given else None


def refuse_repeated_options(request: Request) -> None:
    """Before the upload is read: FastAPI itself keeps a repeated query parameter's last value."""
    for name in OPTIONS:
        _given_once(name, request.query_params.getlist(name), "query")


def option(name: str, query: Any, upload: Upload) -> str | None:
    """The query's value or the form's."""
    given = str(query) if query is not None and query != "" else None
    form = _given_once(name, upload.fields.get(name, []), "form")
    if given is not None and form is not None and form.strip() != given:
        raise BadParameterError(f"{name} is given twice, {given!r} in the query and {form!r} in the form; give it "
                                "once")
    return given or form


def int_option(name: str, query: int | None, upload: Upload) -> int | None:
    raw = option(name, query, upload)
    if raw is None:
        return None
    digits = raw.strip()
    # ASCII only: str.isdigit() also passes '²' (int() refuses it) and other scripts' digits (int() reads them).
    if not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
        raise BadParameterError(f"{name} {DIGITS_ONLY}, got {raw!r}")
    return int(digits)

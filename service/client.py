"""A small Python client for the service and the ``tsm-classify`` command."""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 2
MAX_RETRY_WAIT_S = 30.0  # a Retry-After beyond it counts as this long (then up to RETRY_JITTER more)
# Every client refused by one full queue is told the same Retry-After: waiting up to half as long again spreads
# their second tries, instead of sending them all back at the same instant to be refused together.
RETRY_JITTER = 0.5
RETRIED = (429, 503)  # what the server asks to be sent again later (queue full, model loading, disk full)


class ClassifyError(Exception):
    """The server answered with a problem body; ``type`` is its machine-readable kind."""

    def __init__(self, status: int, body: dict[str, Any], retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {body.get('type', 'error')}: {body.get('detail', '')}")
        self.status, self.type, self.body = status, str(body.get("type", "")), body
        self.retry_after_s = retry_after_s  # the server's Retry-After, where it sent one


class UnexpectedReplyError(ClassifyError):
    """A success status, but not this service's answer (another server on that port, a proxy's HTML page)."""


class Client:
    """``Client(url).classify(path, top_k=5)`` -> the JSON response as a dict.

    A 429 or 503 with ``Retry-After`` in seconds (a full queue, a model still loading, a failed inference) is sent
    again after that wait (at most ``MAX_RETRY_WAIT_S``) plus a random part of up to ``RETRY_JITTER`` of it, up to
    ``retries`` times; classifying is idempotent. ``timeout_s`` bounds each attempt. One client may be used from
    several threads.
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, sleep: Callable[[float], None] = time.sleep,
                 connections: int = 100, rng: random.Random | None = None):
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        headers = {"X-API-Key": api_key} if api_key else {}
        # ``connections``: at least the threads sharing the client, else the rest wait for one and may time out.
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=connections))
        self.retries, self._sleep = retries, sleep
        self._rng = rng or random.Random()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def classify(self, video: str | Path, top_k: int | None = None, model: str | None = None,
                 version: int | None = None) -> dict[str, Any]:
        params, video = _params(top_k, model, version), Path(video)

        def send() -> httpx.Response:
            with video.open("rb") as fh:  # httpx streams the file from disk
                return self._http.post("/classify", params=params, files={"file": (video.name, fh, "video/mp4")})
        return self._retrying(send, ("model", "version", "predictions"))

    def classify_batch(self, videos: list[str | Path], top_k: int | None = None, model: str | None = None,
                       version: int | None = None) -> dict[str, Any]:
        paths = [Path(v) for v in videos]

        def send() -> httpx.Response:
            handles = [p.open("rb") for p in paths]
            try:
                files = [("files", (p.name, fh, "video/mp4")) for p, fh in zip(paths, handles, strict=True)]
                return self._http.post("/classify/batch", params=_params(top_k, model, version), files=files)
            finally:
                for fh in handles:
                    fh.close()
        return self._retrying(send, ("results",))

    def models(self) -> dict[str, Any]:
        return _json(self._http.get("/models"), ("models",))

    def _retrying(self, send: Callable[[], httpx.Response], keys: tuple[str, ...]) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                return _json(send(), keys)
            except ClassifyError as exc:
                if exc.status not in RETRIED or exc.retry_after_s is None or attempt == self.retries:
                    raise
                wait = min(exc.retry_after_s, MAX_RETRY_WAIT_S)
                self._sleep(wait * (1 + RETRY_JITTER * self._rng.random()))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _params(top_k: int | None, model: str | None, version: int | None) -> dict[str, Any]:
    # Only what the user chose: the server's default top_k fits the model (a fixed 5 is a 400 on fewer labels).
    params: dict[str, Any] = {"top_k": top_k, "model": model or None, "version": version}
    return {k: v for k, v in params.items() if v is not None}  # version 0 is sent: the server explains it


def _json(response: httpx.Response, keys: tuple[str, ...]) -> dict[str, Any]:
    """The answer's JSON object; a problem body raises :class:`ClassifyError`, anything else not ours too."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise ClassifyError(response.status_code, body if isinstance(body, dict) else {
            "type": "not-json", "detail": f"the server answered {response.status_code} with no problem document: "
                                          f"{response.text[:200]!r}"}, _retry_after_s(response))
    missing = [k for k in keys if not isinstance(body, dict) or k not in body]
    if missing:
        what = "no JSON" if body is None else "JSON without " + ", ".join(map(repr, missing))
        raise UnexpectedReplyError(response.status_code, {
            "type": "unexpected-reply", "detail": f"{response.url} answered {response.status_code} with {what}: "
                                                  "is it a TSM service?"})
    return body


def _retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the service sends seconds; an HTTP date from a proxy is not waited for)."""
    text = response.headers.get("retry-after", "").strip()
    return float(text) if text.isascii() and text.isdigit() else None


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _at_least_0(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _base_url(text: str) -> str:
    """``--url``: the service's base URL with its scheme (the client adds ``/classify``): the usual slips, a bare
    ``host:port`` and the endpoint's own URL, get a sentence at once instead of a 404 or a protocol error."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL: give the service's base URL, "
                                         f"e.g. http://{text if '//' not in text else '127.0.0.1:8000'}")
    if parts.path.rstrip("/").endswith(("/classify", "/classify/batch")):
        base = text[: text.rstrip("/").rfind("/classify")]
        raise argparse.ArgumentTypeError(f"{text!r} is an endpoint: give the service's base URL ({base}); the client "
                                         "adds /classify")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsm-classify", description="Classify videos with a TSM service, one request a video (several at "
                                          "once with --concurrency, which the server batches).",
        epilog="Exit status: 0 when every video was classified, 1 when any was not, 2 for wrong arguments.")
    parser.add_argument("videos", nargs="+", type=Path, help="video files to classify")
    parser.add_argument("--url", type=_base_url, default=DEFAULT_URL,
                        help=f"the service's base URL, no /classify (default {DEFAULT_URL})")
    parser.add_argument("--top-k", type=_positive(int),
                        help="classes to show (default: the server's, 5 or the label count)")
    parser.add_argument("--model", help="model name (default: the server's only or default model)")
    parser.add_argument("--version", type=int, help="model version (default: the one the server serves)")
    parser.add_argument("--api-key", default=os.environ.get("TSM_API_KEY") or None,
                        help="the service's API key (default: $TSM_API_KEY; the environment keeps it out of ps)")
    parser.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT_S,
                        help=f"seconds a video may take, upload to answer (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--concurrency", type=_positive(int), default=1,
                        help="videos in flight at once (default 1); results still print in the order given")
    parser.add_argument("--retries", type=_at_least_0, default=DEFAULT_RETRIES,
                        help="times a video is sent again when the server answers 429 or 503 with Retry-After "
                             f"(a full queue, a model loading), after the wait it asks for (default {DEFAULT_RETRIES})")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object a line and video, in order, each with its 'file'; a failure has "
                             "'error' (status, type, detail) instead of the result")
    return parser


def _failure(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ClassifyError):
        return {"status": exc.status, "type": exc.type, "detail": str(exc.body.get("detail", ""))}
    kind = "file" if isinstance(exc, OSError) else "timeout" if isinstance(exc, httpx.TimeoutException) else \
        "connection"
    return {"status": None, "type": kind, "detail": str(exc) or type(exc).__name__}


def _show(video: Path, result: dict[str, Any]) -> None:
    print(f"{video}  ({result['model']} v{result['version']})")
    for p in result["predictions"]:
        print(f"  {p['score']:.4f}  {p['label']}")


Outcome = tuple[Path, dict[str, Any] | None, Exception | None]  # a video, its result or why it has none


def _in_order(work: Callable[[Path], Outcome], videos: list[Path], workers: int) -> Iterator[Outcome]:
    """``work`` on every video, ``workers`` at a time, yielded in the videos' order as each becomes due. Daemon
    threads: Ctrl+C ends the command at once instead of waiting for the requests in flight."""
    if workers == 1:
        yield from map(work, videos)
        return
    todo: queue.SimpleQueue[tuple[Path, Future[Outcome]]] = queue.SimpleQueue()
    futures: list[Future[Outcome]] = []
    for video in videos:
        futures.append(Future())
        todo.put((video, futures[-1]))

    def worker() -> None:
        while True:
            try:
                video, future = todo.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(work(video))
            except BaseException as exc:  # handed to the main thread, which re-raises it
                future.set_exception(exc)

    for _ in range(min(workers, len(videos))):
        threading.Thread(target=worker, name="tsm-classify", daemon=True).start()
    for future in futures:
        yield future.result()


def main(argv: list[str] | None = None) -> int:
    """``tsm-classify VIDEO... [--url URL] [--top-k K] [--model M] [--version V] [--concurrency N] [--json]``."""
    args = _parser().parse_args(argv)
    try:
        client = Client(args.url, args.api_key, args.timeout, retries=args.retries,
                        connections=max(args.concurrency, 100))
    except httpx.InvalidURL as exc:
        print(f"tsm-classify: --url {args.url!r} is not a valid URL ({exc})", file=sys.stderr)
        return 2

    def classify(video: Path) -> Outcome:
        try:
            return video, client.classify(video, args.top_k, args.model, args.version), None
        except (ClassifyError, OSError, httpx.HTTPError, httpx.InvalidURL) as exc:
            return video, None, exc

    failed = 0
    try:
        with client:
            for video, result, exc in _in_order(classify, args.videos, args.concurrency):
                if result is None:
                    failed += 1
                    if args.json:
                        print(json.dumps({"file": str(video), "error": _failure(exc)}), flush=True)
                    else:
                        print(f"{video}: error: {exc}", file=sys.stderr)
                elif args.json:
                    print(json.dumps({"file": str(video), **result}), flush=True)
                else:
                    _show(video, result)
    except KeyboardInterrupt:
        print("tsm-classify: interrupted", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

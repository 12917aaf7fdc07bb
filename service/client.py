"""A small Python client for the service and the ``tsm-classify`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx


class ClassifyError(Exception):
    """The server answered with a problem body; ``type`` is its machine-readable kind."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('type', 'error')}: {body.get('detail', '')}")
        self.status, self.type, self.body = status, str(body.get("type", "")), body


class Client:
    """``Client(url).classify(path, top_k=5)`` -> the JSON response as a dict."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout_s: float = 120.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def classify(self, video: str | Path, top_k: int | None = None, model: str | None = None,
                 version: int | None = None) -> dict[str, Any]:
        params, video = _params(top_k, model, version), Path(video)
        with video.open("rb") as fh:  # httpx streams the file from disk
            response = self._http.post("/classify", params=params, files={"file": (video.name, fh, "video/mp4")})
        return _json(response)

    def classify_batch(self, videos: list[str | Path], top_k: int | None = None, model: str | None = None,
                       version: int | None = None) -> dict[str, Any]:
        paths = [Path(v) for v in videos]
        handles = [p.open("rb") for p in paths]
        try:
            files = [("files", (p.name, fh, "video/mp4")) for p, fh in zip(paths, handles, strict=True)]
            response = self._http.post("/classify/batch", params=_params(top_k, model, version), files=files)
        finally:
            for fh in handles:
                fh.close()
        return _json(response)

    def models(self) -> dict[str, Any]:
        return _json(self._http.get("/models"))


def _params(top_k: int | None, model: str | None, version: int | None) -> dict[str, Any]:
    # Only what the user chose: the server's default top_k fits the model (a fixed 5 is a 400 on fewer labels).
    params: dict[str, Any] = {}
    if top_k is not None:
        params["top_k"] = top_k
    if model:
        params["model"] = model
    if version:
        params["version"] = version
    return params


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"type": "not-json", "detail": response.text[:200]}
    if response.status_code >= 400:
        raise ClassifyError(response.status_code, body)
    return body


def main(argv: list[str] | None = None) -> int:
    """``tsm-classify VIDEO... --url URL [--top-k K] [--model M] [--json]``; exit 1 if any video failed."""
    parser = argparse.ArgumentParser(prog="tsm-classify", description="Classify videos with a TSM service.")
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--top-k", type=int, help="classes to show (default: the server's, 5 or the label count)")
    parser.add_argument("--model")
    parser.add_argument("--version", type=int)
    parser.add_argument("--api-key")
    parser.add_argument("--json", action="store_true", help="print the raw JSON responses")
    args = parser.parse_args(argv)
    failed = 0
    with Client(args.url, args.api_key) as client:
        for video in args.videos:
            try:
                result = client.classify(video, args.top_k, args.model, args.version)
            except (ClassifyError, OSError, httpx.HTTPError) as exc:
                print(f"{video}: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            if args.json:
                print(json.dumps(result))
                continue
            print(f"{video}  ({result['model']} v{result['version']})")
            for p in result["predictions"]:
                print(f"  {p['score']:.4f}  {p['label']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

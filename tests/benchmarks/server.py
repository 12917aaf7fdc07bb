"""The real service in a subprocess (``python -m service.cli``) on loopback, closed-loop load, RSS sums."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise


@dataclass
class Server:
    url: str
    proc: subprocess.Popen

    def rss_by_process(self) -> list[float]:
        """RSS in MiB of the server (first) and each descendant (decode workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        sizes = []
        for p in procs:
            with suppress(psutil.NoSuchProcess):
                sizes.append(p.memory_info().rss / 2**20)
        return sizes

    def rss_mb(self) -> float:
        """Sum of RSS of the server and all its descendants (decode workers), MiB."""
        sizes = self.rss_by_process()
        return sum(sizes) if sizes else float("nan")


@contextmanager
def serve(model_repo: Path, **settings: object) -> Iterator[Server]:
    """Start the service on ``model_repo`` with ``TSM_<KEY>`` settings; stop it on exit."""
    port = free_port()
    env = {**os.environ, "TSM_MODEL_REPO": str(model_repo), "TSM_PORT": str(port), "TSM_POLL_INTERVAL_S": "0",
           "TSM_LOG_LEVEL": "WARNING", **{f"TSM_{k.upper()}": str(v) for k, v in settings.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(f"http://127.0.0.1:{port}", proc)
    try:
        _wait_ready(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_ready(server: Server, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited with {server.proc.returncode}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def classify(client: httpx.Client, path: Path) -> float:
    """POST one file to /classify; returns the latency in s (raises on a non-200 reply)."""
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        reply = client.post("/classify", files={"file": (path.name, fh, "video/mp4")})
    latency = time.perf_counter() - t0
    if reply.status_code != 200:
        raise RuntimeError(f"/classify answered {reply.status_code}: {reply.text[:200]}")
    return latency


@dataclass
class LoadResult:
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0


def closed_loop(url: str, files: list[Path], concurrency: int, requests: int) -> LoadResult:
    """``concurrency`` clients sending back to back until ``requests`` replies (files round-robin)."""
    result = LoadResult(concurrency)
    lock = threading.Lock()
    counter = iter(range(requests))

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                latency = classify(client, files[i % len(files)])
                with lock:
                    result.latencies.append(latency)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - t0
    return result

"""One model version's lifecycle record: its state, what it loaded, its batcher and the requests leasing it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from service.batcher import DynamicBatcher
from service.contract.manifest import Manifest
from service.predictor import BackendChoice


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class PredictorLike(Protocol):
    choice: BackendChoice

    def run(self, batch: Any) -> Any: ...
    def warm_up(self, runs: int, max_batch_size: int) -> int: ...


PredictorFactory = Callable[[Path, Manifest], PredictorLike]


@dataclass
class ModelVersion:
    """One version folder and its lifecycle; ``leases`` counts requests using it."""

    name: str
    version: int
    path: Path
    state: State = State.LOADING
    manifest: Manifest | None = None
    error: str | None = None
    choice: BackendChoice | None = None
    batcher: DynamicBatcher | None = None
    leases: int = 0
    since: float = field(default_factory=time.time)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0  # failed load attempts in a row (a failed version is retried, see ModelRepository)
    retry_at: float = 0.0  # time.monotonic() after which a failed version is tried again
    files: tuple[tuple[str, int, int], ...] = ()  # the folder's files (name, size, mtime) when it failed

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "state": self.state.value, "error": self.error,
            "since": self.since, "inflight": self.leases,
            "backend": self.choice.backend if self.choice else None,
            "device": self.choice.device if self.choice else None,
            "precision": self.choice.precision if self.choice else None,
            "warnings": list(self.choice.warnings) if self.choice else [],
            "queue_depth": self.batcher.depth if self.batcher else 0,
            "manifest": self.manifest.model_dump(mode="json") if self.manifest else None,
        }


def folder_files(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of a version folder's files: what tells that a failed version was rewritten."""
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in folder.iterdir() if p.is_file()
                            for st in [p.stat()]))
    except OSError:  # the folder went away
        return ()

"""The model repository: which versions serve, loading with checks, and hot swaps with drain.

Layout ``<repo>/<name>/<version>/`` (positive integer versions); dot folders (the exporter's
``.tmp-*``/``.stage-*``, our ``.cache``) are ignored. A version is loaded, checked (manifest,
files, output size = label count) and warmed up on its own inference thread before it is
swapped in; requests hold a lease on the version they resolved, so the old version finishes
its in-flight requests before its batcher and predictor are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from service.backends import check_listed_files, check_outputs
from service.batcher import BatchPolicy, DynamicBatcher
from service.contract.manifest import Manifest, repository_problem, scan_repository
from service.errors import BadParameterError, ModelNotFoundError, NotReadyError, ServiceError, VersionNotFoundError
from service.heap import release_free_memory
from service.metrics import Metrics
from service.model_version import ModelVersion, PredictorFactory, PredictorLike, State, folder_files
from service.repository_notices import RepositoryNotices

__all__ = ["ModelRepository", "ModelVersion", "PredictorFactory", "State"]

log = logging.getLogger(__name__)


class ModelRepository:
    """Serves one version per model (the highest, or the pinned one) and swaps in new ones."""

    def __init__(self, root: Path, metrics: Metrics, factory: PredictorFactory, policy: BatchPolicy, *,
                 pins: dict[str, int] | None = None, default_model: str | None = None,
                 warmup_runs: int = 2, poll_interval_s: float = 0.0, retry_failed_s: float = 30.0,
                 after_load: Callable[[], None] | None = None) -> None:
        """``after_load`` runs on the event loop after every load attempt (the app restores signal handlers).

        A version that failed to load is tried again by a later scan as soon as its files change (a copy that
        was caught half done), else after ``retry_failed_s``, doubling with each failure up to 20 times that
        (a GPU that was short of memory while the old version was loaded)."""
        self.root, self.metrics, self.factory, self.policy = root, metrics, factory, policy
        self.retry_failed_s = retry_failed_s
        self.pins, self.default_model = pins or {}, default_model
        self.warmup_runs, self.poll_interval_s = warmup_runs, poll_interval_s
        self.serving: dict[str, ModelVersion] = {}
        self.others: dict[tuple[str, int], ModelVersion] = {}  # loading, draining and failed versions
        self._poll_task: asyncio.Task[None] | None = None
        self._scan_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._after_load = after_load
        self.notices = RepositoryNotices(root, poll_interval_s, self.pins, default_model)

    async def start(self) -> None:
        await self.poll_once()
        if self.poll_interval_s > 0:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever(), name="repo-poll")

    async def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task  # its load in flight, if any, is marked and its thread let go first
        for task in list(self._background):
            await task
        for mv in list(self.serving.values()):
            await self._unload(mv)
        self.serving.clear()

    def ready(self) -> bool:
        return any(mv.state is State.READY for mv in self.serving.values())

    def default_unready(self) -> str | None:
        """Why requests that name no model cannot be answered although TSM_DEFAULT_MODEL is set, or None."""
        if self.default_model is None or self.default_model in self.serving:
            return None
        if self.notices.default_missing:
            return self.notices.default_problem()
        return f"TSM_DEFAULT_MODEL {self.default_model!r} is not loaded yet"

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:  # a bad scan must never stop polling
                log.exception("model repository scan failed")

    async def poll_once(self) -> None:
        """Load whatever should serve and doesn't yet: new models, new highest versions, pins; fall back when the
        serving version's folder is removed, and stop serving a model whose folder is removed."""
        async with self._scan_lock:
            problem, found, changed = await asyncio.to_thread(self._scan)
            self.notices.root_scanned(problem)
            self._forget_failed(found)
            for name, versions in found.items():
                for version in self._candidates(name, versions, changed):
                    if await self._load_and_swap(name, version):
                        break
            self._retire_removed(found)
            self.notices.models_scanned(found)

    def _retire_removed(self, found: dict[str, list[int]]) -> None:
        """Drain and unload models whose folder is gone. A scan that finds no model at all (an unmounted or
        unreadable repository looks the same as an emptied one) changes nothing."""
        if not found:
            return
        for name in [n for n in self.serving if n not in found]:
            mv = self.serving.pop(name)
            log.warning("%s was removed from the repository: no longer serving it (version %d drains)",
                        name, mv.version)
            self._drain(mv)

    def _drain(self, mv: ModelVersion) -> None:
        mv.state = State.DRAINING
        self.others[(mv.name, mv.version)] = mv
        task = asyncio.get_running_loop().create_task(self._unload(mv), name=f"drain-{mv.name}-{mv.version}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _scan(self) -> tuple[str | None, dict[str, list[int]], set[tuple[str, int]]]:
        """(what is wrong with the root, the repository's versions, the failed versions whose files changed since):
        file system work, off the event loop."""
        failed = [mv for mv in list(self.others.values()) if mv.state is State.FAILED]
        changed = {(mv.name, mv.version) for mv in failed if folder_files(mv.path) != mv.files}
        return repository_problem(self.root), scan_repository(self.root), changed

    def _forget_failed(self, found: dict[str, list[int]]) -> None:
        """Drop failed versions whose folder is gone: the model is then unknown (404), not "not ready"."""
        for key, mv in list(self.others.items()):
            if mv.state is State.FAILED and mv.version not in found.get(mv.name, []):
                del self.others[key]

    def _candidates(self, name: str, versions: list[int], changed: set[tuple[str, int]]) -> list[int]:
        """Versions worth trying, best first: the pin, else newer-than-serving ones not failed before (any, when the
        serving version's folder is gone)."""
        current = self.serving.get(name)
        removed = current is not None and current.version not in versions
        if removed:
            current = None
        elif current is not None:
            self.notices.folder_present(name, current.version)
        if name in self.pins:
            pinned = self.pins[name]
            wanted = [pinned] if pinned in versions else []
        else:
            wanted = sorted(versions, reverse=True)
        chosen = [v for v in wanted
                  if (current is None or v > current.version or (name in self.pins and v != current.version))
                  and ((name, v) not in self.others or self._retry_due(self.others[(name, v)], changed))]
        if removed:
            self.notices.folder_gone(name, self.serving[name].version, fallback=bool(chosen))
        return chosen

    @staticmethod
    def _retry_due(mv: ModelVersion, changed: set[tuple[str, int]]) -> bool:
        return mv.state is State.FAILED and (time.monotonic() >= mv.retry_at or (mv.name, mv.version) in changed)

    async def _load_and_swap(self, name: str, version: int) -> bool:
        mv = ModelVersion(name, version, self.root / name / str(version))
        before = self.others.get((name, version))
        mv.failures = before.failures if before is not None and before.state is State.FAILED else 0
        self.others[(name, version)] = mv
        # What the load reads: a copy that finishes while it runs must count as changed afterwards.
        files = await asyncio.to_thread(folder_files, mv.path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tsm-infer-{name}-{version}")
        try:
            predictor = await asyncio.get_running_loop().run_in_executor(executor, self._load, mv)
        except asyncio.CancelledError:  # shutting down mid-load: nothing will serve it, nor wait for its thread
            executor.shutdown(wait=False, cancel_futures=True)
            mv.state, mv.error = State.FAILED, "the server shut down while it loaded"
            raise
        except Exception as exc:
            if self._after_load is not None:
                self._after_load()
            executor.shutdown(wait=False)
            mv.state, mv.error = State.FAILED, f"{type(exc).__name__}: {exc}"
            mv.failures += 1
            wait_s = self.retry_failed_s * min(2 ** (mv.failures - 1), 20)
            mv.retry_at, mv.files = time.monotonic() + wait_s, files
            self.metrics.model_loads.labels(name, "failed").inc()
            log.error("refused %s version %d (attempt %d; next try in %.0f s or when its files change): %s",
                      name, version, mv.failures, wait_s, mv.error)
            return False
        if self._after_load is not None:
            self._after_load()
        c = mv.choice
        assert c is not None, "a loaded predictor states its backend"  # before the swap: never half swapped
        mv.batcher = DynamicBatcher(predictor.run, self.policy, f"{name} version {version}",
                                    on_batch=self.metrics.batch_size.observe,
                                    on_depth=lambda _depth: self._report_depth(name), executor=executor)
        mv.batcher.start()
        self._report_depth(name)  # the series exists from the first load (0), not from the first clip
        mv.state, mv.since = State.READY, time.time()
        del self.others[(name, version)]
        old, self.serving[name] = self.serving.get(name), mv  # the atomic switch for new requests
        self.metrics.model_loads.labels(name, "ok").inc()
        self.metrics.model_info.labels(name, str(version), c.backend, c.device, c.precision).set(1)
        log.info("serving %s version %d on %s (%s, %s)", name, version, c.device, c.backend, c.precision)
        if old is not None:
            self._drain(old)
        return True

    def _load(self, mv: ModelVersion) -> PredictorLike:
        """Read and check the manifest, build the predictor, warm it up (runs on the version's thread)."""
        manifest = Manifest.read(mv.path)
        if manifest.name != mv.name:
            raise ValueError(f"manifest names model {manifest.name!r}, but the folder is {mv.name!r}")
        if manifest.version != mv.version:  # a copied folder: the folder's number is what serves, and says so
            log.warning("%s version %d: its manifest says version %d (a copied folder?); it serves as version %d",
                        mv.name, mv.version, manifest.version, mv.version)
        check_listed_files(mv.path, manifest)
        mv.manifest = manifest
        predictor = self.factory(mv.path, manifest)
        mv.choice = predictor.choice
        check_outputs(predictor.warm_up(self.warmup_runs, self.policy.max_batch_size), manifest)
        return predictor

    async def _unload(self, mv: ModelVersion) -> None:
        """Wait for the version's leases to end, finish its queue, release it."""
        while mv.leases > 0:
            mv.idle.clear()
            await mv.idle.wait()
        if mv.batcher is not None:
            await mv.batcher.close()
            mv.batcher = None  # its predictor's last reference: freed now, so that the trim below returns it
        c = mv.choice
        if c is not None:
            self.metrics.model_info.remove(mv.name, str(mv.version), c.backend, c.device, c.precision)
        self.others.pop((mv.name, mv.version), None)
        if mv.name not in self.serving and not any(n == mv.name for n, _ in self.others):
            with contextlib.suppress(KeyError):  # a model no longer in the repository: its gauge goes too
                self.metrics.queue_depth.remove(mv.name)
        log.info("unloaded %s version %d", mv.name, mv.version)
        await asyncio.to_thread(release_free_memory)  # off the loop: a trim walks every heap

    def _report_depth(self, name: str) -> None:
        versions = [self.serving.get(name), *(mv for (n, _), mv in self.others.items() if n == name)]
        self.metrics.queue_depth.labels(name).set(sum(mv.batcher.depth for mv in versions if mv and mv.batcher))

    def resolve(self, model: str | None, version: int | None) -> ModelVersion:
        """The ready version a request asked for; 400/404/503 errors say what is wrong."""
        if model is None:
            model = self._unnamed()
        mv = self.serving.get(model)
        if mv is None:
            pending = [o for (n, _), o in self.others.items() if n == model]
            if pending or model in (self.default_model, *self.pins):  # expected to serve, just not yet: retry later
                why = "; ".join(_state_of(o) for o in pending)
                why = why or self.notices.missing_pin(model) or (
                    self.notices.default_problem() if model == self.default_model and self.notices.default_missing
                    else "not found in the repository yet")
                raise NotReadyError(f"model {model!r} is not ready: {why}", retry_after_s=5)
            raise ModelNotFoundError(f"no model named {model!r} is served")
        if version is not None and version != mv.version:
            raise VersionNotFoundError(f"{model} version {version} is not served (serving version {mv.version})")
        return mv

    def _unnamed(self) -> str:
        """The model of a request that names none: the default, else the repository's only model."""
        if self.default_model is not None:
            return self.default_model
        if not self.serving:
            raise NotReadyError(f"no model is loaded yet: {self.nothing_served()}", retry_after_s=5)
        names = self.notices.names | set(self.serving)
        if len(names) == 1:
            return next(iter(names))
        raise BadParameterError(f"the repository holds several models ({', '.join(sorted(names))}); choose one with "
                                "the 'model' parameter (or the server's TSM_DEFAULT_MODEL)")

    def peek(self, model: str | None) -> tuple[str, str]:
        """(name, version) of the version a request for ``model`` would get now, or empty strings: for metric
        labels only (no lease is taken)."""
        try:
            mv = self.resolve(model, None)
        except ServiceError:
            return "", ""
        return mv.name, str(mv.version)

    def nothing_served(self) -> str:
        """Why no model serves, as far as known: the root's problem, the versions that are loading or failed (with
        their error), the pins the repository lacks."""
        problem = self.notices.root_problem
        why = [f"the model repository {problem}"] if problem else []
        why += [f"{o.name} {_state_of(o)}" for _, o in sorted(self.others.items())]
        why += [self.notices.pin_problem(n) for n in sorted(self.notices.missing_pins)]
        return "; ".join(why) or "the model repository holds no <name>/<version>/ folder"  # the path stays in the log

    @asynccontextmanager
    async def lease(self, model: str | None, version: int | None) -> AsyncIterator[ModelVersion]:
        """Resolve and hold a version for the length of a request (it is not unloaded meanwhile)."""
        mv = self.resolve(model, version)
        mv.leases += 1
        try:
            yield mv
        finally:
            mv.leases -= 1
            if mv.leases == 0:
                mv.idle.set()

    def describe(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every known version (serving, loading, draining, failed), optionally of one model."""
        versions = [*self.serving.values(), *self.others.values()]
        return [mv.describe() for mv in sorted(versions, key=lambda m: (m.name, m.version))
                if name is None or mv.name == name]


def _state_of(mv: ModelVersion) -> str:
    return f"version {mv.version} {mv.state.value}" + (f" ({mv.error})" if mv.error else "")

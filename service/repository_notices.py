"""What the model repository tells its operator about its state, each thing once while it lasts.

The root going wrong, a pinned version missing, several models without a default, a serving version's folder
removed: start-up stays permissive (a volume may be filled later), so without these warnings a mistyped path or
pin would look like an empty repository. The 503s and the rule for unnamed requests read the same state.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("service.repository")  # the operator reads them as the repository's own lines


class RepositoryNotices:
    """State of ``root`` as the last scan found it, and the warnings it is worth."""

    def __init__(self, root: Path, poll_interval_s: float, pins: dict[str, int], default_model: str | None) -> None:
        self.root, self.poll_interval_s, self.pins, self.default_model = root, poll_interval_s, pins, default_model
        self.root_problem: str | None = None  # why the root holds no models ("... does not exist"), while it lasts
        # The models the repository holds (as of the last scan that found any): without a default model, unnamed
        # requests go to the only one. Decided by the repository alone, so every replica answers alike.
        self.names: set[str] = set()
        self.missing_pins: set[str] = set()  # pinned models whose pinned version the repository lacks
        self.default_missing = False  # TSM_DEFAULT_MODEL names a model the (non-empty) repository does not hold
        self._gone: set[tuple[str, int]] = set()  # serving versions whose folder is removed, already warned about

    def root_scanned(self, problem: str | None) -> None:
        if problem is not None and problem != self.root_problem:
            again = f"; it is scanned again every {self.poll_interval_s:g} s" if self.poll_interval_s > 0 else ""
            log.warning("the model repository %s %s (TSM_MODEL_REPO): no model can load from it%s", self.root,
                        problem, again)
        elif problem is None and self.root_problem is not None:
            log.info("the model repository %s is usable now", self.root)
        self.root_problem = problem

    def models_scanned(self, found: dict[str, list[int]]) -> None:
        """After a scan's loads: pins the repository lacks, and a second model without a default."""
        for name, pinned in self.pins.items():
            if pinned in found.get(name, []):
                self.missing_pins.discard(name)
            elif name not in self.missing_pins:
                self.missing_pins.add(name)
                log.warning("%s", self.pin_problem(name))
        if not found:  # an unmounted repository looks emptied: it changes nothing
            return
        names = set(found)
        missing = self.default_model is not None and self.default_model not in names
        if missing and (not self.default_missing or names != self.names):
            log.warning("%s: requests that name no model get 503, and /readyz answers 503, until it is published",
                        self.default_problem(names))
        self.default_missing = missing
        if self.default_model is None and len(names) > 1 and len(self.names) <= 1:
            log.warning("the repository now holds several models (%s) and TSM_DEFAULT_MODEL is not set: requests "
                        "that name no model get 400 until it is set or one model is left", ", ".join(sorted(names)))
        self.names = names

    def default_problem(self, names: set[str] | None = None) -> str:
        """TSM_DEFAULT_MODEL names a model the repository does not hold (a typo, or not published yet)."""
        held = ", ".join(sorted(self.names if names is None else names)) or "none"
        return (f"TSM_DEFAULT_MODEL is {self.default_model!r}, which the repository does not hold (it holds: "
                f"{held})")

    def missing_pin(self, name: str) -> str | None:
        """Why a pinned model has nothing to serve (its pinned version is absent), or None."""
        return self.pin_problem(name) if name in self.missing_pins else None

    def pin_problem(self, name: str) -> str:
        return (f"{name} is pinned to version {self.pins[name]} (TSM_MODEL_VERSIONS), which the repository does "
                "not hold")

    def folder_present(self, name: str, version: int) -> None:
        self._gone.discard((name, version))  # removed again later, it is said again

    def folder_gone(self, name: str, version: int, fallback: bool) -> None:
        """The serving version's folder is removed: say so once, and what happens now."""
        if (name, version) in self._gone:
            return
        self._gone.add((name, version))
        if fallback:
            then = "trying its other versions, highest first"
        elif name in self.pins:
            then = "it is pinned (TSM_MODEL_VERSIONS), so it keeps serving from memory until its folder is back"
        else:
            then = "no other valid version, so it keeps serving from memory until one is published"
        log.warning("%s version %d was removed from the repository: %s", name, version, then)

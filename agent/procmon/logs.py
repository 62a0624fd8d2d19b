"""Logging set-up shared by every procmon command: one format, on stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, timestamps: bool = True) -> None:
    """Send procmon's log lines to stderr at ``level``. The agent passes timestamps=False:
    under systemd the journal stamps each line itself. Safe to call again (on reload)."""
    if not logging.getLogger().handlers:
        stamp = "%(asctime)s " if timestamps else "procmon "
        logging.basicConfig(stream=sys.stderr, format=stamp + "%(levelname)s %(name)s: %(message)s")
    logging.getLogger("procmon").setLevel(level.upper())

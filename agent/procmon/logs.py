"""Logging set-up shared by every procmon command: one format, on stderr.

Under systemd, when stderr is the journal's stream, each line starts with its syslog priority
as ``<N>`` and carries no timestamp (the journal stamps it): sd-daemon(3)'s convention, so that
``journalctl -p warning`` picks out warnings. Elsewhere each line carries its own timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

# Python's levels as syslog priorities (sd-daemon(3): SD_DEBUG 7 ... SD_CRIT 2).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

LOG_LEVELS = ("debug", "info", "warning", "error")


def syslog_priority(levelno: int) -> int:
    """The priority of a record's level; levels between two known ones take the lower one's."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def stream_is_journal(stream: TextIO, journal_stream: str | None) -> bool:
    """True when ``stream`` is the journal's stream: JOURNAL_STREAM holds ``DEV:INODE`` of it.
    A child whose stderr was redirected inherits the variable, hence the comparison
    (sd-daemon(3) asks for exactly this check)."""
    if not journal_stream:
        return False
    dev, sep, ino = journal_stream.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # closed, or not a file (pytest's capture)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """``<N>name: message``: the priority prefix the journal strips and stores as PRIORITY.
    A message spanning lines gets the prefix on each, or journald would log the rest at the
    unit's default priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def make_formatter(journal: bool) -> logging.Formatter:
    if journal:
        return JournalFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(level: str) -> None:
    """Send procmon's log lines to stderr at ``level``. Safe to call again (on reload): the
    handler is made once, only the level changes."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            make_formatter(stream_is_journal(sys.stderr, os.environ.get("JOURNAL_STREAM")))
        )
        root.addHandler(handler)
    logging.getLogger("procmon").setLevel(level.upper())

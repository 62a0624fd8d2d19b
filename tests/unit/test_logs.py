"""Log lines for the journal: `<N>` priorities by sd-daemon(3), JOURNAL_STREAM compared with
the real stream (the agent's lines under journald: tests/system/test_journald.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from procmon.logs import JournalFormatter, make_formatter, stream_is_journal, syslog_priority


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (logging.INFO + 5, 6),
        (1, 7),
    ],
)
def test_levels_map_to_syslog_priorities(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("procmon.agent", level, __file__, 1, msg, None, None)


def test_journal_format_prefixes_every_line_and_has_no_timestamp() -> None:
    text = JournalFormatter().format(_record(logging.WARNING, "first\nsecond"))
    assert text == "<4>procmon.agent: first\n<4>second"


def test_plain_format_keeps_the_timestamp() -> None:
    text = make_formatter(journal=False).format(_record(logging.ERROR, "x"))
    assert text.endswith(" ERROR procmon.agent: x")
    assert text[:4].isdigit()


def test_journal_stream_must_name_this_stream(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        assert stream_is_journal(stream, f"{st.st_dev}:{st.st_ino}")
        assert not stream_is_journal(stream, f"{st.st_dev}:{st.st_ino + 1}")
        assert not stream_is_journal(stream, None)
        assert not stream_is_journal(stream, "")
        assert not stream_is_journal(stream, "garbage")
        assert not stream_is_journal(stream, f"{st.st_dev}:")


def test_stop_line_names_every_drop_counter() -> None:
    from procmon.agent import stop_line

    stats = {"published": 9, "dropped_kernel": 1, "dropped_spool": 2}
    assert stop_line(stats, 12) == (
        "stopped: 12 exits seen, 9 published; dropped: 1 in the kernel ring, 0 unspoolable, "
        "2 from a full spool, 0 context records"
    )
    assert stop_line({}, 3).startswith("stopped: 3 exits seen, no MQTT sink; dropped: 0 in")

"""The journal's side of procmon's log lines, on a host with systemd as PID 1 (the nspawn
fleet): what journald stored as PRIORITY for each `<N>` prefix, and that `journalctl -p
warning` picks out warnings and nothing below them.

The fleet test calls it once the agent is deployed::

    check_journal_priorities(lambda cmd: fleet.ssh("fleet1", cmd).stdout)

``run`` runs one shell command on the host as root and returns its stdout (raising on
failure). The agent's own unit is restarted once, for its stop line.
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Callable

AGENT_UNIT = "procmon-agent.service"
# Every level through procmon's logging set-up, in a transient unit whose stderr is the journal.
_LEVELS_SCRIPT = (
    "import logging\n"
    "from procmon.logs import setup_logging\n"
    "setup_logging('debug')\n"
    "log = logging.getLogger('procmon.journal-check')\n"
    "for level in ('debug', 'info', 'warning', 'error', 'critical'):\n"
    "    getattr(log, level)('level %s', level)\n"
)
# The interpreter `procmon` runs with: the deb's or the venv's, whichever the role installed.
# (the unit's ExecStart names it when it is not on the PATH).
_PROCMON_PYTHON = (
    "p=$(command -v procmon || systemctl show -p ExecStart --value procmon-agent.service"
    " | sed -n 's/^{ path=\\([^ ;]*\\).*/\\1/p');"
    ' sed -n "1s/^#!//p" "$(readlink -f "$p")"'
)


def _journal_json(run: Callable[[str], str], args: str) -> list[dict[str, str]]:
    out = run(f"journalctl --no-pager -o json {args}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def check_journal_priorities(run: Callable[[str], str]) -> None:
    """Raises AssertionError naming what journald got wrong."""
    unit = f"procmon-journal-check-{uuid.uuid4().hex[:8]}"
    python = run(_PROCMON_PYTHON).strip()
    assert python, "cannot find the interpreter of `procmon` on the host"
    run(
        f"systemd-run --quiet --wait --unit={unit} -p StandardError=journal "
        f"{shlex.quote(python)} -c {shlex.quote(_LEVELS_SCRIPT)}"
    )
    run("journalctl --sync 2>/dev/null || true")
    stored = {
        e["MESSAGE"]: e["PRIORITY"]
        for e in _journal_json(run, f"-u {unit}")
        if e.get("MESSAGE", "").startswith("procmon.journal-check: ")
    }
    expected = {
        f"procmon.journal-check: level {name}": str(priority)
        for name, priority in (("debug", 7), ("info", 6), ("warning", 4), ("error", 3))
    } | {"procmon.journal-check: level critical": "2"}
    assert stored == expected, f"journald stored {stored}, expected {expected}"
    warnings = run(f"journalctl --no-pager -o cat -p warning -u {unit}").split("\n")
    picked = sorted(line for line in warnings if line.startswith("procmon.journal-check:"))
    assert picked == [
        "procmon.journal-check: level critical",
        "procmon.journal-check: level error",
        "procmon.journal-check: level warning",
    ], f"journalctl -p warning gave {picked}"

    # The agent itself: its start line at info, and after a restart its stop line, without a
    # timestamp of its own (the journal has the time).
    since = run("date '+%Y-%m-%d %H:%M:%S'").strip()
    run(f"systemctl restart {AGENT_UNIT}")
    run("sleep 3; journalctl --sync 2>/dev/null || true")
    entries = _journal_json(run, f"-u {AGENT_UNIT} --since {shlex.quote(since)}")
    lines = {e.get("MESSAGE", ""): e.get("PRIORITY") for e in entries}
    stops = [m for m in lines if m.startswith("procmon.agent: stopped: ")]
    starts = [m for m in lines if m.startswith("procmon.agent: running: ")]
    assert stops and all(lines[m] == "6" for m in stops), f"no stop line at info: {lines}"
    assert starts and all(lines[m] == "6" for m in starts), f"no start line at info: {lines}"
    assert not any(m.startswith("<") for m in lines), f"a prefix reached the journal: {lines}"

"""kmsg sink: the seed module's lines in the kernel log, so `dmesg | grep PROCESS_MONITOR` works.

The kernel rate-limits writes to /dev/kmsg (sysctl kernel.printk_devkmsg=ratelimit by default);
set it to "on" on hosts that want every line. This sink is for parity, not for volume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from procmon.event import ExitEvent
from procmon.sinks.stdout import seed_lines, seed_total_line

KMSG_PATH = "/dev/kmsg"
_INFO = b"<6>"  # KERN_INFO, as the seed's printk used


class KmsgSink:
    def __init__(self, path: str = KMSG_PATH) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self.written = 0
        self.failed = 0

    def _write(self, line: str) -> None:
        try:
            # A trailing newline closes the record; without it printk may hold the line back.
            os.write(self._fd, _INFO + line.encode("utf-8", "backslashreplace") + b"\n")
            self.written += 1
        except OSError:
            self.failed += 1  # counted, never fatal: kmsg is a secondary sink

    def emit(self, events: Sequence[ExitEvent]) -> None:
        for event in events:
            for line in seed_lines(event):
                self._write(line)

    def on_stop(self, total: int) -> None:
        self._write(seed_total_line(total))  # the seed module's line at unload

    def close(self) -> None:
        os.close(self._fd)

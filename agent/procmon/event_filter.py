"""`procmon tail`'s filters that run in userspace, on built events: what the kernel cannot
know cheaply (a regex on comm, a user, the systemd unit and the container, which come from the
cgroup path joined in userspace). `--pid` and `--cgroup` run in the kernel (ProbeKnobs)."""

from __future__ import annotations

import fnmatch
import pwd
import re
from dataclasses import dataclass

from procmon.event import ExitEvent


class FilterError(ValueError):
    """A filter value that cannot work: one line naming the flag."""


@dataclass(frozen=True)
class EventFilter:
    comm: re.Pattern[str] | None = None  # searched in comm, as grep does
    uid: int | None = None
    unit: str | None = None  # a systemd unit name or a glob (`nginx.service`, `session-*`)
    container: str | None = None  # a container id or its prefix (docker's 12 characters)

    @property
    def active(self) -> bool:
        return any(f is not None for f in (self.comm, self.uid, self.unit, self.container))

    def __call__(self, event: ExitEvent) -> bool:
        if self.comm is not None and not self.comm.search(event.comm):
            return False
        if self.uid is not None and event.uid != self.uid:
            return False
        if self.unit is not None and (
            event.unit is None or not fnmatch.fnmatchcase(event.unit, self.unit)
        ):
            return False
        return self.container is None or (
            event.container_id is not None and event.container_id.startswith(self.container)
        )


def comm_pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise FilterError(f"--comm {text!r}: not a regular expression: {exc}") from None


def uid_of(text: str) -> int:
    """A uid, or a user name looked up on this host."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise FilterError(f"--uid {text!r}: no such user on this host") from None


def container_prefix(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{1,64}", text):
        raise FilterError(f"--container {text!r}: a container id is 1-64 of 0-9 a-f")
    return text

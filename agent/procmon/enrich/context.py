"""ProcessContext: joins each exit with what the process was and where it ran.

Context records (exec, cgroup mkdir/rmdir) are consumed in ring order, so an exec is known
before the exit that follows it. Args are redacted when the exec is seen: nothing unredacted
is kept, so nothing unredacted can leave the host.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from procmon.enrich.cgroup_cache import CgroupCache, cgroup2_mount
from procmon.enrich.exec_cache import ExecCache
from procmon.enrich.redact import (
    DEFAULT_REDACT_PATTERNS,
    DEFAULT_REDACT_VALUE_AFTER,
    REDACTED,
    Redactor,
)
from procmon.probe.record import FLAG_THREAD, RawCgroup, RawExec, RawExit

log = logging.getLogger("procmon.enrich")

_UNKNOWN: dict[str, Any] = {
    "exe": None,
    "args": None,
    "args_truncated": None,
    "exec_source": None,
}


# Distinct command lines whose shaped args are kept (about 1 KB each at most).
SHAPED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class ContextSettings:
    # Off: exec records carry no args at all; they never leave the kernel.
    capture_args: bool = True
    redact: tuple[str, ...] = DEFAULT_REDACT_PATTERNS  # see procmon.enrich.redact
    redact_value_after: tuple[str, ...] = DEFAULT_REDACT_VALUE_AFTER
    exec_cache_size: int = 32768
    cgroup_cache_size: int = 65536
    # How long a removed cgroup's path stays resolvable for exits still in flight.
    cgroup_grace_s: float = 60.0


class ProcessContext:
    def __init__(self, settings: ContextSettings | None = None) -> None:
        s = settings or ContextSettings()
        self._redactor = Redactor(s.redact, s.redact_value_after)
        self.execs = ExecCache(s.exec_cache_size, self._shape_args, s.capture_args)
        self.cgroups = CgroupCache(s.cgroup_cache_size, s.cgroup_grace_s)
        self.redacted_args = 0
        self.redact_errors = 0  # command lines a redaction rule failed on: sent as one REDACTED
        self._shaped: OrderedDict[bytes, tuple[str, ...]] = OrderedDict()

    def _shape_args(self, blob: bytes) -> tuple[str, ...]:
        """argv as it may leave the host, kept under a digest of the raw argv (never the argv
        itself): a flood of one command line costs a hash per exec. One decode for the whole
        blob: NUL is one byte in UTF-8 and never part of another character."""
        key = hashlib.blake2b(blob, digest_size=16).digest()
        shaped = self._shaped.get(key)
        if shaped is not None:
            self._shaped.move_to_end(key)
            return shaped
        decoded = blob.decode("utf-8", "backslashreplace").split("\0") if blob else []
        try:
            redacted_args, redacted = self._redactor.redact(decoded)
        except Exception:  # a rule's bug must cost neither the event nor a secret
            if not self.redact_errors:
                log.exception("redaction failed: args sent as %s (logged once)", REDACTED)
            self.redact_errors += 1
            return (REDACTED,)
        self.redacted_args += redacted
        shaped = tuple(redacted_args)
        self._shaped[key] = shaped
        if len(self._shaped) > SHAPED_CACHE_SIZE:
            self._shaped.popitem(last=False)
        return shaped

    def seed(self, proc: str = "/proc", cgroup_root: str | None = None) -> None:
        """Learn what already runs. Call after the probe is attached, so nothing that
        happens between the two is missed (a record queued meanwhile just refreshes it)."""
        root = cgroup_root or cgroup2_mount()
        processes = self.execs.seed_from_proc(proc)
        cgroups = self.cgroups.seed(root)
        log.info(
            "context seeded: %d processes from %s, %d cgroups from %s",
            processes,
            proc,
            cgroups,
            root,
        )

    def observe(self, raw: RawExec | RawCgroup) -> None:
        if isinstance(raw, RawExec):
            self.execs.on_exec(raw)
        elif raw.removed:
            self.cgroups.on_rmdir(raw.cgroup_id)
        elif raw.path is not None:
            path = raw.path.decode("utf-8", "backslashreplace")
            self.cgroups.on_created(raw.cgroup_id, raw.parent_id, path)

    def for_exit(self, raw: RawExit) -> dict[str, Any]:
        """ExitEvent fields for this exit; unknown ones are None."""
        fields = dict(_UNKNOWN)
        info = self.execs.for_exit(raw, last=not raw.flags & FLAG_THREAD)
        if info is not None:
            fields["exe"] = info.exe
            fields["args"] = info.args
            fields["args_truncated"] = None if info.args is None else info.args_truncated
            fields["exec_source"] = info.source
        cgroup = self.cgroups.get(raw.cgroup_id)
        if cgroup is not None:
            ctx = cgroup.context
            fields["cgroup"] = cgroup.path
            fields["unit"] = ctx.unit
            fields["container_id"] = ctx.container_id
            fields["container_runtime"] = ctx.container_runtime
            fields["pod_uid"] = ctx.pod_uid
        return fields


def open_context(settings: ContextSettings) -> ProcessContext:
    """A seeded context. Call it once the probe is attached: whatever starts meanwhile is in
    the ring."""
    context = ProcessContext(settings)
    context.seed()
    return context

"""One-line errors for a probe that would not compile, load or attach."""

from __future__ import annotations

import errno
import os


class ProbeError(RuntimeError):
    """The probe could not start, for a reason other than permission; one line."""


def explain(exc: BaseException | None, doing: str, grant: str, hint: str = "") -> Exception:
    """One line naming what failed; a refusal says who was refused and what to grant."""
    text = (getattr(exc, "strerror", None) or str(exc or "")).strip()
    text = text.splitlines()[0] if text else type(exc).__name__ if exc else "no reason given"
    if getattr(exc, "errno", None) in (errno.EPERM, errno.EACCES) or (
        "Operation not permitted" in text
    ):
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        return PermissionError(f"{doing} was refused for {who} ({text}): run as root or {grant}")
    return ProbeError(f"{doing} failed: {text}{f' ({hint})' if hint else ''}")

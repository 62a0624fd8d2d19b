"""Secrets out of command lines before an exit record leaves the host.

argv is world-readable on the host but an exit record travels to a broker and to whoever
subscribes, so passwords, tokens and keys that people put on command lines are replaced by
REDACTED. Patterns err towards hiding too much: a redacted harmless word costs a little reading,
a leaked password costs a rotation. Every default is linear in the argument's length (no nested
or overlapping quantifiers), because argv can be as long as the kernel allows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["DEFAULT_REDACT_PATTERNS", "DEFAULT_REDACT_VALUE_AFTER", "REDACTED", "Redactor"]

REDACTED = "<redacted>"

# Keys whose value is a secret when written key=value: the key ends with one of these, so
# PGPASSWORD, AWS_SECRET_ACCESS_KEY, access_token and client_secret count, while
# password_file, PASSWORD_FILE and AWS_ACCESS_KEY_ID (paths and identifiers) do not.
_SECRET_KEYS = (
    "password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|signature|sig|mysql_pwd"
)

DEFAULT_REDACT_PATTERNS: tuple[str, ...] = (
    # --password=VALUE and friends, alone or inside a shell command string: the value is the rest
    # of the argument (it may hold spaces or "&"). "=" must follow the name exactly, so
    # --password-file=/etc/x is a path and stays.
    r"(?is)(?<!\S)--(?:password|passwd|pass|secret|token|api[-_]?key|access[-_]key"
    r"|client[-_]secret|auth)=(?P<secret>.+)",
    # An environment assignment that is the whole argument (env PGPASSWORD=x, docker -e
    # AWS_SECRET_ACCESS_KEY=x): the value is the rest of the argument. Upper case only, as
    # environment names are; lower-case key=value falls to the next pattern.
    rf"(?s)^[A-Z0-9_]*(?:{_SECRET_KEYS.upper()})=(?P<secret>.+)",
    # key=value anywhere (query strings, form bodies, cookies, embedded env): up to "&" or space.
    rf"(?i)(?:{_SECRET_KEYS})=(?P<secret>[^&\s]+)",
    # Authorization / Proxy-Authorization header values (curl -H, JSON): after the optional
    # scheme word (Bearer, Basic, token, AWS4-HMAC-SHA256, ...) up to a quote or end of line.
    r"(?i)authorization[\"']?[ \t]*:[ \t]*[\"']?(?:[A-Za-z0-9-]+[ \t]+)?(?P<secret>[^'\"\r\n]+)",
    # The password of user:password@ in a URL (postgres://, redis://:pw@, https://); up to the
    # last "@" before the path, so an unescaped "@" in the password is hidden too.
    r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^/?#@\s:]*:(?P<secret>[^/?#\s]+)@",
    # A bare JSON Web Token anywhere: header and payload are base64url of '{"...'.
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
)

DEFAULT_REDACT_VALUE_AFTER: tuple[str, ...] = (
    # --password VALUE: the next argument is the secret. Not -p (mysql's password, but ssh's,
    # psql's and docker's port), not --auth (a flag for mongod), not --pass (rarely an option).
    r"(?i)--(?:password|passwd|secret|token|api[-_]?key|client[-_]secret|access[-_]key)",
)


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern[str]]:
    if isinstance(patterns, str):
        raise TypeError(f"{what} must be a sequence of regexes, not one str")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except (re.error, OverflowError, RecursionError) as e:
            raise ValueError(f"redact pattern '{p}': {e}") from e
    return compiled


def _replace_secret(m: re.Match[str]) -> str:
    """The match with its `secret` group (or, without one, all of it) replaced by REDACTED;
    an empty or absent secret is left alone, so a pattern that can match nothing redacts
    nothing rather than sprinkling REDACTED between characters."""
    whole = m.group(0)
    if "secret" not in m.re.groupindex:
        return REDACTED if whole else whole
    start, end = m.span("secret")
    if start == end:  # empty, or the group did not take part (-1, -1)
        return whole
    base = m.start()
    return whole[: start - base] + REDACTED + whole[end - base :]


class Redactor:
    """Compiled redaction rules, built once (from config) and applied to every exit's argv."""

    def __init__(
        self,
        patterns: Sequence[str] = DEFAULT_REDACT_PATTERNS,
        value_after: Sequence[str] = DEFAULT_REDACT_VALUE_AFTER,
    ) -> None:
        """Raise ValueError naming the pattern if one is not a valid regex, so a typo in the
        configuration stops the agent at start rather than at the first exit."""
        self._patterns = _compile(patterns, "patterns")
        self._value_after = _compile(value_after, "value_after")

    def redact(self, args: Sequence[str]) -> tuple[list[str], bool]:
        """argv with secrets replaced, and whether the result differs from args.

        Each pattern is applied to each argument with re.sub. An argument that full-matches a
        value_after pattern makes the next argument exactly REDACTED, whatever it looks like; a
        value redacted that way is a value, not an option, and does not itself hide the one after.
        """
        out: list[str] = []
        hide_next = False
        for arg in args:
            if hide_next:
                out.append(REDACTED)
                hide_next = False
                continue
            new = arg
            for pattern in self._patterns:
                new = pattern.sub(_replace_secret, new)
            out.append(new)
            hide_next = any(p.fullmatch(arg) for p in self._value_after)
        return out, out != list(args)

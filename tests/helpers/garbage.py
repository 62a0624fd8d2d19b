"""What a subscriber may be sent on an exits topic that is not an event: (name, payload, the
consumer's counter for it). Every kind must be counted and skipped, never crash the consumer."""

from __future__ import annotations

GARBAGE: list[tuple[str, bytes, str]] = [
    ("10 MiB", b"{" + b" " * (10 << 20) + b"}", "oversized"),
    ("binary", bytes(range(256)) * 16, "invalid"),
    ("invalid UTF-8 in a string", b'{"schema": "procmon.exit/v1", "comm": "\xff"}', "invalid"),
    ("schema v2 in the payload", b'{"schema": "procmon.exit/v2", "pid": 1}', "wrong_schema"),
    ("schema v0 in the payload", b'{"schema": "procmon.exit/v0"}', "wrong_schema"),
    ("an array", b"[1, 2, 3]", "invalid"),
    ("a number", b"42", "invalid"),
    ("null", b"null", "invalid"),
    ("a string", b'"procmon.exit/v1"', "invalid"),
    ("empty", b"", "invalid"),
    ("NUL bytes", b"\0" * 64, "invalid"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "invalid"),
    ("a huge number", b'{"schema": "procmon.exit/v1", "pid": 1' + b"0" * 5000 + b"}", "invalid"),
]

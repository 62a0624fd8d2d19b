"""The durable, bounded spool: serialized events wait here until the broker acknowledges them.

SQLite in WAL mode, one transaction per batch, and one row per batch: a row holds a run of
consecutive event ids (an insert and a delete per batch, not per event: bench/spool_cost.md). An
agent crash loses nothing appended. Ids only grow, even across a replaced file, so a publisher's
cursor stays valid. Layout, bounds and the full-disk and corrupt-file rules: docs/design.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("procmon.spool")

# 1: a row per event, `events(id, payload)`; 2: a row per run of consecutive ids (a batch),
# `runs(id = the run's last id, first, sizes, payload)` and `heads(id, first)`, the live start
# of a run whose front was acknowledged. A version 1 file is converted at open.
SCHEMA_VERSION = 2
WAL_CHECKPOINT_PAGES = 256
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Events stored: each run from its live start (also what tests read from a running spool).
DEPTH_SQL = (
    "SELECT COALESCE(SUM(r.id - COALESCE(h.first, r.first) + 1), 0) FROM runs r "
    "LEFT JOIN heads h ON h.id = r.id"
)
_SIZE_TYPE = "I"  # 32-bit unsigned on every Linux ABI; payloads are far below 4 GiB
_INSERT_RUN = "INSERT INTO runs (id, first, sizes, payload) VALUES (?, ?, ?, ?)"
# Each run with its live start: after ``first`` when the front of the run was acknowledged.
_LIVE_RUNS = (
    "SELECT r.id, r.first, COALESCE(h.first, r.first), r.sizes FROM runs r "
    "LEFT JOIN heads h ON h.id = r.id"
)
# SQLite keeps these next to the database; a stale WAL must never be applied to a new file.
_SIDECARS = ("-wal", "-shm")


class SpoolError(Exception):
    """The spool cannot be used at all (locked by another agent, unwritable directory)."""


@dataclass
class SpoolCounters:
    dropped_full: int = 0  # oldest events dropped to stay under max_events and max_bytes
    dropped_error: int = 0  # events that could not be written (disk full, I/O error)
    dropped_corrupt: int = 0  # events lost with a spool file that went bad while open
    corrupt_files: int = 0  # spool files moved aside as unreadable
    replayed: int = 0  # events found in the spool at open (left by an earlier run)


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Ids as (first, last) runs of consecutive ids: acks come mostly in order, so a batch
    deletes with a statement or two instead of one per row."""
    ordered = sorted(set(ids))
    if ordered[-1] - ordered[0] + 1 == len(ordered):  # the usual case, checked in C
        return [(ordered[0], ordered[-1])]
    runs: list[tuple[int, int]] = []
    first = last = ordered[0]
    for i in ordered[1:]:
        if i != last + 1:
            runs.append((first, last))
            first = i
        last = i
    runs.append((first, last))
    return runs


def _sizes(blob: bytes) -> array[int]:
    """A run's payload sizes, as stored (native 32-bit unsigned ints)."""
    sizes = array(_SIZE_TYPE)
    sizes.frombytes(blob)
    return sizes


def _convert_v1(db: sqlite3.Connection) -> None:
    """Version 1 rows (one per event) become one-event runs, ids and order kept."""
    db.execute("BEGIN IMMEDIATE")
    rows = db.execute("SELECT id, payload FROM events ORDER BY id")
    db.executemany(
        _INSERT_RUN,
        ((i, i, array(_SIZE_TYPE, (len(p),)).tobytes(), p) for i, p in rows),
    )
    old = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    new = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
    if old and not new:
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", old)
    elif old and new and old[0] > new[0]:
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'runs'", old)
    db.execute("DROP TABLE events")
    db.execute("COMMIT")


def _disk_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


class Spool:
    """A FIFO of payloads on disk, safe to use from the probe and network threads."""

    def __init__(self, path: Path, max_events: int, max_bytes: int = 512 << 20) -> None:
        self.path = path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.counters = SpoolCounters()
        self._lock = threading.Lock()
        self._undeleted: set[int] = set()  # acked, but the DELETE failed (disk full)
        self._store_failures = 0  # events refused in the current episode of write errors
        self._last_reclaim = 0.0
        self._high_id = 0  # the highest row id handed out by read_after
        # The run read last (row id, payloads): a cut stores other payloads under an id, so
        # every cut and replaced file forgets it.
        self._read_cache: tuple[int, bytes] = (0, b"")
        # Bumped whenever stored rows vanish without an ack (dropped for room, file replaced):
        # a publisher holding copies of rows it has not sent yet must drop them.
        self.generation = 0
        self._lock_file = self._take_ownership()
        try:
            self._db = self._open_or_quarantine()
        except BaseException:
            os.close(self._lock_file)
            raise
        self._depth = self._count()
        self._bytes = self._payload_bytes()
        self._last_id = self._sequence()
        self.counters.replayed = self._depth
        if self._depth:
            log.info("spool %s holds %d events from an earlier run: replaying", path, self._depth)

    # --- opening --------------------------------------------------------------------------

    def _take_ownership(self) -> int:
        """One agent per spool: two publishers on one file would double-send every event."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: cannot create: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(
                f"spool {self.path} is in use by another procmon agent (spool.path must differ)"
            ) from None
        return fd

    def _open_or_quarantine(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.DatabaseError as exc:
            self._quarantine(str(exc))
        try:
            return self._open()
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"spool {self.path}: cannot create a fresh spool: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                    raise sqlite3.DatabaseError("not an SQLite database (bad header)")
        else:
            # Events describe what ran on the host: readable by root only.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"journal mode stays {mode!r}, WAL needed")
            db.execute("PRAGMA synchronous=NORMAL")
            # Fold the WAL back sooner than SQLite's default: a drained spool must not need
            # much free disk to take the next events.
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown spool schema version {version}")
            # A run of consecutive events: ids first..id, their sizes, their payloads end to
            # end. The id is the run's last event id: AUTOINCREMENT's sequence then records
            # the highest id ever stored, and ids only grow.
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "first INTEGER NOT NULL, sizes BLOB NOT NULL, payload BLOB NOT NULL)"
            )
            # The live start of a run whose front was acknowledged: a small row moves instead
            # of the run's payload being stored again.
            db.execute(
                "CREATE TABLE IF NOT EXISTS heads (id INTEGER PRIMARY KEY, first INTEGER NOT NULL)"
            )
            if version == 1:
                _convert_v1(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # Reads every page: a truncated or scribbled file fails here, not mid-replay.
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        except BaseException:
            db.close()
            raise
        return db

    def _quarantine(self, reason: str) -> None:
        """Move an unreadable spool (and its WAL) aside so the agent can keep going."""
        suffix = f".corrupt-{int(time.time())}"
        n = 0
        while Path(f"{self.path}{suffix}").exists():  # two in one second: keep both
            n += 1
            suffix = f".corrupt-{int(time.time())}-{n}"
        for extra in ("", *_SIDECARS):
            src = Path(f"{self.path}{extra}")
            if src.exists():
                src.rename(f"{self.path}{suffix}{extra}")
        self.counters.corrupt_files += 1
        log.error(
            "spool %s is unreadable (%s): moved aside to %s%s, starting an empty spool",
            self.path,
            reason,
            self.path,
            suffix,
        )

    def _count(self) -> int:
        return int(self._db.execute(DEPTH_SQL).fetchone()[0])

    def _payload_bytes(self) -> int:
        """Payload bytes of every stored event; length() reads no payload."""
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM runs").fetchone()
        acked = self._db.execute(
            "SELECT r.first, h.first, r.sizes FROM heads h JOIN runs r ON r.id = h.id"
        )
        return int(row[0]) - sum(sum(_sizes(s)[: live - f]) for f, live, s in acked)

    def _sequence(self) -> int:
        """The highest id ever stored (0 for a new file)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
        return int(row[0]) if row else 0

    # --- use ------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events in the spool, including those handed to the publisher but not yet acked."""
        return self._depth

    @property
    def payload_bytes(self) -> int:
        """Bytes of payload in the spool (what max_bytes bounds)."""
        return self._bytes

    @property
    def last_id(self) -> int:
        """The highest row id stored so far: rows after a cursor at last_id do not exist."""
        return self._last_id

    def append(self, payloads: Sequence[bytes], protect_upto: int = 0) -> int:
        """Store a batch in one transaction; returns how many events were dropped for room.

        Rows with id <= protect_upto are with the publisher already and are not dropped, so
        a full spool may briefly exceed its bounds by the publisher's in-flight window.
        """
        return self.append_ids(payloads, protect_upto)[1]

    def append_ids(self, payloads: Sequence[bytes], protect_upto: int = 0) -> tuple[range, int]:
        """``append`` that also returns the ids of the stored rows: consecutive, one for each
        of the last ``len(ids)`` payloads (a batch larger than the room loses its oldest)."""
        none = range(0)
        if not payloads:
            return none, 0
        with self._lock:
            try:
                ids, dropped = self._append(payloads, protect_upto)
            except sqlite3.OperationalError as exc:  # disk full, I/O error, locked
                self._rollback()
                if not (_disk_full(exc) and self._reclaim_wal()):
                    self._store_failed(len(payloads), exc)
                    return none, 0
                try:  # the WAL gave its space back: one more try
                    ids, dropped = self._append(payloads, protect_upto)
                except sqlite3.OperationalError as again:
                    self._rollback()
                    self._store_failed(len(payloads), again)
                    return none, 0
            except sqlite3.DatabaseError as exc:  # the file went bad under us
                self._rollback()
                try:
                    self._replace_corrupt(str(exc))
                    return self._append(payloads, protect_upto)
                except sqlite3.Error as again:
                    self.counters.dropped_error += len(payloads)
                    log.error("spool %s: cannot recover: %s", self.path, again)
                    return none, 0
            if self._store_failures:
                log.warning(
                    "spool %s: writable again; %d events could not be stored (dropped_queue)",
                    self.path,
                    self._store_failures,
                )
                self._store_failures = 0
            return ids, dropped

    def _reclaim_wal(self) -> bool:
        """On a full disk, fold the WAL back and truncate it (at most once a second): with the
        broker up its pages are mostly deleted rows."""
        now = time.monotonic()
        if now - self._last_reclaim < 1.0:
            return False
        self._last_reclaim = now
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return not busy and os.path.getsize(f"{self.path}-wal") == 0

    def _store_failed(self, count: int, exc: sqlite3.Error) -> None:
        self.counters.dropped_error += count
        if not self._store_failures:  # once per episode, not once per batch
            log.error(
                "spool %s: cannot store events (%s); counting them as dropped_queue", self.path, exc
            )
        self._store_failures += count

    def _append(self, payloads: Sequence[bytes], protect_upto: int) -> tuple[range, int]:
        db = self._db
        dropped = 0
        db.execute("BEGIN IMMEDIATE")
        batch_bytes = sum(map(len, payloads))
        overflow = self._depth + len(payloads) - self.max_events
        excess = self._bytes + batch_bytes - self.max_bytes
        if overflow > 0 or excess > 0:
            removed, freed = self._drop_oldest(protect_upto, overflow, excess)
            dropped += removed
            overflow -= removed
            excess -= freed
            # Everything older is in flight: drop the oldest of this batch.
            while payloads and (overflow > 0 or excess > 0):
                overflow -= 1
                excess -= len(payloads[0])
                batch_bytes -= len(payloads[0])
                payloads = payloads[1:]
                dropped += 1
        last = self._last_id + len(payloads)
        if payloads:  # one row for the batch: an insert per batch, not per event
            sizes = array(_SIZE_TYPE, map(len, payloads)).tobytes()
            db.execute(_INSERT_RUN, (last, self._last_id + 1, sizes, b"".join(payloads)))
        db.execute("COMMIT")
        self._depth += len(payloads)
        self._bytes += batch_bytes
        self.counters.dropped_full += dropped
        if dropped:
            self.generation += 1
        if not payloads:
            return range(0), dropped
        self._last_id = last
        return range(last - len(payloads) + 1, last + 1), dropped

    def _drop_oldest(self, protect_upto: int, rows: int, nbytes: int) -> tuple[int, int]:
        """Delete the oldest events after protect_upto until at least ``rows`` events and
        ``nbytes`` payload bytes are gone (or none is left); returns (events, bytes) deleted."""
        removed = freed = 0
        upto = protect_upto
        stored = self._db.execute(_LIVE_RUNS + " WHERE r.id > ? ORDER BY r.id", (protect_upto,))
        for _, first, live, sizes in stored:
            for event_id, size in zip(itertools.count(first), _sizes(sizes)):
                if event_id <= protect_upto or event_id < live:
                    continue
                if removed >= rows and freed >= nbytes:
                    break
                upto = event_id
                removed += 1
                freed += size
            if removed >= rows and freed >= nbytes:
                break
        stored.close()
        if removed:
            removed, freed = self._remove(protect_upto + 1, upto)
            self._depth -= removed
            self._bytes -= freed
        return removed, freed

    def _remove(self, first: int, last: int) -> tuple[int, int]:
        """Delete events first..last (ids already gone are skipped) inside the caller's
        transaction; returns (events, payload bytes) deleted. Runs inside the range go whole;
        the front of a run (acks come in order) moves its live start in ``heads``, a small
        row, instead of storing the rest of its payload again; any other cut stores the
        events outside the range again."""
        db = self._db
        events = nbytes = 0
        whole: list[tuple[int]] = []
        cut: list[tuple[int, int, int, array[int]]] = []
        # Runs are disjoint and in id order: those overlapping first..last come in a row.
        stored = db.execute(_LIVE_RUNS + " WHERE r.id >= ? ORDER BY r.id", (first,))
        for row_id, row_first, live, blob in stored:
            if live > last:
                break
            sizes = _sizes(blob)
            lo, hi = max(first, live), min(last, row_id)
            events += hi - lo + 1
            nbytes += sum(sizes[lo - row_first : hi - row_first + 1])
            if lo == live and hi == row_id:
                whole.append((row_id,))
            elif lo == live:
                db.execute(
                    "INSERT OR REPLACE INTO heads (id, first) VALUES (?, ?)", (row_id, hi + 1)
                )
            else:
                cut.append((row_id, row_first, live, sizes))
        stored.close()
        if whole:
            db.executemany("DELETE FROM runs WHERE id = ?", whole)
            db.executemany("DELETE FROM heads WHERE id = ?", whole)
        if cut:
            self._read_cache = (0, b"")
        for row_id, row_first, live, sizes in cut:  # rare: a gap in the acks, a drop
            (payload,) = db.execute("SELECT payload FROM runs WHERE id = ?", (row_id,)).fetchone()
            offsets = [0, *itertools.accumulate(sizes)]
            db.execute("DELETE FROM runs WHERE id = ?", (row_id,))
            db.execute("DELETE FROM heads WHERE id = ?", (row_id,))
            keep = [(live, first - 1), (last + 1, row_id)]
            for a, b in keep:
                if a <= b:
                    i, j = a - row_first, b - row_first + 1
                    part = (sizes[i:j].tobytes(), payload[offsets[i] : offsets[j]])
                    db.execute(_INSERT_RUN, (b, a, *part))
        return events, nbytes

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _replace_corrupt(self, reason: str) -> None:
        self.counters.dropped_corrupt += self._depth
        self.generation += 1
        self._db.close()
        self._quarantine(reason)
        self._db = self._open()
        self._read_cache = (0, b"")
        self._last_id = max(self._last_id, self._high_id)  # never hand out an id twice
        self._seed_ids(self._last_id)
        self._depth = 0
        self._bytes = 0

    def _replace_corrupt_logged(self, reason: str) -> None:
        try:
            self._replace_corrupt(reason)
        except sqlite3.Error as exc:
            log.error("spool %s: cannot recover: %s", self.path, exc)

    def _seed_ids(self, last_id: int) -> None:
        """A fresh file continues the old ids: publisher cursors must stay valid."""
        if last_id > 0:
            self._db.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (last_id,)
            )

    def _run_payload(self, row_id: int) -> bytes:
        """A run's payloads, kept for the next read: a publisher reading a backlog in small
        windows reads one run many times."""
        if self._read_cache[0] != row_id:
            (payload,) = self._db.execute(
                "SELECT payload FROM runs WHERE id = ?", (row_id,)
            ).fetchone()
            self._read_cache = (row_id, payload)
        return self._read_cache[1]

    def read_after(self, after_id: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to limit (id, payload) rows with id > after_id, oldest first."""
        with self._lock:
            rows: list[tuple[int, bytes]] = []
            try:
                stored = self._db.execute(_LIVE_RUNS + " WHERE r.id > ? ORDER BY r.id", (after_id,))
                for row_id, first, live, sizes in stored:
                    payload = self._run_payload(row_id)
                    size = _sizes(sizes)
                    i = max(live, after_id + 1) - first
                    pos = sum(size[:i])
                    for event_id, n in zip(range(first + i, row_id + 1), size[i:], strict=True):
                        if len(rows) >= limit:
                            break
                        rows.append((event_id, payload[pos : pos + n]))
                        pos += n
                    if len(rows) >= limit:
                        break
                stored.close()
            except sqlite3.OperationalError as exc:  # I/O error: the next call retries
                log.error("spool %s: cannot read: %s", self.path, exc)
                return []
            except sqlite3.DatabaseError as exc:  # the file went bad under us
                self._replace_corrupt_logged(str(exc))
                return []
            if rows:
                self._high_id = max(self._high_id, rows[-1][0])
                if rows[-1][0] == self._read_cache[0]:  # read to its end: not needed again
                    self._read_cache = (0, b"")
        return rows

    def ack(self, ids: Sequence[int]) -> int:
        """Delete acknowledged rows; returns how many were still there."""
        if not ids:
            return 0
        with self._lock:
            db = self._db
            if self._undeleted:  # retry the deletes a full disk refused
                ids = [*ids, *self._undeleted]
            try:
                db.execute("BEGIN IMMEDIATE")
                removed = freed = 0
                for first, last in _runs(ids):
                    events, nbytes = self._remove(first, last)
                    removed += events
                    freed += nbytes
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # The rows stay and are re-sent after a restart: a duplicate, never a loss.
                self._rollback()
                if not self._undeleted:
                    log.error("spool %s: cannot delete acked events: %s", self.path, exc)
                self._undeleted.update(ids)
                if len(self._undeleted) >= self._depth:
                    self._start_fresh()
                return 0
            except sqlite3.DatabaseError as exc:  # the file went bad under us
                self._rollback()
                self._depth = max(0, self._depth - len(set(ids)))  # those were delivered
                self._undeleted.clear()
                self._replace_corrupt_logged(str(exc))
                return 0
            self._depth -= removed
            self._bytes -= freed
            self._undeleted.clear()
            return removed

    def _start_fresh(self) -> None:
        """Every row left is acknowledged but cannot be deleted (disk full): replace the file
        by an empty one. Ids continue from the old sequence so publisher cursors stay valid."""
        self._last_id = max(self._sequence(), self._last_id, self._high_id)
        self.generation += 1
        self._db.close()
        for extra in ("", *_SIDECARS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{extra}")
        self._db = self._open()
        self._read_cache = (0, b"")
        self._seed_ids(self._last_id)
        self._depth = 0
        self._bytes = 0
        self._undeleted.clear()
        log.warning(
            "spool %s: disk full and every stored event delivered: started a fresh spool file",
            self.path,
        )

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # a checkpoint only saves disk space
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            if self._lock_file >= 0:
                os.close(self._lock_file)
                self._lock_file = -1

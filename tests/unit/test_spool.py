"""The durable spool: order, replay, the drop-oldest cap and its counts, corruption recovery."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from procmon.spool import Spool, SpoolError


def payloads(start: int, n: int) -> list[bytes]:
    return [f'{{"n":{i}}}'.encode() for i in range(start, start + n)]


def all_rows(spool: Spool) -> list[bytes]:
    return [p for _, p in spool.read_after(0, 1 << 30)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.db"


def test_fifo_order_ack_and_depth(path: Path) -> None:
    spool = Spool(path, max_events=1000)
    spool.append(payloads(0, 5))
    spool.append(payloads(5, 5))
    rows = spool.read_after(0, 4)
    assert [p for _, p in rows] == payloads(0, 4)
    assert [p for _, p in spool.read_after(rows[-1][0], 100)] == payloads(4, 6)
    assert spool.ack([row_id for row_id, _ in rows]) == 4
    assert spool.ack([rows[0][0]]) == 0  # already gone: not counted twice
    assert spool.depth == 6
    assert all_rows(spool) == payloads(4, 6)
    spool.close()


def test_replay_after_restart_in_order(path: Path) -> None:
    spool = Spool(path, max_events=1000)
    spool.append(payloads(0, 50))
    spool.ack([row_id for row_id, _ in spool.read_after(0, 10)])
    spool.close()  # like an agent restart (a SIGKILL too: every append was committed)

    again = Spool(path, max_events=1000)
    assert again.counters.replayed == 40
    assert again.depth == 40
    assert all_rows(again) == payloads(10, 40)
    again.close()


def test_ids_keep_increasing_after_the_spool_empties(path: Path) -> None:
    """A publisher's "sent up to id N" cursor must never skip re-used ids."""
    spool = Spool(path, max_events=1000)
    spool.append(payloads(0, 3))
    first = spool.read_after(0, 10)
    spool.ack([row_id for row_id, _ in first])
    spool.append(payloads(3, 1))
    (row_id, _), *_ = spool.read_after(0, 10)
    assert row_id > first[-1][0]
    spool.close()


def test_full_spool_drops_oldest_and_counts_exactly(path: Path) -> None:
    spool = Spool(path, max_events=100)
    dropped = sum(spool.append(payloads(i * 30, 30)) for i in range(10))  # 300 events
    assert dropped == 200
    assert spool.counters.dropped_full == 200
    assert spool.depth == 100
    assert all_rows(spool) == payloads(200, 100)  # the newest survive
    spool.close()


def test_byte_bound_drops_oldest_and_counts(path: Path) -> None:
    """spool.max_bytes: 8 KB events (the largest an event gets) must not fill a disk before
    max_events does. Past the byte bound the oldest go, counted as with the count bound."""
    spool = Spool(path, max_events=1_000_000, max_bytes=1 << 20)
    big = [bytes([i % 256]) * 8192 for i in range(300)]  # 2.4 MB
    dropped = sum(spool.append(big[i : i + 30]) for i in range(0, 300, 30))
    assert spool.payload_bytes <= 1 << 20 and spool.depth == 128
    assert dropped == 300 - 128 == spool.counters.dropped_full
    assert all_rows(spool) == big[-128:]  # the newest survive
    acked = [row_id for row_id, _ in spool.read_after(0, 28)]
    spool.ack(acked)
    assert spool.payload_bytes == 100 * 8192
    spool.close()
    again = Spool(path, max_events=1_000_000, max_bytes=1 << 20)  # the count survives a restart
    assert again.payload_bytes == 100 * 8192 and again.depth == 100
    again.close()


def test_byte_bound_with_everything_in_flight(path: Path) -> None:
    spool = Spool(path, max_events=1000, max_bytes=1 << 20)
    spool.append([b"a" * 8192] * 128)
    cursor = spool.read_after(0, 1000)[-1][0]
    assert spool.append([b"b" * 8192] * 3, protect_upto=cursor) == 3
    assert spool.payload_bytes == 1 << 20 and spool.counters.dropped_full == 3
    spool.close()


def test_batch_larger_than_the_spool(path: Path) -> None:
    spool = Spool(path, max_events=100)
    assert spool.append(payloads(0, 250)) == 150
    assert all_rows(spool) == payloads(150, 100)
    spool.close()


def test_rows_with_the_publisher_are_not_dropped(path: Path) -> None:
    """Rows handed to the broker may still be acked: dropping them too would count them as
    both published and dropped."""
    spool = Spool(path, max_events=100)
    spool.append(payloads(0, 100))
    sent = spool.read_after(0, 20)
    cursor = sent[-1][0]
    assert spool.append(payloads(100, 30), protect_upto=cursor) == 30
    remaining = all_rows(spool)
    assert remaining[:20] == payloads(0, 20)  # in flight: kept
    assert remaining[20:] == payloads(50, 80)  # the oldest unsent 30 went
    assert spool.counters.dropped_full == 30
    spool.close()


def test_everything_in_flight_drops_from_the_new_batch(path: Path) -> None:
    spool = Spool(path, max_events=100)
    spool.append(payloads(0, 100))
    cursor = spool.read_after(0, 100)[-1][0]
    assert spool.append(payloads(100, 10), protect_upto=cursor) == 10
    assert spool.depth == 100
    assert spool.counters.dropped_full == 10
    spool.close()


def test_wal_mode_private_file_and_single_owner(path: Path) -> None:
    spool = Spool(path, max_events=100)
    spool.append(payloads(0, 1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(SpoolError, match="in use by another procmon agent"):
        Spool(path, max_events=100)
    spool.close()
    Spool(path, max_events=100).close()  # free again once closed


def _corrupt_files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if ".corrupt-" in p.name)


def test_garbage_file_is_moved_aside_and_counted(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database\n" * 100)
    spool = Spool(path, max_events=100)
    assert spool.counters.corrupt_files == 1
    assert spool.depth == 0
    (moved,) = _corrupt_files(path)
    assert moved.name.startswith("spool.db.corrupt-")
    assert moved.read_bytes().startswith(b"this is not a database")
    spool.append(payloads(0, 3))  # and the fresh spool works
    assert all_rows(spool) == payloads(0, 3)
    spool.close()


def test_truncated_file_is_moved_aside_with_its_wal(path: Path) -> None:
    spool = Spool(path, max_events=100_000)
    for _ in range(20):
        spool.append([b"x" * 2000] * 50)
    spool.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    Path(f"{path}-wal").write_bytes(b"stale wal")

    spool = Spool(path, max_events=100_000)
    assert spool.counters.corrupt_files == 1
    assert spool.depth == 0
    assert _corrupt_files(path)
    wal = Path(f"{path}-wal")  # the stale WAL must not be applied to the new spool
    assert not wal.exists() or wal.read_bytes() != b"stale wal"
    spool.append(payloads(0, 2))
    assert all_rows(spool) == payloads(0, 2)
    spool.close()


def test_two_corruptions_in_one_second_keep_both_files(path: Path) -> None:
    for _ in range(2):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"garbage" * 1000)
        Spool(path, max_events=100).close()
    assert len(_corrupt_files(path)) == 2


def test_unwritable_location_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match=r"spool .*cannot create"):
        Spool(blocker / "spool.db", max_events=100)


# --- the calls the MQTT sink relies on -------------------------------------------------------


def test_append_ids_are_the_rows_read_back_and_last_id_follows(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=100)
    assert spool.last_id == 0
    ids, dropped = spool.append_ids([b"a", b"b", b"c"])
    assert dropped == 0 and list(ids) == [row for row, _ in spool.read_after(0, 10)]
    assert spool.last_id == ids[-1]
    generation = spool.generation
    ids, dropped = spool.append_ids([b"%d" % i for i in range(150)])  # more than the room
    assert dropped == 53 and len(ids) == 100  # the 3 older rows and the batch's oldest 50 went
    assert spool.generation > generation  # rows vanished without an ack
    assert [(row, p) for row, p in spool.read_after(0, 200)] == list(
        zip(ids, [b"%d" % i for i in range(50, 150)], strict=True)
    )
    last = spool.last_id
    spool.close()
    again = Spool(tmp_path / "spool.db", max_events=100)
    assert again.last_id == last
    again.close()


def test_ack_deletes_runs_of_ids_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=1000)
    ids, _ = spool.append_ids([b"x"] * 20)
    gone = [ids[i] for i in (0, 1, 2, 5, 7, 8, 19)]
    assert spool.ack([*gone, gone[0]]) == 7  # a duplicate is not counted twice
    left = {row for row, _ in spool.read_after(0, 100)}
    assert left == set(ids) - set(gone) and spool.depth == 13
    spool.close()


def test_a_version_1_file_is_converted_and_replayed_in_order(path: Path) -> None:
    """Spools written before runs (one row per event) replay after an upgrade, ids kept."""
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB)")
        db.executemany("INSERT INTO events (payload) VALUES (?)", zip(payloads(0, 10)))
        db.execute("DELETE FROM events WHERE id <= 3")
        db.execute("PRAGMA user_version=1")
    spool = Spool(path, max_events=1000)
    assert spool.depth == 7 and spool.counters.replayed == 7
    assert spool.read_after(0, 100) == list(zip(range(4, 11), payloads(3, 7), strict=True))
    assert list(spool.append_ids(payloads(10, 2))[0]) == [11, 12]
    spool.close()


def test_acks_that_cut_a_batch_survive_a_restart_exactly(path: Path) -> None:
    """A batch is one row: acks of part of it store the rest again, so depth, bytes and
    replay stay exact across a restart."""
    spool = Spool(path, max_events=1000)
    ids, _ = spool.append_ids(payloads(0, 40))
    spool.append_ids(payloads(40, 40))
    spool.ack(list(ids[:10]) + list(ids[20:25]) + [ids[39], ids[39] + 1])
    kept = [
        p for i, p in enumerate(payloads(0, 80)) if not (i < 10 or 20 <= i < 25 or i in (39, 40))
    ]
    assert all_rows(spool) == kept and spool.depth == 63
    assert spool.payload_bytes == sum(map(len, kept))
    spool.close()
    again = Spool(path, max_events=1000)
    assert all_rows(again) == kept and again.depth == 63
    assert again.payload_bytes == sum(map(len, kept))
    assert [i for i, _ in again.read_after(ids[25], 3)] == [ids[26], ids[27], ids[28]]
    again.close()


def test_reading_a_run_in_windows_sees_every_ack_and_cut(path: Path) -> None:
    """A publisher reads a backlog a window at a time; the run read last is kept between
    calls, and acks or cuts in between must show."""
    spool = Spool(path, max_events=1000)
    ids, _ = spool.append_ids(payloads(0, 40))
    assert [p for _, p in spool.read_after(0, 10)] == payloads(0, 10)
    spool.ack(list(ids[:5]))  # the front: the run stays, its live start moves
    assert spool.read_after(0, 3) == list(zip(ids[5:8], payloads(5, 3), strict=True))
    spool.ack(list(ids[20:25]))  # a cut: the run is stored again in two
    rest = spool.read_after(ids[9], 100)
    assert [p for _, p in rest] == payloads(10, 10) + payloads(25, 15)
    assert [i for i, _ in rest] == list(ids[10:20]) + list(ids[25:])
    spool.close()

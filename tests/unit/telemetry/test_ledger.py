"""The usage ledger on a real SQLite store: journaled before it is batched, replayed
exactly once after a crash (a real `kill -9`), spooled while the store is away, bounded,
flushed on close."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

import inferplane
from inferplane.store.database import open_database, sqlite_url
from inferplane.store.tables import usage_records
from inferplane.telemetry.ledger import UsageLedger, UsageRecord

JOURNAL = "journal.jsonl"  # the file being written; rotated into numbered segments


def _record(n: int, **changes: object) -> UsageRecord:
    rec = UsageRecord(
        id=f"ledger-{n:04d}",
        request_id=f"req-{n}",
        created_at="2026-01-02T03:04:05.678901+00:00",
        org_id="org_1",
        team_id=None,
        key_id="key_1",
        user=None,
        endpoint="chat.completions",
        model="m",
        deployment="d",
        model_version="sha256:abc",
        prompt_tokens=10 + n,
        completion_tokens=n,
        cost_nusd=1_000 + n,
        price_id=None,
        latency_ms=12.5,
        ttft_ms=None,
        status=200,
    )
    return dataclasses.replace(rec, **changes)


def _counts(engine: sa.Engine) -> dict[str, int]:
    """Stored rows per ledger id."""
    query = sa.select(usage_records.c.id, sa.func.count()).group_by(usage_records.c.id)
    with engine.connect() as conn:
        return {row[0]: row[1] for row in conn.execute(query)}


def _ids(*records: UsageRecord) -> dict[str, int]:
    return {r.id: 1 for r in records}


async def _until_stored(engine: sa.Engine, records: list[UsageRecord]) -> None:
    """Wait for the flusher to store exactly `records` (polled: it signals nothing)."""
    deadline = time.monotonic() + 10
    while _counts(engine) != _ids(*records):
        assert time.monotonic() < deadline, f"stored: {_counts(engine)}"
        await asyncio.sleep(0.02)


def _left(journal: Path) -> list[str]:
    """Files of the journal holding bytes (an empty current journal holds nothing)."""
    return sorted(p.name for p in journal.iterdir() if p.stat().st_size)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    folder = tmp_path / "db"
    folder.mkdir()
    return folder


@pytest.fixture
def engine(db: Path) -> Iterator[sa.Engine]:
    engine = open_database(sqlite_url(db))
    yield engine
    engine.dispose()


class _StoreAway:
    """The database's folder moved aside: SQLite cannot open it until it is back."""

    def __init__(self, engine: sa.Engine, folder: Path):
        self._engine, self._folder = engine, folder
        self._aside = folder.with_name(folder.name + "-away")

    def __enter__(self) -> None:
        self._engine.dispose()  # pooled connections would keep the file open
        self._folder.rename(self._aside)

    def __exit__(self, *exc: object) -> None:
        self._aside.rename(self._folder)


def test_a_record_is_journaled_before_it_is_batched_into_the_store(
    tmp_path: Path, engine: sa.Engine
) -> None:
    journal = tmp_path / "ledger"
    rec = _record(1, team_id="team_1", user="alice", ttft_ms=3.25, cache_hit=True)

    async def main() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=3600)
        await ledger.start()
        ledger.record(rec)
        # On disk as one JSON line the moment record() returns; not in the store yet.
        lines = (journal / JOURNAL).read_bytes().splitlines()
        assert [orjson.loads(line) for line in lines] == [dataclasses.asdict(rec)]
        assert _counts(engine) == {}
        await ledger.flush()
        assert _counts(engine) == _ids(rec)
        assert _left(journal) == []
        await ledger.close()

    asyncio.run(main())
    with engine.connect() as conn:
        row = conn.execute(sa.select(usage_records)).mappings().one()
    stored = {**row, "created_at": row["created_at"].isoformat() + "+00:00"}
    assert stored == dataclasses.asdict(rec)


def test_close_flushes_what_the_flusher_had_not_yet(tmp_path: Path, engine: sa.Engine) -> None:
    records = [_record(n) for n in range(5)]

    async def main() -> None:
        ledger = UsageLedger(engine, tmp_path / "ledger", flush_interval_s=3600)
        await ledger.start()
        for rec in records:
            ledger.record(rec)
        assert _counts(engine) == {}
        await ledger.close()

    asyncio.run(main())
    assert _counts(engine) == _ids(*records)
    assert _left(tmp_path / "ledger") == []


def test_the_flusher_batches_records_in_the_background(tmp_path: Path, engine: sa.Engine) -> None:
    records = [_record(n) for n in range(3)]

    async def main() -> None:
        ledger = UsageLedger(engine, tmp_path / "ledger", flush_interval_s=0.05)
        await ledger.start()
        for rec in records:
            ledger.record(rec)
        await _until_stored(engine, records)
        await ledger.close()

    asyncio.run(main())


_CRASHING = """
import asyncio, sys
from pathlib import Path
import orjson
from inferplane.store.database import open_database
from inferplane.telemetry.ledger import UsageLedger, UsageRecord

async def main() -> None:
    records = [UsageRecord(**r) for r in orjson.loads(sys.stdin.readline())]
    ledger = UsageLedger(open_database(sys.argv[1]), Path(sys.argv[2]), flush_interval_s=3600)
    await ledger.start()
    for rec in records[:3]:
        ledger.record(rec)
    await ledger.flush()
    for rec in records[3:]:
        ledger.record(rec)
    print("recorded", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _crash_after_recording(url: str, journal: Path, records: list[UsageRecord]) -> None:
    """A gateway that flushes three records, journals two more, and is killed -9."""
    src = str(Path(inferplane.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING, url, str(journal)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(orjson.dumps([dataclasses.asdict(r) for r in records]) + b"\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"recorded\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


def test_a_crash_leaves_a_journal_the_next_start_replays_exactly_once(
    tmp_path: Path, db: Path, engine: sa.Engine
) -> None:
    journal = tmp_path / "ledger"
    records = [_record(n) for n in range(5)]
    _crash_after_recording(sqlite_url(db), journal, records)
    assert _counts(engine) == _ids(*records[:3])
    left = (journal / JOURNAL).read_bytes()
    assert len(left.splitlines()) == 2

    async def restart() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=3600)
        await ledger.start()  # replays before it returns
        assert _counts(engine) == _ids(*records)
        await ledger.close()

    asyncio.run(restart())
    # A crash after the replay's insert committed but before its segment was removed
    # leaves that segment again: replaying it adds nothing (the ledger id is the key).
    (journal / "segment-000000000099.jsonl").write_bytes(left)
    asyncio.run(restart())
    assert _counts(engine) == _ids(*records)
    assert _left(journal) == []


def test_the_ledger_id_is_the_key_not_the_callers_request_id(
    tmp_path: Path, engine: sa.Engine
) -> None:
    first, again = _record(1), _record(1, cost_nusd=999)
    same_request = _record(2, request_id=first.request_id)  # a caller reusing its id

    async def main() -> None:
        ledger = UsageLedger(engine, tmp_path / "ledger", flush_interval_s=3600)
        await ledger.start()
        for rec in (first, again, same_request):
            ledger.record(rec)
        await ledger.close()

    asyncio.run(main())
    assert _counts(engine) == _ids(first, same_request)
    with engine.connect() as conn:
        cost = conn.execute(
            sa.select(usage_records.c.cost_nusd).where(usage_records.c.id == first.id)
        ).scalar_one()
    assert cost == first.cost_nusd  # the first write stands


def test_a_line_torn_by_a_crash_is_skipped_the_rest_replayed(
    tmp_path: Path, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "ledger"
    journal.mkdir()
    whole = [_record(1), _record(2)]
    torn = orjson.dumps(_record(3))[:40]  # the process died mid-write: never answered
    lines = b"".join(orjson.dumps(r) + b"\n" for r in whole) + torn
    (journal / JOURNAL).write_bytes(lines)

    async def main() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=3600)
        with caplog.at_level(logging.WARNING, logger="inferplane.telemetry.ledger"):
            await ledger.start()
        await ledger.close()

    asyncio.run(main())
    assert _counts(engine) == _ids(*whole)
    assert [r.getMessage() for r in caplog.records] == [
        "usage ledger: skipping a torn line in segment-000000000001.jsonl"
    ]
    assert _left(journal) == []


def test_while_the_store_is_away_segments_are_spooled_then_stored_in_order(
    tmp_path: Path, db: Path, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "ledger"
    records = [_record(n) for n in range(4)]

    async def main() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=3600)
        await ledger.start()
        with _StoreAway(engine, db), caplog.at_level(logging.WARNING):
            ledger.record(records[0])
            ledger.record(records[1])
            await ledger.flush()  # fails quietly: the records stay on disk
            ledger.record(records[2])
            await ledger.flush()
            assert _left(journal) == [
                "segment-000000000001.jsonl",
                "segment-000000000002.jsonl",
            ]
            ledger.record(records[3])
        assert (
            caplog.records[0]
            .getMessage()
            .startswith("usage ledger: store unreachable, segment-000000000001.jsonl kept: ")
        )
        await ledger.flush()
        assert _counts(engine) == _ids(*records)
        assert _left(journal) == []
        await ledger.close()

    asyncio.run(main())


def test_close_with_the_store_away_leaves_the_spool_for_the_next_start(
    tmp_path: Path, db: Path, engine: sa.Engine
) -> None:
    journal = tmp_path / "ledger"
    records = [_record(n) for n in range(3)]

    async def first_run() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=3600)
        await ledger.start()
        with _StoreAway(engine, db):
            ledger.record(records[0])
            await ledger.flush()
            ledger.record(records[1])
            ledger.record(records[2])
            await ledger.close()

    async def second_run() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=3600)
        await ledger.start()
        await ledger.close()

    asyncio.run(first_run())
    assert len(_left(journal)) == 2 and _counts(engine) == {}
    asyncio.run(second_run())
    assert _counts(engine) == _ids(*records)
    assert _left(journal) == []


def test_a_spool_left_at_start_is_retried_by_the_flusher_once_the_store_is_back(
    tmp_path: Path, db: Path, engine: sa.Engine
) -> None:
    journal = tmp_path / "ledger"
    journal.mkdir()
    records = [_record(1), _record(2)]
    (journal / JOURNAL).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))

    async def main() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=0.05)
        with _StoreAway(engine, db):
            await ledger.start()  # the replay fails: the crash's journal is kept
            assert _left(journal) == ["segment-000000000001.jsonl"]
        await _until_stored(engine, records)
        await ledger.close()

    asyncio.run(main())


def test_a_full_spool_stops_accepting_until_the_store_takes_it(
    tmp_path: Path, db: Path, engine: sa.Engine
) -> None:
    line = len(orjson.dumps(_record(0)) + b"\n")  # every record here is as long
    journal = tmp_path / "ledger"

    async def main() -> None:
        ledger = UsageLedger(engine, journal, flush_interval_s=3600, max_spool_bytes=3 * line)
        await ledger.start()
        with _StoreAway(engine, db):
            ledger.record(_record(0))
            await ledger.flush()  # one record spooled, one journaled: room for one more
            ledger.record(_record(1))
            assert ledger.accepting
            ledger.record(_record(2))
            assert not ledger.accepting  # journal and spool together reach the bound
            await ledger.flush()
            assert not ledger.accepting  # moving it to the spool frees nothing
        await ledger.flush()
        assert ledger.accepting
        assert _counts(engine) == _ids(*(_record(n) for n in range(3)))
        await ledger.close()

    asyncio.run(main())

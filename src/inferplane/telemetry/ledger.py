"""The usage ledger: one record per admitted request, never lost, never counted twice.

Path of a record:
  1. `record()` appends it as a JSON line to the current journal file in the data dir,
     before the response is answered (a plain write: it survives `kill -9` of the
     gateway, which only loses what is still in the process);
  2. every `flush_interval_s` the flusher closes the journal, renames it to a numbered
     segment, and inserts the segment's records into the store in one transaction with
     "on conflict do nothing" on the ledger id (`UsageRecord.id`, one per admitted
     request; not the caller's x-request-id, which may repeat), then deletes the segment;
  3. if the store is unreachable the segments stay on disk (the spool) and are retried;
     on start-up, segments left by a crash are replayed. Replaying twice is harmless:
     the ledger id is the primary key.
The spool is bounded (`max_spool_bytes`); once full, `accepting` turns false and the
data plane refuses new requests (503) rather than answer requests it cannot account for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from inferplane.store.tables import usage_records

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    id: str  # unique per request
    request_id: str  # x-request-id (the caller's, if it sent one)
    created_at: str  # ISO 8601, UTC
    org_id: str | None
    team_id: str | None
    key_id: str
    user: str | None
    endpoint: str
    model: str
    deployment: str
    model_version: str
    prompt_tokens: int
    completion_tokens: int
    cost_nusd: int
    price_id: int | None
    latency_ms: float
    ttft_ms: float | None
    status: int
    cache_hit: bool = False
    guardrails: str | None = None  # JSON: the guardrail decisions (never the values found)


_FIELDS = tuple(f.name for f in fields(UsageRecord))
_REQUIRED = frozenset(
    f.name for f in fields(UsageRecord) if f.name not in ("cache_hit", "guardrails")
)


class _Insert:
    """The ledger's insert as the driver's own SQL and parameters: one executemany of
    plain tuples. (Through SQLAlchemy's insertmanyvalues the same rows cost about 25 us
    of CPU each, held under the GIL while the event loop waits; this way about 10.)"""

    def __init__(self, engine: sa.Engine):
        dialect = engine.dialect
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        compiled = (
            insert(usage_records)
            .on_conflict_do_nothing()
            .compile(dialect=dialect, column_keys=list(_FIELDS))
        )
        self.sql = str(compiled)
        self._order = tuple(compiled.positiontup or ()) if compiled.positional else None
        # Each column's conversion to what the driver is given (datetime and boolean
        # storage on SQLite), as SQLAlchemy itself would apply it.
        self._convert = {
            c.name: fn
            for c in usage_records.c
            if (fn := c.type.dialect_impl(dialect).bind_processor(dialect))
        }

    def params(self, line: bytes) -> tuple[Any, ...] | dict[str, Any]:
        """A journal line as driver parameters; ValueError where it is not a record."""
        rec = orjson.loads(line)
        if not isinstance(rec, dict) or not rec.keys() >= _REQUIRED:
            raise ValueError("not a usage record")
        rec.setdefault("cache_hit", False)
        rec.setdefault("guardrails", None)
        rec["created_at"] = datetime.fromisoformat(rec["created_at"])
        for name, convert in self._convert.items():
            rec[name] = convert(rec[name])
        if self._order is None:
            return rec
        return tuple(rec[name] for name in self._order)


class UsageLedger:
    def __init__(
        self,
        engine: sa.Engine,
        journal_dir: Path,
        *,
        flush_interval_s: float = 0.5,
        max_spool_bytes: int = 1 << 30,
    ):
        self._engine = engine
        self._dir = journal_dir
        self._interval = flush_interval_s
        self._max_spool = max_spool_bytes
        self._journal: Any = None
        self._journal_bytes = 0
        self._spooled_bytes = 0
        self._segment = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._insert = _Insert(engine)

    @property
    def accepting(self) -> bool:
        return self._journal_bytes + self._spooled_bytes < self._max_spool

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        existing = self._segments()
        self._segment = max((int(p.stem.split("-")[1]) for p in existing), default=0)
        current = self._dir / "journal.jsonl"
        if current.exists():  # left by a crash: it becomes a segment to replay
            self._segment += 1
            current.rename(self._segment_path(self._segment))
        self._spooled_bytes = sum(p.stat().st_size for p in self._segments())
        self._open()
        await self.flush()
        self._task = asyncio.create_task(self._run(), name="usage-ledger")

    def record(self, rec: UsageRecord) -> None:
        line = orjson.dumps(rec) + b"\n"  # a dataclass, serialised natively
        self._journal.write(line)
        self._journal.flush()  # into the OS: survives the death of this process
        self._journal_bytes += len(line)

    async def flush(self) -> None:
        async with self._lock:
            if self._journal_bytes:
                self._rotate()
            for segment in self._segments():
                try:
                    await asyncio.to_thread(self._store_segment, segment)
                except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
                    log.warning("usage ledger: store unreachable, %s kept: %s", segment.name, exc)
                    return
                size = segment.stat().st_size
                segment.unlink()
                self._spooled_bytes -= size

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        if self._journal is not None:
            self._journal.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("usage ledger flush failed")

    def _open(self) -> None:
        self._journal = open(self._dir / "journal.jsonl", "ab")  # noqa: SIM115 (kept open)
        self._journal_bytes = self._journal.tell()

    def _rotate(self) -> None:
        self._journal.close()
        self._segment += 1
        os.replace(self._dir / "journal.jsonl", self._segment_path(self._segment))
        self._spooled_bytes += self._journal_bytes
        self._open()

    def _segment_path(self, n: int) -> Path:
        return self._dir / f"segment-{n:012d}.jsonl"

    def _segments(self) -> list[Path]:
        return sorted(self._dir.glob("segment-*.jsonl"))

    def _store_segment(self, segment: Path) -> None:
        rows = []
        params = self._insert.params
        for line in segment.read_bytes().splitlines():
            if line.strip():
                try:
                    rows.append(params(line))
                except (ValueError, TypeError, KeyError):
                    # A line torn by a crash mid-write was never answered: skip it.
                    log.warning("usage ledger: skipping a torn line in %s", segment.name)
        if not rows:
            return
        # Not `store.database.transaction()`: no error of this reaches a caller; flush()
        # keeps the segment and logs the driver's own words about why.
        with self._engine.begin() as conn:
            conn.exec_driver_sql(self._insert.sql, rows)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()

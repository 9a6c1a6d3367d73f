"""Append-only, hash-chained audit log.

Each entry's SHA-256 covers its canonical content and the previous entry's hash, so any change, deletion or
reordering breaks the chain at the first entry touched. ``audit_head`` remembers the last entry, so deleting the
tail is detected as well. Entries hold pseudonyms, hashes, counts and decisions: never an identity.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from spie_hub.store import audit_head


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


_CONTENT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def entry_hash(row: dict[str, Any]) -> str:
    return _hash(row["prev_hash"], row["seq"], row["ts"], row["run_id"], row["event"], row["flow"], row["recipient"],
                 row["subject"], row["payload"])


def _hash(prev: str, *content: Any) -> str:
    """SHA-256 of the previous hash and the entry's canonical content (a JSON array of its columns)."""
    return hashlib.sha256((prev + _CONTENT.encode(content)).encode("utf-8")).hexdigest()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class AuditEvent:
    event: str
    payload: dict[str, Any] | str  # a str is taken as already canonical JSON
    run_id: str | None = None
    flow: str | None = None
    recipient: str | None = None
    subject: str | None = None


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, events: Iterable[AuditEvent], connection: Connection | None = None) -> tuple[int, str]:
        """Append events in one transaction; return the new head (seq, hash).

        With ``connection``, the entries join the caller's open transaction (committed or rolled back with what
        they prove, e.g. the consents an import stores), instead of a transaction of their own."""
        items = ((e.run_id, e.event, e.flow, e.recipient, e.subject,
                  e.payload if isinstance(e.payload, str) else canonical(e.payload)) for e in events)
        if connection is not None:
            return self._append_in(connection, items)
        return self.append_rows(items)

    def append_rows(self, items: Iterable[tuple[str | None, str, str | None, str | None, str | None, str]]) -> tuple[int, str]:
        """Append ``(run_id, event, flow, recipient, subject, canonical payload)`` tuples in one transaction."""
        with self.engine.begin() as connection:
            return self._append_in(connection, items)

    @staticmethod
    def _append_in(connection: Connection,
                   items: Iterable[tuple[str | None, str, str | None, str | None, str | None, str]]) -> tuple[int, str]:
        # Touching the head row first takes the write lock (row lock on PostgreSQL, RESERVED on SQLite),
        # so concurrent runs chain one after the other instead of forking the chain.
        connection.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq))
        seq, prev = connection.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
        rows = []
        ts = now()
        for run_id, event, flow, recipient, subject, payload in items:
            seq += 1
            digest = _hash(prev, seq, ts, run_id, event, flow, recipient, subject, payload)
            rows.append((seq, ts, run_id, event, flow, recipient, subject, payload, prev, digest))
            prev = digest
        if rows:
            # The driver's executemany on plain tuples: the per-row parameter handling of an ORM-style insert
            # cost more than hashing (measured: 13.8 µs an entry before, see docs/performances.md).
            mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
            connection.exec_driver_sql(
                f"INSERT INTO audit_log (seq, ts, run_id, event, flow, recipient, subject, payload, prev_hash, hash) "
                f"VALUES ({', '.join([mark] * 10)})",
                rows,
            )
            connection.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))
        return seq, prev

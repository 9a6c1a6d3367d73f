"""Append-only audit log: hash-chained entries, leaves of a Merkle tree, sealed by a signed tree head.

Each entry's SHA-256 covers its canonical content and the previous entry's hash (the chain, checked entry by entry);
that hash is also the entry's leaf in the log's RFC 9162 Merkle tree (spie_hub/audit/tree.py), and every append
signs a tree head in the same transaction (spie_hub/audit/heads.py): the log never has an unsealed tail that could
be removed unseen. Entries record actions (a run, a batch of decisions, a delivery, an import, an access...), with
pseudonyms, hashes, counts and decisions: never an identity. Per-record decisions go into batches (spie_hub/audit/
segments.py) that one entry commits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from spie_hub.audit.heads import Signer, TreeHead, latest_head, record_signer, sign_head, stamp_head, store_head
from spie_hub.audit.tree import append_leaves, tree_root
from spie_hub.store import audit_head, audit_log, audit_nodes


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
    """``signer``: what seals each append with a signed tree head; by default the hub's signing key, loaded at the
    first append (a missing key is a configuration error, never an unsealed entry)."""

    def __init__(self, engine: Engine, signer: Signer | None = None) -> None:
        self.engine = engine
        self._signer = signer
        self.last_head: TreeHead | None = None

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            from spie_hub.audit.signing import load_signing_key

            self._signer = load_signing_key()
        return self._signer

    def seal(self) -> TreeHead | None:
        """Sign a head over the log as it stands when its last append left none (a store from before the tree)."""
        with self.engine.begin() as connection:
            connection.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq))
            record_signer(connection, self.signer)  # a secret swapped behind a known key id is refused even here
            seq = connection.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).scalar_one()
            latest = latest_head(connection)
            if seq == 0:
                return latest
            size = _tree_size(connection, seq)
            if latest is not None and latest.size == size:
                return latest
            signer = self.signer
            record_signer(connection, signer)
            self.last_head = sign_head(signer, size, tree_root(connection, size), now())
            store_head(connection, self.last_head)
            return self.last_head

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
        self.last_head = None
        with self.engine.begin() as connection:
            result = self._append_in(connection, items)
        if self.last_head is not None:
            stamp_head(self.engine, self.last_head)
        return result

    def _append_in(self, connection: Connection,
                   items: Iterable[tuple[str | None, str, str | None, str | None, str | None, str]]) -> tuple[int, str]:
        # Touching the head row first takes the write lock (row lock on PostgreSQL, RESERVED on SQLite),
        # so concurrent runs chain one after the other instead of forking the chain.
        connection.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq))
        seq, prev = connection.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
        rows = []
        # Never before the entry it follows (the database refuses it): a clock set back gives the previous time.
        last_ts = connection.execute(select(audit_log.c.ts).where(audit_log.c.seq == seq)).scalar() if seq else None
        ts = max(now(), last_ts) if last_ts else now()
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
            size, root = append_leaves(connection, _tree_size(connection, rows[0][0] - 1), (row[-1] for row in rows))
            signer = self.signer
            record_signer(connection, signer)
            self.last_head = sign_head(signer, size, root, ts)
            store_head(connection, self.last_head)
        return seq, prev


def _tree_size(connection: Connection, entries: int) -> int:
    """The tree's size before an append (``entries`` = the log's last seq): a store from before the tree, or whose
    last append predates it, gets the missing leaves first, read from its entries."""
    last = connection.execute(select(func.max(audit_nodes.c.idx)).where(audit_nodes.c.level == 0)).scalar()
    size = 0 if last is None else last + 1
    if size < entries:
        hashes = connection.execute(select(audit_log.c.hash).where(audit_log.c.seq > size, audit_log.c.seq <= entries)
                                    .order_by(audit_log.c.seq)).scalars().all()
        if len(hashes) != entries - size:
            raise ValueError("entrées du journal absentes : l'arbre ne peut pas être complété (journal altéré)")
        size, _ = append_leaves(connection, size, hashes)
    return size

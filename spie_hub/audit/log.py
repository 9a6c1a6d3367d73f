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
import secrets
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
            signer = self.signer
            size = _tree_size(connection, seq, signer)
            if latest is not None and latest.size == size:
                return latest
            record_signer(connection, signer)
            # A head is dated as its last entry (the verifier checks it): when it was appended, not when sealed.
            last_ts = connection.execute(select(audit_log.c.ts).where(audit_log.c.seq == size)).scalar() or now()
            self.last_head = sign_head(signer, size, tree_root(connection, size), last_ts)
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
        ts = now()
        try:
            if last_ts and dt.datetime.fromisoformat(last_ts) > dt.datetime.fromisoformat(ts):
                ts = last_ts
        except ValueError:
            pass  # an unreadable time before: the database refuses it, the verifier says so; never copied
        for run_id, event, flow, recipient, subject, payload in items:
            seq += 1
            payload = _salted(payload)
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
            signer = self.signer
            size, root = append_leaves(connection, _tree_size(connection, rows[0][0] - 1, signer), (row[-1] for row in rows))
            record_signer(connection, signer)
            self.last_head = sign_head(signer, size, root, ts)
            store_head(connection, self.last_head)
        return seq, prev


def _tree_size(connection: Connection, entries: int, signer: Signer | None = None) -> int:
    """The tree's size before an append (``entries`` = the log's last seq). A store from before the tree gets its
    leaves first, once its chain has been checked against the signed checkpoints of that version (a log rewritten
    before the upgrade must not be sealed as if it were intact); a store already purged by that version cannot be
    given a tree (its first leaves are gone): said, never guessed."""
    last = connection.execute(select(func.max(audit_nodes.c.idx)).where(audit_nodes.c.level == 0)).scalar()
    size = 0 if last is None else last + 1
    if size >= entries:
        return size
    first = connection.execute(select(func.min(audit_log.c.seq))).scalar()
    if first != 1 and size == 0:
        from spie_hub.core.errors import ConfigurationError

        raise ConfigurationError(
            "Journal d'audit créé par une version antérieure du hub et déjà purgé : son arbre de Merkle ne peut pas "
            "être reconstruit (ses premières entrées n'existent plus). Exportez-le avec cette version "
            "(spie-hub audit exporter), conservez l'export, puis recréez la base (docs/exploitation.md, « Base de "
            "données » : pas encore de migrations).")
    if size == 0:
        _check_legacy_chain(connection, entries, signer)
    while size < entries:
        hashes = connection.execute(select(audit_log.c.hash).where(audit_log.c.seq > size, audit_log.c.seq <= entries)
                                    .order_by(audit_log.c.seq).limit(50_000)).scalars().all()
        if not hashes:
            raise ValueError("entrées du journal absentes : l'arbre ne peut être complété (journal altéré)")
        size, _ = append_leaves(connection, size, hashes)
    return size


def _check_legacy_chain(connection: Connection, entries: int, signer: Signer | None) -> None:
    """The chain of a log written before the tree, against its signed checkpoints (``audit_checkpoints``)."""
    from spie_hub.audit.signing import verify_signature
    from spie_hub.core.errors import ConfigurationError
    from spie_hub.store import GENESIS_HASH, audit_checkpoints

    checkpoints = {r.seq: r for r in connection.execute(select(audit_checkpoints))}
    keys = {signer.kid: signer.public_b64} if signer is not None else {}
    prev, expected = GENESIS_HASH, 1
    rows = connection.execution_options(stream_results=True, yield_per=10_000).execute(
        select(audit_log).where(audit_log.c.seq <= entries).order_by(audit_log.c.seq))
    for row in rows.mappings():
        if row["seq"] != expected or row["prev_hash"] != prev or entry_hash(dict(row)) != row["hash"]:
            raise ConfigurationError(f"Journal d'audit d'une version antérieure altéré à l'entrée n° {row['seq']} : "
                                     "il ne sera pas scellé (spie-hub audit verify avec cette version le localise).")
        cp = checkpoints.get(row["seq"])
        if cp is not None:
            statement = canonical({"type": "spie-hub/point-de-controle/v1", "seq": cp.seq, "empreinte": cp.hash,
                                   "horodatage": cp.ts, "cle": cp.kid}).encode()
            signed = cp.kid in keys and verify_signature(keys[cp.kid], statement, cp.signature)
            if cp.hash != row["hash"] or (cp.kid in keys and not signed):
                raise ConfigurationError(f"Journal d'audit d'une version antérieure réécrit : l'entrée n° {cp.seq} ne "
                                         "correspond plus à son point de contrôle signé ; il ne sera pas scellé.")
        prev, expected = row["hash"], expected + 1


def _salted(payload: str) -> str:
    """Every entry carries a random salt (``sel``): a receipt's inclusion path holds its neighbours' leaf hashes, and
    a neighbour whose content is guessable (another recipient's empty delivery, a pass with no withdrawal) could
    otherwise be confirmed by hashing a guess — telling a recipient what happened to others."""
    salt = secrets.token_hex(16)
    if payload.startswith("{") and payload.endswith("}"):
        return f'{{"sel":"{salt}"' + ("}" if payload == "{}" else "," + payload[1:])
    return payload

"""The hub's store (SQLAlchemy Core): SQLite by default, PostgreSQL by URL.

It holds runs, deliveries, consents (by pivot pseudonym, never a NIR) and the hash-chained audit log.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    text,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("flow", String(80), nullable=False),
    Column("input_name", String(255), nullable=False),
    Column("input_sha256", String(64), nullable=False),
    Column("started_at", String(32), nullable=False),
    Column("finished_at", String(32)),
    Column("status", String(20), nullable=False),
    Column("summary", Text, nullable=False, default="{}"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow", String(80), nullable=False),
    Column("recipient", String(80), nullable=False),
    Column("input_sha256", String(64), nullable=False),
    Column("run_id", String(40), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("file_sha256", String(64), nullable=False),
    Column("records", Integer, nullable=False),
    Column("delivered_at", String(32), nullable=False),
    UniqueConstraint("flow", "recipient", "input_sha256", name="uq_delivery_once"),
)

consents = Table(
    "consents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("emetteur", String(80), nullable=False),  # consent ids are scoped by issuing partner
    Column("consent_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(20), nullable=False),  # "consentement" | "opposition"
    Column("subject", String(48), nullable=False),  # pivot pseudonym
    Column("status", String(20), nullable=False),
    Column("decision", String(10), nullable=False),
    Column("grantees", Text, nullable=False),  # JSON list of recipient ids
    Column("categories", Text, nullable=False),  # JSON list of data categories
    Column("rules", Text, nullable=False),  # JSON list of {effet, destinataires, categories, debut, fin}
    Column("purposes", Text, nullable=False),
    Column("period_start", String(32)),
    Column("period_end", String(32)),
    Column("source", Text),
    Column("resource_sha256", String(64), nullable=False),
    Column("imported_at", String(32), nullable=False),
    #: The hub's opaque reference of the consent (``c-`` + 16 hex, kept from version to version): decisions,
    #: withdrawals, notices and the audit cite it, never the partner's ``consent_id``.
    Column("ref", String(24)),
    UniqueConstraint("emetteur", "consent_id", "version", name="uq_consent_version"),
    Index("ix_consents_subject", "subject"),
)

#: Withdrawals detected at import (a permission lost, or a refusal or opposition recorded), pending until their
#: deletion notices are written in the drops of the recipients that had received the person's data.
revocations = Table(
    "revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subject", String(48), nullable=False),  # pivot pseudonym
    Column("consent_ref", String(140), nullable=False),
    Column("pairs", Text, nullable=False),  # JSON list of [recipient, category]
    Column("aliases", Text, nullable=False, default="[]"),  # the person's pivots under previous keys of the ring
    Column("recorded_at", String(32), nullable=False),
    Column("propagated_at", String(32)),
    Column("notices", Integer),
    Index("ix_revocations_pending", "propagated_at"),
)

#: Every pseudonymisation key id the hub ever used, with a keyed fingerprint of its secret (HMAC(secret,
#: "empreinte-cle"), never the secret nor a plain hash of it): a changed secret behind a known id, a used id given to
#: a new secret, or a known key missing from the ring is refused at load (spie_hub/privacy/keys.py). Rows are never
#: deleted; only ``retired_at`` is ever set (guards and privileges in spie_hub/store/guards.py).
pseudo_keys = Table(
    "pseudo_keys",
    metadata,
    Column("kid", String(16), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("first_seen_at", String(32), nullable=False),
    Column("retired_at", String(32)),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", String(32), nullable=False),
    Column("run_id", String(40)),
    Column("event", String(40), nullable=False),
    Column("flow", String(80)),
    Column("recipient", String(80)),
    Column("subject", String(48)),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # Subject access and withdrawal propagation look a person up by pseudonym.
    Index("ix_audit_subject", "subject"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

#: The Merkle tree over the log (RFC 9162, spie_hub/audit/merkle.py): entry ``seq`` is leaf ``seq - 1``, its leaf
#: input the 32 bytes of the entry's chain hash. Every perfect subtree is kept (``level``, ``idx``: leaves
#: ``[idx·2^level, (idx+1)·2^level)``), about two rows per entry, so that any tree head, inclusion proof or
#: consistency proof is computed without the entries, and still after a retention purge removed them. Insert only.
audit_nodes = Table(
    "audit_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
)

#: Signed tree heads (Ed25519 over spie_hub/audit/heads.py's statement): one in the same transaction as every
#: append, so the log never has an unsealed tail. Insert only. ``tsa``: an RFC 3161 token over the statement.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("size", Integer, primary_key=True, autoincrement=False),
    Column("root", String(64), nullable=False),
    Column("ts", String(32), nullable=False),
    Column("kid", String(16), nullable=False),
    Column("signature", String(128), nullable=False),
)

#: RFC 3161 timestamps of signed tree heads, obtained after the head's transaction (a TSA is a network service).
audit_head_stamps = Table(
    "audit_head_stamps",
    metadata,
    Column("size", Integer, primary_key=True, autoincrement=False),
    Column("token", Text, nullable=False),
    Column("obtained_at", String(32), nullable=False),
)

#: Signed checkpoints over the chain of earlier releases (superseded by ``audit_heads``; kept readable).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("ts", String(32), nullable=False),
    Column("kid", String(16), nullable=False),
    Column("signature", String(128), nullable=False),
)

#: Public halves of every signing key ever used, so old checkpoints stay verifiable after a key rotation.
audit_keys = Table(
    "audit_keys",
    metadata,
    Column("kid", String(16), primary_key=True),
    Column("public_b64", String(64), nullable=False),
    Column("added_at", String(32), nullable=False),
)

#: Entries up to ``seq`` were purged under retention; the signed checkpoint at ``seq`` anchors what remains. The
#: database refuses any other deletion from the audit (spie_hub/audit_guard.py).
audit_anchor = Table(
    "audit_anchor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    #: The chain hash of entry ``seq`` (the first kept entry links to it; its leaf is in ``audit_nodes``).
    Column("hash", String(64)),
)

#: What the database itself enforces on the audit, set by the owner (``spie-hub base durcir``): the application role
#: reads it and cannot change it. ``min_age_days``: no entry younger than this is ever purged.
audit_policy = Table(
    "audit_policy",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("min_age_days", Integer, nullable=False),
)

GENESIS_HASH = "0" * 64
#: The youngest an audit entry may be when purged, unless the owner sets another floor (``audit_policy``).
AUDIT_MIN_AGE_DAYS = 365


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # busy_timeout first: switching to WAL needs a lock, and a second process must wait for it, not fail.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_store(url: str) -> Engine:
    """Create the engine and the tables if needed (idempotent)."""
    # pre_ping: after a database restart, pooled connections are replaced instead of failing the next statement.
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        if engine.url.database and engine.url.database != ":memory:":
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
    with _schema_lock(engine):
        metadata.create_all(engine)
        _add_missing_columns(engine)
        with engine.begin() as connection:
            if connection.execute(select(audit_head.c.id)).first() is None:
                connection.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS_HASH))
            if connection.execute(select(audit_anchor.c.id)).first() is None:
                connection.execute(insert(audit_anchor).values(id=1, seq=0, hash=GENESIS_HASH))
            if connection.execute(select(audit_policy.c.id)).first() is None:
                connection.execute(insert(audit_policy).values(id=1, min_age_days=AUDIT_MIN_AGE_DAYS))
        from spie_hub.store.guards import install_guards

        install_guards(engine)
    return engine


#: Columns added after a table's first release: ``create_all`` never alters an existing table.
_ADDED_COLUMNS = {"consents": {"ref": "VARCHAR(24)"}, "audit_anchor": {"hash": "VARCHAR(64)"}}


def _add_missing_columns(engine: Engine) -> None:
    from sqlalchemy import inspect

    inspector = inspect(engine)
    with engine.begin() as connection:
        for table, columns in _ADDED_COLUMNS.items():
            present = {c["name"] for c in inspector.get_columns(table)}
            for name, sql_type in columns.items():
                if name not in present:
                    connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """Two processes opening a new store at once must not both create it (a raw IntegrityError on PostgreSQL's
    catalog, "table already exists" on SQLite): the creation is serialised, by an advisory lock or a file lock."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            holder.commit()
            try:
                yield
            finally:
                holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})
                holder.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.verrou-schema", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_SCHEMA_LOCK_KEY = 0x5350_4945_4855_4201  # "SPIEHUB" + 1: the store's creation

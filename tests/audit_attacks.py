"""What an operator with full access to the database *and to the signing function* can do to the audit log.

These are the attacks of issue 10: they switch the database guards off, rewrite or cut history, recompute every
hash, the whole Merkle tree and the signed heads (with the hub's own key: the operator can make the hub sign), so
that the store is self-consistent again. Only a head kept by someone else can then tell.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, insert, select

from spie_hub.audit import merkle
from spie_hub.audit.heads import sign_head
from spie_hub.audit.log import entry_hash
from spie_hub.audit.tree import entry_leaf
from spie_hub.store import GENESIS_HASH, audit_anchor, audit_head, audit_heads, audit_log, audit_nodes


def drop_all_guards(engine: Engine) -> None:
    """The owner (or a superuser) switches every audit trigger off."""
    tables = ("audit_log", "audit_checkpoints", "audit_nodes", "audit_heads", "audit_head_stamps", "audit_keys",
              "audit_head", "audit_anchor")
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            for table in tables:
                connection.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        else:
            names = connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'spie_%'").scalars().all()
            for name in names:
                if "keys_no" not in name or "audit_keys" in name:
                    connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")


def rebuild(engine: Engine, rows: list[dict[str, Any]], signer: Any, head_sizes: list[int] | None = None) -> None:
    """Rewrite the log as ``rows`` (re-chained from the anchor), its tree, and re-signed heads at ``head_sizes``
    (default: the sizes the store had signed that still fit)."""
    with engine.begin() as connection:
        anchor = connection.execute(select(audit_anchor.c.seq, audit_anchor.c.hash)).one()
        sizes = head_sizes if head_sizes is not None else [
            s for s in connection.execute(select(audit_heads.c.size)).scalars() if s <= (rows[-1]["seq"] if rows else 0)]
        prev = anchor.hash or GENESIS_HASH
        for row in rows:
            row["prev_hash"] = prev
            row["hash"] = prev = entry_hash(row)
        connection.execute(delete(audit_log).where(audit_log.c.seq > anchor.seq))
        if rows:
            connection.execute(insert(audit_log), rows)
        connection.execute(delete(audit_nodes).where(audit_nodes.c.idx >= 0))
        connection.execute(delete(audit_heads))
        nodes: list[dict[str, Any]] = []
        builder = merkle.TreeBuilder(on_node=lambda lv, i, h: nodes.append({"level": lv, "idx": i, "hash": h.hex()}))
        leaves = [r["hash"] for r in rows]
        roots = {}
        for size, digest in enumerate(leaves, start=1):
            builder.add(entry_leaf(digest))
            roots[size] = builder.root()
        if nodes:
            connection.execute(insert(audit_nodes), nodes)
        for size in sizes:
            if size in roots:
                head = sign_head(signer, size, roots[size], rows[size - 1]["ts"])  # a head is dated as its last entry
                connection.execute(insert(audit_heads).values(size=head.size, root=head.root, ts=head.ts, kid=head.kid,
                                                              signature=head.signature))
        last = rows[-1] if rows else None
        connection.execute(audit_head.update().values(seq=last["seq"] if last else 0,
                                                      hash=last["hash"] if last else GENESIS_HASH))


def entries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(select(audit_log).order_by(audit_log.c.seq))]


def rewrite_and_resign(engine: Engine, signer: Any, seq: int, payload: str) -> None:
    drop_all_guards(engine)
    rows = entries(engine)
    for row in rows:
        if row["seq"] == seq:
            row["payload"] = payload
    rebuild(engine, rows, signer)


def delete_and_resign(engine: Engine, signer: Any, seq: int) -> None:
    """Remove one entry, renumber what follows, re-chain, re-sign: a silent deletion."""
    drop_all_guards(engine)
    rows = [r for r in entries(engine) if r["seq"] != seq]
    for number, row in enumerate(rows, start=rows[0]["seq"] if rows else 1):
        row["seq"] = number
    rebuild(engine, rows, signer, None)


def truncate_and_resign(engine: Engine, signer: Any, keep: int) -> None:
    drop_all_guards(engine)
    rebuild(engine, [r for r in entries(engine) if r["seq"] <= keep], signer, [keep])

"""The log's Merkle tree as the store keeps it (``audit_nodes``): appending leaves, tree heads and proofs.

Every perfect subtree is stored when it completes, so a tree head, an inclusion proof or a consistency proof reads
O(log² n) nodes, never the entries (which retention may have removed). Nodes are what the hub *claims*; the
verifier (spie_hub/audit/chain.py) recomputes them from the entries and compares, and a witness's kept head
catches a claim rewritten wholesale.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, and_, or_, select, tuple_

from spie_hub.audit import merkle
from spie_hub.store import audit_nodes


class StoredNodes:
    """A ``merkle.NodeSource`` over ``audit_nodes``, read on demand and cached for one operation."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.cache: dict[tuple[int, int], bytes] = {}

    def prefetch(self, wanted: Iterable[tuple[int, int]]) -> None:
        keys = [k for k in set(wanted) if k not in self.cache]
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            if self.connection.dialect.name == "sqlite":
                condition = or_(*(and_(audit_nodes.c.level == lv, audit_nodes.c.idx == i) for lv, i in chunk))
            else:
                condition = tuple_(audit_nodes.c.level, audit_nodes.c.idx).in_(chunk)
            for row in self.connection.execute(select(audit_nodes).where(condition)):
                self.cache[(row.level, row.idx)] = bytes.fromhex(row.hash)

    def __call__(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self.cache:
            self.prefetch([key])
            if key not in self.cache:
                raise MissingNode(level, index)
        return self.cache[key]


class MissingNode(LookupError):
    def __init__(self, level: int, index: int) -> None:
        super().__init__(f"nœud de l'arbre absent (niveau {level}, n° {index}) : arbre du journal incomplet ou supprimé")
        self.level, self.index = level, index


def frontier_keys(size: int) -> list[tuple[int, int]]:
    keys, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    return keys


def entry_leaf(chain_hash_hex: str) -> bytes:
    """The leaf input of a log entry: the 32 bytes of its chain hash (which covers its content and its place)."""
    return bytes.fromhex(chain_hash_hex)


def append_leaves(connection: Connection, size: int, chain_hashes: Iterable[str]) -> tuple[int, bytes]:
    """Add the entries' leaves after ``size`` leaves; store the nodes they complete; return (new size, root)."""
    nodes = StoredNodes(connection)
    nodes.prefetch(frontier_keys(size))
    created: list[dict[str, object]] = []
    builder = merkle.TreeBuilder(size, merkle.frontier_of(size, nodes),
                                 on_node=lambda level, index, h: created.append({"level": level, "idx": index, "hash": h.hex()}))
    for digest in chain_hashes:
        builder.add(entry_leaf(digest))
    if created:
        connection.execute(audit_nodes.insert(), created)
    return builder.size, builder.root()


def tree_root(connection: Connection, size: int) -> bytes:
    return merkle.root(StoredNodes(connection), size)


def inclusion_proof(connection: Connection, seq: int, size: int) -> list[bytes]:
    """The inclusion path of entry ``seq`` in the tree of ``size`` entries."""
    return merkle.inclusion_path(StoredNodes(connection), seq - 1, size)


def consistency_proof(connection: Connection, first: int, second: int) -> list[bytes]:
    return merkle.consistency_path(StoredNodes(connection), first, second)

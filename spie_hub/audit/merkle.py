"""Merkle tree hashing of RFC 9162 (Certificate Transparency v2, §2.1), shared by the audit log and its batches.

* leaf hash ``SHA-256(0x00 || leaf)``, node hash ``SHA-256(0x01 || left || right)``: a leaf can never pass for a
  node (second-preimage attacks);
* the tree over ``n`` leaves splits at the largest power of two below ``n``: every subtree is either *perfect* and
  aligned (``2^level`` leaves starting at a multiple of ``2^level``), or the right edge of its parent; so any tree
  head, inclusion proof or consistency proof is computed from the perfect subtrees alone (``NodeSource``), which
  the store keeps, and never needs the leaves again (retention prunes them);
* inclusion proofs (§2.1.3) and consistency proofs (§2.1.4) with their verification algorithms, implemented as the
  RFC words them, so that any other implementation (Trillian, a partner's own script) checks what the hub issues.

Pure functions on bytes: no database, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

LEAF_PREFIX, NODE_PREFIX = b"\x00", b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``(level, index) → hash`` of the perfect subtree over leaves ``[index·2^level, (index+1)·2^level)``.
NodeSource = Callable[[int, int], bytes]


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n`` ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes held in memory (tests, small batches)."""
    builder = TreeBuilder()
    for h in hashes:
        builder.add_hash(h)
    return builder.root()


class TreeBuilder:
    """Streaming tree head: the stack of perfect subtrees (at most log2 n hashes, memory flat in n).

    ``on_node(level, index, hash)`` is told of every perfect subtree as it completes (leaves are level 0), which is
    how the store keeps the nodes that later proofs need."""

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = (),
                 on_node: Callable[[int, int, bytes], None] | None = None) -> None:
        """Resume from a tree of ``size`` leaves given its ``frontier`` (perfect subtrees, largest first)."""
        self.size = size
        self.stack: list[tuple[int, bytes]] = []
        levels = [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]
        if len(levels) != len(frontier):
            raise ValueError("frontière incohérente avec la taille de l'arbre")
        self.stack = list(zip(levels, frontier, strict=True))
        self.on_node = on_node

    def add(self, leaf: bytes) -> bytes:
        """Append a leaf (its content); return its leaf hash."""
        digest = leaf_hash(leaf)
        self.add_hash(digest)
        return digest

    def add_hash(self, digest: bytes) -> None:
        index = self.size
        level, current = 0, digest
        if self.on_node:
            self.on_node(0, index, current)
        while self.stack and self.stack[-1][0] == level:
            _, left = self.stack.pop()
            current = node_hash(left, current)
            level += 1
            if self.on_node:
                self.on_node(level, index >> level, current)
        self.stack.append((level, current))
        self.size += 1

    def frontier(self) -> list[bytes]:
        return [h for _, h in self.stack]

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        current = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            current = node_hash(left, current)
        return current


def frontier_of(size: int, nodes: NodeSource) -> list[bytes]:
    """The perfect subtrees covering ``[0, size)``, largest first (what ``TreeBuilder`` resumes from)."""
    out, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append(nodes(level, start >> level))
            start += 1 << level
    return out


def subtree_root(nodes: NodeSource, start: int, end: int) -> bytes:
    """MTH of leaves ``[start, end)``, a subtree of the RFC 9162 decomposition (``start`` aligned on its split)."""
    n = end - start
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return nodes(n.bit_length() - 1, start // n)
    k = split_point(n)
    return node_hash(subtree_root(nodes, start, start + k), subtree_root(nodes, start + k, end))


def root(nodes: NodeSource, size: int) -> bytes:
    return subtree_root(nodes, 0, size)


def inclusion_path(nodes: NodeSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, leaf's sibling first."""
    if not 0 <= index < size:
        raise ValueError("feuille hors de l'arbre")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            path.append(subtree_root(nodes, start + k, end))
            end = start + k
        else:
            path.append(subtree_root(nodes, start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(nodes: NodeSource, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[second]) of RFC 9162 §2.1.4.1."""
    if not 0 < first <= second:
        raise ValueError("tailles d'arbre incohérentes pour une preuve de cohérence")
    path: list[bytes] = []
    start, end, m, complete = 0, second, first, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                path.append(subtree_root(nodes, start, end))
            break
        k = split_point(n)
        if m <= k:
            path.append(subtree_root(nodes, start + k, end))
            end = start + k
        else:
            path.append(subtree_root(nodes, start, start + k))
            start, m, complete = start + k, m - k, False
    path.reverse()
    return path


def verify_inclusion(leaf_digest: bytes, index: int, size: int, path: Iterable[bytes], expected_root: bytes) -> bool:
    """RFC 9162 §2.1.3.2, step by step."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf_digest
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2, step by step (``first`` = 0 proves nothing and is accepted; equal sizes need equal roots)."""
    if first == 0:
        return True
    if first > second:
        return False
    if first == second:
        return not path and first_root == second_root
    proof = list(path)
    if not proof:
        return False
    if first & (first - 1) == 0:
        proof.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0

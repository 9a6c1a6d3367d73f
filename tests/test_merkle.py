"""RFC 9162 Merkle hashing: the hub's proofs match the RFC's recursive definitions, and verify as the RFC says."""

from __future__ import annotations

import hashlib

import pytest

from spie_hub.audit import merkle


def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = merkle.split_point(len(leaves))
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = merkle.split_point(len(leaves))
    return _path(m, leaves[:k]) + [_mth(leaves[k:])] if m < k else _path(m - k, leaves[k:]) + [_mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = merkle.split_point(n)
    if m <= k:
        return _subproof(m, leaves[:k], complete) + [_mth(leaves[k:])]
    return _subproof(m - k, leaves[k:], False) + [_mth(leaves[:k])]


def _tree(n: int) -> tuple[list[bytes], dict[tuple[int, int], bytes]]:
    leaves = [f"entrée {i}".encode() for i in range(n)]
    nodes: dict[tuple[int, int], bytes] = {}
    builder = merkle.TreeBuilder(on_node=lambda level, index, h: nodes.__setitem__((level, index), h))
    for leaf in leaves:
        builder.add(leaf)
    return leaves, nodes


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 33])
def test_the_streaming_root_and_the_stored_nodes_give_the_rfc_tree_head(n: int) -> None:
    leaves, nodes = _tree(n)
    builder = merkle.TreeBuilder()
    for leaf in leaves:
        builder.add(leaf)
    assert builder.root() == _mth(leaves) == merkle.root(lambda lv, i: nodes[(lv, i)], n)


def test_inclusion_and_consistency_proofs_match_the_rfc_definitions_and_verify() -> None:
    leaves, nodes = _tree(37)
    get = lambda lv, i: nodes[(lv, i)]  # noqa: E731
    for n in range(1, 38):
        root = _mth(leaves[:n])
        for m in range(n):
            path = merkle.inclusion_path(get, m, n)
            assert path == _path(m, leaves[:n])
            assert merkle.verify_inclusion(merkle.leaf_hash(leaves[m]), m, n, path, root)
            assert not merkle.verify_inclusion(merkle.leaf_hash(b"autre"), m, n, path, root)
            if n > 1:
                assert not merkle.verify_inclusion(merkle.leaf_hash(leaves[m]), (m + 1) % n, n, path, root)
        for m in range(1, n + 1):
            proof = merkle.consistency_path(get, m, n)
            assert proof == _subproof(m, leaves[:n], True)
            assert merkle.verify_consistency(m, n, _mth(leaves[:m]), root, proof)
            if m < n:
                assert not merkle.verify_consistency(m, n, _mth([b"x", *leaves[1:m]]), root, proof)


def test_a_resumed_builder_continues_the_same_tree() -> None:
    leaves, nodes = _tree(21)
    for size in range(22):
        resumed = merkle.TreeBuilder(size, merkle.frontier_of(size, lambda lv, i: nodes[(lv, i)]))
        for leaf in leaves[size:]:
            resumed.add(leaf)
        assert resumed.root() == _mth(leaves)

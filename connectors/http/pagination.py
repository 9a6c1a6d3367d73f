"""Pagination of partner APIs, as generators: one page in memory at a time.

- ``by_range``: France Travail's style (``range=0-149`` query parameter; ``206 Partial Content`` with a
  ``Content-Range: <unit> 0-149/1000`` header while more remains, ``200`` on the last page).
- ``by_page``: a page number and a page size (``page``/``taille``), until a short or empty page.

Both stop with a French error rather than looping forever on a server that always says "more": at ``max_pages``, as
soon as a ``Content-Range`` does not move forward (the same page asked again), or when the items or the bytes of the
whole list pass ``max_items`` / ``max_bytes`` (a caller that keeps every item stays bounded in memory).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from connectors.http.errors import ApiFatalError, redact_path
from connectors.http.session import PartnerSession

_CONTENT_RANGE = re.compile(r"^\s*[A-Za-z_-]*\s*(\d+)-(\d+)/(\d+|\*)\s*$")


def _items(data: Any, key: str | None) -> list[Any]:
    if key is not None and isinstance(data, dict):
        data = data.get(key)
    if data is None:
        return []
    if not isinstance(data, list):
        raise ApiFatalError("Réponse paginée inattendue : liste attendue")
    return data


class _Budget:
    """Items and bytes of a whole list, bounded."""

    def __init__(self, path: str, max_items: int, max_bytes: int) -> None:
        self.path, self.max_items, self.max_bytes = path, max_items, max_bytes
        self.items = self.bytes = 0

    def spend(self, items: int, size: int) -> None:
        self.items += items
        self.bytes += size
        if self.items > self.max_items or self.bytes > self.max_bytes:
            raise ApiFatalError(f"Pagination arrêtée sur {redact_path(self.path)} : liste trop longue (plus de "
                                f"{self.max_items} éléments ou de {self.max_bytes} octets)")


def by_range(session: PartnerSession, path: str, *, params: Mapping[str, Any] | None = None,
             headers: Mapping[str, str] | None = None, size: int = 150, key: str | None = None,
             max_pages: int = 1000, max_items: int = 100_000, max_bytes: int = 200 << 20) -> Iterator[Any]:
    """Every item of a ``range``-paginated list."""
    start = 0
    budget = _Budget(path, max_items, max_bytes)
    for _ in range(max_pages):
        response = session.request("GET", path, params={**(params or {}), "range": f"{start}-{start + size - 1}"},
                                   headers=headers, accept=(200, 204, 206))
        items = _items(response.data, key)
        budget.spend(len(items), len(response.body))
        yield from items
        if response.status != 206 or not items:
            return
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None:
            start += len(items)
            continue
        first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
        if total != "*" and last + 1 >= int(total):
            return
        if first != start or last < first:
            # The server answered another page than the one asked (the same page again, or backwards): asking on
            # would loop, and repeat items.
            raise ApiFatalError(f"Pagination arrêtée sur {redact_path(path)} : le partenaire ne renvoie pas la page "
                                "demandée (« Content-Range » qui n'avance pas)")
        start = last + 1
    raise ApiFatalError(f"Pagination arrêtée après {max_pages} pages sur {redact_path(path)} (le partenaire annonce toujours une suite)")


def by_page(session: PartnerSession, path: str, *, params: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None, size: int = 100, key: str | None = None,
            page_param: str = "page", size_param: str = "taille", first: int = 1, max_pages: int = 1000,
            max_items: int = 100_000, max_bytes: int = 200 << 20) -> Iterator[Any]:
    """Every item of a page-numbered list (a page shorter than ``size`` is the last)."""
    budget = _Budget(path, max_items, max_bytes)
    for number in range(first, first + max_pages):
        response = session.request("GET", path, params={**(params or {}), page_param: number, size_param: size},
                                   headers=headers, accept=(200, 204, 206))
        items = _items(response.data, key)
        budget.spend(len(items), len(response.body))
        yield from items
        if len(items) < size:
            return
    raise ApiFatalError(f"Pagination arrêtée après {max_pages} pages sur {redact_path(path)} (le partenaire annonce toujours une suite)")

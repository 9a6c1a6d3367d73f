"""Small-cell suppression for the counts the hub sends to partners.

A partner that knows its own file must not learn, from counts, that a handful of identifiable people refused or
opposed. Primary rule: a count from 1 to ``threshold - 1`` is shown as ``"< threshold"``. Secondary rule: in a
group whose total the reader knows, a single suppressed cell could be recomputed by subtraction, so the smallest
other non-zero cell is suppressed too. Zero is shown: it reveals no one. Threshold per flow
(``seuil_petits_effectifs``, default 11 as in the CNAM/CNIL small-numbers rule); see docs/consentement.md.
"""

from __future__ import annotations


def suppress(cells: dict[str, int], threshold: int) -> dict[str, int | str]:
    """Cells of one group whose total is published elsewhere (so differences must not reveal a small cell)."""
    hidden = {k for k, v in cells.items() if 0 < v < threshold}
    if len(hidden) == 1:
        others = sorted((v, k) for k, v in cells.items() if k not in hidden and v > 0)
        if others:
            hidden.add(others[0][1])
    masked = f"< {threshold}"
    return {k: masked if k in hidden else v for k, v in cells.items()}

"""What the hub's outputs may reveal beyond their own rows: small counts and row order (docs/divulgation.md).

Counts. The hub sends no count of withheld or delivered records to a sender (its processing receipt carries only its
own file's read and rejected counts). ``suppress`` remains for any count a partner might one day receive: a count
from 1 to ``threshold - 1`` is shown as ``"< threshold"``; in a group whose total the reader knows, a single hidden
cell could be recomputed by subtraction, so the smallest other non-zero cell is hidden too, shown as
``"≥ threshold"`` (what it is: a hidden cell never states something false). Zero is shown: it reveals no one.

Row order. Rows in input order let two recipients line their files up row by row and see who is missing from one
of them. Each recipient's rows are therefore sorted by a keyed hash of its own pseudonym: the key is derived from the
hub's secret, the flow, the recipient and the input's SHA-256, so the order is its own, depends on nothing another
recipient gets, and the same input gives byte-identical files when it is run again.
"""

from __future__ import annotations

import hmac

#: Domain separation: the row-order key is never a pseudonymisation key, even though it comes from the same secret.
ROW_ORDER_LABEL = b"spie-hub/ordre-des-lignes/v1|"
SORT_KEY_BYTES = 16


def suppress(cells: dict[str, int], threshold: int) -> dict[str, int | str]:
    """Cells of one group whose total is published elsewhere (so differences must not reveal a small cell).

    When no other non-zero cell can hide the small one (every other cell is zero), the zeros and the total would
    give it away: every cell of the group is shown as ``"< threshold"``, which is true of each of them."""
    hidden = {k for k, v in cells.items() if 0 < v < threshold}
    complement: set[str] = set()
    if len(hidden) == 1:
        others = sorted((v, k) for k, v in cells.items() if k not in hidden and v > 0)
        if others:
            complement.add(others[0][1])
        else:
            hidden = set(cells)
    small, large = f"< {threshold}", f"≥ {threshold}"
    return {k: small if k in hidden else large if k in complement else v for k, v in cells.items()}


def row_order_key(secret: bytes, flow: str, recipient: str, input_sha256: str) -> bytes:
    """The key that orders one recipient's rows for one input (same input, same order: re-runs are identical)."""
    message = ROW_ORDER_LABEL + "|".join((flow, recipient, input_sha256)).encode("utf-8")
    return hmac.digest(secret, message, "sha256")


def row_sort_key(order_key: bytes, pseudonym: str) -> bytes:
    """Where a row goes in its recipient's file: a keyed hash of the pseudonym that recipient knows the person by."""
    return hmac.digest(order_key, pseudonym.encode("utf-8"), "sha256")[:SORT_KEY_BYTES]

"""French formats for what the DPO reads: ``1 234,5`` (narrow no-break space, decimal comma), ``1 décembre 2026``.

Written out rather than through ``locale``: the machine's locale is not the reader's, and a report must read the
same wherever it was generated.
"""

from __future__ import annotations

import datetime as dt

#: U+202F NARROW NO-BREAK SPACE: the thousands separator of French typography (never a line break inside a number).
NNBSP = "\u202f"
MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre", "novembre",
          "décembre")
SHORT_MONTHS = ("janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.", "déc.")


def nombre(value: float | int | None, decimals: int = 0) -> str:
    """``1234567.891`` → ``1 234 567,9`` with ``decimals=1``; ``None`` → ``—``."""
    if value is None:
        return "—"
    text = f"{value:,.{decimals}f}"  # "1,234,567.9"
    return text.replace(",", NNBSP).replace(".", ",")


def pourcent(part: float, total: float, decimals: int = 1) -> str:
    return "—" if not total else f"{nombre(100 * part / total, decimals)}{NNBSP}%"


def _as_date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def date_fr(value: dt.date | str | None) -> str:
    """``2026-12-01`` → ``1 décembre 2026`` (``1er`` is the usage for the first day of a month)."""
    if value is None or value == "":
        return "—"
    day = _as_date(value)
    return f"{'1er' if day.day == 1 else day.day} {MONTHS[day.month - 1]} {day.year}"


def date_courte(value: dt.date | str) -> str:
    """``2026-12-01`` → ``1 déc.``: axis ticks."""
    day = _as_date(value)
    return f"{day.day} {SHORT_MONTHS[day.month - 1]}"


def horodatage_fr(value: str | None) -> str:
    """``2026-12-01T03:05:20+00:00`` → ``1er décembre 2026 à 03:05 (UTC)``."""
    if not value:
        return "—"
    return f"{date_fr(value)} à {value[11:16]} (UTC)"


def duree_fr(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{nombre(seconds)}{NNBSP}s"
    if seconds < 7200:
        return f"{nombre(seconds / 60, 1)}{NNBSP}min"
    if seconds < 172800:
        return f"{nombre(seconds / 3600, 1)}{NNBSP}h"
    return f"{nombre(seconds / 86400, 1)}{NNBSP}j"

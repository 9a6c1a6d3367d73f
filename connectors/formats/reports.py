"""Small reports the hub writes for people (rejections sent back to a sender, deletion notices): the French CSV
dialect, every cell neutralised against formula injection. Shared by the run, the consent notices and the CSV
output format; not an output format itself."""

from __future__ import annotations

import csv
from typing import IO, Any

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    """Prefix with a quote any cell a spreadsheet would evaluate (CSV formula injection)."""
    return "'" + cell if cell.startswith(_FORMULA_PREFIXES) else cell


def french_csv_writer(handle: IO[str], separator: str = ";") -> Any:
    """The CSV dialect of every file the hub writes for people: ``;``, CRLF (the handle adds the UTF-8 BOM)."""
    return csv.writer(handle, delimiter=separator, lineterminator="\r\n")


def write_report(handle: IO[str], header: list[str], rows: list[tuple[Any, ...]]) -> None:
    """A small report (e.g. rejections sent back to a partner), every cell neutralised: reasons can quote codes
    taken from the partner's own file."""
    writer = french_csv_writer(handle)
    writer.writerow(header)
    writer.writerows([neutralise("" if cell is None else str(cell)) for cell in row] for row in rows)

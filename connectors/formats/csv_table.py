"""Shared streaming machinery of the partner CSV readers of issue 11 (CNAF contacts, Département, France Travail
extract): header checks, separator sniffing, row cells, and the row handed to the mapping as a small XML element.

Why an element and not a dict: the mapping compiler's column mode (``lecture: csv``) has no ``repeter`` and no
constants inside ``joindre``, and a row of these files carries lists (a CER, a rendez-vous, the FT barriers, the
actions of a person). The XPath mode has both: each row becomes ``<ligne><c n="Nom">…</c>…</ligne>`` (one ``c`` per
known column, in header order) plus any ``<derive n="…">`` values the reader computed from a partner convention
(a crosswalk, a chosen phone number), and the mapping reads ``c[@n='Nom']``. Nothing is kept after the row.

What is wrong with the *file* stops it whole (``FatalInputError``): empty, UTF-16, not UTF-8, separator other than
the allowed ones, required columns missing, a column repeated, a NUL byte, a cell over 64 KiB, an unterminated
quote. What is wrong with a *row* rejects that row only, with its line number (``RowProblem``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from lxml import etree

from connectors.formats.base import BadRecord, InputFacts, PartnerRecord
from connectors.formats.partner_csv import FIELD_LIMIT, _check_start
from spie_hub.core.errors import FatalInputError

_SEPARATOR_NAMES = {";": "point-virgule « ; »", ",": "virgule « , »", "\t": "tabulation", "|": "barre « | »"}
_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_FR = re.compile(r"^(\d{2})/(\d{2})/(\d{4})$")
_ISO_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?$")


class RowProblem(Exception):
    """One row cannot be used; the message (French, naming columns, never values) goes back to the sender."""


@dataclass(frozen=True)
class Layout:
    """The columns of a format: ``required`` must be in the header, ``optional`` may be; any other column is
    ignored and reported as an anomaly. ``separators``: the allowed ones (several: sniffed from the header line).
    ``star_marks_required``: a header may mark columns with ``*`` (carnet de bord templates): the mark is dropped."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    separators: tuple[str, ...] = (";",)
    star_marks_required: bool = False

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self.required) | frozenset(self.optional)


@dataclass(frozen=True)
class Table:
    """A file's header as read: the chosen separator and the column names (cleaned)."""

    separator: str
    columns: tuple[str, ...]


def _shown(separator: str) -> str:
    return _SEPARATOR_NAMES.get(separator, f"« {separator} »")


def sniff_separator(header_line: str, allowed: tuple[str, ...]) -> str:
    """The separator of the header line among ``allowed``: the one that splits it into the most cells. Any other
    candidate found (tabulation, ``|``, or a disallowed ``,``/``;``) is named in the refusal."""
    counts = {sep: header_line.count(sep) for sep in (";", ",", "\t", "|")}
    usable = [sep for sep in allowed if counts.get(sep, header_line.count(sep))]
    if usable:
        return max(usable, key=lambda sep: header_line.count(sep))
    expected = " ou ".join(_shown(sep) for sep in allowed)
    found = [sep for sep, n in counts.items() if n and sep not in allowed]
    if found:
        raise FatalInputError(f"séparateur {_shown(max(found, key=counts.__getitem__))} trouvé dans l'en-tête : "
                              f"{expected} attendu", element="en-tête", line=1)
    raise FatalInputError(f"en-tête sans séparateur (une seule colonne) : {expected} attendu", element="en-tête", line=1)


def _clean_header(raw: list[str], layout: Layout) -> tuple[str, ...]:
    names = [name.strip() for name in raw]
    if layout.star_marks_required:
        names = [name.rstrip("*").strip() for name in names]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise FatalInputError(f"en-tête : colonne(s) répétée(s) : {', '.join(repeated)}", element="en-tête", line=1)
    missing = [c for c in layout.required if c not in names]
    if missing:
        raise FatalInputError(f"en-tête : colonne(s) obligatoire(s) absente(s) : {', '.join(missing)}",
                              element="en-tête", line=1)
    return tuple(names)


LINE_LIMIT = 1 << 20


class _Lines:
    """Physical lines of the file, decoded one by one (so an encoding error names its true line), with their
    endings counted (to report mixed line endings). A line over 1 MiB stops the file: memory stays bounded."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.crlf, self.lf, self.number = stream, 0, 0, 0

    def __iter__(self) -> Iterator[str]:
        while raw := self.stream.readline(LINE_LIMIT + 1):
            self.number += 1
            if len(raw) > LINE_LIMIT:
                raise FatalInputError(f"ligne {self.number} de plus de {LINE_LIMIT >> 20} Mio : fichier illisible",
                                      element="ligne", line=self.number)
            if self.number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if b"\x00" in raw:  # Python's csv module accepts NUL since 3.11: refuse it here (binary or corrupt file)
                raise FatalInputError(f"CSV illisible ligne {self.number} : caractère NUL (fichier binaire ou corrompu)",
                                      element="ligne", line=self.number)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise FatalInputError(f"encodage : UTF-8 attendu (octet invalide ligne {self.number} ; fichier en "
                                      "Latin-1 ou Windows-1252 ? le réenregistrer en UTF-8)", line=self.number) from None
            if line.endswith("\r\n"):
                self.crlf += 1
            elif line.endswith("\n"):
                self.lf += 1
            yield line


def read_table(stream: BinaryIO, facts: InputFacts, layout: Layout,
               choose: Callable[[tuple[str, ...]], Layout] | None = None) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
    """Stream the rows of a CSV file: ``(line, cells, problem)``; ``cells`` holds the known columns only (stripped),
    ``problem`` says why a row cannot be split. Blank lines are skipped. ``facts.unites_lues`` counts the rows.
    ``choose``: for a format with several kinds of file, picks the layout from the header's names (``layout`` then
    only gives the separators)."""
    _check_start(stream)
    buffered = io.BufferedReader(stream) if isinstance(stream, io.RawIOBase) else stream  # type: ignore[arg-type]
    lines = _Lines(buffered)
    physical = iter(lines)
    csv.field_size_limit(FIELD_LIMIT)
    try:
        first = next(physical, None)
        if first is None or not first.strip():
            raise FatalInputError("fichier sans en-tête", element="en-tête", line=1)
        separator = sniff_separator(first, layout.separators)
        reader = csv.reader(itertools.chain([first], physical), delimiter=separator, strict=True)
        raw = next(reader)
        if choose is not None:
            layout = choose(tuple(name.strip() for name in raw))
        header = _clean_header(raw, layout)
        ignored = [name for name in header if name and name not in layout.known]
        if ignored:
            facts.anomalies.append(f"colonne(s) inconnue(s) ignorée(s) : {', '.join(ignored)}")
        keep = [(index, name) for index, name in enumerate(header) if name in layout.known]
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line is not a record
            facts.unites_lues += 1
            if len(row) != len(header):
                yield reader.line_num, None, f"{len(row)} colonne(s) au lieu de {len(header)}"
                continue
            yield reader.line_num, {name: row[index].strip() for index, name in keep}, None
    except csv.Error as error:
        reason = "caractère NUL" if "NUL" in str(error) else \
            f"cellule de plus de {FIELD_LIMIT // 1024} Kio" if "field larger" in str(error) else "guillemet non refermé ou mal placé"
        raise FatalInputError(f"CSV illisible ligne {lines.number} : {reason}", element="ligne", line=lines.number) from None
    if lines.crlf and lines.lf:
        facts.anomalies.append(f"fins de ligne mélangées ({lines.crlf} CRLF, {lines.lf} LF) : fichier assemblé ou altéré ?")


# -- cell conventions -------------------------------------------------------------------------------------------------

def date_cell(column: str, text: str, *, iso: bool = True, french: bool = False, with_time: bool = False) -> str:
    """The cell as ``AAAA-MM-JJ`` (what the mapping's ``date`` reads); ``RowProblem`` naming the column otherwise."""
    if not text:
        return ""
    match = (_ISO.match(text) if iso else None) or (_ISO_TIME.match(text) if with_time else None)
    if match is not None:
        year, month, day = match.group(1), match.group(2), match.group(3)
    elif french and (fr := _FR.match(text)) is not None:
        day, month, year = fr.groups()
    else:
        shapes = [s for s, on in (("AAAA-MM-JJ", iso), ("AAAA-MM-JJ HH:MM:SS.0", with_time), ("JJ/MM/AAAA", french)) if on]
        raise RowProblem(f"{column} : date invalide (attendu {' ou '.join(shapes)})")
    try:
        return dt.date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        raise RowProblem(f"{column} : date impossible (jour ou mois hors calendrier)") from None


def boolean_cell(column: str, text: str) -> str:
    """``Oui``/``Non``, ``O``/``N``, ``1``/``0`` (any case) as ``1``/``0`` for the mapping's ``booleen``."""
    value = text.strip().upper()
    if not value:
        return ""
    if value in ("O", "OUI", "1", "VRAI"):
        return "1"
    if value in ("N", "NON", "0", "FAUX"):
        return "0"
    raise RowProblem(f"{column} : valeur invalide (attendu Oui ou Non)")


def row_element(line: int, cells: Mapping[str, str], derived: Mapping[str, str] | None = None,
                children: list[etree._Element] | None = None) -> etree._Element:
    """The row as the XPath mapping reads it: ``<ligne n="12"><c n="Nom">…</c>…<derive n="…">…</derive></ligne>``."""
    element = etree.Element("ligne", n=str(line))
    try:
        for name, value in cells.items():
            etree.SubElement(element, "c", n=name).text = value
        for name, value in (derived or {}).items():
            etree.SubElement(element, "derive", n=name).text = value
    except ValueError:  # lxml refuses control characters: the row is unusable, never the whole file
        raise RowProblem("caractère de contrôle interdit dans une cellule") from None
    for child in children or ():
        element.append(child)
    return element


def records_from(rows: Iterator[tuple[int, etree._Element | None, str | None]]) -> Iterator[PartnerRecord | BadRecord]:
    """Row elements (or problems) as the run's partner records: the row is its own parent."""
    for line, element, problem in rows:
        position = f"ligne {line}"
        if element is None:
            yield BadRecord(position, line, problem or "ligne illisible")
        else:
            yield PartnerRecord(element, element, position, line)

"""Streaming reader of partner CSV files (``;``, UTF-8 with or without BOM, one header line).

Used for France Travail's monthly files to the Département (inscriptions, cessations, radiations; layout from
WebRSA's ``IntegrationfluxpeShell``: ``nir;identifiantpe;nom;prenom;dtnai;date;code;motif;nir2;codeinsee;localite;
adresse;ale``, dates JJ/MM/AAAA). The layout itself (columns, key) comes from the mapping file.

What is wrong with the *file* stops it whole (``FatalInputError``: quarantine and notice to the sender): empty or
binary content, another encoding, another separator, missing columns, a NUL byte, a cell over 64 KiB, an
unterminated quote. What is wrong with a *row* rejects that row only, with its line number: a wrong number of
cells. Mixed line endings are read correctly and reported as an anomaly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from connectors.formats.base import BadRecord, InputFacts, PartnerRecord, Reader
from spie_hub.core.errors import FatalInputError

FIELD_LIMIT = 64 * 1024
SEPARATOR = ";"


@dataclass(frozen=True)
class CsvRow:
    line: int
    values: dict[str, str] | None
    problem: str | None = None


class _Lines:
    """Physical lines of the text stream, with their endings counted (to report mixed line endings)."""

    def __init__(self, text: io.TextIOWrapper) -> None:
        self.text, self.crlf, self.lf, self.number = text, 0, 0, 0

    def __iter__(self) -> Iterator[str]:
        for line in self.text:
            self.number += 1
            if "\x00" in line:  # Python's csv module accepts NUL since 3.11: refuse it here (binary or corrupt file)
                raise FatalInputError(f"CSV illisible ligne {self.number} : caractère NUL (fichier binaire ou corrompu)")
            if line.endswith("\r\n"):
                self.crlf += 1
            elif line.endswith("\n"):
                self.lf += 1
            yield line


def _check_start(stream: BinaryIO) -> None:
    head = stream.read(4)
    if not head:
        raise FatalInputError("fichier vide (0 octet)")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FatalInputError("fichier encodé en UTF-16 : UTF-8 attendu")
    stream.seek(0)


def _check_header(header: list[str], columns: tuple[str, ...]) -> list[str]:
    names = [h.strip() for h in header]
    if names == list(columns):
        return names
    if len(names) == 1:
        found = next((sep for sep in (",", "\t", "|") if sep in names[0]), None)
        if found:
            shown = "tabulation" if found == "\t" else found
            raise FatalInputError(f"séparateur « {shown} » détecté dans l'en-tête : « ; » attendu")
    missing = [c for c in columns if c not in names]
    extra = [n for n in names if n not in columns]
    if missing:
        raise FatalInputError(f"en-tête : colonnes manquantes : {', '.join(missing)}")
    if extra or len(names) != len(set(names)):
        raise FatalInputError("en-tête : colonnes inattendues ou répétées")
    return names  # same columns in another order: read by name


def read_rows(stream: BinaryIO, entete: InputFacts, columns: tuple[str, ...]) -> Iterator[CsvRow]:
    _check_start(stream)
    buffered = io.BufferedReader(stream) if isinstance(stream, io.RawIOBase) else stream
    text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="strict", newline="")  # type: ignore[arg-type]
    lines = _Lines(text)
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(lines, delimiter=SEPARATOR, strict=True)
    try:
        try:
            header = _check_header(next(reader), columns)
        except StopIteration:
            raise FatalInputError("fichier sans en-tête") from None
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line is not a record
            entete.unites_lues += 1
            if len(row) != len(header):
                yield CsvRow(reader.line_num, None, f"{len(row)} colonne(s) au lieu de {len(header)}")
                continue
            yield CsvRow(reader.line_num, dict(zip(header, row, strict=True)))
    except UnicodeDecodeError:
        raise FatalInputError(f"encodage : UTF-8 attendu (octet invalide vers la ligne {lines.number + 1})") from None
    except csv.Error as error:
        reason = "caractère NUL" if "NUL" in str(error) else \
            f"cellule de plus de {FIELD_LIMIT // 1024} Kio" if "field larger" in str(error) else "guillemet non refermé ou mal placé"
        raise FatalInputError(f"CSV illisible ligne {reader.line_num} : {reason}", element="ligne") from None
    if lines.crlf and lines.lf:
        entete.anomalies.append(f"fins de ligne mélangées ({lines.crlf} CRLF, {lines.lf} LF) : fichier assemblé ou altéré ?")


class PartnerCsvReader(Reader):
    """A partner CSV (France Travail's monthly files): one record per row, columns named by the mapping."""

    format: ClassVar[str] = "ft-flux-mensuel"

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        for row in read_rows(stream, facts, self.settings.columns):
            position = f"ligne {row.line}"
            if row.problem is not None or row.values is None:
                yield BadRecord(position, row.line, row.problem or "ligne illisible")
            else:
                yield PartnerRecord(row.values, row.values, position, row.line)

"""The CSV output format (writer ``csv``), configured in ``mappings/sorties/*.yaml``: columns picked from the shared record.

A column's data category is the category of the schema block it reads; a column whose category is not permitted
for the person is written empty. Every cell that a spreadsheet would run as a formula is neutralised.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, BinaryIO, ClassVar

from connectors.formats.base import OutputFormat, RecordWriter
from connectors.formats.dictionary import DictionaryEntry, entry
from connectors.formats.reports import french_csv_writer, neutralise
from schemas.categories import CATEGORIE_DU_BLOC, CategorieDonnees
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import ConfigurationError


def _render(value: Any, as_label: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, Enum):
        return value.libelle if as_label else value.value  # type: ignore[attr-defined]
    if isinstance(value, bool):
        return "oui" if value else "non"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return " ".join(_render(v, as_label) for v in value)
    return neutralise(str(value))


@dataclass(frozen=True)
class Column:
    entete: str
    category: CategorieDonnees | None
    get: Callable[[PersonneSPIE, str], str]
    describe: DictionaryEntry | None = None


def _column(spec: dict[str, Any]) -> Column:
    path = spec["champ"].split(".")
    as_label = spec.get("valeur") == "libelle"
    identifier = spec.get("identifiant")
    described = entry(spec["entete"], spec["champ"], description=spec.get("description"))
    if identifier is not None:
        described = replace(described, description=f"{described.description} ({identifier})", type="texte", valeurs="")
    elif as_label and described.valeurs:
        described = replace(described, type="libellé", valeurs=" | ".join(
            v.split(" = ", 1)[-1] for v in described.valeurs.split(" | ")))
    if path == ["pseudonyme"]:
        return Column(spec["entete"], None, lambda record, pseudonym: pseudonym, described)
    if path[0] not in CATEGORIE_DU_BLOC and path[0] != "version_schema":
        raise ConfigurationError(f"Sortie : champ inconnu {spec['champ']!r}")

    def get(record: PersonneSPIE, _pseudonym: str) -> str:
        value: Any = record
        for part in path:
            if value is None:
                return ""
            if part.isdigit():
                value = value[int(part)] if int(part) < len(value) else None
            else:
                value = getattr(value, part)
        if identifier is not None:
            value = next((i.valeur for i in value or [] if i.systeme == identifier), None)
        return _render(value, as_label)

    return Column(spec["entete"], CATEGORIE_DU_BLOC.get(path[0]), get, described)


class CsvRowWriter(RecordWriter):
    def __init__(self, output: CsvOutput, stream: BinaryIO) -> None:
        self.output = output
        # The BOM lets spreadsheets read UTF-8; the handle is detached on close so the caller's stream stays open.
        # Write-through: each row reaches the stream during its own ``write`` (one ``write`` per row from the csv
        # module), which is what lets the run give each recipient its rows in an order of its own
        # (spie_hub/run/deliver.py, ShuffledRows).
        self.text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="", write_through=True)
        self.writer = french_csv_writer(self.text, output.separator)
        self.writer.writerow([c.entete for c in output.columns])
        self.rows = 0

    def write(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> None:
        """Write one row, leaving empty every column whose category is not in ``allowed``."""
        self.writer.writerow([
            c.get(record, pseudonym) if c.category is None or c.category in allowed else ""
            for c in self.output.columns
        ])
        self.rows += 1

    def close(self) -> None:
        self.text.flush()
        self.text.detach()


class CsvOutput(OutputFormat):
    """A CSV delivery: ``;``, CRLF, UTF-8 with BOM, one row per person, columns picked from the shared record."""

    format: ClassVar[str] = "csv"
    extension: ClassVar[str] = ".csv"

    def __init__(self, name: str, separator: str, columns: tuple[Column, ...]) -> None:
        self.name, self.separator, self.columns = name, separator, columns

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CsvOutput:
        try:
            return cls(spec["sortie"], spec.get("separateur", ";"), tuple(_column(c) for c in spec["colonnes"]))
        except (KeyError, TypeError, AttributeError) as error:
            raise ConfigurationError(f"Format de sortie {spec.get('sortie')!r} : clé manquante ou mal formée ({error})") from None

    def open(self, stream: BinaryIO) -> CsvRowWriter:
        return CsvRowWriter(self, stream)

    def media(self) -> dict[str, str]:
        return {"encodage": "UTF-8 avec BOM", "separateur": self.separator}

    def dictionary(self) -> list[DictionaryEntry]:
        return [c.describe for c in self.columns if c.describe is not None]

"""Streaming reader of the Département CSV (orientations, référents, CER, rendez-vous, sorties; one row per person).

The layout is the hub's own, modelled on the carnet de bord import templates (shared/formats/carnet-de-bord/
cdb_import/, README §2.6): UTF-8 with BOM, ``;``, CRLF, a header where ``*`` marks the required columns (the mark
is accepted and dropped), values in carnet de bord's vocabulary. It is documented in French in
docs/formats/departement-csv.md; mapping: mappings/departement_orientations.yaml.

The reader applies the format's conventions so that the mapping stays declarative: dates ``AAAA-MM-JJ`` or
``JJ/MM/AAAA`` (both unambiguous; written ``AAAA-MM-JJ``), ``Oui``/``Non`` as ``1``/``0``, carnet de bord's codes
turned into the shared vocabularies (orientation ``sociopro`` → ``socio-pro``, rendez-vous ``present`` →
``honore``…), and the consistency of each block (a rendez-vous needs its date, a sortie its date and type, an end
never before its start). A row that breaks one of them is rejected with its line and a French reason naming the
column (never the value).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, ClassVar

from lxml import etree

from connectors.formats.base import BadRecord, InputFacts, PartnerRecord, Reader
from connectors.formats.csv_table import Layout, RowProblem, boolean_cell, date_cell, read_table, records_from, row_element
from schemas.codes import Organisme, StatutRendezVous, TypeOrientation, TypeSortie
from schemas.crosswalks import ORIENTATION

IDENTIFIANT, NIR, NOM, PRENOM, NAISSANCE = "Identifiant dans le SI", "NIR", "Nom", "Prénom", "Date de naissance"
REQUIRED = (IDENTIFIANT, NOM, PRENOM, NAISSANCE)
OPTIONAL = (
    NIR, "Identifiant France Travail",
    "Orientation - type", "Orientation - date", "Orientation - structure", "Orientation - organisme",
    "Référent - structure", "Référent - fonction", "Référent - début", "Référent - fin",
    "CER - date de signature", "CER - début", "CER - fin",
    "Rendez-vous - date", "Rendez-vous - objet", "Rendez-vous - statut",
    "Sortie - date", "Sortie - type",
    "RQTH", "BOE",
)
DATES = (NAISSANCE, "Orientation - date", "Référent - début", "Référent - fin", "CER - date de signature",
         "CER - début", "CER - fin", "Rendez-vous - date", "Sortie - date")
BOOLEANS = ("RQTH", "BOE")

#: carnet de bord's values (keys.ts, README §2.6) and the shared codes themselves → shared code.
_ORIENTATIONS = {**{k.lower(): v.value for k, v in ORIENTATION.items()}, **{o.value: o.value for o in TypeOrientation}}
_ORGANISMES = {o.value: o.value for o in Organisme}
_STATUTS_RDV = {"pending": "prevu", "present": "honore", "absent": "absent",
                **{s.value: s.value for s in StatutRendezVous}}
_SORTIES = {s.value: s.value for s in TypeSortie}
#: Each block: the columns that make it, and the one(s) it cannot do without when any of them is filled.
_BLOCKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orientation": (("Orientation - type", "Orientation - date", "Orientation - structure", "Orientation - organisme"),
                    ("Orientation - type",)),
    "référent": (("Référent - structure", "Référent - fonction", "Référent - début", "Référent - fin"),
                 ("Référent - structure",)),
    "rendez-vous": (("Rendez-vous - date", "Rendez-vous - objet", "Rendez-vous - statut"), ("Rendez-vous - date",)),
    "sortie": (("Sortie - date", "Sortie - type"), ("Sortie - date", "Sortie - type")),
}
_PERIODS = (("Référent - début", "Référent - fin"), ("CER - début", "CER - fin"))


def _code(column: str, text: str, codes: dict[str, str], expected: str) -> str:
    if not text:
        return ""
    code = codes.get(text.strip().lower())
    if code is None:
        raise RowProblem(f"{column} : valeur inconnue (attendu {expected})")
    return code


def normalise(cells: dict[str, str]) -> dict[str, str]:
    """The row in the shared vocabularies, or ``RowProblem``; returns the derived values."""
    for column in REQUIRED:
        if not cells[column]:
            raise RowProblem(f"{column} : valeur obligatoire manquante")
    for column in DATES:
        if column in cells:
            cells[column] = date_cell(column, cells[column], iso=True, french=True)
    for column in BOOLEANS:
        if column in cells:
            cells[column] = boolean_cell(column, cells[column])
    for column, codes, expected in (
        ("Orientation - type", _ORIENTATIONS, "pro, sociopro ou social"),
        ("Orientation - organisme", _ORGANISMES, "departement, france-travail, mission-locale, cap-emploi ou autre"),
        ("Rendez-vous - statut", _STATUTS_RDV, "pending, present, absent, excuse ou annule"),
        ("Sortie - type", _SORTIES, ", ".join(_SORTIES)),
    ):
        if column in cells:
            cells[column] = _code(column, cells[column], codes, expected)
    for block, (columns, needed) in _BLOCKS.items():
        if any(cells.get(c) for c in columns):
            missing = [c for c in needed if not cells.get(c)]
            if missing:
                raise RowProblem(f"bloc « {block} » incomplet : {', '.join(missing)} à renseigner")
    for start, end in _PERIODS:
        if cells.get(start) and cells.get(end) and cells[end] < cells[start]:
            raise RowProblem(f"{end} antérieure à {start}")
    # The column holds the *next* appointment: without a status it is still to come.
    return {"statut rendez-vous": (cells.get("Rendez-vous - statut") or "prevu") if cells.get("Rendez-vous - date") else ""}


class DepartementCsvReader(Reader):
    """One record per row (a person followed by the Département); cells as ``c[@n='Colonne']``."""

    format: ClassVar[str] = "cdb-csv"

    def layout(self) -> Layout:
        required = REQUIRED + tuple(c for c in self.settings.columns if c not in REQUIRED)
        return Layout(required, tuple(c for c in OPTIONAL if c not in required), star_marks_required=True)

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        return records_from(self._rows(stream, facts))

    def _rows(self, stream: BinaryIO, facts: InputFacts) -> Iterator[tuple[int, etree._Element | None, str | None]]:
        for line, cells, problem in read_table(stream, facts, self.layout()):
            if cells is None:
                yield line, None, problem
                continue
            try:
                yield line, row_element(line, cells, normalise(cells)), None
            except RowProblem as error:
                yield line, None, str(error)

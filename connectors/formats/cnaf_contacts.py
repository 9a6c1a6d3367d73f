"""Streaming reader of the CNAF "fichier de contacts" (CSV sent by a CAF or the MSA to the Département).

Layout (shared/formats/README.md §1.5, from rdv-insertion): ``MATRICULE;ROLE PERSONNE;TYPE PERSONNE;[NIR;]NUMERO
DEMANDE RSA;DATE DEMANDE RSA;DATE DEBUT DROITS - DEVOIRS;NOM RESPONSABLE DOSSIER;PRENOM RESPONSABLE DOSSIER;NUMERO
TELEPHONE DOSSIER;NUMERO TELEPHONE 2 DOSSIER;ADRESSE ELECTRONIQUE DOSSIER``. Both ``;`` and ``,`` are seen in real
files: the separator is sniffed from the header line (any other is refused). UTF-8 with or without BOM; a Latin-1
file is refused with a clear message (the samples are ASCII/UTF-8: no evidence of Latin-1 files). Dates JJ/MM/AAAA.

Conventions applied here (documented in mappings/caf_contacts.yaml):

* ``MATRICULE`` is written as the CNAF XML flux writes it (15 digits: the 7-digit allocataire number followed by
  zeros, README §1.4), so that the ``cnaf-matricule`` identifier of a contact matches the one of the XML flux. A
  matricule of 1 to 7 digits is left-padded to 7 (as rdv-insertion compares it) then completed to 15.
* ``telephone`` (derived): the first mobile number (06/07) of the two dossier numbers, else the first one (the
  choice rdv-insertion makes); spaces and dots removed. ``email``: spaces removed, lower case.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO, ClassVar

from lxml import etree

from connectors.formats.base import BadRecord, InputFacts, PartnerRecord, Reader
from connectors.formats.csv_table import Layout, RowProblem, date_cell, read_table, records_from, row_element

REQUIRED = ("MATRICULE", "ROLE PERSONNE", "NUMERO TELEPHONE DOSSIER", "NUMERO TELEPHONE 2 DOSSIER",
            "ADRESSE ELECTRONIQUE DOSSIER")
OPTIONAL = ("TYPE PERSONNE", "NIR", "NUMERO DEMANDE RSA", "DATE DEMANDE RSA", "DATE DEBUT DROITS - DEVOIRS",
            "NOM RESPONSABLE DOSSIER", "PRENOM RESPONSABLE DOSSIER")
DATES = ("DATE DEMANDE RSA", "DATE DEBUT DROITS - DEVOIRS")
_MATRICULE = re.compile(r"^\d{1,7}$|^\d{15}$")
_PHONE_NOISE = re.compile(r"[\s.\-]")


def normalise_matricule(text: str) -> str:
    if not _MATRICULE.match(text):
        raise RowProblem("MATRICULE : format invalide (1 à 7 chiffres, ou 15 comme dans le flux XML)")
    return text if len(text) == 15 else text.zfill(7) + "0" * 8


def choose_phone(first: str, second: str) -> str:
    numbers = [n for n in (_PHONE_NOISE.sub("", first), _PHONE_NOISE.sub("", second)) if n]
    mobile = next((n for n in numbers if n.startswith(("06", "07", "+336", "+337"))), None)
    return mobile or (numbers[0] if numbers else "")


class CnafContactsReader(Reader):
    """One record per row (a person of an RSA dossier); the row's cells as ``c[@n='COLONNE']``."""

    format: ClassVar[str] = "cnaf-contacts"

    def layout(self) -> Layout:
        required = REQUIRED + tuple(c for c in self.settings.columns if c not in REQUIRED)
        return Layout(required, tuple(c for c in OPTIONAL if c not in required), separators=(";", ","))

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        return records_from(self._rows(stream, facts))

    def _rows(self, stream: BinaryIO, facts: InputFacts) -> Iterator[tuple[int, etree._Element | None, str | None]]:
        for line, cells, problem in read_table(stream, facts, self.layout()):
            if cells is None:
                yield line, None, problem
                continue
            try:
                if not cells["MATRICULE"]:
                    raise RowProblem("MATRICULE : valeur obligatoire manquante")
                cells["MATRICULE"] = normalise_matricule(cells["MATRICULE"])
                for column in DATES:
                    if column in cells:
                        cells[column] = date_cell(column, cells[column], iso=False, french=True)
                derived = {
                    "telephone": choose_phone(cells["NUMERO TELEPHONE DOSSIER"], cells["NUMERO TELEPHONE 2 DOSSIER"]),
                    "email": re.sub(r"\s+", "", cells["ADRESSE ELECTRONIQUE DOSSIER"]).lower(),
                }
                yield line, row_element(line, cells, derived), None
            except RowProblem as error:
                yield line, None, str(error)

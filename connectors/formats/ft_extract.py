"""Streaming reader of France Travail's "extract SPIE carnet de bord" CSV: the principal file and the actions file.

Both are ``;``, UTF-8, with the literal ``NULL`` for an empty cell, dates ``AAAA-MM-JJ HH:MM:SS.0`` and ``O``/``N``
flags (shared/formats/README.md §3.6 a, §8; real samples from carnet de bord). Which file it is comes from the
header: the actions file has ``codeaction`` and ``lblaction``.

* Principal file: one record per row. Conventions applied here (the mapping, mappings/ft_extract_spie.yaml, stays
  declarative): ``NULL`` → empty; dates → ``AAAA-MM-JJ``; flags → ``1``/``0``; a row whose ``brsa`` flag is not set
  is rejected (the extract is for RSA beneficiaries: carnet de bord imports only those rows); derived values: the
  seven ``dif_*`` flags as ``<frein code="…"/>`` children (shared freins, README §6), ``sexe`` from ``civilite``,
  ``code_postal`` and ``commune`` from ``adresse_ligne6`` (« 08300 RETHEL », AFNOR line 6), ``orientation``
  ``pro`` for the France Travail modalities of the employment track (SUIVI, GUIDE, RENFORCE; GLOBAL → socio-pro).
* Actions file: the rows of one person (the file is sorted by ``identifiant_unique_de``, as the sample is) make one
  record holding an ``<action>`` child per row (a ``CEJ`` action is the person's contrat d'engagement jeune), with its
  ``theme`` (``lblaction`` through carnet de bord's
  categorisation file, ``data/ft_categorisation_actions.csv``, then to the shared freins; emploi and formation are
  no frein) and a ``statut`` deduced from its dates (end date: réalisée; start or realisation date: en cours;
  otherwise prévue). An unsorted file gives a person several records: the mapping's unique key rejects the later ones
  with the line of the first, so nothing is merged silently. The two files are not joined (a streaming reader sees
  one file): both give the same pivot (``identifiant_unique_de``), so the recipient joins them by pseudonym.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, ClassVar

from lxml import etree

from connectors.formats.base import BadRecord, InputFacts, PartnerRecord, Reader
from connectors.formats.csv_table import Layout, RowProblem, boolean_cell, date_cell, read_table, records_from, row_element

CATEGORISATION = Path(__file__).resolve().parent / "data" / "ft_categorisation_actions.csv"
IDENTIFIANT = "identifiant_unique_de"
PRINCIPAL = (
    IDENTIFIANT, "civilite", "nom", "prenom", "lieu_naissance", "code_lieu_naissance", "date_naissance",
    "adresse_ligne2", "adresse_ligne3", "adresse_ligne4", "adresse_ligne5", "adresse_ligne6", "departement", "dr",
    "rome_1", "appelation_rome_1", "rome_2", "appelation_rome_2", "mrech.axetravailprincipal",
    "mrech.axetravailsecondaire", "der_entretien_ppae", "der_entretien", "inscription", "code_motif_inscription",
    "motif_inscription", "categorie_inscription", "struct_principale", "referent_civilite", "referent_nom",
    "referent_prenom", "referent_mail", "code_safir", "modalite_accompagnement", "struct_suivi", "suivi_debut",
    "suivi_fin_prev", "dif_financiere", "dif_admin_jur", "dif_sante", "dif_logement", "dif_transport",
    "dif_inser_com", "dif_familiale", "brsa",
)
PRINCIPAL_REQUIRED = (IDENTIFIANT, "nom", "prenom", "date_naissance", "brsa")
ACTIONS = (IDENTIFIANT, "codeaction", "lblaction", "objectif_formation", "date_prescription", "date_realisation_action",
           "date_prev_debut", "date_debut", "date_fin", "formation", "adr.dc_commune_id")
ACTIONS_REQUIRED = (IDENTIFIANT, "codeaction", "lblaction")
PRINCIPAL_DATES = ("date_naissance", "der_entretien_ppae", "der_entretien", "inscription", "suivi_debut", "suivi_fin_prev")
ACTION_DATES = ("date_prescription", "date_realisation_action", "date_prev_debut", "date_debut", "date_fin")
#: The seven "difficulté" flags → shared frein (README §6; dif_inser_com → langue-calcul is the README's [I] reading).
FREINS = {"dif_financiere": "financier", "dif_admin_jur": "administratif", "dif_sante": "sante",
          "dif_logement": "logement", "dif_transport": "mobilite", "dif_inser_com": "langue-calcul",
          "dif_familiale": "famille"}
#: carnet de bord themes (ref_theme) that are a shared frein; the others (emploi, formation…) are not.
THEME_FREIN = {"logement": "logement", "mobilite": "mobilite", "sante": "sante", "contraintes_familiales": "famille",
               "difficulte_administrative": "administratif", "difficulte_financiere": "financier",
               "maitrise_langue": "langue-calcul", "numerique": "numerique"}
#: France Travail accompaniment modalities → shared orientation ([I]: suivi, guidé, renforcé are the employment
#: track, PED; the global accompaniment with the Département is the socio-professional one, PSO).
MODALITES = {"SUIVI": "pro", "GUIDE": "pro", "RENFORCE": "pro", "GLOBAL": "socio-pro"}
CIVILITES = {"M.": "1", "M": "1", "MR": "1", "MME": "2", "MLLE": "2"}
MAX_ACTIONS = 1000


@lru_cache(maxsize=1)
def action_themes() -> dict[str, str]:
    """``lblaction`` (upper case) → shared frein, from carnet de bord's categorisation file."""
    with CATEGORISATION.open(encoding="utf-8", newline="") as handle:
        return {row["actions"].strip().upper(): THEME_FREIN[row["focus"].strip()]
                for row in csv.DictReader(handle, delimiter=";") if row["focus"].strip() in THEME_FREIN}


def _clean(cells: dict[str, str], dates: tuple[str, ...], flags: tuple[str, ...]) -> None:
    for column, value in cells.items():
        if value.upper() == "NULL":
            cells[column] = ""
    for column in dates:
        if column in cells:
            cells[column] = date_cell(column, cells[column], iso=True, with_time=True)
    for column in flags:
        if column in cells:
            cells[column] = boolean_cell(column, cells[column])


def principal_row(line: int, cells: dict[str, str]) -> etree._Element:
    _clean(cells, PRINCIPAL_DATES, (*FREINS, "brsa"))
    for column in (IDENTIFIANT, "nom", "prenom", "date_naissance"):
        if not cells[column]:
            raise RowProblem(f"{column} : valeur obligatoire manquante")
    if cells["brsa"] != "1":
        raise RowProblem("brsa : personne non signalée bénéficiaire du RSA (hors du champ de l'extrait SPIE)")
    derived = {"sexe": CIVILITES.get(cells.get("civilite", "").upper(), "")}
    postal, _, town = cells.get("adresse_ligne6", "").partition(" ")
    if len(postal) == 5 and postal.isdigit() and town.strip():
        derived |= {"code_postal": postal, "commune": town.strip()}
    if orientation := MODALITES.get(cells.get("modalite_accompagnement", "").upper()):
        derived |= {"orientation": orientation, "organisme": "france-travail"}
    if cells.get("inscription"):
        derived["evenement"] = "inscription"
    if cells.get("der_entretien_ppae"):
        derived["contrat"] = "PPAE"  # the PPAE, dated by its last interview
    if cells.get("referent_nom") and cells.get("struct_suivi"):
        derived["referent"] = cells["struct_suivi"]  # a referent is named: the structure that follows the person
    freins = []
    for column, frein in FREINS.items():
        if cells.get(column) == "1":
            freins.append(etree.Element("frein", code=frein))
    return row_element(line, cells, derived, freins)


def action_element(cells: dict[str, str]) -> etree._Element:
    _clean(cells, ACTION_DATES, ())
    if not cells["lblaction"]:
        raise RowProblem("lblaction : valeur obligatoire manquante")
    status = "realisee" if cells.get("date_fin") else \
        "en-cours" if cells.get("date_debut") or cells.get("date_realisation_action") else "prevue"
    derived = {"theme": action_themes().get(cells["lblaction"].upper(), ""), "statut": status}
    if cells["codeaction"].upper() == "CEJ":
        derived["contrat"] = "CEJ"  # README §9: the CEJ lives in the actions file, with its start and end dates
    element = row_element(0, {k: v for k, v in cells.items() if k != IDENTIFIANT}, derived)
    element.tag = "action"
    del element.attrib["n"]
    return element


class FtExtractReader(Reader):
    """The principal file: one record per row; the actions file: one record per person (consecutive rows)."""

    format: ClassVar[str] = "ft-extract-spie"

    def layout(self, header: tuple[str, ...]) -> Layout:
        if "codeaction" in header and "lblaction" in header:
            return Layout(ACTIONS_REQUIRED, tuple(c for c in ACTIONS if c not in ACTIONS_REQUIRED))
        required = PRINCIPAL_REQUIRED + tuple(c for c in self.settings.columns if c not in PRINCIPAL_REQUIRED)
        return Layout(required, tuple(c for c in PRINCIPAL if c not in required))

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        return records_from(self._rows(stream, facts))

    def _rows(self, stream: BinaryIO, facts: InputFacts) -> Iterator[tuple[int, etree._Element | None, str | None]]:
        group: etree._Element | None = None  # the current person's record in an actions file
        person, count = "", 0
        for line, cells, problem in read_table(stream, facts, Layout(()), choose=self.layout):
            if cells is None:
                yield line, None, problem
                continue
            try:
                if "lblaction" not in cells:
                    yield line, principal_row(line, cells), None
                    continue
                identifier = "" if cells[IDENTIFIANT].upper() == "NULL" else cells[IDENTIFIANT]
                if not identifier:
                    raise RowProblem(f"{IDENTIFIANT} : valeur obligatoire manquante")
                action = action_element(cells)
            except RowProblem as error:
                yield line, None, str(error)
                continue
            if group is not None and identifier != person:
                yield (int(group.get("n", "0")), group, None) if count <= MAX_ACTIONS else \
                    (int(group.get("n", "0")), None, f"plus de {MAX_ACTIONS} actions pour une même personne")
                group = None
            if group is None:
                group, person, count = row_element(line, {IDENTIFIANT: identifier}), identifier, 0
            count += 1
            if count <= MAX_ACTIONS:  # beyond, the record is refused: stop growing it (flat memory)
                group.append(action)
        if group is not None:
            yield (int(group.get("n", "0")), group, None) if count <= MAX_ACTIONS else \
                (int(group.get("n", "0")), None, f"plus de {MAX_ACTIONS} actions pour une même personne")

"""Withdrawals of odd shapes never crash propagation, and a notice carries no partner identifier (issue 9).

In process, on the embedded SQLite store and on PostgreSQL: one real delivery of the CAF flow, then withdrawals
stored as an import (or a future import) may store them — odd pairs, recipients no flow delivers to, unreadable
JSON — and an opposition whose partner ``Consent.id`` is the person's NIR.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import audit_events, first_delivery, people_of
from sqlalchemy import insert, select

from consent.fhir_import import import_consents
from consent.revocation import propagate_withdrawals, withdrawal_concerns
from spie_hub.audit.log import now
from spie_hub.registry import load_flows
from spie_hub.store import revocations

DEP = "departement-052"
HEADER = "identifiant;nir;type;decision;statut;destinataires;categories;debut;fin\n"


def _rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


@pytest.fixture
def delivered(hub_home: Path, database_url: str, tmp_path: Path) -> Any:
    home, engine, pseudonymiser, flux, _bundle, summary = first_delivery(tmp_path, 60, seed=5)
    by_pseudonym = {pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), DEP): p for p in people_of(flux)}
    identified = [by_pseudonym[r["Pseudonyme"]]["NIR"] for r in _rows(summary.destinataires[DEP].fichier) if r["NIR"]]
    assert len(identified) >= 3
    yield home, engine, pseudonymiser, identified
    engine.dispose()


ODD_PAIRS = [
    "pas du json",
    json.dumps({"departement-052": "identite"}),
    json.dumps([["departement-052", "identite", "en trop"]]),
    json.dumps([["departement-052"]]),
    json.dumps([[52, "identite"], [None, None], "departement-052"]),
    json.dumps([["partenaire-inconnu", "identite"]]),
    json.dumps([["departement-052", "categorie-inconnue"]]),
    json.dumps([]),
    json.dumps(None),
]


def test_withdrawals_of_odd_shapes_are_propagated_without_a_crash_and_said(delivered: Any) -> None:
    home, engine, pseudonymiser, identified = delivered
    pivot = pseudonymiser.pivot_from_nir(identified[0]).pseudonyme
    propagate_withdrawals(engine, home, pseudonymiser, load_flows())  # the population's own withdrawals first
    with engine.begin() as connection:
        for n, pairs in enumerate(ODD_PAIRS):
            connection.execute(insert(revocations).values(subject=pivot, consent_ref=f"hub-ref-{n}", pairs=pairs,
                                                          aliases="[" if n % 2 else "{}", recorded_at=now()))
        # "*" for every recipient of the hub and every category (a withdrawal naming no recipient).
        connection.execute(insert(revocations).values(subject=pivot, consent_ref="hub-ref-tous",
                                                      pairs=json.dumps([["*", "*"]]), aliases="[]", recorded_at=now()))
    report = propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    assert report.retraits == len(ODD_PAIRS) + 1
    assert report.paires_ignorees >= 7
    with engine.connect() as connection:
        pending = connection.execute(select(revocations.c.id).where(revocations.c.propagated_at.is_(None))).all()
    assert pending == []
    # Their consents still cover what was delivered: nothing to delete, no notice.
    assert report.avis == 0


def test_a_withdrawal_that_cannot_be_read_concerns_every_run_and_one_naming_another_partner_does_not() -> None:
    flow_recipients = {"departement-052", "plateforme-insertion"}
    assert withdrawal_concerns("pas du json", flow_recipients)
    assert withdrawal_concerns(json.dumps([["*", "identite"]]), flow_recipients)
    assert withdrawal_concerns(json.dumps([[None, "identite"]]), flow_recipients)
    assert withdrawal_concerns(json.dumps([["departement-052", "identite"]]), flow_recipients)
    assert not withdrawal_concerns(json.dumps([["mission-locale-52", "identite"]]), flow_recipients)


def test_a_deletion_notice_names_no_partner_consent_identifier_in_its_reason(delivered: Any, tmp_path: Path) -> None:
    """The partner's Consent.id is the person's NIR (observed): it must not reach the recipient in the notice's
    reason nor in the audit's notice entries' reasons."""
    home, engine, pseudonymiser, identified = delivered
    nir = identified[1]
    opposition = tmp_path / "opposition.csv"
    opposition.write_text(HEADER + f"{nir};{nir};opposition;refus;actif;{DEP};toutes;2025-01-01;\n", encoding="utf-8")
    assert import_consents(opposition, engine, pseudonymiser, emetteur=DEP).retraits == 1
    report = propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    assert report.avis == 1
    rows = _rows(report.fichiers[0])
    assert len(rows) == 1 and rows[0]["Motif"].startswith("retrait ou opposition de la personne")
    for column in ("Pseudonyme", "Catégories à supprimer", "Fichiers concernés", "Motif", "Date d'effet"):
        assert nir[:13] not in rows[0][column], column
    payloads = [e.payload for e in audit_events(engine, home, "avis-suppression")]
    for payload in payloads:
        data = json.loads(payload)
        assert nir[:13] not in json.dumps({k: v for k, v in data.items() if k != "consentement"})

"""A withdrawal takes effect: deletion notices where data went, nothing more on the next run."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from helpers import audit_events, first_delivery, people_of

from consent.fhir_import import import_consents
from consent.revocation import propagate_withdrawals
from spie_hub.demo.data import generate
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.run.withdrawals import propagate

FLOW = "caf-vers-departement"
DEP = "departement-052"
HEADER = "identifiant;nir;type;decision;statut;destinataires;categories;debut;fin\n"


def _rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


@pytest.fixture
def delivered(hub_home: Path, database_url: str, tmp_path: Path):
    home, engine, pseudonymiser, flux, bundle, summary = first_delivery(tmp_path, 150, seed=11)
    by_pseudonym = {pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), DEP): p for p in people_of(flux)}
    identified = [r for r in _rows(summary.destinataires[DEP].fichier) if r["NIR"]]
    grants = {e["resource"]["subject"]["identifier"]["value"]: e["resource"]["id"]
              for e in json.loads(bundle.read_text())["entry"] if e["resource"].get("provision")
              and e["resource"]["decision"] == "deny"}
    chosen = [by_pseudonym[r["Pseudonyme"]]["NIR"] for r in identified[:4]]
    withdrawals = tmp_path / "retraits.csv"
    withdrawals.write_text(HEADER + "".join(f"{grants[n]};{n};consentement;accord;retire;{DEP};identite|contact;2025-01-01;2028-12-31\n"
                                            for n in chosen), encoding="utf-8")
    yield home, engine, pseudonymiser, summary, chosen, withdrawals, tmp_path
    engine.dispose()


def test_the_recipients_that_received_the_data_get_a_deletion_notice_once(delivered) -> None:
    home, engine, pseudonymiser, summary, chosen, withdrawals, _ = delivered
    report = import_consents(withdrawals, engine, pseudonymiser, emetteur=DEP)
    assert report.retraits == len(chosen) == 4
    propagation = propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    assert propagation.avis == 4 and len(propagation.fichiers) == 1
    notice = Path(propagation.fichiers[0])
    assert notice.parent == Path(summary.destinataires[DEP].fichier).parent  # in the recipient's own drop
    rows = _rows(notice)
    expected = {pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(n), DEP) for n in chosen}
    assert {r["Pseudonyme"] for r in rows} == expected
    assert {r["Catégories à supprimer"] for r in rows} == {"contact | identite"}
    assert {r["Fichiers concernés"] for r in rows} == {Path(summary.destinataires[DEP].fichier).name}
    text = notice.read_text(encoding="utf-8-sig")
    assert not any(n in text for n in chosen)
    # The platform received identity under its legal basis and never received contact: nothing to delete there.
    assert not list((home.root / "outbox" / "plateforme-insertion").glob("avis-suppression_*"))
    again = propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    assert (again.retraits, again.avis) == (0, 0)
    notices = [(e.recipient, e.subject) for e in audit_events(engine, home, "avis-suppression")]
    assert sorted(s for _, s in notices) == sorted(expected) and {r for r, _ in notices} == {DEP}


def test_after_a_withdrawal_the_next_run_sends_nothing_more_under_that_consent(delivered) -> None:
    home, engine, pseudonymiser, _, chosen, withdrawals, tmp_path = delivered
    import_consents(withdrawals, engine, pseudonymiser, emetteur=DEP)
    next_file = tmp_path / "flux2.xml"
    # Same seed and consent draws, so the same people; only the reference date (and so the file) changes.
    generate(next_file, tmp_path / "same-consents.json", 150, seed=11, anomaly_rate=0, reference=dt.date(2026, 11, 30))
    propagate(home)  # the DAG's first task, before any flow run
    summary = run_flow(FLOW, next_file, home)
    assert summary.statut == "termine"
    assert list((home.root / "outbox" / DEP).glob("avis-suppression_*"))
    rows = {r["Pseudonyme"]: r for r in _rows(summary.destinataires[DEP].fichier)}
    for nir in chosen:
        row = rows[pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(nir), DEP)]
        assert row["État du droit RSA"]  # RSA rights still go under CASF L262-40
        assert (row["NIR"], row["Nom"], row["Adresse"]) == ("", "", "")
    assert sum(1 for r in rows.values() if r["NIR"]) > 0  # the others' consents still hold

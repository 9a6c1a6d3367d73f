"""Issue 9, refusals must fail safe (third round): an opposition with a type code the hub does not know, a CSV
withdrawal row with an unreadable column, and a withdrawal naming another person under a known id were rejected
into inaction (the next run delivered the person's NIR). Each case ends with a real run."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CAF_FIXTURES
from helpers import consent_resource, people_of, write_bundle
from sqlalchemy import select

from consent.decision import ConsentIndex, permitted_pairs
from consent.fhir_build import INS_NIR, KIND_SYSTEM, consent
from consent.fhir_import import ImportReport, import_consents, import_resources
from schemas.categories import CategorieDonnees
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.store import consents, open_store

NIR = "2730799404078"  # BULLOCK, in the CAF fixture RSABEM.xml
OTHER_NIR = "1770393050005"
P = Pseudonymiser(PseudonymisationKey("t1", b"k" * 32))
TODAY = dt.date(2026, 11, 21)
DEP, PLAT = "departement-052", "plateforme-insertion"
FLUX = CAF_FIXTURES / "RSABEM.xml"  # TIFOUR, KELLER, BULLOCK
CSV_HEADER = ("identifiant;nir;type;decision;statut;destinataires;categories;debut;fin;finalite;date_recueil;"
              "recueilli_par;mode_recueil;base_reglementaire;responsable\n")


@pytest.fixture
def engine(tmp_path: Path):
    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    yield engine
    engine.dispose()


def _import(engine, *resources: dict[str, Any]) -> ImportReport:
    return import_resources([(f"entrée {i}", r) for i, r in enumerate(resources, 1)], engine, P, emetteur=DEP,
                            today=TODAY)


def _csv(engine, tmp_path: Path, *rows: str) -> ImportReport:
    path = tmp_path / "c.csv"
    path.write_text(CSV_HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return import_consents(path, engine, P, emetteur=DEP, today=TODAY)


def _pairs(engine, nir: str = NIR) -> set[tuple[str, str]]:
    pivot = P.pivot_from_nir(nir).pseudonyme
    return permitted_pairs(ConsentIndex(engine).lookup([pivot]).get(pivot, []), TODAY)


def _denied(engine, recipient: str, nir: str = NIR, category: str = "identite") -> bool:
    pivot = P.pivot_from_nir(nir).pseudonyme
    found = ConsentIndex(engine).lookup([pivot]).get(pivot, [])
    return any(v.covers("deny", recipient, CategorieDonnees(category), TODAY) for v in found)


def _opposition(cid: str, nir: str, *codes: str, decision: str = "deny") -> dict[str, Any]:
    return {"resourceType": "Consent", "id": cid, "status": "active", "decision": decision,
            "category": [{"coding": [{"system": KIND_SYSTEM, "code": c} for c in codes]}],
            "subject": {"identifier": {"system": INS_NIR, "value": nir}}}


def _permit_row(cid: str = "c1", nir: str = NIR) -> str:
    return f"{cid};{nir};consentement;accord;actif;{DEP};identite|contact;2025-01-01;2028-12-31;;2025-01-15;;;;{DEP}"


# -- 1. an opposition with a type code the hub does not know -------------------------------------------------------


@pytest.mark.parametrize("codes", [("opposition", "refus-general"), ("refus-general",)])
def test_a_refusal_with_an_unknown_type_code_is_applied_as_an_opposition(engine, codes) -> None:
    report = _import(engine, _opposition("o1", NIR, *codes))
    assert report.importes == 1 and report.erreurs == [], report
    assert _denied(engine, PLAT) and _denied(engine, DEP)
    assert any("type de consentement inconnu" in r for r in report.restrictions)


def test_a_permit_with_an_unknown_type_code_stays_refused(engine) -> None:
    permit = consent("c1", NIR, recipients=[DEP])
    permit["category"][0]["coding"].append({"system": KIND_SYSTEM, "code": "accord-special"})
    report = _import(engine, permit)
    assert report.importes == 0 and "type de consentement inconnu" in report.erreurs[0]
    assert _pairs(engine) == set()


def test_a_csv_opposition_whose_type_is_misspelt_is_applied(engine, tmp_path) -> None:
    report = _csv(engine, tmp_path, f"o2;{NIR};opposition art. 21;refus;actif;;toutes;;;;;;;;")
    assert report.importes == 1, report
    assert _denied(engine, PLAT)


# -- 2. a CSV withdrawal row with an unreadable column -------------------------------------------------------------


def _withdrawal_row(date: str = "2026-11-20", extra: str = "", status: str = "retire") -> str:
    return (f"c1;{NIR};consentement;accord;{status};{DEP};identite|contact;2025-01-01;2028-12-31;"
            f"accompagnement-insertion;{date};agent;courrier;RGPD art. 7.3;{DEP}{extra}")


@pytest.mark.parametrize("row", [_withdrawal_row(date="20/11/2026"), _withdrawal_row(extra=";"),
                                 _withdrawal_row(date="20/11/2026", status="erreur"),
                                 _withdrawal_row(extra=";;;")])
def test_a_csv_withdrawal_row_with_an_unreadable_column_still_ends_the_permit(engine, tmp_path, row: str) -> None:
    _csv(engine, tmp_path, _permit_row())
    assert (DEP, "identite") in _pairs(engine)
    report = _csv(engine, tmp_path, row)
    assert (DEP, "identite") not in _pairs(engine) and report.retraits == 1, report
    assert NIR not in " ".join(report.erreurs + report.restrictions)


def test_a_csv_withdrawal_row_reports_what_was_unreadable(engine, tmp_path) -> None:
    _csv(engine, tmp_path, _permit_row())
    report = _csv(engine, tmp_path, _withdrawal_row(date="20/11/2026"))
    assert any("date_recueil" in line for line in report.erreurs + report.restrictions), report


def test_a_csv_update_of_a_permit_with_an_unreadable_date_ends_the_permit_it_replaces(engine, tmp_path) -> None:
    _csv(engine, tmp_path, _permit_row())
    report = _csv(engine, tmp_path, _permit_row().replace("2028-12-31", "31/12/2028"))
    assert (DEP, "identite") not in _pairs(engine)
    assert report.erreurs and "fin" in report.erreurs[0]


def test_a_csv_refusal_with_an_unreadable_date_still_refuses(engine, tmp_path) -> None:
    report = _csv(engine, tmp_path, f"o1;{NIR};opposition;refus;actif;;toutes;01/01/2025;;;;;;;")
    assert _denied(engine, PLAT), report


def test_a_csv_permit_with_an_unreadable_date_grants_nothing(engine, tmp_path) -> None:
    report = _csv(engine, tmp_path, _permit_row().replace("2025-01-01", "01/01/2025"))
    assert _pairs(engine) == set() and report.erreurs


# -- 3. a withdrawal naming another person under a known id --------------------------------------------------------


def test_a_withdrawal_naming_another_person_ends_the_permit_and_blocks_that_person(engine) -> None:
    _import(engine, consent_resource("c1", NIR))
    report = _import(engine, {"resourceType": "Consent", "id": "c1", "status": "inactive", "decision": "deny",
                              "subject": {"identifier": {"system": INS_NIR, "value": OTHER_NIR}}})
    assert (DEP, "identite") not in _pairs(engine)
    assert _denied(engine, DEP, nir=OTHER_NIR)
    assert any("autre personne" in e for e in report.erreurs), report
    # Sent again, nothing changes (the block is stored apart from the other person's consent, and stays).
    again = _import(engine, {"resourceType": "Consent", "id": "c1", "status": "inactive", "decision": "deny",
                             "subject": {"identifier": {"system": INS_NIR, "value": OTHER_NIR}}})
    assert again.importes == 0 and _denied(engine, DEP, nir=OTHER_NIR)
    with engine.connect() as c:
        versions = c.execute(select(consents.c.consent_id, consents.c.subject, consents.c.version)).all()
    assert len({(cid, subject) for cid, subject, _ in versions}) == 2  # never a version of the other's consent


def test_a_permit_naming_another_person_under_a_known_id_stays_refused(engine) -> None:
    _import(engine, consent_resource("c1", NIR))
    report = _import(engine, consent_resource("c1", OTHER_NIR))
    assert report.importes == 0 and "autre personne" in report.erreurs[0]
    assert (DEP, "identite") in _pairs(engine) and _pairs(engine, OTHER_NIR) == set()


# -- a real run after each case ------------------------------------------------------------------------------------


def spie_hub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spie_hub.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def _inbox(home: Path, issuer: str) -> Path:
    folder = home / "inbox" / "consentements" / issuer
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_and_read(home: Path, recipient: str) -> str:
    """A real run on a fresh copy of the flux (the hub skips an input it already delivered) and what the recipient
    received from it."""
    for old in (home / "outbox" / recipient).glob("*.csv") if (home / "outbox" / recipient).exists() else []:
        old.unlink()
    copy = home.parent / f"flux-{len(list(home.parent.glob('flux-*')))}.xml"
    copy.write_bytes(FLUX.read_bytes() + f"\n<!-- run {copy.name} -->\n".encode())
    run = spie_hub("run", "--flux", "caf-vers-departement", "--input", str(copy))
    assert run.returncode == 0, run.stdout + run.stderr
    return "".join(p.read_text(encoding="utf-8-sig") for p in (home / "outbox" / recipient).glob("*.csv"))


def _import_inboxes() -> str:
    imported = spie_hub("consent", "importer")
    assert "Traceback" not in imported.stderr, imported.stderr
    assert NIR not in imported.stdout + imported.stderr
    return imported.stdout


def test_a_run_after_oppositions_with_odd_type_codes_does_not_deliver_the_opposed_people(hub_home: Path) -> None:
    second = "2820251108030"  # TIFOUR, delivered to the platform under a legal basis open to objection, like BULLOCK
    write_bundle(_inbox(hub_home, "france-travail") / "opp.json", _opposition("opp-1", NIR, "opposition",
                                                                                "refus-general"))
    _import_inboxes()
    delivered = _run_and_read(hub_home, PLAT)
    assert second in delivered and NIR not in delivered  # the file is there, the opposed person is not
    (_inbox(hub_home, "france-travail") / "opp.csv").write_text(
        "identifiant;nir;type;decision;statut;destinataires;categories\n"
        f"opp-2;{second};opposition art. 21;refus;actif;;toutes\n", encoding="utf-8")
    _import_inboxes()
    delivered = _run_and_read(hub_home, PLAT)
    assert "Pseudonyme" in delivered and NIR not in delivered and second not in delivered


def test_a_run_after_a_csv_withdrawal_with_a_french_date_does_not_deliver_the_person(hub_home: Path) -> None:
    inbox = _inbox(hub_home, DEP)
    (inbox / "accord.csv").write_text(CSV_HEADER + _permit_row() + "\n", encoding="utf-8")
    _import_inboxes()
    assert f"{NIR};BULLOCK" in _run_and_read(hub_home, DEP)
    (inbox / "retrait.csv").write_text(CSV_HEADER + _withdrawal_row(date="20/11/2026") + "\n", encoding="utf-8")
    out = _import_inboxes()
    assert "date_recueil" in out, out
    assert NIR not in _run_and_read(hub_home, DEP)


def test_a_run_after_a_withdrawal_naming_another_person_does_not_deliver_either(hub_home: Path) -> None:
    other = next(p["NIR"] for p in people_of(FLUX) if p["NIR"] and p["NIR"] != NIR)
    inbox = _inbox(hub_home, DEP)
    write_bundle(inbox / "accord.json", consent_resource("c1", NIR), consent_resource("c2", other))
    _import_inboxes()
    delivered = _run_and_read(hub_home, DEP)
    assert f"{NIR};BULLOCK" in delivered and other in delivered
    write_bundle(inbox / "retrait.json", {"resourceType": "Consent", "id": "c1", "status": "inactive",
                                          "decision": "deny",
                                          "subject": {"identifier": {"system": INS_NIR, "value": other}}})
    out = _import_inboxes()
    assert "autre personne" in out, out
    delivered = _run_and_read(hub_home, DEP)
    assert NIR not in delivered and other not in delivered


def test_a_refusal_refused_for_an_unreadable_field_still_blocks_the_person_it_names(engine) -> None:
    refusal = _opposition("o1", NIR, "consentement")
    refusal["period"] = {"end": "fin 2026"}
    report = _import(engine, refusal)
    assert report.erreurs and _denied(engine, PLAT) and _denied(engine, DEP)
    assert _import(engine, refusal).importes == 0  # sent again: the same block, nothing new


def test_unreadable_csv_refusals_without_identifier_block_each_person(engine, tmp_path) -> None:
    _csv(engine, tmp_path, f";{NIR};opposition;refus;actif;;toutes;01/01/2025;;;;;;;",
         f";{OTHER_NIR};opposition;refus;actif;;toutes;01/01/2025;;;;;;;")
    assert _denied(engine, PLAT) and _denied(engine, PLAT, nir=OTHER_NIR)

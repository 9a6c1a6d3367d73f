"""End to end on the plain pipeline (no Airflow): accounting, privacy, pseudonyms, idempotency, quarantine."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from conftest import CAF_FIXTURES, REPO
from helpers import people_of
from sqlalchemy import select

from consent.fhir_import import import_consents
from schemas.spie_v1 import SCHEMA_VERSION
from spie_hub.audit import segments
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.keys import load_key
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import audit_log, open_store

FLOW = "caf-vers-departement"
RECIPIENT = "departement-052"


def permitted_nirs(bundle: Path) -> set[str]:
    """NIRs whose identity the departement may receive, read straight from the FHIR R5 resources: a grant is a
    base ``deny`` with a provision (an exception, so a permission) naming the recipient and the category."""
    granted = set()
    for entry in json.loads(bundle.read_text())["entry"]:
        resource = entry["resource"]
        for provision in resource.get("provision", []) if resource["decision"] == "deny" else []:
            actors = {a["reference"]["identifier"]["value"] for a in provision["actor"]}
            codes = {c["coding"][0]["code"] for c in provision["code"]}
            if RECIPIENT in actors and "identite" in codes and resource["status"] == "active":
                granted.add(resource["subject"]["identifier"]["value"])
    return granted


@pytest.fixture
def demo_run(hub_home: Path, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    home = HubHome.from_env().ensure()
    flux, bundle = tmp_path / "flux.xml", tmp_path / "consents.json"
    stats = generate(flux, bundle, 300, seed=7, anomaly_rate=0.02)
    engine = open_store(home.database_url)
    import_consents(bundle, engine, Pseudonymiser(load_key(home)))
    caplog.set_level(logging.DEBUG)
    summary = run_flow(FLOW, flux, home)
    yield home, engine, flux, bundle, stats, summary, caplog
    engine.dispose()


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def test_every_input_record_is_delivered_rejected_or_withheld(demo_run) -> None:
    home, engine, _, _, stats, summary, _ = demo_run
    counts = summary.destinataires[RECIPIENT]
    assert summary.lus == stats.personnes
    assert summary.rejetes == stats.anomalies > 0
    assert counts.livres + counts.retenus + summary.rejetes == summary.lus and summary.accounted()
    assert len(_rows(counts.fichier)) == counts.livres
    with engine.connect() as c:
        logged = [(r.event, r.recipient) for r in c.execute(select(audit_log.c.event, audit_log.c.recipient).where(
            audit_log.c.run_id == summary.run_id))]
    # The per-record events are the run's segment, committed by one "lot" row of the log.
    assert ("decision", RECIPIENT) not in logged and logged.count(("lot", None)) == 1
    events = [(e.event, e.recipient) for e in segments.iter_events(home, runs=[summary.run_id])]
    for rid, each in summary.destinataires.items():
        assert events.count(("decision", rid)) == each.livres + each.retenus
    assert events.count(("rejet", None)) == summary.rejetes


def test_rejected_records_are_reported_to_the_sender_with_a_readable_reason(demo_run) -> None:
    _, _, _, _, stats, summary, _ = demo_run
    rows = _rows(summary.rapport_rejets)
    assert len(rows) == stats.anomalies
    assert all("mois de naissance 13 impossible" in r["Motif du rejet"] for r in rows)


def test_only_people_soumis_a_droits_et_devoirs_of_the_departement_are_delivered(demo_run) -> None:
    rows = _rows(demo_run[5].destinataires[RECIPIENT].fichier)
    assert rows and {r["Soumis à droits et devoirs"] for r in rows} == {"oui"}
    assert {r["Département"] for r in rows} == {"052"}


def test_no_identity_of_a_person_without_consent_reaches_the_file_the_logs_or_the_audit(demo_run) -> None:
    home, engine, flux, bundle, _, summary, caplog = demo_run
    allowed = permitted_nirs(bundle)
    pseudonymiser = Pseudonymiser(load_key(home))
    outbound = Path(summary.destinataires[RECIPIENT].fichier).read_text(encoding="utf-8-sig")
    with engine.connect() as c:
        audit = json.dumps([list(r) for r in c.execute(select(audit_log))], ensure_ascii=False)
    logs = caplog.text
    by_pseudonym = {}
    people = people_of(flux)
    for person in people:
        if person["NIR"] and person["NIR"][3:5] != "13":
            pivot = pseudonymiser.pivot_from_nir(person["NIR"])
            by_pseudonym[pseudonymiser.for_recipient(pivot, RECIPIENT)] = person
    for person in people:
        assert person["NIR"] not in audit and person["NIR"] not in logs
        assert person["DTNAI"] not in audit and person["DTNAI"] not in logs
        for name in (person["NOM"], person["PRENOM"]):  # upper case, as CNAF sends them: no hub text is
            assert name not in audit and name not in logs  # written in capitals, so any hit is a leak
        if person["NIR"] not in allowed:
            assert person["NIR"] not in outbound
    identified = [r for r in _rows(summary.destinataires[RECIPIENT].fichier) if r["NIR"] or r["Nom"] or r["Date de naissance"]]
    assert identified, "the demo population has consenting people whose identity must be delivered"
    for row in identified:
        person = by_pseudonym[row["Pseudonyme"]]
        assert person["NIR"] in allowed and row["NIR"] == person["NIR"] and row["Date de naissance"] == person["DTNAI"]


def test_rerunning_the_same_file_never_duplicates_a_delivery(demo_run) -> None:
    home, _, flux, _, _, first, _ = demo_run
    second = run_flow(FLOW, flux, home)
    assert second.statut == "deja-livre"
    files = sorted((home.outbox / RECIPIENT).glob("*.csv"))
    assert [str(f) for f in files] == [first.destinataires[RECIPIENT].fichier]


def test_a_manifest_describes_each_delivery(demo_run) -> None:
    import hashlib

    summary = demo_run[5]
    csv_path = Path(summary.destinataires[RECIPIENT].fichier)
    manifest = json.loads(csv_path.with_name(csv_path.stem + ".manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert manifest["enregistrements"] == summary.destinataires[RECIPIENT].livres
    assert manifest["version_schema"] == SCHEMA_VERSION and manifest["fichier"] == csv_path.name
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbfPseudonyme;")
    assert not list(csv_path.parent.glob(".*.part"))


def test_the_same_person_gets_different_pseudonyms_in_two_recipients_files(hub_home, database_url, tmp_path, monkeypatch) -> None:
    registry = (REPO / "flows.yaml").read_text(encoding="utf-8").replace(
        "      departement-052:\n",
        "      ft-test:\n        libelle: Test\n        sortie: csv_departement\n"
        "        transport: {type: dossier-local, dossier: outbox/ft-test}\n        categories_requises: [droits-rsa]\n"
        "        politique:\n          droits-rsa: {base: legale, article: test}\n      departement-052:\n", 1)
    (tmp_path / "flows.yaml").write_text(registry, encoding="utf-8")
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(tmp_path / "flows.yaml"))
    summary = run_flow(FLOW, CAF_FIXTURES / "RSABEM-ouvert.xml")
    a = _rows(summary.destinataires["departement-052"].fichier)[0]["Pseudonyme"]
    b = _rows(summary.destinataires["ft-test"].fichier)[0]["Pseudonyme"]
    assert a != b and a.split(".")[0] == b.split(".")[0] == "t1"


def test_the_invalid_cnaf_sample_is_quarantined_and_the_sender_notified(hub_home, database_url) -> None:
    summary = run_flow(FLOW, CAF_FIXTURES / "RSABEI_invalid.xml")
    assert summary.statut == "quarantaine" and "InfosFoyerRSA" in summary.message
    quarantine = Path(summary.quarantaine)
    assert (quarantine / "fichier-recu").read_bytes() == (CAF_FIXTURES / "RSABEI_invalid.xml").read_bytes()
    assert "InfosFoyerRSA" in (quarantine / "rapport.txt").read_text()
    assert "rejeté en entier" in Path(summary.rapport_rejets).read_text()
    assert not list((Path(hub_home) / "outbox" / RECIPIENT).glob("*.csv"))
    assert summary.accounted()


def test_the_real_samples_run_end_to_end(hub_home, database_url) -> None:
    summary = run_flow(FLOW, CAF_FIXTURES / "RSABEM.xml")
    assert (summary.statut, summary.lus, summary.rejetes) == ("termine", 3, 0)
    counts = summary.destinataires[RECIPIENT]
    assert (counts.livres, counts.retenus) == (2, 1)  # the third person is not soumis à droits et devoirs


@pytest.mark.parametrize("sample", ["RSABEM.xml", "RSABEI_invalid.xml"])
def test_background_validation_gives_the_same_outcome_as_inline_validation(
    hub_home, database_url, sample, monkeypatch, tmp_path
) -> None:
    from spie_hub.run import flow_run as pipeline

    inline = run_flow(FLOW, CAF_FIXTURES / sample)
    monkeypatch.setattr(pipeline, "PARALLEL_VALIDATION_BYTES", 0)  # every file validated in the child process
    copy = tmp_path / sample
    copy.write_bytes((CAF_FIXTURES / sample).read_bytes() + b"\n")  # other bytes, so not "already delivered"
    background = run_flow(FLOW, copy)
    assert (background.statut, background.lus, background.rejetes) == (inline.statut, inline.lus, inline.rejetes)
    assert background.message == inline.message


def test_a_schema_error_quoting_a_birth_date_leaks_it_nowhere(hub_home, database_url, tmp_path, caplog) -> None:
    bad = tmp_path / "date.xml"
    bad.write_bytes((CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes().replace(b"<DTNAI>1973-07-21", b"<DTNAI>1973-13-21"))
    caplog.set_level(logging.DEBUG)
    summary = run_flow(FLOW, bad)
    assert summary.statut == "quarantaine" and "<DTNAI>" in summary.message
    engine = open_store(HubHome.from_env().database_url)
    with engine.connect() as c:
        audit = json.dumps([list(r) for r in c.execute(select(audit_log))], ensure_ascii=False)
    engine.dispose()
    notice = Path(summary.rapport_rejets).read_text(encoding="utf-8")
    for text in (summary.message, audit, notice, caplog.text, (Path(summary.quarantaine) / "rapport.txt").read_text()):
        assert "1973-13-21" not in text


def test_a_partner_code_quoted_in_a_rejection_cannot_run_as_a_formula(hub_home, database_url, tmp_path) -> None:
    bad = tmp_path / "formule.xml"
    bad.write_bytes((CAF_FIXTURES / "RSABEM.xml").read_bytes().replace(b"<MOTICLORSA>PCG", b"<MOTICLORSA>=1+", 1))
    summary = run_flow(FLOW, bad)
    assert summary.statut == "termine" and summary.rejetes == 2  # both people of the first foyer
    rows = _rows(summary.rapport_rejets)
    assert len(rows) == 2 and all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())
    assert all("MOTICLORSA inconnu" in row["Motif du rejet"] for row in rows)


def test_a_person_sent_without_nir_gets_a_fallback_pseudonym_and_is_delivered(hub_home, database_url, tmp_path) -> None:
    no_nir = tmp_path / "sans-nir.xml"
    no_nir.write_bytes((CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes().replace(b"<NIR>2730799404078</NIR>", b"<NIR/>"))
    with_nir = run_flow(FLOW, CAF_FIXTURES / "RSABEM-ouvert.xml")
    without = run_flow(FLOW, no_nir)
    assert (without.lus, without.rejetes, without.destinataires[RECIPIENT].livres) == (1, 0, 1)
    pseudonym_with = _rows(with_nir.destinataires[RECIPIENT].fichier)[0]["Pseudonyme"]
    pseudonym_without = _rows(without.destinataires[RECIPIENT].fichier)[0]["Pseudonyme"]
    assert pseudonym_without != pseudonym_with  # a fallback pivot never collides with a NIR pivot

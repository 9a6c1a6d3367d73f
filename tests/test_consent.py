from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from helpers import consent_resource, write_bundle
from sqlalchemy import select

from consent.decision import ConsentIndex, decide
from consent.fhir_import import hub_reference, import_consents
from schemas.categories import CategorieDonnees as C
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import get_flow
from spie_hub.store import audit_log, consents, open_store

NIR = "2820251108030"
P = Pseudonymiser(PseudonymisationKey("t1", b"k" * 32))
TODAY = dt.date(2026, 11, 21)


@pytest.fixture
def engine(database_url: str):
    engine = open_store(database_url)
    yield engine
    engine.dispose()


def _ref(cid: str, emetteur: str = "hub") -> str:
    """The hub's opaque reference of a consent (the partner's id never leaves the consent registry)."""
    return hub_reference(P.key.secret, emetteur, cid)


def _decision(engine, nir: str = NIR, categories=(C.DROITS_RSA, C.IDENTITE)):
    recipient = get_flow("caf-vers-departement").destinataires[0]
    pivot = P.pivot_from_nir(nir).pseudonyme
    return decide(recipient, categories, ConsentIndex(engine).lookup([pivot]).get(pivot, []), TODAY)


def test_a_bundle_is_imported_pseudonymised_and_no_nir_is_stored(engine, tmp_path: Path) -> None:
    report = import_consents(write_bundle(tmp_path / "b.json", consent_resource("c1", NIR)), engine, P)
    assert (report.importes, report.erreurs) == (1, [])
    with engine.connect() as c:
        dump = json.dumps([list(r) for t in (consents, audit_log) for r in c.execute(select(t))], default=str)
    assert NIR not in dump and NIR[:7] not in dump
    assert P.pivot_from_nir(NIR).pseudonyme in dump


def test_identity_goes_only_with_an_active_permit_and_rsa_rights_under_the_legal_basis(engine, tmp_path) -> None:
    decision = _decision(engine)
    assert decision.livre and decision.permises == {C.DROITS_RSA}
    assert decision.categories[C.DROITS_RSA].fondement.startswith("legale:CASF art. L262-40")
    import_consents(write_bundle(tmp_path / "b.json", consent_resource("c1", NIR)), engine, P)
    decision = _decision(engine)
    assert decision.permises == {C.DROITS_RSA, C.IDENTITE}
    assert decision.categories[C.IDENTITE].fondement == f"consentement:{_ref('c1')}/v1"


def test_a_revocation_as_a_new_inactive_version_keeps_history_and_withdraws(engine, tmp_path) -> None:
    import_consents(write_bundle(tmp_path / "a.json", consent_resource("c1", NIR)), engine, P)
    import_consents(write_bundle(tmp_path / "b.json", consent_resource("c1", NIR, status="inactive")), engine, P)
    with engine.connect() as c:
        assert [r.version for r in c.execute(select(consents.c.version).order_by(consents.c.version))] == [1, 2]
    assert _decision(engine).permises == {C.DROITS_RSA}


def test_an_explicit_deny_overrides_a_permit(engine, tmp_path) -> None:
    write_bundle(tmp_path / "b.json", consent_resource("c1", NIR), consent_resource("c2", NIR, decision="deny"))
    import_consents(tmp_path / "b.json", engine, P)
    decision = _decision(engine)
    assert C.IDENTITE not in decision.permises
    assert decision.categories[C.IDENTITE].fondement == f"refus exprimé:{_ref('c2')}/v1"


@pytest.mark.parametrize("change", [
    {"grantees": ("france-travail",)}, {"categories": ("contact",)}, {"end": "2021-01-01"}, {"start": "2099-01-01"},
])
def test_a_consent_for_another_recipient_category_or_period_does_not_cover(engine, tmp_path, change) -> None:
    import_consents(write_bundle(tmp_path / "b.json", consent_resource("c1", NIR, **change)), engine, P)
    assert C.IDENTITE not in _decision(engine).permises


def test_reimporting_the_same_bundle_changes_nothing(engine, tmp_path) -> None:
    bundle = write_bundle(tmp_path / "b.json", consent_resource("c1", NIR))
    import_consents(bundle, engine, P)
    report = import_consents(bundle, engine, P)
    assert (report.importes, report.inchanges) == (0, 1)


def test_invalid_entries_get_clear_errors_and_the_valid_ones_are_kept(engine, tmp_path) -> None:
    bad_nir = consent_resource("c2", "2821351108030")
    no_grantee = consent_resource("c3", NIR, grantees=())
    wrong_system = consent_resource("c4", NIR)
    wrong_system["subject"]["identifier"]["system"] = "urn:oid:1.2.3"
    bad_status = consent_resource("c5", NIR, status="maybe")
    bundle = write_bundle(tmp_path / "b.json", consent_resource("c1", NIR), bad_nir, no_grantee, wrong_system, bad_status)
    report = import_consents(bundle, engine, P)
    assert report.importes == 1
    assert [e.split(" :")[0] for e in report.erreurs] == ["entrée 2", "entrée 3", "entrée 4", "entrée 5"]
    assert "mois de naissance" in report.erreurs[0] and "2821351108030" not in " ".join(report.erreurs)


@pytest.mark.parametrize("content", ["<xml/>", "[1, 2]", '{"resourceType": "Patient"}', ""])
def test_a_file_that_is_not_a_fhir_bundle_is_reported_not_raised(engine, tmp_path, content: str) -> None:
    (tmp_path / "x.json").write_text(content)
    assert "illisible" in import_consents(tmp_path / "x.json", engine, P).erreurs[0]

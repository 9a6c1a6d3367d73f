"""Consent lifecycle: R5 reading, issuers, CSV layout, revocation both ways, expiry, opposition, round trip."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pytest
from fhir.resources.consent import Consent
from helpers import consent_resource
from sqlalchemy import select

from consent.decision import ConsentIndex, decide
from consent.fhir_build import CATEGORY_SYSTEM, PARTICIPATION, PARTNER_SYSTEM, consent
from consent.fhir_import import _parse, hub_reference, import_consents, import_resources
from schemas.categories import CategorieDonnees as C
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import get_flow
from spie_hub.store import consents, open_store, revocations

NIR = "2820251108030"
P = Pseudonymiser(PseudonymisationKey("t1", b"k" * 32))
TODAY = dt.date(2026, 11, 21)
DEP, PLATEFORME = get_flow("caf-vers-departement").destinataires


@pytest.fixture
def engine(database_url: str):
    engine = open_store(database_url)
    yield engine
    engine.dispose()


def _ref(cid: str, emetteur: str = "departement-052") -> str:
    """The hub's opaque reference of a consent (the partner's id never leaves the consent registry)."""
    return hub_reference(P.key.secret, emetteur, cid)


def _found(engine):
    pivot = P.pivot_from_nir(NIR).pseudonyme
    return ConsentIndex(engine).lookup([pivot]).get(pivot, [])


def _import(engine, *resources, emetteur: str = "departement-052"):
    return import_resources([(f"entrée {i}", r) for i, r in enumerate(resources, 1)], engine, P, emetteur=emetteur, today=TODAY)


def _hl7_like(decision: str, org: str) -> dict:
    """The shape of the HL7 R5 examples consent-example-grantor (deny + a provision naming the allowed org) and
    consent-example-notOrg (permit + a provision naming the excluded org), with the hub's category coding."""
    return {
        "resourceType": "Consent", "id": f"hl7-{decision}", "status": "active", "decision": decision,
        "subject": {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": NIR}},
        "provision": [{
            "actor": [{"role": {"coding": [{"system": PARTICIPATION, "code": "PRCP"}]},
                       "reference": {"reference": f"Organization/{org}"}}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose"}]}],
            "code": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "identite"}]}],
        }],
    }


def test_a_base_deny_with_a_provision_permits_what_the_provision_names(engine) -> None:
    _import(engine, _hl7_like("deny", "departement-052"))
    assert decide(DEP, [C.IDENTITE], _found(engine), TODAY).categories[C.IDENTITE].fondement == f"consentement:{_ref('hl7-deny')}/v1"


def test_a_base_permit_with_a_provision_excludes_the_organisation_it_names(engine) -> None:
    _import(engine, consent_resource("c1", NIR), _hl7_like("permit", "departement-052"))
    decision = decide(DEP, [C.IDENTITE], _found(engine), TODAY)
    assert decision.categories[C.IDENTITE].fondement == f"refus exprimé:{_ref('hl7-permit')}/v1"


def test_what_the_hub_cannot_read_safely_is_refused_with_a_reason(engine) -> None:
    nested = _hl7_like("deny", "departement-052")
    nested["provision"][0]["provision"] = [copy.deepcopy(nested["provision"][0])]
    vague = _hl7_like("permit", "departement-052")
    del vague["provision"]
    vague["grantee"] = [{"reference": "Organization/departement-052"}]
    report = _import(engine, nested, vague)
    assert report.importes == 0
    assert "imbriquées" in report.erreurs[0] and "spécifique" in report.erreurs[1]


def test_the_same_consent_id_from_two_issuers_is_two_consents(engine) -> None:
    _import(engine, consent_resource("c1", NIR), emetteur="departement-052")
    _import(engine, consent_resource("c1", NIR, categories=("contact",)), emetteur="mission-locale")
    with engine.connect() as c:
        rows = c.execute(select(consents.c.emetteur, consents.c.version)).all()
    assert sorted(rows) == [("departement-052", 1), ("mission-locale", 1)]
    assert C.IDENTITE in decide(DEP, [C.IDENTITE], _found(engine), TODAY).permises


@pytest.mark.parametrize("revocation", [
    pytest.param(lambda: consent_resource("c1", NIR, status="inactive"), id="same-id-inactive"),
    pytest.param(lambda: consent_resource("c2", NIR, decision="deny"), id="new-consent-refusing-the-category"),
    pytest.param(lambda: consent("c2", NIR, grant=False, blanket=True), id="new-consent-with-decision-deny"),
])
def test_a_revocation_either_way_withdraws_and_is_recorded_for_propagation(engine, revocation) -> None:
    _import(engine, consent_resource("c1", NIR))
    assert C.IDENTITE in decide(DEP, [C.IDENTITE], _found(engine), TODAY).permises
    report = _import(engine, revocation())
    assert report.retraits == 1
    assert C.IDENTITE not in decide(DEP, [C.IDENTITE], _found(engine), TODAY).permises
    with engine.connect() as c:
        row = c.execute(select(revocations)).one()
    assert ["departement-052", "identite"] in json.loads(row.pairs) and row.propagated_at is None


def test_an_expired_consent_no_longer_covers_and_history_is_kept(engine) -> None:
    _import(engine, consent_resource("c1", NIR, end="2026-11-20"))
    assert C.IDENTITE not in decide(DEP, [C.IDENTITE], _found(engine), TODAY).permises
    assert C.IDENTITE in decide(DEP, [C.IDENTITE], _found(engine), dt.date(2026, 11, 20)).permises


def test_an_opposition_withholds_a_legal_basis_open_to_objection_but_not_a_legal_obligation(engine) -> None:
    opposition = consent("o1", NIR, grant=False, kind="opposition", blanket=True,
                         recipients=["plateforme-insertion", "departement-052"])
    _import(engine, opposition)
    found = _found(engine)
    platform = decide(PLATEFORME, [C.DROITS_RSA, C.IDENTITE], found, TODAY)
    assert not platform.livre and platform.categories[C.DROITS_RSA].fondement == f"opposition:{_ref('o1')}/v1"
    departement = decide(DEP, [C.DROITS_RSA], found, TODAY)  # CASF L262-40, 6.1.c: no right to object
    assert departement.livre and departement.categories[C.DROITS_RSA].fondement.startswith("legale:")


def test_an_opposition_cannot_grant_anything(engine) -> None:
    bad = consent("o1", NIR, grant=True, kind="opposition")
    report = _import(engine, bad)
    assert "ne peut rien autoriser" in report.restrictions[0]
    assert C.IDENTITE not in decide(DEP, [C.IDENTITE], _found(engine), TODAY).permises


CSV_HEADER = "identifiant;nir;type;decision;statut;destinataires;categories;debut;fin;finalite;date_recueil\n"


def test_the_csv_layout_imports_grants_withdrawals_and_oppositions(engine, tmp_path: Path) -> None:
    first = tmp_path / "a.csv"
    first.write_text(CSV_HEADER + f"c1;{NIR};consentement;accord;actif;departement-052;identite|contact;2025-01-01;;insertion;2025-01-02\n"
                     f"o1;{NIR};opposition;refus;actif;plateforme-insertion;toutes;2025-01-01;;;2025-01-02\n", encoding="utf-8-sig")
    report = import_consents(first, engine, P, emetteur="departement-052", today=TODAY)
    assert (report.importes, report.erreurs) == (2, [])
    assert decide(DEP, [C.IDENTITE, C.CONTACT], _found(engine), TODAY).permises == {C.IDENTITE, C.CONTACT}
    assert not decide(PLATEFORME, [C.DROITS_RSA], _found(engine), TODAY).livre
    second = tmp_path / "b.csv"
    second.write_text(CSV_HEADER + f"c1;{NIR};consentement;accord;retire;departement-052;identite|contact;2025-01-01;;;\n")
    assert import_consents(second, engine, P, emetteur="departement-052", today=TODAY).retraits == 1
    assert decide(DEP, [C.IDENTITE], _found(engine), TODAY).permises == frozenset()


def test_csv_errors_name_the_line_and_never_echo_the_nir(engine, tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(CSV_HEADER + f"c1;{NIR};consentement;peut-être;actif;departement-052;identite;;;;\n"
                    "c2;2821351108030;consentement;accord;actif;departement-052;identite;;;;\n"
                    f"c3;{NIR};consentement;accord;actif;departement-052\n"
                    f"c4;{NIR};consentement;accord;actif;departement-052;identite;pas-une-date;;;\n", encoding="utf-8")
    report = import_consents(path, engine, P)
    assert report.importes == 0
    assert sorted(e.split(" :")[0] for e in report.erreurs) == ["ligne 2", "ligne 3", "ligne 4", "ligne 5"]
    text = " ".join(report.erreurs)
    assert NIR not in text and "2821351108030" not in text


@pytest.mark.parametrize(("content", "reason"), [
    (b"identifiant,nir,type\n", "colonnes manquantes"),
    ("identifiant;nir;type;decision;statut;destinataires;categories\nc1;é;a;b;c;d;e\n".encode("latin-1"), "UTF-8"),
])
def test_a_csv_with_the_wrong_separator_or_encoding_is_refused_whole(engine, tmp_path, content, reason) -> None:
    (tmp_path / "a.csv").write_bytes(content)
    assert reason in import_consents(tmp_path / "a.csv", engine, P).erreurs[0]


@pytest.mark.parametrize("resource", [
    consent("c1", NIR, controller="departement-052", collected_by="agent 12", method="formulaire v3",
            regulatory_basis="RGPD art. 6.1.a", purpose="accompagnement-insertion",
            recipients=["departement-052", "plateforme-insertion"], categories=["identite", "contact"]),
    consent("o1", NIR, grant=False, kind="opposition", blanket=True, recipients=["plateforme-insertion"], end=None),
    consent("r1", NIR, grant=False, categories=["contact"], status="inactive"),
], ids=["accord", "opposition", "refus-retire"])
def test_the_hubs_own_consents_round_trip_through_fhir_resources(resource) -> None:
    model = Consent.model_validate(resource)
    again = Consent.model_validate_json(model.model_dump_json())
    assert again.model_dump() == model.model_dump()
    assert _parse(again) == _parse(Consent.model_validate(resource))
    assert json.loads(again.model_dump_json())["subject"]["identifier"]["value"] == NIR


def test_partner_identifiers_may_name_grantees_by_identifier_or_organization_reference(engine) -> None:
    resource = consent("c1", NIR)
    resource["provision"][0]["actor"][0]["reference"] = {"reference": "Organization/departement-052"}
    assert resource["grantee"][0]["identifier"]["system"] == PARTNER_SYSTEM
    _import(engine, resource)
    assert C.IDENTITE in decide(DEP, [C.IDENTITE], _found(engine), TODAY).permises


def _big_bundle(path: Path, count: int, *, type_first: bool = True) -> int:
    """A bundle of ``count`` consents written entry by entry (the shape of an initial migration)."""
    template = json.dumps(consent("ID", "NIR_"))
    with path.open("w", encoding="utf-8") as out:
        out.write('{"resourceType": "Bundle", "type": "collection", "entry": [' if type_first else '{"entry": [')
        for i in range(count):  # one person each (commune and order number vary)
            resource = template.replace('"id": "ID"', f'"id": "m{i}"').replace("NIR_", f"2820251{i + 1001:06d}")
            out.write(("," if i else "") + '{"resource": ' + resource + "}")
        out.write("]}" if type_first else '], "type": "collection", "resourceType": "Bundle"}')
    return path.stat().st_size


def test_a_large_bundle_is_imported_entry_by_entry_with_flat_memory(tmp_path: Path) -> None:
    import tracemalloc

    from consent.json_stream import bundle_entries

    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")

    def peak(count: int, name: str) -> int:
        _big_bundle(tmp_path / f"{name}.json", count)
        tracemalloc.start()
        with (tmp_path / f"{name}.json").open(encoding="utf-8") as handle:
            report = import_resources(bundle_entries(handle), engine, P, emetteur=name, today=TODAY, batch=100)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (report.importes, report.erreurs) == (count, [])
        return top

    peak(150, "echauffement")  # caches of fhir.resources, SQLAlchemy and the decoder
    two_batches, ten_batches = peak(200, "petit"), peak(1000, "grand")
    # Five times the entries, the same peak: one batch is held at a time, never the file (measured by batches of
    # 1000: 9.5 Mo for one batch, then 14.3 Mo flat from 2 000 to 6 000 entries).
    assert ten_batches < two_batches * 1.1 + 300_000, f"pic {two_batches / 1e6:.1f} Mo → {ten_batches / 1e6:.1f} Mo"
    engine.dispose()


def test_bundle_members_may_come_in_any_order_and_a_truncated_bundle_keeps_what_was_complete(engine, tmp_path) -> None:
    _big_bundle(tmp_path / "late-type.json", 3, type_first=False)
    assert import_consents(tmp_path / "late-type.json", engine, P, today=TODAY).importes == 3
    path = tmp_path / "cut.json"
    _big_bundle(path, 2500)
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 500])
    report = import_consents(path, engine, P, emetteur="cut", today=TODAY)
    assert report.importes == 2000  # the complete batches; the batch holding the cut entry is not half-imported
    assert report.erreurs == ["cut.json : fichier illisible après 2000 entrée(s) : JSON invalide ou tronqué"]

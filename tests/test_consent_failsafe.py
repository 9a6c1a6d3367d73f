"""Issue 9: the consent import fails safe. Withdrawals and refusals of every shape take effect, partial dates are
dates, a permit applies only where every criterion it states matches, special categories need explicit consent,
an issuer grants only within its authority, and partner Consent ids never leave the consent registry."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from consent.decision import ConsentIndex, permitted_pairs
from consent.fhir_build import CATEGORY_SYSTEM, PARTICIPATION, PURPOSE_SYSTEM, consent
from consent.fhir_import import ImportReport, import_resources
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.store import audit_log, consents, open_store, revocations

NIR = "2820251108030"
OTHER_NIR = "1770393050005"
P = Pseudonymiser(PseudonymisationKey("t1", b"k" * 32))
TODAY = dt.date(2026, 11, 21)
DEP, PLAT = "departement-052", "plateforme-insertion"


@pytest.fixture
def engine(tmp_path: Path):
    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    yield engine
    engine.dispose()


def _import(engine, *resources: dict[str, Any], emetteur: str = DEP) -> ImportReport:
    return import_resources([(f"entrée {i}", r) for i, r in enumerate(resources, 1)], engine, P, emetteur=emetteur,
                            today=TODAY)


def _pairs(engine, nir: str = NIR, day: dt.date = TODAY) -> set[tuple[str, str]]:
    pivot = P.pivot_from_nir(nir).pseudonyme
    return permitted_pairs(ConsentIndex(engine).lookup([pivot]).get(pivot, []), day)


def _denied(engine, recipient: str, category: str, nir: str = NIR) -> bool:
    pivot = P.pivot_from_nir(nir).pseudonyme
    from schemas.categories import CategorieDonnees

    found = ConsentIndex(engine).lookup([pivot]).get(pivot, [])
    return any(v.covers("deny", recipient, CategorieDonnees(category), TODAY) for v in found)


def _grant(cid: str = "c1", **kw: Any) -> dict[str, Any]:
    kw.setdefault("recipients", [DEP])
    kw.setdefault("categories", ["identite"])
    return consent(cid, kw.pop("nir", NIR), **kw)


def _bare(cid: str, status: str, **extra: Any) -> dict[str, Any]:
    """A resource carrying only what identifies it: id, status, subject (no decision, provision nor grantee)."""
    resource = {"resourceType": "Consent", "id": cid, "status": status,
                "subject": {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": NIR}}}
    resource.update(extra)
    return resource


def _nested(resource: dict[str, Any]) -> dict[str, Any]:
    resource = copy.deepcopy(resource)
    resource["provision"][0]["provision"] = [copy.deepcopy(resource["provision"][0])]
    return resource


# -- 1. withdrawals, oppositions and refusals of every shape ------------------------------------------------------

WITHDRAWAL_SHAPES = {
    "inactif-sans-provision": lambda: _bare("c1", "inactive", decision="deny"),
    "inactif-sans-decision": lambda: _bare("c1", "inactive"),
    "inactif-sans-destinataire": lambda: {k: v for k, v in _grant(status="inactive").items() if k != "grantee"},
    "inactif-provisions-imbriquees": lambda: _nested(_grant(status="inactive")),
    "saisie-erronee": lambda: _bare("c1", "entered-in-error", decision="permit"),
    "inactif-categorie-inconnue": lambda: _grant(status="inactive", categories=["identite"]) | {
        "provision": [{"code": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "inconnue"}]}]}]},
}


@pytest.mark.parametrize("shape", sorted(WITHDRAWAL_SHAPES))
def test_a_withdrawal_of_any_shape_ends_the_permit_it_replaces(engine, shape: str) -> None:
    _import(engine, _grant())
    assert (DEP, "identite") in _pairs(engine)
    report = _import(engine, WITHDRAWAL_SHAPES[shape]())
    assert report.erreurs == [] and report.retraits == 1
    assert (DEP, "identite") not in _pairs(engine)
    with engine.connect() as c:
        assert [DEP, "identite"] in json.loads(c.execute(select(revocations.c.pairs)).scalar_one())


def test_a_withdrawal_of_a_consent_the_hub_never_saw_blocks_the_named_recipients(engine) -> None:
    _import(engine, _grant("c1"))
    report = _import(engine, _grant("inconnu", status="inactive", recipients=[DEP], categories=["contact"]))
    assert report.erreurs == []
    assert (DEP, "identite") not in _pairs(engine)  # the person withdrew from DEP: nothing goes there any more
    assert _denied(engine, DEP, "identite") and not _denied(engine, PLAT, "identite")


def test_a_withdrawal_naming_nobody_blocks_every_recipient_of_its_issuer(engine) -> None:
    _import(engine, _grant("c1", recipients=[DEP, PLAT], categories=["identite", "contact"]))
    assert _import(engine, _bare("autre", "inactive")).erreurs == []
    assert _pairs(engine) == set()
    assert _denied(engine, DEP, "droits-rsa") and _denied(engine, PLAT, "identite")


@pytest.mark.parametrize("shape", ["refus-sans-provision-ni-destinataire", "opposition-qui-autoriserait",
                                   "opposition-accord-general"])
def test_a_refusal_naming_nobody_and_any_opposition_deny_rather_than_being_rejected(engine, shape: str) -> None:
    _import(engine, _grant("c1", recipients=[DEP, PLAT], categories=["identite", "contact"]))
    if shape == "refus-sans-provision-ni-destinataire":
        resource = _bare("r1", "active", decision="deny")
    elif shape == "opposition-qui-autoriserait":
        resource = _grant("o1", kind="opposition", recipients=[PLAT])
    else:
        resource = _bare("o1", "active", decision="permit", category=[{"coding": [
            {"system": "https://spie-hub.example.fr/CodeSystem/type-consentement", "code": "opposition"}]}])
    report = _import(engine, resource)
    assert report.erreurs == [] and report.retraits == 1
    assert (PLAT, "identite") not in _pairs(engine)
    assert _denied(engine, PLAT, "droits-rsa")  # a legal basis open to objection is withheld too


# -- partial and zoned dates --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "end", "permitted"), [
    (None, "2026-11", True),  # the whole of November
    (None, "2026", True),  # the whole year
    (None, "2026-10", False),
    ("2026-12", None, False),  # starts on 1 December
    ("2026-11", None, True),
    (None, "2026-11-20T23:30:00-05:00", True),  # 21 November 05:30 in France
    (None, "2026-11-20T22:30:00+00:00", False),  # 20 November 23:30 in France
])
def test_partial_and_zoned_fhir_dates_are_compared_as_dates(engine, start, end, permitted: bool) -> None:
    _import(engine, _grant(start=start, end=end))
    assert ((DEP, "identite") in _pairs(engine)) is permitted


def test_a_refusal_whose_end_is_a_partial_month_lasts_the_whole_month(engine) -> None:
    _import(engine, _grant("c1"))
    _import(engine, consent("r1", NIR, grant=False, recipients=[DEP], categories=["identite"], start="2026", end="2026-11"))
    assert (DEP, "identite") not in _pairs(engine)
    assert (DEP, "identite") in _pairs(engine, day=dt.date(2026, 12, 1))


# -- 2. a permit applies only where every criterion it states matches -------------------------------------------

def _with(resource: dict[str, Any], **provision: Any) -> dict[str, Any]:
    resource = copy.deepcopy(resource)
    resource["provision"][0].update(provision)
    return resource


PRACTITIONER = [{"role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
                 "reference": {"reference": "Practitioner/123"}}]
UNKNOWN_SYSTEM = [{"role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
                   "reference": {"identifier": {"system": "urn:autre-annuaire", "value": DEP}}}]
AUTHOR_ROLE = [{"role": {"coding": [{"system": PARTICIPATION, "code": "AUT"}]},
                "reference": {"reference": f"Organization/{DEP}"}}]

NARROWED = {
    "acteur-praticien": dict(actor=PRACTITIONER),
    "acteur-systeme-inconnu": dict(actor=UNKNOWN_SYSTEM),
    "acteur-role-auteur": dict(actor=AUTHOR_ROLE),
    "action-acces": dict(action=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                               "code": "access"}]}]),
    "finalite-inconnue": dict(purpose=[{"system": PURPOSE_SYSTEM, "code": "prospection"}]),
    "finalite-autre-systeme": dict(purpose=[{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                             "code": "HOPERAT"}]),
    "periode-des-donnees": dict(dataPeriod={"start": "2020-01-01", "end": "2020-12-31"}),
    "etiquette-securite": dict(securityLabel=[{"system": "http://example.org/labels", "code": "R"}]),
}


@pytest.mark.parametrize("shape", sorted(NARROWED))
def test_a_permit_with_a_criterion_the_hub_cannot_match_grants_nothing_and_the_report_says_so(engine, shape) -> None:
    report = _import(engine, _with(_grant(), **NARROWED[shape]))
    assert (DEP, "identite") not in _pairs(engine)
    assert report.importes + len(report.erreurs) == 1
    assert any(text.startswith("entrée 1 : ") for text in report.erreurs + report.restrictions)


def test_a_permit_whose_purpose_is_one_of_the_hubs_applies(engine) -> None:
    _import(engine, _grant(purpose="accompagnement-insertion"))
    assert (DEP, "identite") in _pairs(engine)


def test_a_permit_naming_one_recipient_it_cannot_identify_keeps_the_others_and_says_so(engine) -> None:
    resource = _grant()
    resource["provision"][0]["actor"] += PRACTITIONER
    report = _import(engine, resource)
    assert _pairs(engine) == {(DEP, "identite")}
    assert "non identifiable" in report.restrictions[0]


def test_a_refusal_naming_an_actor_the_hub_cannot_identify_refuses_to_every_recipient(engine) -> None:
    _import(engine, _grant("c1"))
    refusal = _with(consent("r1", NIR, grant=False, recipients=[PLAT], categories=["identite"]), actor=PRACTITIONER)
    assert _import(engine, refusal).erreurs == []
    assert (DEP, "identite") not in _pairs(engine)


def test_a_refusal_naming_an_unknown_category_refuses_every_category(engine) -> None:
    _import(engine, _grant("c1", categories=["identite", "contact"]))
    refusal = consent("r1", NIR, grant=False, recipients=[DEP], categories=["identite"])
    refusal["provision"][0]["code"] = [{"coding": [{"system": CATEGORY_SYSTEM, "code": "adresse-postale"}]}]
    assert _import(engine, refusal).erreurs == []
    assert _pairs(engine) == set()


# -- 3. special categories need an explicit-consent marker --------------------------------------------------------

def test_a_permit_covering_health_without_the_explicit_consent_marker_drops_that_category(engine) -> None:
    report = _import(engine, _grant(categories=["identite", "sante-handicap"]))
    assert _pairs(engine) == {(DEP, "identite")}
    assert "sante-handicap" in report.restrictions[0] and "art. 9" in report.restrictions[0]


def test_a_permit_covering_health_with_the_explicit_consent_marker_covers_it(engine) -> None:
    _import(engine, _grant(categories=["identite", "sante-handicap"], explicit=True))
    assert _pairs(engine) == {(DEP, "identite"), (DEP, "sante-handicap")}


# -- 4. who may say what ------------------------------------------------------------------------------------------

def test_an_issuer_cannot_grant_outside_its_declared_authority(engine) -> None:
    report = _import(engine, _grant(recipients=[DEP], categories=["identite"]), emetteur="france-travail")
    assert _pairs(engine) == set()
    assert "autorité" in report.erreurs[0]
    report = _import(engine, _grant("c2", recipients=[PLAT], categories=["identite", "droits-rsa"]))
    assert _pairs(engine) == {(PLAT, "identite")}
    assert "autorité" in report.restrictions[0] and "droits-rsa" in report.restrictions[0]


def test_a_refusal_from_any_declared_issuer_is_accepted_whatever_the_recipient(engine) -> None:
    _import(engine, _grant(recipients=[DEP, PLAT]))
    report = _import(engine, consent("o1", NIR, grant=False, kind="opposition", blanket=True, recipients=[PLAT]),
                     emetteur="france-travail")
    assert report.erreurs == [] and report.restrictions == []
    assert _pairs(engine) == {(DEP, "identite")}


# -- 5. opaque references, one id per person ----------------------------------------------------------------------

def test_a_partner_consent_id_never_leaves_the_consent_registry(engine) -> None:
    _import(engine, _grant(NIR))  # a partner whose Consent.id is the person's NIR (observed)
    _import(engine, _grant(NIR, status="inactive"))
    with engine.connect() as c:
        payloads = " ".join(c.execute(select(audit_log.c.payload)).scalars())
        refs = " ".join(c.execute(select(revocations.c.consent_ref)).scalars())
    assert NIR not in payloads and NIR not in refs
    assert refs.startswith("c-")


def test_the_same_consent_id_for_two_people_is_refused_never_a_version_of_the_other_persons_consent(engine) -> None:
    # A permit; a withdrawal under another person's id ends it (tests/test_consent_refusal_shapes.py).
    _import(engine, _grant("c1"))
    report = _import(engine, _grant("c1", nir=OTHER_NIR))
    assert report.importes == 0 and "autre personne" in report.erreurs[0]
    assert (DEP, "identite") in _pairs(engine)
    with engine.connect() as c:
        assert c.execute(select(consents.c.version)).scalars().all() == [1]


def test_an_unreadable_update_of_a_permit_ends_it(engine) -> None:
    _import(engine, _grant("c1"))
    update = _grant("c1")
    update["decision"] = "peut-etre"
    report = _import(engine, update)
    assert "entrée 1" in report.erreurs[0]
    assert (DEP, "identite") not in _pairs(engine)


# -- the CSV layout: a withdrawal row of any shape, explicit consent ----------------------------------------------

CSV_HEADER = "identifiant;nir;type;decision;statut;destinataires;categories;consentement_expres\n"


def _csv(engine, tmp_path: Path, *rows: str) -> ImportReport:
    from consent.fhir_import import import_consents

    path = tmp_path / "c.csv"
    path.write_text(CSV_HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return import_consents(path, engine, P, emetteur=DEP, today=TODAY)


@pytest.mark.parametrize("row", [f"c1;{NIR};consentement;;retire;;", f"c1;{NIR};consentement;accord;retire;;identite",
                                 f"c1;{NIR};consentement;n-importe;erreur;{DEP};"])
def test_a_csv_withdrawal_row_of_any_shape_ends_the_permit(engine, tmp_path, row: str) -> None:
    _csv(engine, tmp_path, f"c1;{NIR};consentement;accord;actif;{DEP};identite")
    assert (DEP, "identite") in _pairs(engine)
    report = _csv(engine, tmp_path, row)
    assert report.erreurs == [] and report.retraits == 1
    assert (DEP, "identite") not in _pairs(engine)


def test_a_csv_general_refusal_naming_no_recipient_refuses_everything(engine, tmp_path) -> None:
    _csv(engine, tmp_path, f"c1;{NIR};consentement;accord;actif;{DEP}|{PLAT};identite")
    assert _csv(engine, tmp_path, f"r1;{NIR};opposition;refus;actif;;toutes").erreurs == []
    assert _pairs(engine) == set() and _denied(engine, PLAT, "droits-rsa")


def test_the_csv_explicit_consent_column_lets_a_permit_cover_health(engine, tmp_path) -> None:
    report = _csv(engine, tmp_path, f"c1;{NIR};consentement;accord;actif;{DEP};sante-handicap;non",
                  f"c2;{NIR};consentement;accord;actif;{DEP};sante-handicap|identite;oui")
    assert "art. 9" in report.erreurs[0] and report.erreurs[0].startswith("ligne 2")
    assert _pairs(engine) == {(DEP, "identite"), (DEP, "sante-handicap")}


def test_a_recipient_name_the_registry_does_not_know_is_never_stored_audited_nor_reported(engine) -> None:
    resource = _grant("c1", recipients=[DEP, NIR])  # a partner's free text where a recipient id goes
    refusal = consent("r1", NIR, grant=False, recipients=[NIR], categories=["contact"])
    report = _import(engine, resource, refusal)
    assert _pairs(engine) == {(DEP, "identite")}
    assert _denied(engine, PLAT, "contact")  # the refusal names no recipient the hub knows: it refuses to every one
    with engine.connect() as c:
        stored = " ".join(" ".join(map(str, row)) for row in c.execute(select(consents.c.rules, consents.c.grantees)))
        payloads = " ".join(c.execute(select(audit_log.c.payload)).scalars())
    assert NIR not in stored + payloads + " ".join(report.erreurs + report.restrictions)
    assert "inconnu du registre" in report.restrictions[0]


def test_a_withdrawal_of_an_unknown_consent_sent_again_stays_a_block(engine) -> None:
    _import(engine, _grant("c1"))
    withdrawal = _grant("inconnu", status="inactive", recipients=[DEP])
    _import(engine, withdrawal)
    again = _import(engine, withdrawal)
    assert (again.importes, again.inchanges) == (0, 1)
    assert (DEP, "identite") not in _pairs(engine) and _denied(engine, DEP, "identite")


def test_a_made_up_key_in_an_invalid_resource_is_never_echoed_in_the_report(engine) -> None:
    resource = _grant("c1")
    resource["provision"][0][NIR] = "x"  # an element that does not exist, named by the person's NIR
    report = _import(engine, resource)
    assert report.erreurs and NIR not in " ".join(report.erreurs)


def test_with_an_unreadable_registry_no_permit_is_kept_and_refusals_still_apply(engine, tmp_path, monkeypatch) -> None:
    from spie_hub.registry import clear_cache

    _import(engine, _grant("c1"))
    broken = tmp_path / "flows.yaml"
    broken.write_text("flux: [pas, un, dictionnaire]\n", encoding="utf-8")
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(broken))
    clear_cache()
    try:
        report = _import(engine, _grant("c2", categories=["contact"]), _bare("r1", "active", decision="deny"))
    finally:
        monkeypatch.delenv("SPIE_HUB_FLOWS")
        clear_cache()
    assert "illisible" in report.restrictions[0]
    assert _pairs(engine) == set() and _denied(engine, PLAT, "droits-rsa")

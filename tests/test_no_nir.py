"""A person sent without a NIR gets a fallback pivot, which never matches the NIR pivot that oppositions and
withdrawals are stored under: their objections cannot be checked. Categories under an opposable legal basis or under
consent are then withheld with a stable ground the DPO counts; a legal obligation (not opposable) still applies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from conftest import CAF_FIXTURES
from helpers import consent_resource, write_bundle

from consent.fhir_import import import_consents
from spie_hub.audit import segments
from spie_hub.core.home import HubHome
from spie_hub.privacy.keys import load_key
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.run.decide import SANS_NIR
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

FLOW = "caf-vers-departement"
NIR = "2730799404078"


def _rows(path: str | None) -> list[dict[str, str]]:
    if path is None:
        return []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _without_nir(tmp_path: Path) -> Path:
    flux = tmp_path / "sans-nir.xml"
    flux.write_bytes((CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes().replace(f"<NIR>{NIR}</NIR>".encode(), b"<NIR/>"))
    return flux


def test_a_person_without_nir_who_opposed_the_platform_is_not_delivered_to_it(hub_home: Path, tmp_path: Path) -> None:
    # The person objected to the platform (opposable public-interest basis) under their NIR: the hub cannot see it
    # when the file carries no NIR, so it must not deliver on that basis.
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    write_bundle(tmp_path / "opp.json", consent_resource("opp-1", NIR, decision="deny", grantees=("plateforme-insertion",),
                                                          categories=("identite", "droits-rsa"), kind="opposition"))
    import_consents(tmp_path / "opp.json", engine, Pseudonymiser(load_key(home)), emetteur="departement-052")
    summary = run_flow(FLOW, _without_nir(tmp_path), home)
    platform = summary.destinataires["plateforme-insertion"]
    assert platform.livres == 0 and platform.retenus == 1
    assert not _rows(platform.fichier)
    assert platform.motifs == {SANS_NIR: 1}
    assert platform.fondements["identite"] == {"sans-nir": 1}
    assert platform.fondements["droits-rsa"] == {"sans-nir": 1}


def test_a_legal_obligation_still_applies_without_nir_but_consent_categories_are_withheld(
        hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    summary = run_flow(FLOW, _without_nir(tmp_path), home)
    departement = summary.destinataires["departement-052"]
    assert departement.livres == 1
    (row,) = _rows(departement.fichier)
    assert row["État du droit RSA"] and not row["Nom"] and not row["Prénoms"] and not row["Adresse"]
    assert departement.fondements["droits-rsa"] == {"legale": 1}
    assert departement.fondements["identite"] == {"sans-nir": 1}
    decisions = [json.loads(e.payload) for e in segments.iter_events(home, event="decision")]
    grounds = {c: d["fondement"] for p in decisions for c, d in p["categories"].items() if not d["permis"]}
    assert grounds["identite"] == SANS_NIR and grounds["contact"] == SANS_NIR


def test_the_same_person_with_a_nir_is_still_delivered_to_the_platform(hub_home: Path) -> None:
    summary = run_flow(FLOW, CAF_FIXTURES / "RSABEM-ouvert.xml")
    assert summary.destinataires["plateforme-insertion"].livres == 1

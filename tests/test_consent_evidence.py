"""What the consent registry keeps as proof of collection is controlled, and a refusal with a mistyped NIR key still
restricts.

Observed before: the CSV columns ``recueilli_par``, ``mode_recueil``, ``base_reglementaire``, ``responsable`` (and
FHIR ``sourceReference.display``, ``regulatoryBasis.text``, ``controller``) were stored verbatim, so a third party's
NIR or name typed there sat in the registry that « keeps no NIR » and ``dpo personne`` printed it; an empty
``date_recueil`` was stored and shown as 1970-01-01. An opposition whose NIR had a wrong 2-digit key (13 first
characters right) was refused whole, and the person's identity went to the platform she objected to.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import people_of
from sqlalchemy import select, update

from consent.fhir_build import consent
from consent.fhir_import import import_consents, import_resources
from spie_hub.core.home import HubHome
from spie_hub.core.nir import cle_nir
from spie_hub.demo.data import generate
from spie_hub.dpo.subject_access import subject_access
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import consents, open_store

DEP, PLATFORM = "departement-052", "plateforme-insertion"
PERSON = "2920252121003"
OTHER = "1790675056002"  # someone else's NIR (the agent's, a relative's), typed in a free-text column
HEADER = ("identifiant;nir;type;decision;statut;destinataires;categories;debut;fin;finalite;date_recueil;"
          "recueilli_par;mode_recueil;base_reglementaire;responsable;consentement_expres\n")
FREE_TEXT = "texte libre non conservé"


def _wrong_key(nir13: str) -> str:
    return nir13 + f"{(cle_nir(nir13) + 1) % 97:02d}"


@pytest.fixture
def store(hub_home: Path) -> Any:
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    yield home, engine, load_pseudonymiser(home)
    engine.dispose()


def _sources(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [json.loads(s) for s in connection.execute(select(consents.c.source)).scalars()]


def _everything_stored(home: HubHome) -> bytes:
    return b"".join(p.read_bytes() for p in home.root.rglob("*.sqlite3*"))


def _access_json(engine: Any, pseudonymiser: Any, nir: str = PERSON) -> str:
    report = subject_access(engine, pseudonymiser, nir, load_flows(), demandeur="dpo", motif="test")
    return json.dumps(dataclasses.asdict(report), ensure_ascii=False, default=str)


def test_free_text_proof_columns_holding_a_nir_and_a_name_are_never_stored_nor_shown(store, tmp_path) -> None:
    home, engine, pseudonymiser = store
    path = tmp_path / "c.csv"
    path.write_text(HEADER + f"a1;{PERSON};consentement;accord;actif;{DEP};identite;;;;;{OTHER} DUPONT JEAN;{OTHER};"
                    f"{OTHER};{OTHER} DUPONT;\n", encoding="utf-8")
    report = import_consents(path, engine, pseudonymiser, emetteur=DEP)
    assert report.importes == 1 and not report.erreurs, report.erreurs
    [source] = _sources(engine)
    assert OTHER not in json.dumps(source) and "DUPONT" not in json.dumps(source)
    assert source["recueil"] == [FREE_TEXT] and source["base_reglementaire"] == [FREE_TEXT]
    assert source["controleur"] == [FREE_TEXT]
    assert OTHER.encode() not in _everything_stored(home) and b"DUPONT" not in _everything_stored(home)
    shown = _access_json(engine, pseudonymiser)
    assert OTHER not in shown and "DUPONT" not in shown


def test_declared_partners_a_collection_mode_and_a_known_legal_basis_are_kept(store, tmp_path) -> None:
    home, engine, pseudonymiser = store
    path = tmp_path / "c.csv"
    path.write_text(HEADER + f"a1;{PERSON};consentement;accord;actif;{DEP};identite;;;;2025-03-04;{DEP};Téléphone;"
                    f"RGPD art. 6.1.a;{DEP};\n", encoding="utf-8")
    assert import_consents(path, engine, pseudonymiser, emetteur=DEP).importes == 1
    [source] = _sources(engine)
    assert source["recueil"] == [DEP, "telephone"]
    assert source["base_reglementaire"] == ["RGPD art. 6.1.a"] and source["controleur"] == [DEP]
    assert source["date"] == "2025-03-04"


def test_an_empty_collection_date_is_stored_as_absent_never_as_1970(store, tmp_path) -> None:
    home, engine, pseudonymiser = store
    path = tmp_path / "c.csv"
    path.write_text(HEADER + f"a1;{PERSON};consentement;accord;actif;{DEP};identite;;;;;;;;;\n", encoding="utf-8")
    assert import_consents(path, engine, pseudonymiser, emetteur=DEP).importes == 1
    [source] = _sources(engine)
    assert source.get("date") is None
    assert "1970" not in _access_json(engine, pseudonymiser)


def test_fhir_proof_elements_are_reduced_to_controlled_values(store) -> None:
    home, engine, pseudonymiser = store
    resource = consent("f1", PERSON, recipients=[DEP], categories=["identite"], controller=OTHER,
                       collected_by=f"{OTHER} DUPONT JEAN", method="papier", regulatory_basis=f"{OTHER}")
    resource["controller"].append({"reference": f"Organization/{OTHER}"})
    resource["sourceReference"].append({"reference": "Organization/departement-052", "display": "MARTIN Paul"})
    report = import_resources([("e", resource)], engine, pseudonymiser, emetteur=DEP)
    assert report.importes == 1 and not report.erreurs, report.erreurs
    [source] = _sources(engine)
    text = json.dumps(source, ensure_ascii=False)
    assert OTHER not in text and "DUPONT" not in text and "MARTIN" not in text
    assert source["recueil"] == [FREE_TEXT, "papier", DEP]
    assert source["controleur"] == [FREE_TEXT] and source["base_reglementaire"] == [FREE_TEXT]


def test_subject_access_does_not_print_free_text_stored_before_this_rule(store, tmp_path) -> None:
    home, engine, pseudonymiser = store
    assert import_resources([("e", consent("f1", PERSON, recipients=[DEP], categories=["identite"]))], engine,
                            pseudonymiser, emetteur=DEP).importes == 1
    legacy = {"date": "1970-01-01", "controleur": [OTHER], "base_reglementaire": [f"{OTHER} DUPONT"],
              "recueil": [f"{OTHER} DUPONT JEAN ; papier"], "consentement_expres": False}
    with engine.begin() as connection:
        connection.execute(update(consents).values(source=json.dumps(legacy)))
    shown = _access_json(engine, pseudonymiser)
    assert OTHER not in shown and "DUPONT" not in shown and "1970" not in shown


# -- a refusal whose NIR key is wrong ------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


@pytest.fixture
def platform_person(hub_home: Path, tmp_path: Path) -> Any:
    """A fresh hub, a CAF file, and a person of it the platform receives (found by a scouting hub, same keys)."""
    flux = tmp_path / "flux.xml"
    generate(flux, None, 12, seed=5, anomaly_rate=0)
    first = run_flow("caf-vers-departement", flux, HubHome(tmp_path / "eclaireur").ensure())
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    pseudonymiser = load_pseudonymiser(home)
    received = {r["Pseudonyme"] for r in _rows(Path(first.destinataires[PLATFORM].fichier))}
    nir = next(p["NIR"] for p in people_of(flux) if p["NIR"] and pseudonymiser.for_recipient(
        pseudonymiser.pivot_from_nir(p["NIR"]), PLATFORM) in received)
    yield home, engine, pseudonymiser, flux, nir, pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(nir),
                                                                              PLATFORM)
    engine.dispose()


@pytest.mark.parametrize("row", [
    "o-1;{nir};opposition;refus;actif;plateforme-insertion;toutes",
    "o-1;{nir};consentement;refus;actif;plateforme-insertion;toutes",
    "o-1;{nir};consentement;accord;retire;;",
])
def test_a_refusal_whose_nir_key_is_wrong_applies_to_the_thirteen_digits_and_says_so(platform_person, tmp_path,
                                                                                      row) -> None:
    home, engine, pseudonymiser, flux, nir, pseudonym = platform_person
    path = tmp_path / "o.csv"
    path.write_text("identifiant;nir;type;decision;statut;destinataires;categories\n"
                    + row.format(nir=_wrong_key(nir)) + "\n", encoding="utf-8")
    report = import_consents(path, engine, pseudonymiser, emetteur=DEP)
    assert report.importes == 1 and not report.erreurs, report.erreurs
    assert any("clé de contrôle" in r for r in report.restrictions), report.restrictions
    assert not any(nir in r for r in report.restrictions + report.erreurs)
    summary = run_flow("caf-vers-departement", flux, home)
    assert summary.statut == "termine"
    delivered = {r["Pseudonyme"]: r for r in _rows(Path(summary.destinataires[PLATFORM].fichier))}
    assert pseudonym not in delivered or not delivered[pseudonym].get("NIR")
    assert not any(nir in p.read_text(encoding="utf-8-sig") for p in (home.outbox / PLATFORM).glob("*.csv"))


def test_a_permit_whose_nir_key_is_wrong_stays_refused(store, tmp_path) -> None:
    home, engine, pseudonymiser = store
    path = tmp_path / "a.csv"
    path.write_text("identifiant;nir;type;decision;statut;destinataires;categories\n"
                    f"a-1;{_wrong_key(PERSON)};consentement;accord;actif;{DEP};identite\n", encoding="utf-8")
    report = import_consents(path, engine, pseudonymiser, emetteur=DEP)
    assert report.importes == 0 and len(report.erreurs) == 1 and "clé de contrôle" in report.erreurs[0]
    assert _sources(engine) == []


"""A refusal whose identifier FHIR refuses, or whose top-level member names are odd, still applies, and no name
the partner chose is echoed in the report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from consent.decision import ConsentIndex, decide
from consent.fhir_import import import_consents
from schemas.categories import CategorieDonnees
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import load_flows
from spie_hub.store import open_store

NIR = "2730799404078"
HEADER = "identifiant;nir;type;decision;statut;destinataires;categories"


def _decision(engine, pseudonymiser, recipient_id: str, category: CategorieDonnees):  # noqa: ANN001, ANN202
    recipient = next(r for f in load_flows().values() for r in f.destinataires if r.id == recipient_id)
    pivot = pseudonymiser.pivot_from_nir(NIR)
    found = ConsentIndex(engine).lookup([pivot.pseudonyme]).get(pivot.pseudonyme, [])
    return decide(recipient, [category], found, dt.date.today()).categories[category]


def test_a_csv_opposition_whose_identifier_fhir_refuses_still_blocks_the_person(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    engine, pseudonymiser = open_store(home.database_url), load_pseudonymiser(home)
    path = tmp_path / "oppositions.csv"
    path.write_text(f"{HEADER}\nOPP_1;{NIR};opposition;refus;actif;plateforme-insertion;toutes\n", encoding="utf-8")
    import_consents(path, engine, pseudonymiser)
    decision = _decision(engine, pseudonymiser, "plateforme-insertion", CategorieDonnees.IDENTITE)
    assert not decision.permis, decision


def test_a_duplicated_or_oversized_top_level_member_is_refused_without_echoing_its_name(hub_home: Path,
                                                                                       tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    engine, pseudonymiser = open_store(home.database_url), load_pseudonymiser(home)
    path = tmp_path / "b.json"
    path.write_text('{"resourceType": "Bundle", "' + NIR + '": 1, "' + NIR + '": 2, "entry": []}', encoding="utf-8")
    report = import_consents(path, engine, pseudonymiser)
    assert report.erreurs and "en double" in report.erreurs[0]
    assert NIR not in json.dumps(report.erreurs, ensure_ascii=False)

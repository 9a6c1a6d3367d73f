"""A partner's Consent whose status is not a string (an object, a list) is refused alone, never aborting the batch
with the oppositions before it; a refusal's free text never reaches the store (subject access shows it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import people_of
from sqlalchemy import select

from consent.fhir_build import consent
from consent.fhir_import import import_consents
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.store import consents, open_store


@pytest.mark.parametrize("status", [{"x": 1}, ["inactive"], 12])
def test_a_status_of_another_shape_is_refused_alone_and_the_opposition_before_it_holds(hub_home, tmp_path: Path,
                                                                                      status: object) -> None:
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    flux = tmp_path / "f.xml"
    generate(flux, None, 3, seed=5)
    a, b = [p for p in people_of(flux) if p["NIR"]][:2]
    hostile = consent("c-B", b["NIR"], grant=False, blanket=True) | {"status": status}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": consent("opp-A", a["NIR"], grant=False, kind="opposition", blanket=True)},
        {"resource": hostile}]}), encoding="utf-8")
    report = import_consents(path, engine, load_pseudonymiser(home), emetteur="hub", home=home)
    assert report.erreurs, "the hostile entry is refused and said"
    with engine.connect() as c:
        stored = {r.consent_id for r in c.execute(select(consents.c.consent_id))}
    assert "opp-A" in stored
    engine.dispose()


def test_the_status_text_of_a_refusal_never_reaches_the_store(hub_home, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    flux = tmp_path / "f.xml"
    generate(flux, None, 3, seed=6)
    a, b = [p for p in people_of(flux) if p["NIR"]][:2]
    refusal = consent("c-A", a["NIR"], grant=False, blanket=True) | {"status": b["NIR"]}
    refusal.pop("provision", None)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": refusal}]}),
                    encoding="utf-8")
    import_consents(path, engine, load_pseudonymiser(home), emetteur="hub", home=home)
    with engine.connect() as c:
        sources = " ".join(str(r.source) for r in c.execute(select(consents.c.source)))
    assert b["NIR"] not in sources and b["NIR"][:13] not in sources
    engine.dispose()

"""Golden files: each real partner sample maps to the expected shared records (tests/golden/)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import CAF_FIXTURES, REPO

from connectors.formats.base import InputFacts
from connectors.formats.cnaf_vrsb import read_foyers
from schemas.jsonschema import JSON_SCHEMA_PATH, render
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import RecordError
from spie_hub.mapping.compiler import load_mapping
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.run.records import to_record

GOLDEN = REPO / "tests" / "golden"
TEST_KEY = PseudonymisationKey("golden", b"g" * 32)


def map_file(path: Path) -> list[dict]:
    mapping, pseudonymiser, entete, out = load_mapping("caf_vrsb"), Pseudonymiser(TEST_KEY), InputFacts(), []
    with path.open("rb") as stream:
        for foyer in read_foyers(stream, entete):
            for index, person in enumerate(mapping.records(foyer), start=1):
                provenance = {"partenaire": "caf-msa", "format": "cnaf-vrsb0801", "date_reference": entete.date_reference,
                              "position": f"foyer {entete.unites_lues}, personne {index}"}
                record, _ = to_record(mapping, pseudonymiser, person, foyer, provenance)
                out.append(record.model_dump(mode="json", exclude_defaults=True))
    return out


def map_csv(path: Path) -> list[dict]:
    from connectors.formats.partner_csv import read_rows

    mapping, pseudonymiser, out = load_mapping("ft_flux_mensuel"), Pseudonymiser(TEST_KEY), []
    with path.open("rb") as stream:
        for row in read_rows(stream, InputFacts(), mapping.columns):
            provenance = {"partenaire": "france-travail", "format": "ft-flux-mensuel", "position": f"ligne {row.line}"}
            record, _ = to_record(mapping, pseudonymiser, row.values, row.values, provenance)
            out.append(record.model_dump(mode="json", exclude_defaults=True))
    return out


def test_the_committed_json_schema_matches_the_models() -> None:
    assert JSON_SCHEMA_PATH.read_text(encoding="utf-8") == render(), "lancer : python -m schemas.jsonschema"


@pytest.mark.parametrize("sample", ["RSABEM.xml", "RSABEM-ouvert.xml"])
def test_a_real_cnaf_sample_maps_to_its_golden_shared_records(sample: str) -> None:
    golden = GOLDEN / f"{sample}.json"
    records = map_file(CAF_FIXTURES / sample)
    if os.environ.get("SPIE_HUB_UPDATE_GOLDEN") == "1":
        golden.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    assert records == json.loads(golden.read_text(encoding="utf-8"))


def test_the_france_travail_monthly_csv_maps_to_its_golden_shared_records() -> None:
    golden = GOLDEN / "FT_inscriptions_052_202611.csv.json"
    records = map_csv(REPO / "tests" / "fixtures" / "france_travail" / "FT_inscriptions_052_202611.csv")
    if os.environ.get("SPIE_HUB_UPDATE_GOLDEN") == "1":
        golden.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    assert records == json.loads(golden.read_text(encoding="utf-8"))
    assert records[1]["identite"]["identifiants"] == [{"systeme": "france-travail", "valeur": "2345678B123"}]
    assert {r["inscription_ft"]["evenement"] for r in records} == {"inscription"}


def test_golden_records_round_trip_through_the_model() -> None:
    for record in json.loads((GOLDEN / "RSABEM.xml.json").read_text(encoding="utf-8")):
        assert PersonneSPIE.model_validate(record).model_dump(mode="json", exclude_defaults=True) == record


def test_the_rsa_state_is_a_labelled_national_code() -> None:
    record = PersonneSPIE.model_validate(json.loads((GOLDEN / "RSABEM-ouvert.xml.json").read_text())[0])
    assert record.droit_rsa is not None
    assert (record.droit_rsa.etat.value, record.droit_rsa.etat.libelle) == ("2", "Droit ouvert et versable")


def test_an_unknown_closing_code_is_a_record_error_that_names_the_field() -> None:
    mapping, pseudonymiser = load_mapping("caf_vrsb"), Pseudonymiser(TEST_KEY)
    from lxml import etree

    text = (CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes().replace(
        b"<ETATDOSRSA>2</ETATDOSRSA>", b"<ETATDOSRSA>9</ETATDOSRSA>")
    foyer = etree.fromstring(text).find("InfosFoyerRSA")
    with pytest.raises(RecordError, match="droit_rsa.etat"):
        to_record(mapping, pseudonymiser, foyer.find("Personne"), foyer, {"partenaire": "x", "format": "y", "position": "z"})

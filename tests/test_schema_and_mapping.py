"""The shared schema and the mappings: JSON Schema drift, golden records through the model, mapping errors.

The golden files themselves (every partner sample through the real records and delivery code) are checked by
tests/partners/test_golden.py."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from schemas.jsonschema import JSON_SCHEMA_PATH, render
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import RecordError
from spie_hub.mapping.compiler import load_mapping
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.run.records import to_record

PARTNERS = REPO / "tests" / "partners"
CAF_SAMPLES = PARTNERS / "caf-msa" / "fixtures"
TEST_KEY = PseudonymisationKey("golden", b"g" * 32)


def golden_records(partner: str, sample: str) -> list[dict]:
    """Shared records pinned by the golden harness (tests/partners/test_golden.py)."""
    return json.loads((PARTNERS / partner / "golden" / f"{sample}.json").read_text(encoding="utf-8"))


def test_the_committed_json_schema_matches_the_models() -> None:
    assert JSON_SCHEMA_PATH.read_text(encoding="utf-8") == render(), "lancer : python -m schemas.jsonschema"


def test_the_france_travail_monthly_csv_gives_inscriptions_with_the_partner_identifier() -> None:
    records = golden_records("france-travail", "FT_inscriptions_052_202611.csv")
    assert records[1]["identite"]["identifiants"] == [{"systeme": "france-travail", "valeur": "2345678B123"}]
    assert {r["inscription_ft"]["evenement"] for r in records} == {"inscription"}


def test_golden_records_round_trip_through_the_model() -> None:
    for record in golden_records("caf-msa", "RSABEM.xml"):
        assert PersonneSPIE.model_validate(record).model_dump(mode="json") == record


def test_the_rsa_state_is_a_labelled_national_code() -> None:
    record = PersonneSPIE.model_validate(golden_records("caf-msa", "RSABEM-ouvert.xml")[0])
    assert record.droit_rsa is not None
    assert (record.droit_rsa.etat.value, record.droit_rsa.etat.libelle) == ("2", "Droit ouvert et versable")


def test_an_unknown_closing_code_is_a_record_error_that_names_the_field() -> None:
    mapping, pseudonymiser = load_mapping("caf_vrsb"), Pseudonymiser(TEST_KEY)
    from lxml import etree

    text = (CAF_SAMPLES / "RSABEM-ouvert.xml").read_bytes().replace(
        b"<ETATDOSRSA>2</ETATDOSRSA>", b"<ETATDOSRSA>9</ETATDOSRSA>")
    foyer = etree.fromstring(text).find("InfosFoyerRSA")
    with pytest.raises(RecordError, match="droit_rsa.etat"):
        to_record(mapping, pseudonymiser, foyer.find("Personne"), foyer, {"partenaire": "x", "format": "y", "position": "z"})

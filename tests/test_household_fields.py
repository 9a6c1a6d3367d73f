"""Household fields (N° allocataire, N° de demande RSA, the household's RSA dates) are shared by every member of a
household: two recipients holding them could join their rows. They go only to a recipient whose policy declares it
needs them (``champs_foyer`` in flows.yaml); by default they are withheld."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from conftest import CAF_FIXTURES

from schemas.categories import CHAMPS_FOYER
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import REGISTRY_PATH
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow

FLOW = "caf-vers-departement"
HOUSEHOLD_VALUES = ("2020-11-07", "2018-08-06", "01024041052", "CAF:521:")  # origin date, request date, numbers


def _text(path: str | None) -> str:
    return Path(path).read_text(encoding="utf-8-sig") if path else ""


def test_a_recipient_that_does_not_declare_household_fields_receives_none(hub_home: Path) -> None:
    summary = run_flow(FLOW, CAF_FIXTURES / "RSABEM.xml")
    platform = _text(summary.destinataires["plateforme-insertion"].fichier)
    departement = _text(summary.destinataires["departement-052"].fichier)
    assert summary.destinataires["plateforme-insertion"].livres >= 1
    for value in HOUSEHOLD_VALUES[:2]:
        assert value not in platform  # the platform's rows cannot be joined with the Département's by household
        assert value in departement  # the Département declares it needs them
    with open(summary.destinataires["plateforme-insertion"].fichier, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    assert rows and all(not row.get("Date d'origine du droit") for row in rows)


def test_the_departement_declares_the_household_fields_it_needs() -> None:
    flow = load_flows(REGISTRY_PATH)[FLOW]
    by_id = {r.id: r for r in flow.destinataires}
    assert by_id["plateforme-insertion"].champs_foyer == frozenset()
    assert {"numero-allocataire", "date-origine-droit"} <= by_id["departement-052"].champs_foyer


def _registry_with(tmp_path: Path, rid: str, champs: object) -> Path:
    data = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8"))
    data["flux"][FLOW]["destinataires"][rid]["champs_foyer"] = champs
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_an_unknown_household_field_is_refused_with_the_known_ones_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="champs_foyer") as info:
        load_flows(_registry_with(tmp_path, "plateforme-insertion", ["numero-secu"]))
    assert "numero-allocataire" in str(info.value)


def test_every_declared_household_field_names_a_field_of_the_schema() -> None:
    from schemas.spie_v1 import PersonneSPIE

    for name, (block, attribute, _system) in CHAMPS_FOYER.items():
        model = PersonneSPIE.model_fields[block].annotation.__args__[0]  # type: ignore[union-attr]
        assert attribute in model.model_fields, name


def test_household_fields_are_removed_from_a_recipients_copy_only() -> None:
    from schemas.spie_v1 import PersonneSPIE
    from spie_hub.run.decide import without_household_fields

    record = PersonneSPIE.model_validate({
        "pseudonyme": "t1." + "0" * 32, "provenance": {"partenaire": "x", "format": "y", "position": "p"},
        "identite": {"nom": "X", "identifiants": [{"systeme": "cnaf-matricule", "valeur": "CAF:521:1"},
                                                  {"systeme": "france-travail-idassedic", "valeur": "1253359X"}]},
        "droit_rsa": {"etat": "2", "soumis_droits_devoirs": True, "role": "DEM", "organisme": "CAF", "departement": "052",
                      "date_demande": "2018-08-06", "date_origine_droit": "2020-11-07",
                      "suspensions_versement": [{"motif": "06", "date_debut": "2021-11-01"}]}})
    stripped = without_household_fields(record, frozenset({"date-demande-rsa"}))
    assert [i.systeme for i in stripped.identite.identifiants] == ["france-travail-idassedic"]
    assert stripped.droit_rsa.date_origine_droit is None and stripped.droit_rsa.suspensions_versement == []
    assert str(stripped.droit_rsa.date_demande) == "2018-08-06" and stripped.identite.nom == "X"
    assert record.droit_rsa.date_origine_droit is not None and len(record.identite.identifiants) == 2  # untouched
    assert without_household_fields(record, frozenset(CHAMPS_FOYER)) is record

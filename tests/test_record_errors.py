"""One record's trouble stays that record's: a time-zoned reference date, an unexpected error while mapping."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import CAF_FIXTURES

from spie_hub.mapping import compiler
from spie_hub.run.lifecycle import run_flow

FLOW = "caf-vers-departement"
RECIPIENT = "departement-052"


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


@pytest.mark.parametrize("dtref", ["2022-02-28+14:00", "2022-02-28Z", "2022-02-28-05:30"])
def test_a_schema_valid_reference_date_with_a_time_zone_rejects_nothing_and_names_the_file_by_its_date(
        hub_home: Path, tmp_path: Path, dtref: str) -> None:
    flux = tmp_path / "RSABEM-tz.xml"
    flux.write_bytes((CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes()
                     .replace(b"<DTREF>2022-02-28</DTREF>", f"<DTREF>{dtref}</DTREF>".encode()))
    summary = run_flow(FLOW, flux)
    assert summary.rejetes == 0
    delivered = summary.destinataires[RECIPIENT]
    assert delivered.livres == 1
    name = Path(delivered.fichier).name
    assert "_20220228_" in name
    assert not any(c in name for c in "+:Z") and dtref not in name  # never the partner's text in a file name


@pytest.mark.parametrize("dtref", ["12026-10-31", "-0001-10-31", "0001-01-01"])
def test_a_schema_valid_reference_date_no_file_can_be_dated_by_quarantines_the_file_with_a_clear_reason(
        hub_home: Path, tmp_path: Path, dtref: str) -> None:
    """xs:date allows years of five digits and negative ones: never a silent file named by the run's day."""
    flux = tmp_path / "RSABEM-an.xml"
    flux.write_bytes((CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes()
                     .replace(b"<DTREF>2022-02-28</DTREF>", f"<DTREF>{dtref}</DTREF>".encode()))
    summary = run_flow(FLOW, flux)
    assert summary.statut == "quarantaine"
    assert "DTREF" in (summary.message or "") and dtref not in (summary.message or "")
    assert not list((hub_home / "outbox" / RECIPIENT).glob("*.csv"))


def test_an_unexpected_error_while_mapping_one_record_rejects_that_record_alone(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = compiler.CompiledMapping.map
    calls = {"n": 0}

    def sometimes_broken(self, record, parent):  # noqa: ANN001, ANN202 - the real signature
        calls["n"] += 1
        if calls["n"] == 2:  # the second person of the file only
            raise ZeroDivisionError("division by zero 2730799404078")
        return real(self, record, parent)

    monkeypatch.setattr(compiler.CompiledMapping, "map", sometimes_broken)
    summary = run_flow(FLOW, CAF_FIXTURES / "RSABEM.xml")
    assert summary.statut != "annule"
    assert summary.rejetes == 1
    assert summary.lus == 3
    (rejection,) = [p for p in Path(hub_home).rglob("*rejets*.csv")]
    rows = _rows(str(rejection))
    assert len(rows) == 1
    reason = rows[0]["Motif du rejet"]
    assert "erreur inattendue" in reason and "ZeroDivisionError" in reason
    assert "2730799404078" not in reason and "Traceback" not in reason

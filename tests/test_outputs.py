import csv
import io

import pytest

from connectors.formats.registry import load_output
from connectors.formats.reports import neutralise, write_report


@pytest.mark.parametrize("cell", ["=1+1", "+33 6 12", "-2", "@SUM(A1)", "\t=x", "\r=x"])
def test_a_cell_a_spreadsheet_would_evaluate_is_neutralised(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


def test_ordinary_cells_are_left_alone() -> None:
    assert neutralise("DUPRÉ") == "DUPRÉ" and neutralise("2026-01-01") == "2026-01-01"


def test_reports_sent_to_partners_neutralise_every_cell() -> None:
    handle = io.StringIO()
    write_report(handle, ["Position", "Motif"], [("foyer 1", '=HYPERLINK("http://x")'), ("foyer 2", None)])
    rows = list(csv.reader(io.StringIO(handle.getvalue()), delimiter=";"))
    assert rows == [["Position", "Motif"], ["foyer 1", "'=HYPERLINK(\"http://x\")"], ["foyer 2", ""]]
    assert handle.getvalue().endswith("\r\n")


def test_every_column_of_the_departement_file_has_a_known_field_and_category() -> None:
    output = load_output("csv_departement")
    headers = [c.entete for c in output.columns]
    assert len(headers) == len(set(headers)) and headers[0] == "Pseudonyme"
    assert {c.category.value for c in output.columns if c.category} == {"droits-rsa", "identite", "contact"}

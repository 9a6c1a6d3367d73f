from pathlib import Path

import pytest
from conftest import CAF_FIXTURES

from connectors.formats.base import InputFacts
from connectors.formats.cnaf_vrsb import read_foyers, validate_file
from spie_hub.core.errors import FatalInputError


@pytest.mark.parametrize("sample", ["RSABEM.xml", "RSABEM-ouvert.xml"])
def test_the_real_cnaf_samples_validate_against_the_xsd(sample: str) -> None:
    entete, errors = validate_file(CAF_FIXTURES / sample)
    assert errors == []
    assert entete.date_reference == "2022-02-28"


def test_the_invalid_sample_is_rejected_with_a_message_naming_the_element() -> None:
    _, errors = validate_file(CAF_FIXTURES / "RSABEI_invalid.xml")
    assert len(errors) == 1
    # libxml2's English message, translated for the sender (tests/test_webrsa_ali.py covers the translations).
    assert "<InfosFoyerRSA>" in errors[0] and "manquant" in errors[0] and "Missing" not in errors[0]


def test_a_trailer_that_miscounts_the_foyers_is_reported_not_fatal() -> None:
    entete, errors = validate_file(CAF_FIXTURES / "RSABEM.xml")
    assert errors == [] and entete.unites_lues == 2
    assert "annonce 1" in entete.anomalies[0]


def test_a_doctype_with_entities_is_refused_before_parsing(tmp_path: Path) -> None:
    evil = tmp_path / "xxe.xml"
    evil.write_text('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Racine>&x;</Racine>')
    with pytest.raises(FatalInputError, match="DOCTYPE"), evil.open("rb") as stream:
        list(read_foyers(stream, InputFacts()))


@pytest.mark.parametrize("content", [b"", b"   \n", b"\x00\xff garbage", b"<Racine><IdentificationFlux>"])
def test_empty_truncated_or_binary_files_give_a_clear_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(content)
    _, errors = validate_file(bad)
    assert len(errors) == 1 and "Traceback" not in errors[0]


def test_windows_1252_text_is_decoded(tmp_path: Path) -> None:
    text = (CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes().replace(b"<NOM>BULLOCK</NOM>", "<NOM>BÉRANGER Œ</NOM>".encode("cp1252"))
    path = tmp_path / "accents.xml"
    path.write_bytes(text)
    with path.open("rb") as stream:
        foyer = next(read_foyers(stream, InputFacts()))
        assert foyer.findtext("Personne/Identification/NOM") == "BÉRANGER Œ"


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_a_file_without_xml_declaration_is_read_in_its_own_encoding(tmp_path: Path, encoding: str) -> None:
    # CNAF files without a declaration are Latin-1 in practice; a valid UTF-8 file stays UTF-8.
    text = (CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes().split(b"?>", 1)[1]
    path = tmp_path / "sans-declaration.xml"
    path.write_bytes(text.replace(b"<NOM>BULLOCK</NOM>", "<NOM>LEFÈVRE</NOM>".encode(encoding)))
    with path.open("rb") as stream:
        assert next(read_foyers(stream, InputFacts())).findtext("Personne/Identification/NOM") == "LEFÈVRE"


@pytest.mark.parametrize("padding", [0, 10_000])
def test_a_doctype_hidden_behind_a_long_comment_is_still_refused(tmp_path: Path, padding: int) -> None:
    evil = tmp_path / "xxe.xml"
    evil.write_text(f'<?xml version="1.0"?><!-- {"x" * padding} --><!DOCTYPE Racine [<!ENTITY a "aaaa">]>'
                    "<Racine>&a;</Racine>")
    with pytest.raises(FatalInputError, match="DOCTYPE"), evil.open("rb") as stream:
        list(read_foyers(stream, InputFacts()))


def test_an_undeclared_entity_reference_is_an_error_not_an_expansion(tmp_path: Path) -> None:
    bad = tmp_path / "entity.xml"
    bad.write_bytes((CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes().replace(b"<NOM>BULLOCK", b"<NOM>&secret;"))
    _, errors = validate_file(bad)
    # Told in French with its line; the reference itself is not quoted (a partner's text could be anything).
    assert len(errors) == 1 and "entité non définie" in errors[0] and "ligne " in errors[0]


def test_a_schema_error_is_located_by_foyer_and_line(tmp_path: Path) -> None:
    from spie_hub.demo.data import generate

    flux = tmp_path / "flux.xml"
    generate(flux, None, 5, seed=1)
    lines = flux.read_text(encoding="cp1252").split("\n")
    lines[5] = lines[5].replace("<LIEUDIST/>", "<LIEUDISTX/>")  # line 6 holds the third foyer
    flux.write_text("\n".join(lines), encoding="cp1252")
    _, errors = validate_file(flux)
    assert "élément <LIEUDISTX>, foyer n° 3, ligne 6" in errors[0]

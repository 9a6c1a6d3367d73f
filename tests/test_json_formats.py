"""JSON Lines: the reader (``jsonl``), the compiler's ``lecture: json``, the Cap emploi v1 format and its schema,
the mappings of landed France Travail and i-milo answers, and the writer (output ``jsonl``)."""

from __future__ import annotations

import datetime as dt
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from connectors.formats.base import BadRecord, InputFacts, PartnerRecord, ReaderSettings
from connectors.formats.json_lines import DEPTH_LIMIT, LINE_LIMIT, JsonLinesReader
from connectors.formats.json_lines_output import JsonLinesOutput
from connectors.formats.registry import load_output, output_class, reader_class
from schemas.categories import CategorieDonnees
from schemas.codes import Frein
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import ConfigurationError, FatalInputError, RecordError
from spie_hub.mapping.compiler import JsonPath, load_mapping
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.run.deliver import shuffled_writer
from spie_hub.run.records import Mapped, Rejected, read_records, reader_for

REPO = Path(__file__).resolve().parent.parent
PARTNERS = REPO / "tests" / "partners"
CAP_EMPLOI = PARTNERS / "cap-emploi" / "fixtures" / "cap-emploi_052_20261115.jsonl"
FT_USAGERS = PARTNERS / "france-travail" / "fixtures" / "usagers_20261115T060000Z_4c1d2e3f4a5b.jsonl"
IMILO = PARTNERS / "missions-locales" / "fixtures" / "evenements_20261115T060000Z_9a8b7c6d5e4f.jsonl"
SCHEMA = REPO / "schemas" / "cap_emploi" / "cap-emploi-v1.schema.json"
KEY = PseudonymisationKey("test", b"j" * 32)
EVERY = frozenset(CategorieDonnees)
NIR = "1850352121045"
HEADER = {"format": "cap-emploi", "version": "1.0.0"}


# -- helpers ---------------------------------------------------------------------------------------------------------

def lines(*objects: Any) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o, ensure_ascii=False).encode()) + b"\n" for o in objects)


def read(mapping_name: str, data: bytes, *, mappings_dir: Path | None = None) -> tuple[list[Mapped], list[Rejected], InputFacts]:
    mapping = load_mapping(mapping_name, mappings_dir)
    facts = InputFacts()
    items = list(read_records(reader_for("jsonl", mapping), mapping, Pseudonymiser(KEY), io.BytesIO(data), facts,
                              {"partenaire": "test", "format": "jsonl"}))
    return [i for i in items if isinstance(i, Mapped)], [i for i in items if isinstance(i, Rejected)], facts


def raw_items(data: bytes, header: tuple[str, ...] = ()) -> list[PartnerRecord | BadRecord]:
    return list(JsonLinesReader(ReaderSettings(columns=header)).records(io.BytesIO(data), InputFacts()))


def write_mapping(folder: Path, champs: str, extra: str = "") -> Path:
    (folder / "essai.yaml").write_text(
        f"mapping: essai\nformat: jsonl\nlecture: json\n{extra}pivot:\n  nir: nir\nchamps:\n{champs}", encoding="utf-8")
    return folder


def person(**extra: Any) -> dict[str, Any]:
    return {"nir": NIR, "date_naissance": "1985-03-14", **extra}


def validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")), format_checker=FormatChecker())


# -- the samples through their mappings ------------------------------------------------------------------------------

def test_the_cap_emploi_sample_maps_to_shared_records_with_health_in_its_own_block() -> None:
    mapped, rejected, facts = read("cap_emploi", CAP_EMPLOI.read_bytes())
    assert not rejected and len(mapped) == 3
    assert facts.date_reference == "2026-11-15"
    first = mapped[0].record
    assert first.identite is not None and first.identite.nir == NIR  # the 15-character NIR, key checked, kept on 13
    assert first.identite.prenoms == ["LUC", "ANDRÉ"]
    assert [(i.systeme, i.valeur) for i in first.identite.identifiants] == [("cap-emploi", "CE52-000101")]
    assert first.orientation is not None and first.orientation.type.value == "pro"
    assert first.orientation.organisme is not None and first.orientation.organisme.value == "cap-emploi"
    assert first.referent is not None and first.referent.structure == "Cap emploi Haute-Marne, antenne de Chaumont"
    assert [(a.libelle, a.statut.value) for a in first.actions] == [("Accompagnement Cap emploi", "en-cours")]
    # Contrainte 23 stays an ordinary barrier; 25 (santé) is moved by the schema to the special block.
    assert first.diagnostic is not None and [(f.frein, f.impact.value) for f in first.diagnostic.freins] == [(Frein.MOBILITE, "1")]
    health = first.sante_handicap
    assert health is not None and health.rqth is True and health.boe is True and health.esat is False
    assert health.date_debut_rqth == dt.date(2024, 1, 20) and health.date_fin_rqth == dt.date(9999, 12, 31)
    assert [(f.frein, f.impact.value) for f in health.freins] == [(Frein.SANTE, "3")]
    second = mapped[1].record
    assert second.sortie is not None and (second.sortie.date, second.sortie.type.value) == (dt.date(2026, 10, 30), "emploi-durable")
    assert second.referent is not None and second.referent.structure == "Cap emploi"  # the default when none is named
    third = mapped[2].record
    assert [a.statut.value for a in third.actions] == ["prevue"] and third.sortie is None and third.diagnostic is None


def test_the_landed_france_travail_answers_map_to_status_freins_ppae_orientation_and_appointments() -> None:
    mapped, rejected, _ = read("ft_api_usagers", FT_USAGERS.read_bytes())
    assert [(r.position, r.reason) for r in rejected] == [
        ("ligne 3", "usager non identifié par France Travail : aucun usager trouvé (S002)")]
    first, second, fourth = (m.record for m in mapped)
    assert first.identite is not None and first.identite.nir == "2031152121077"
    assert first.inscription_ft is not None and (first.inscription_ft.evenement.value, first.inscription_ft.date,
                                                 first.inscription_ft.code) == ("inscription", dt.date(2026, 6, 28), "1")
    assert [(c.type.value, c.date_debut) for c in first.contrats] == [("PPAE", dt.date(2026, 6, 28))]
    assert first.diagnostic is not None and first.diagnostic.date == dt.date(2026, 9, 17)
    assert [(f.frein, f.impact.value) for f in first.diagnostic.freins] == [(Frein.MOBILITE, "1")]  # 27: not OUI
    assert first.sante_handicap is not None and [f.frein for f in first.sante_handicap.freins] == [Frein.SANTE]
    assert first.sante_handicap.motif_inscription_ft == "LICENCIEMENT ECONOMIQUE"  # free text: special block
    assert first.orientation is not None and (first.orientation.type.value, first.orientation.organisme.value,  # type: ignore[union-attr]
                                              first.orientation.date_decision) == ("socio-pro", "departement", dt.date(2026, 6, 30))
    # A date-time keeps the partner's own calendar day (2026-11-20T09:30+01:00), never shifted to UTC.
    assert [(r.date, r.statut.value) for r in first.rendez_vous] == [(dt.date(2026, 11, 20), "prevu"), (dt.date(2026, 10, 2), "honore")]
    assert second.inscription_ft is not None and second.inscription_ft.evenement.value == "cessation"
    assert second.contrats == [] and second.orientation is None
    assert second.sortie is not None and (second.sortie.date, second.sortie.type.value) == (dt.date(2026, 10, 31), "autre")
    assert fourth.diagnostic is None and [r.statut.value for r in fourth.rendez_vous] == ["absent"]


def test_the_landed_i_milo_events_map_to_identity_cej_situations_and_sorties() -> None:
    mapped, rejected, _ = read("imilo_evenements", IMILO.read_bytes())
    assert [(r.position, r.reason) for r in rejected] == [
        ("ligne 3", "événement i-milo sans dossier à transmettre : dossier archivé dans i-milo (ARCHIVE)")]
    first, second = (m.record for m in mapped)
    assert first.identite is not None and first.identite.prenoms == ["INÈS"]
    assert [(i.systeme, i.valeur) for i in first.identite.identifiants] == [("i-milo", "123456"), ("france-travail", "12345678901")]
    assert [(c.type.value, c.date_debut, c.date_fin) for c in first.contrats] == [
        ("CEJ", dt.date(2026, 5, 4), dt.date(2027, 5, 3))]  # planned end: no real end yet
    assert [(a.libelle, a.statut.value) for a in first.actions] == [("Formation", "en-cours"), ("Immersion en entreprise", "realisee")]
    assert first.referent is not None and first.referent.structure == "Mission locale du Sud Haute-Marne"
    assert first.sortie is None
    assert first.contact is not None and first.contact.adresse == "12 RUE DES TANNERIES"  # null complement left out
    assert second.contrats[0].date_fin == dt.date(2026, 10, 31)  # the real end comes first
    assert second.sortie is not None and (second.sortie.date, second.sortie.type.value) == (dt.date(2026, 10, 31), "emploi-temporaire")
    assert [(i.systeme, i.valeur) for i in second.identite.identifiants] == [("i-milo", "123789")]  # type: ignore[union-attr]


def test_each_sample_has_its_provenance_written_beside_its_fixtures_folder() -> None:
    for partner in ("cap-emploi", "france-travail", "missions-locales"):
        provenance = PARTNERS / partner / "PROVENANCE.md"
        assert provenance.exists(), partner
        assert "synthétique" in provenance.read_text(encoding="utf-8")
    assert not list(PARTNERS.glob("*/fixtures/PROVENANCE.md"))


# -- the compiler's JSON paths ----------------------------------------------------------------------------------------

def test_a_dotted_path_walks_objects_and_lists_and_a_null_is_absent() -> None:
    record = {"a": {"b": [{"c": 1}, {"c": 2}], "n": None, "t": True, "f": 1.5}}
    assert JsonPath("a.b.c").nodes(record) == [1, 2]
    assert JsonPath("a.b.c").text(record) == "1"  # the first, as XPath's string()
    assert JsonPath("a.n").nodes(record) == [] and JsonPath("a.missing.x").text(record) is None
    assert (JsonPath("a.t").text(record), JsonPath("a.f").text(record)) == ("true", "1.5")
    assert JsonPath(".").nodes(["x", "y"]) == ["x", "y"]


def test_predicates_pick_items_by_value_by_dotted_key_by_inequality_and_by_position() -> None:
    record = {"s": [{"etat": "TERMINE", "k": {"v": "a"}, "n": 1}, {"etat": "EN_COURS", "k": {"v": "b"}, "n": 2},
                    {"etat": "EN_COURS", "k": {"v": "c"}, "n": 3}], "o": {"flag": True, "x": "y"}}
    assert JsonPath("s[etat='EN_COURS'].n").nodes(record) == [2, 3]
    assert JsonPath('s[etat="EN_COURS"][1].n').nodes(record) == [3]
    assert JsonPath("s[etat!='EN_COURS'].n").nodes(record) == [1]
    assert JsonPath("s[k.v='c'].n").nodes(record) == [3]
    assert JsonPath("s[0].etat").text(record) == "TERMINE"
    assert JsonPath("o[flag=true].x").text(record) == "y" and JsonPath("o[flag=false].x").text(record) is None
    assert JsonPath("s[n=2].etat").text(record) == "EN_COURS"  # a number compared as JSON writes it
    assert JsonPath("s[etat='a.b'].n").nodes(record) == []  # a dot inside a predicate's value does not split the path


@pytest.mark.parametrize("path", ["a..b", "a[etat]", "a[", "[0]"])
def test_a_malformed_path_is_a_configuration_error(path: str) -> None:
    with pytest.raises(ConfigurationError):
        JsonPath(path)


def test_an_object_where_a_value_is_expected_rejects_the_record_naming_the_path_only() -> None:
    with pytest.raises(RecordError, match=r"^a : objet ou liste") as caught:
        JsonPath("a").text({"a": {"secret": NIR}})
    assert NIR not in str(caught.value)


def test_repeter_reads_each_item_of_a_list_with_fields_relative_to_the_item(tmp_path: Path) -> None:
    folder = write_mapping(tmp_path, """\
  identite.nir: {chemin: nir, transformation: nir}
  identite.prenoms: {chemin: prenoms, transformation: liste}
  rendez_vous:
    repeter: "rdv[statut!='X']"
    champs:
      date: {chemin: quand, transformation: date_iso}
      objet: {chemin: "infos.objet"}
      statut: {chemin: statut, correspondance: {P: prevu, E: honore}}
  contrats:
    repeter: "cej[actif=true]"
    champs:
      type: {constante: CEJ}
      date_fin: {chemins: [fin_reelle, fin_prevue], transformation: premier, puis: date}
""")
    data = lines(person(prenoms=["A", " ", "B"], rdv=[
        {"quand": "2026-01-02T23:30:00+02:00", "statut": "P", "infos": {"objet": "Bilan"}},
        {"quand": "2026-01-03", "statut": "X"}, {"quand": "2026-01-04T08:00:00Z", "statut": "E"}],
        cej={"actif": True, "fin_prevue": "2027-01-01"}))
    (record,), _, _ = read("essai", data, mappings_dir=folder)
    assert record.record.identite is not None and record.record.identite.prenoms == ["A", "B"]
    assert [(r.date, r.objet, r.statut.value) for r in record.record.rendez_vous] == [
        (dt.date(2026, 1, 2), "Bilan", "prevu"), (dt.date(2026, 1, 4), None, "honore")]
    assert [(c.type.value, c.date_fin) for c in record.record.contrats] == [("CEJ", dt.date(2027, 1, 1))]


def test_a_code_outside_a_crosswalk_or_a_correspondence_rejects_the_record_without_echoing_it(tmp_path: Path) -> None:
    folder = write_mapping(tmp_path, """\
  identite.nir: {chemin: nir, transformation: nir}
  orientation.type: {chemin: parcours, transformation: "code:ORIENTATION"}
  sortie.date: {chemin: sortie, transformation: date}
  sortie.type: {chemin: motif, correspondance: {E: emploi-durable}}
""")
    _, rejected, _ = read("essai", lines(person(parcours="ZZZ-SECRET")), mappings_dir=folder)
    assert rejected[0].reason == "orientation.type : code absent de la table ORIENTATION"
    _, rejected, _ = read("essai", lines(person(parcours="PSP", sortie="2026-01-01", motif="QUI-SAIT")), mappings_dir=folder)
    assert rejected[0].reason == "sortie.type : valeur absente de la table de correspondance du mapping"


def test_a_field_under_si_exists_only_when_its_path_reaches_something(tmp_path: Path) -> None:
    folder = write_mapping(tmp_path, """\
  identite.nir: {chemin: nir, transformation: nir}
  sortie.date: {chemin: fin, transformation: date}
  sortie.type: {constante: autre, si: fin}
  sante_handicap.rqth: {chemin: rqth, transformation: presence}
""")
    (with_end, without_end), _, _ = read("essai", lines(person(fin="2026-02-01", rqth={"date_debut": "2020-01-01"}),
                                                        person(nir="2920752448033", fin=None)), mappings_dir=folder)
    assert with_end.record.sortie is not None and with_end.record.sortie.type.value == "autre"
    assert with_end.record.sante_handicap is not None and with_end.record.sante_handicap.rqth is True
    assert without_end.record.sortie is None and without_end.record.sante_handicap is None


def test_an_unknown_lecture_or_a_malformed_header_or_condition_is_refused_when_the_mapping_loads(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("mapping: a\nformat: x\nlecture: yaml\npivot: {nir: n}\nchamps: {}\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="lecture inconnue"):
        load_mapping("a", tmp_path)
    write_mapping(tmp_path, "  identite.nir: nir\n", extra="entete: {format: cap-emploi, version: v1}\n")
    with pytest.raises(ConfigurationError, match="entete"):
        load_mapping("essai", tmp_path)
    write_mapping(tmp_path, "  identite.nir: nir\n", extra="conditions: [{chemin: codeRetour}]\n")
    with pytest.raises(ConfigurationError, match="condition"):
        load_mapping("essai", tmp_path)


def test_the_json_reader_and_output_are_found_by_their_registry_names() -> None:
    assert reader_class("jsonl") is JsonLinesReader
    assert output_class("jsonl") is JsonLinesOutput


# -- hostile lines ------------------------------------------------------------------------------------------------------

def reasons(data: bytes) -> dict[int, str]:
    return {i.line: i.problem for i in raw_items(data) if isinstance(i, BadRecord)}  # type: ignore[misc]


def test_hostile_lines_are_rejected_one_by_one_with_their_number_and_a_french_reason() -> None:
    good = json.dumps(person()).encode()
    data = b"\n".join([
        good,
        b"[" * 100 + b"]" * 100,  # 1 deep list
        b'{"a":' * 60 + b"1" + b"}" * 60,  # 1 deep object, below Python's own recursion limit
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,  # 1 beyond it
        b'{"nir": "\xff\xfe' + NIR.encode() + b'"}',
        b'["' + NIR.encode() + b'"]',
        b'"' + NIR.encode() + b'"',
        b'{"x": NaN}',
        b'{"x": -Infinity}',
        b'{"x": 1e400}',
        b'{"nir": "1", "nir": "2"}',
        b'{"nir": "' + NIR.encode() + b'",}',
        b"   ",
        b"",
        good,
    ]) + b"\n"
    found = reasons(data)
    assert found == {
        2: "la ligne est une liste, un objet JSON {…} est attendu",
        3: f"imbrication de plus de {DEPTH_LIMIT} niveaux",
        4: f"imbrication de plus de {DEPTH_LIMIT} niveaux",
        5: "encodage : UTF-8 attendu (octet invalide en position 10)",
        6: "la ligne est une liste, un objet JSON {…} est attendu",
        7: "la ligne est un texte, un objet JSON {…} est attendu",
        8: "valeur NaN interdite (JSON n'a ni NaN ni Infinity)",
        9: "valeur -Infinity interdite (JSON n'a ni NaN ni Infinity)",
        10: "nombre hors des limites (infini)",
        11: "clé répétée dans un même objet",
        12: "JSON invalide : nom de clé entre guillemets doubles attendu (colonne 25)",
    }
    records = [i for i in raw_items(data) if isinstance(i, PartnerRecord)]
    assert [r.line for r in records] == [1, 15]  # blank lines skipped, the last good line still read
    assert not any(NIR in reason for reason in found.values())


def test_a_line_over_the_limit_is_rejected_unread_and_the_next_line_is_read() -> None:
    huge = b'{"x": "' + b"a" * (LINE_LIMIT + 10) + b'"}'
    data = lines(person(), huge, person(nir="2920752448033"))
    items = raw_items(data)
    assert [(type(i).__name__, i.line) for i in items] == [("PartnerRecord", 1), ("BadRecord", 2), ("PartnerRecord", 3)]
    assert items[1].problem == f"ligne de plus de {LINE_LIMIT // 1024} Kio"  # type: ignore[union-attr]
    # A huge last line without a final newline is rejected too.
    assert [type(i).__name__ for i in raw_items(lines(person()) + huge)] == ["PartnerRecord", "BadRecord"]


def test_too_many_values_on_one_line_are_rejected() -> None:
    assert reasons(lines({"x": list(range(30_000))})) == {1: "plus de 20000 valeurs dans la ligne"}


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "fichier vide"),
    ('{"a": 1}\n'.encode("utf-16"), "UTF-16"),
])
def test_an_empty_or_utf16_file_is_refused_whole(data: bytes, reason: str) -> None:
    with pytest.raises(FatalInputError, match=reason):
        raw_items(data)


def test_a_utf8_bom_is_tolerated_and_noted() -> None:
    facts = InputFacts()
    items = list(JsonLinesReader(ReaderSettings()).records(io.BytesIO(b"\xef\xbb\xbf" + lines(person())), facts))
    assert [type(i).__name__ for i in items] == ["PartnerRecord"] and "BOM" in facts.anomalies[0]


# -- the header line and the published schema -----------------------------------------------------------------------

EXPECTED = ("cap-emploi", "1.0.0")


@pytest.mark.parametrize(("first", "message"), [
    (person(), "en-tête absent"),
    ({"format": "autre-format", "version": "1.0.0"}, "format « autre-format » au lieu de « cap-emploi »"),
    ({"format": "DUPONT Jean", "version": "1.0.0"}, "format inattendu au lieu de « cap-emploi »"),
    ({"format": "cap-emploi", "version": "2.0.0"}, r"version 2\.0\.0 inconnue du hub \(versions 1\.x acceptées\)"),
    ({"format": "cap-emploi", "version": "un"}, "version illisible"),
    ({"format": "cap-emploi", "version": "1.0.0", "secret": "x"}, "en-tête non conforme"),
    (b"{pas du json", "en-tête illisible"),
])
def test_a_missing_or_foreign_header_or_an_unknown_major_version_refuses_the_whole_file(first: Any, message: str) -> None:
    with pytest.raises(FatalInputError, match=message):
        raw_items(lines(first, person()), EXPECTED)


def test_a_file_without_any_line_is_refused_when_a_header_is_expected() -> None:
    with pytest.raises(FatalInputError, match="en-tête absent"):
        raw_items(b"\n\n", EXPECTED)


def test_a_later_minor_version_is_read_and_noted_and_its_production_date_is_the_reference_date() -> None:
    facts = InputFacts()
    header = {"format": "cap-emploi", "version": "1.4.0", "date_production": "2026-11-15T23:50:00+01:00"}
    items = list(JsonLinesReader(ReaderSettings(columns=EXPECTED)).records(io.BytesIO(lines(header, person())), facts))
    assert [type(i).__name__ for i in items] == ["PartnerRecord"]
    assert facts.date_reference == "2026-11-15" and "1.4.0 plus récente" in facts.anomalies[0]


def test_the_cap_emploi_samples_validate_against_the_published_schema() -> None:
    Draft202012Validator.check_schema(json.loads(SCHEMA.read_text(encoding="utf-8")))
    schema = validator()
    header, *people = [json.loads(line) for line in CAP_EMPLOI.read_text(encoding="utf-8").splitlines()]
    header_schema = Draft202012Validator(dict(schema.schema["$defs"]["entete"], **{"$defs": schema.schema["$defs"]}))
    assert not list(header_schema.iter_errors(header))
    for line in people:
        assert not list(schema.iter_errors(line))


@pytest.mark.parametrize(("line", "reason"), [
    (person(boe="oui"), "boe : type attendu : booléen (true ou false)"),
    (person(contraintes=[{"code": "30", "impact": "FORT"}]), 'contraintes.0.code : valeur hors de la liste ("23", "24"'),
    ({"date_naissance": "1985-03-14"}, "champ obligatoire absent : nir"),
    (person(date_naissance="14/03/1985"), "date_naissance : format invalide"),
    (person(date_naissance="1985-02-30"), "date_naissance : format invalide (date AAAA-MM-JJ)"),
    (person(rqth={"date_fin": "2030-01-01"}), "champ obligatoire absent : rqth.date_debut"),
    (person(taux_incapacite=80), "champ non prévu par le format : taux_incapacite"),
    (person(**{"DUPONT Jean": 1}), "champ non prévu par le format"),
])
def test_a_wrong_cap_emploi_line_fails_the_schema_and_is_rejected_alone_with_a_french_reason(line: dict[str, Any], reason: str) -> None:
    assert list(validator().iter_errors(line))
    items = raw_items(lines(HEADER, line, person(nir="2920752448033")), EXPECTED)
    assert [type(i).__name__ for i in items] == ["BadRecord", "PartnerRecord"]
    problem = items[0].problem  # type: ignore[union-attr]
    assert problem.startswith("non conforme au format : ") and reason in problem
    assert NIR not in problem and "DUPONT" not in problem and "1985" not in problem


# -- the writer ------------------------------------------------------------------------------------------------------

def cap_emploi_records() -> list[PersonneSPIE]:
    mapped, _, _ = read("cap_emploi", CAP_EMPLOI.read_bytes())
    return [m.record for m in mapped]


def written(output_name: str, records: list[PersonneSPIE], allowed: frozenset[CategorieDonnees]) -> bytes:
    output = load_output(output_name)
    stream = io.BytesIO()
    writer = output.open(stream)
    for n, record in enumerate(records):
        writer.write(record, f"cap-emploi.{n:032x}", allowed)
    writer.close()
    return stream.getvalue()


def test_the_cap_emploi_delivery_validates_and_reads_back_to_the_same_values() -> None:
    records = cap_emploi_records()
    data = written("jsonl_cap_emploi", records, EVERY)
    header, *people = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert header == HEADER
    for line in people:
        assert not list(validator().iter_errors(line)), line
    assert list(people[0]) == ["pseudonyme", "nir", "date_naissance", "nom", "prenoms", "identifiant_cap_emploi",
                               "orientation", "rqth", "boe", "esat", "contraintes"]  # the spec's order
    assert people[0]["contraintes"] == [{"code": "23", "impact": "FAIBLE"}, {"code": "25", "impact": "FORT"}]
    back, rejected, _ = read("cap_emploi", data)
    assert not rejected
    for before, after in zip(records, (m.record for m in back), strict=True):
        for block in ("identite", "orientation", "diagnostic", "sante_handicap"):
            assert getattr(after, block) == getattr(before, block), block


def test_a_category_not_allowed_never_appears_in_the_bytes() -> None:
    records = cap_emploi_records()
    data = written("jsonl_cap_emploi", records, frozenset({CategorieDonnees.ORIENTATION_PARCOURS}))
    text = data.decode("utf-8")
    for absent in ("rqth", "boe", "esat", '"25"', "9999-12-31", "2024-01-20", NIR, "GARNIER", "nir", "null",
                   "CE52-000101", "contraintes"):
        assert absent not in text, absent
    first = json.loads(text.splitlines()[1])
    assert first == {"pseudonyme": "cap-emploi." + "0" * 32, "orientation": {
        "parcours": "PED", "organisme": "CE", "date_decision": "2026-08-20", "structure": "Cap emploi Haute-Marne"}}
    # Diagnostic without sante-handicap: the mobility barrier goes, the health one never.
    diagnostic = written("jsonl_cap_emploi", records, frozenset({CategorieDonnees.DIAGNOSTIC})).decode("utf-8")
    assert json.loads(diagnostic.splitlines()[1])["contraintes"] == [{"code": "23", "impact": "FAIBLE"}]
    assert '"25"' not in diagnostic and "FORT" not in diagnostic


def test_the_france_travail_orientation_line_carries_the_nir_with_its_key_and_the_parcours_code() -> None:
    record = cap_emploi_records()[0]
    (line,) = [json.loads(x) for x in written("jsonl_ft_orientation", [record], EVERY).decode().splitlines()]
    assert line == {"pseudonyme": "cap-emploi." + "0" * 32, "nir": "185035212104566", "date_naissance": "1985-03-14",
                    "parcours": "PED", "organisme": "CE", "date": "2026-08-20", "structure": "Cap emploi Haute-Marne"}


def test_the_writer_emits_each_line_during_its_write_so_the_run_can_order_rows_per_recipient(tmp_path: Path) -> None:
    records = cap_emploi_records()
    stream = io.BytesIO()
    writer = shuffled_writer(load_output("jsonl_cap_emploi"), stream, b"s" * 32, "flux", "cap-emploi", "0" * 64,
                             tmp_path / "ordre.tri")
    for n, record in enumerate(records):
        writer.write(record, f"cap-emploi.{n:032x}", EVERY)
    writer.close()
    text = stream.getvalue().decode("utf-8").splitlines()
    assert json.loads(text[0]) == HEADER and len(text) == 4
    assert sorted(text[1:]) == sorted(written("jsonl_cap_emploi", records, EVERY).decode().splitlines()[1:])


def test_the_dictionary_lists_every_key_with_its_category_and_the_recipient_codes() -> None:
    entries = {e.nom: e for e in load_output("jsonl_cap_emploi").dictionary()}
    assert entries["nir"].categorie == "identite" and entries["pseudonyme"].categorie == ""
    assert entries["orientation.parcours"].valeurs == "PED = Professionnelle | PSO = Socio-professionnelle | PSP = Sociale"
    assert entries["rqth.date_debut"].categorie == "sante-handicap" and entries["boe"].type == "booléen"
    codes = [e for e in load_output("jsonl_cap_emploi").dictionary() if e.nom == "contraintes[].code"]
    assert [e.categorie for e in codes] == ["diagnostic", "sante-handicap"] and "25 = Santé" in codes[0].valeurs
    ft = {e.nom: e for e in load_output("jsonl_ft_orientation").dictionary()}
    assert "15 caractères" in ft["nir"].description and ft["date"].type.startswith("date")


def test_an_output_spec_whose_correspondence_misses_a_shared_code_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("sortie: x\nformat: jsonl\nchamps:\n"
                                     "  - {cle: parcours, champ: orientation.type, correspondance: {pro: PED}}\n",
                                     encoding="utf-8")
    with pytest.raises(ConfigurationError, match="social, socio-pro"):
        load_output("x", tmp_path)
    (tmp_path / "y.yaml").write_text("sortie: y\nformat: jsonl\nchamps:\n  - {cle: a, champ: identite.nir}\n"
                                     "  - {cle: a.b, champ: identite.nom}\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="à la fois valeur et objet"):
        load_output("y", tmp_path)


# -- memory ----------------------------------------------------------------------------------------------------------

def _big_file(path: Path, count: int) -> Path:
    line = (json.dumps({"demande": {"nir": NIR + "66", "date_naissance": "1985-03-14"}, "codeRetour": "S001"})
            + "\n").encode()
    with path.open("wb") as handle:
        for _ in range(count // 1000):
            handle.write(line * 1000)
    return path


def _peak(path: Path) -> int:
    reader = reader_for("jsonl", load_mapping("ft_api_usagers"))
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            items: Iterator[Any] = reader.records(stream, InputFacts())
            for item in items:
                assert isinstance(item, PartnerRecord)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_from_20_000_to_200_000_lines(tmp_path: Path) -> None:
    small = _peak(_big_file(tmp_path / "petit.jsonl", 20_000))
    large = _peak(_big_file(tmp_path / "grand.jsonl", 200_000))
    assert large < small * 1.5 + 256 * 1024, (small, large)


# -- the whole run, with a registry written by the test ---------------------------------------------------------------

RUN_REGISTRY = {"flux": {
    "essai-cap-emploi": {
        "titre": "Essai : Cap emploi vers le Département, au format Cap emploi v1",
        "finalite": "Vérifier le lecteur et le format de sortie JSON Lines dans une exécution réelle",
        "source": {"partenaire": "cap-emploi", "format": "jsonl", "mapping": "cap_emploi",
                   "transport": {"type": "dossier-local", "dossier": "inbox/cap-emploi", "motif": "*.jsonl"}},
        "destinataires": {"departement-052": {
            "libelle": "Département (essai)", "sortie": "jsonl_cap_emploi",
            "transport": {"type": "dossier-local", "dossier": "outbox/departement-052"},
            "categories_requises": ["identite"],
            "politique": {"identite": {"base": "legale", "article": "Article d'essai"},
                          "orientation-parcours": {"base": "legale", "article": "Article d'essai"},
                          "diagnostic": {"base": "legale", "article": "Article d'essai"},
                          "sante-handicap": {"base": "consentement"}}}},
    },
    "essai-france-travail": {
        "titre": "Essai : réponses France Travail atterries vers le Département",
        "finalite": "Vérifier le mapping des réponses d'API dans une exécution réelle",
        "source": {"partenaire": "france-travail", "format": "jsonl", "mapping": "ft_api_usagers",
                   "transport": {"type": "dossier-local", "dossier": "atterrissage/ft/usagers", "motif": "usagers_*.jsonl"}},
        "destinataires": {"departement-052": {
            "libelle": "Département (essai)", "sortie": "jsonl_ft_orientation",
            "transport": {"type": "dossier-local", "dossier": "outbox/departement-052"},
            "categories_requises": ["identite"],
            "politique": {"identite": {"base": "legale", "article": "Article d'essai"},
                          "orientation-parcours": {"base": "legale", "article": "Article d'essai"}}}},
    },
}}


@pytest.fixture
def run_registry(tmp_path: Path, hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import yaml

    from spie_hub.core.home import HubHome
    from spie_hub.registry import clear_cache

    registry = tmp_path / "flows.yaml"
    registry.write_text(yaml.safe_dump(RUN_REGISTRY, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(registry))
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", "essai:" + "ag" * 22)
    clear_cache()
    try:
        yield HubHome.from_env().ensure()
    finally:
        clear_cache()


def test_a_real_run_reads_the_cap_emploi_file_and_delivers_cap_emploi_lines_without_health_data(run_registry: Any) -> None:
    from spie_hub.run.lifecycle import run_flow

    summary = run_flow("essai-cap-emploi", CAP_EMPLOI, run_registry)
    assert summary.statut == "termine", summary.message
    assert (summary.lus, summary.rejetes, summary.destinataires["departement-052"].livres) == (3, 0, 3)
    delivered = Path(summary.destinataires["departement-052"].fichier or "")
    header, *people = [json.loads(line) for line in delivered.read_text(encoding="utf-8").splitlines()]
    assert header == HEADER and len(people) == 3
    for line in people:
        assert not list(validator().iter_errors(line))
    text = delivered.read_text(encoding="utf-8")
    for absent in ("rqth", "boe", "esat", '"25"', "null"):  # sante-handicap needs a consent nobody gave
        assert absent not in text
    assert sorted(p["identifiant_cap_emploi"] for p in people) == ["CE52-000101", "CE52-000102", "CE52-000103"]
    manifest = json.loads(delivered.with_name(delivered.name.removesuffix(".jsonl") + ".manifest.json").read_text())
    assert manifest["type_media"] == "application/jsonl" and manifest["enregistrements"] == 3
    assert {c["nom"] for c in manifest["dictionnaire"]["champs"]} >= {"nir", "orientation.parcours", "rqth.date_debut"}


def test_a_real_run_rejects_the_france_travail_line_that_found_nobody_and_delivers_the_orientation_lines(run_registry: Any) -> None:
    from spie_hub.run.lifecycle import run_flow

    summary = run_flow("essai-france-travail", FT_USAGERS, run_registry)
    assert summary.statut == "termine", summary.message
    assert (summary.lus, summary.rejetes, summary.destinataires["departement-052"].livres) == (4, 1, 3)
    delivered = Path(summary.destinataires["departement-052"].fichier or "")
    lines_out = [json.loads(line) for line in delivered.read_text(encoding="utf-8").splitlines()]
    assert sorted(line.get("parcours", "-") for line in lines_out) == ["-", "-", "PSO"]
    assert sorted(line["nir"] for line in lines_out) == ["106075244801244", "188095212109958", "203115212107756"]

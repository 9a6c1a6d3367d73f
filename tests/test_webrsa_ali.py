"""The WebRSA "ALI" XML exchange, both ways: readers ``webrsa-ali`` / ``ali-webrsa`` (streamed, validated against the
XSDs, refusals in French with line numbers), the mapping ``departement_ali``, the outputs ``webrsa-ali`` /
``ali-webrsa`` (files validated with lxml and with ``xmllint --schema``, categories not allowed absent), their
dictionaries, and a real run."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from connectors.formats.base import InputFacts, ReaderSettings
from connectors.formats.registry import load_output, output_class, output_spec, reader_class
from connectors.formats.webrsa_ali import ALI_WEBRSA, WEBRSA_ALI, AliWebrsaReader, WebrsaAliReader, read_dossiers, schema
from connectors.formats.webrsa_ali_output import AliWebrsaOutput, WebrsaAliOutput
from connectors.formats.xml_errors import translate_schema_message, translate_syntax_message
from schemas.categories import CategorieDonnees
from schemas.crosswalks import ORIENTATION
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import ConfigurationError, FatalInputError
from spie_hub.mapping.compiler import load_mapping
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.run.deliver import shuffled_writer
from spie_hub.run.records import Mapped, read_records, reader_for

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "partners" / "departement" / "fixtures"
DIFF = FIXTURES / "export_webrsa_ali_3_diff_2026-11-15_06-00-00.xml"
STOCK = FIXTURES / "export_webrsa_ali_5_stock_2026-11-16_06-00-00.xml"
XSD = REPO / "connectors" / "xsd" / "ali"
KEY = PseudonymisationKey("test", b"a" * 32)
EVERY = frozenset(CategorieDonnees)
C = CategorieDonnees


# -- helpers ---------------------------------------------------------------------------------------------------------

def xmllint() -> str:
    """xmllint (apt libxml2-utils): a missing tool fails under CI=true, never a silent skip there."""
    found = shutil.which("xmllint")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("xmllint absent : .ci/run doit installer libxml2-utils")
        pytest.skip("xmllint absent (apt-get install libxml2-utils)")
    return found


def assert_valid_both_ways(data: bytes, xsd_name: str, tmp_path: Path) -> None:
    """The file validates with lxml's XMLSchema and with ``xmllint --schema`` (libxml2's own command-line tool)."""
    xsd = etree.XMLSchema(etree.parse(str(XSD / xsd_name)))
    document = etree.fromstring(data)
    assert xsd.validate(document), [e.message for e in xsd.error_log]
    path = tmp_path / "sortie.xml"
    path.write_bytes(data)
    done = subprocess.run([xmllint(), "--noout", "--schema", str(XSD / xsd_name), str(path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "validates" in done.stderr


def read(data: bytes, mapping_name: str = "departement_ali", fmt: str = "webrsa-ali") -> tuple[list[Mapped], list[Any], InputFacts]:
    mapping = load_mapping(mapping_name)
    facts = InputFacts()
    items = list(read_records(reader_for(fmt, mapping), mapping, Pseudonymiser(KEY), io.BytesIO(data), facts,
                              {"partenaire": "departement", "format": fmt}))
    return [i for i in items if isinstance(i, Mapped)], [i for i in items if not isinstance(i, Mapped)], facts


def write(output_name: str, records: list[PersonneSPIE], allowed: frozenset[CategorieDonnees]) -> bytes:
    stream = io.BytesIO()
    writer = load_output(output_name).open(stream)
    for record in records:
        writer.write(record, record.pseudonyme, allowed)
    writer.close()
    return stream.getvalue()


def shared(record: PersonneSPIE, blocks: set[str]) -> dict[str, Any]:
    dumped = record.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    return {k: v for k, v in dumped.items() if k in blocks}


def dossier_xml(inner: str, *, root: str = "WebRSA-ALI", header: str | None = None) -> bytes:
    header = header if header is not None else (
        "<entete><date_generation>2026-11-15 06:00:00</date_generation><id_structure_ali>3</id_structure_ali>"
        "<libelle_ali>ML</libelle_ali><fichier_stock>0</fichier_stock></entete>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n{header}\n<dossiers>\n{inner}</dossiers>\n'
            f"</{root}>\n").encode()


ALLOCATAIRE = """<dossier>
<id_personne>7</id_personne>
<allocataire>
<nom>FICTIF</nom>
<prenom>Paul</prenom>
<numero_caf>1</numero_caf>
<date_naissance>{naissance}</date_naissance>
<code_postal>52000</code_postal>
<ville>Chaumont</ville>
<date_demande_rsa>2026-01-01</date_demande_rsa>
<numero_demande_rsa>1</numero_demande_rsa>
<etat_droit>3</etat_droit>
<role_personne>1</role_personne>
<nb_enfants_foyer>0</nb_enfants_foyer>
{fin}</allocataire>
</dossier>
"""


def refusal(data: bytes, reader: type = WebrsaAliReader, *, validate: bool = True) -> FatalInputError:
    with pytest.raises(FatalInputError) as caught:
        list(reader(ReaderSettings(record_tag="dossier")).records(io.BytesIO(data), InputFacts(), validate=validate))
    return caught.value


# -- the samples -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sample", [DIFF, STOCK], ids=lambda p: p.name)
def test_each_synthetic_sample_validates_against_webrsa_ali_xsd_with_lxml_and_xmllint(sample: Path, tmp_path: Path) -> None:
    assert_valid_both_ways(sample.read_bytes(), "WebRSA-ALI.xsd", tmp_path)


def test_the_mission_locale_sample_maps_to_shared_records_with_the_departements_referential() -> None:
    mapped, rejected, facts = read(DIFF.read_bytes())
    assert not rejected and len(mapped) == 4
    assert (facts.date_reference, facts.unites_lues) == ("2026-11-15", 4)
    first, second, third, fourth = (m.record for m in mapped)
    assert first.identite is not None and first.identite.nir == "2050352121014"  # 15 characters, key checked
    assert (first.identite.nom, first.identite.prenoms, first.identite.sexe.value) == ("FICTIVE", ["Éloïse"], "2")  # type: ignore[union-attr]
    assert first.identite.date_naissance == dt.date(2005, 3, 8)
    assert [(i.systeme, i.valeur) for i in first.identite.identifiants] == [
        ("departement", "10001"), ("cnaf-numero-demande-rsa", "52000012345")]
    assert first.contact is not None and (first.contact.adresse, first.contact.code_postal, first.contact.commune,
                                          first.contact.telephone) == ("12 rue de l'Exemple", "52000", "Chaumont", "0600000001")
    droit = first.droit_rsa
    assert droit is not None and (droit.etat.value, droit.role.value, droit.soumis_droits_devoirs, droit.organisme.value,
                                  droit.departement, droit.date_demande) == ("2", "DEM", True, "CAF", "052", dt.date(2026, 9, 1))
    # Of three orientations, the « orienté » one of highest rank (the pending one of rank 3 is not a decision).
    orientation = first.orientation
    assert orientation is not None and (orientation.type.value, orientation.organisme.value,  # type: ignore[union-attr]
                                        orientation.date_decision, orientation.structure) == (
        "pro", "mission-locale", dt.date(2026, 10, 20), "Mission locale de Chaumont")
    assert first.referent is not None and (first.referent.structure, first.referent.date_debut) == (
        "Mission locale de Chaumont", dt.date(2026, 10, 27))
    assert [(c.type.value, c.date_debut, c.date_fin) for c in first.contrats] == [
        ("CER", dt.date(2026, 11, 1), dt.date(2027, 4, 30))]
    assert second.contrats == []  # a CER awaiting validation is no contract yet
    assert second.droit_rsa is not None and second.droit_rsa.soumis_droits_devoirs is False
    assert second.contact is not None and second.contact.adresse == "Résidence des Essais, bâtiment B"
    assert third.identite is not None and third.identite.nir is None  # pivot falls back on the WebRSA id
    assert third.referent is not None and (third.referent.structure, third.referent.date_debut) == (
        "Cap emploi 52", dt.date(2026, 9, 1))
    assert third.droit_rsa is not None and (third.droit_rsa.etat.value, third.droit_rsa.role.value) == ("4", "CJT")
    assert fourth.identite is not None and fourth.identite.nom is None and fourth.droit_rsa is None
    assert fourth.orientation is not None and (fourth.orientation.type.value, fourth.orientation.organisme,
                                               fourth.orientation.structure) == ("social", None, "Structure référente du Département")
    assert mapped[2].pivot.pseudonyme != mapped[3].pivot.pseudonyme


def test_the_cap_emploi_stock_sample_maps_and_its_generation_date_with_milliseconds_dates_the_file() -> None:
    mapped, rejected, facts = read(STOCK.read_bytes())
    assert not rejected and facts.date_reference == "2026-11-16"
    (record,) = (m.record for m in mapped)
    assert record.orientation is not None and record.orientation.organisme.value == "cap-emploi"  # type: ignore[union-attr]
    assert record.droit_rsa is not None and record.droit_rsa.soumis_droits_devoirs is False


# -- refusals --------------------------------------------------------------------------------------------------------

def test_a_missing_required_child_refuses_the_file_naming_only_the_missing_element_and_its_line() -> None:
    error = refusal(dossier_xml(ALLOCATAIRE.format(naissance="2000-01-01", fin="")))
    text = str(error)
    assert text.startswith("Fichier non conforme au schéma WebRSA-ALI.xsd : 1 erreur")
    assert "ligne 7, élément <allocataire> : élément(s) obligatoire(s) manquant(s) : <situation_familiale>" in text
    assert (error.element, error.line) == ("allocataire", 7)


def test_an_impossible_date_refuses_the_file_in_french_without_repeating_the_value() -> None:
    text = str(refusal(dossier_xml(ALLOCATAIRE.format(naissance="2001-02-30",
                                                      fin="<situation_familiale>1</situation_familiale>\n"))))
    assert "ligne 11, élément <date_naissance> : valeur invalide (attendu : une date AAAA-MM-JJ existante)" in text
    assert "2001-02-30" not in text


def test_an_unknown_element_and_every_other_problem_are_listed_each_with_its_line() -> None:
    inner = ("<dossier>\n<id_personne>1</id_personne>\n<prenom_usuel>X</prenom_usuel>\n</dossier>\n"
             "<dossier>\n<id_personne>deux</id_personne>\n</dossier>\n"
             "<dossier>\n<id_personne>3</id_personne>\n<orientations><orientation><id_orient_webrsa>1</id_orient_webrsa>"
             "<date_orient>2026-01-01</date_orient><origine_orient>1</origine_orient><statut_orient>1</statut_orient>"
             "<type_orient>1</type_orient><structure_referente>1</structure_referente>"
             "<tag_entretien_diag>2</tag_entretien_diag></orientation></orientations>\n</dossier>\n")
    text = str(refusal(dossier_xml(inner)))
    assert text.startswith("Fichier non conforme au schéma WebRSA-ALI.xsd : 3 erreurs\n")
    assert "- ligne 7, élément <prenom_usuel> : élément inattendu à cet endroit" in text
    assert "- ligne 10, élément <id_personne> : valeur invalide (attendu : un nombre entier)" in text
    assert "- ligne 14, élément <tag_entretien_diag> : valeur hors de la liste autorisée (0, 1)" in text
    assert "deux" not in text


def test_the_headers_problems_and_a_wrong_root_are_reported_in_french() -> None:
    header = "<entete><date_generation>15/11/2026</date_generation><id_structure_ali>3</id_structure_ali></entete>"
    text = str(refusal(dossier_xml("", header=header)))
    assert "élément <date_generation> : valeur non conforme au format attendu (date-heure AAAA-MM-JJ HH:MM:SS)" in text
    assert "élément <entete> : élément(s) obligatoire(s) manquant(s) : <libelle_ali>, <fichier_stock>" in text
    wrong = str(refusal(dossier_xml("", root="ALI-WebRSA")))
    assert "élément racine inconnu du schéma (racine attendue : <WebRSA-ALI>)" in wrong or "libelle_ali" in wrong


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "Fichier vide"),
    (b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "b">]>\n<WebRSA-ALI/>', "DOCTYPE/ENTITY interdite"),
    (b"<WebRSA-ALI>\n<entete>\n</WebRSA-ALI>",
     "ligne 3, élément <entete> : XML mal formé : balise <entete> (ouverte ligne 2) fermée par </WebRSA-ALI>"),
    (b"<WebRSA-ALI>\n<entete><date_generation>2026-11-15 06:00:00</date_generation>",
     "XML mal formé : fichier tronqué"),
])
def test_a_malformed_truncated_empty_or_doctype_file_is_refused_whole_in_french(data: bytes, expected: str) -> None:
    assert expected in str(refusal(data))


def test_the_background_check_on_the_other_core_refuses_the_same_file_with_the_same_message(tmp_path: Path) -> None:
    data = dossier_xml(ALLOCATAIRE.format(naissance="2001-02-30", fin=""))
    path = tmp_path / "invalide.xml"
    path.write_bytes(data)
    reader = WebrsaAliReader(ReaderSettings(record_tag="dossier"))
    records = list(reader.records(io.BytesIO(data), InputFacts(), validate=False))  # well-formed: read
    assert len(records) == 1
    check = reader.background_check(path)
    assert check is not None
    assert check.result() == [str(refusal(data))]
    valid = reader.background_check(DIFF)
    assert valid is not None and valid.result() == []


def test_untranslated_messages_keep_a_french_prefix_and_never_a_quoted_value() -> None:
    element, text = translate_schema_message("Element 'nir': The value '2050352121014' is strange in 'x'.")
    assert element == "nir"
    assert text.startswith("erreur de validation (message non traduit) : ")
    assert "2050352121014" not in text
    problem = translate_syntax_message("Weird parser message about 'secret', line 4, column 2")
    assert problem.line == 4 and problem.message.startswith("XML mal formé (message non traduit)")
    assert "secret" not in str(problem)
    assert translate_schema_message("Element 'nom': [facet 'maxLength'] The value has a length of '40'; this "
                                    "exceeds the allowed maximum length of '32'.")[1] == \
        "valeur trop longue (40 caractères, 32 au plus)"


# -- outputs ---------------------------------------------------------------------------------------------------------

def test_shared_records_written_as_webrsa_ali_validate_and_read_back_to_the_same_records(tmp_path: Path) -> None:
    records = [m.record for m in read(DIFF.read_bytes())[0]]
    data = write("ali_structure", records, EVERY)
    assert_valid_both_ways(data, "WebRSA-ALI.xsd", tmp_path)
    back = [m.record for m in read(data)[0]]
    blocks = {"identite", "contact", "droit_rsa", "orientation", "referent", "contrats"}
    expected = [shared(r, blocks) for r in records]
    # A structure outside the referential is written as the recipient's own structure (structure_par_defaut).
    assert expected[3]["orientation"]["structure"] == "Structure référente du Département"
    expected[3]["orientation"]["structure"] = "Mission locale de Chaumont"
    assert [shared(r, blocks) for r in back] == expected


def test_with_identity_and_orientation_only_the_other_categories_read_back_absent(tmp_path: Path) -> None:
    records = [m.record for m in read(DIFF.read_bytes())[0]]
    allowed = frozenset({C.IDENTITE, C.ORIENTATION_PARCOURS})
    data = write("ali_structure", records, allowed)
    assert_valid_both_ways(data, "WebRSA-ALI.xsd", tmp_path)
    for value in (b"0600000001", b"eloise.fictive@example.org", b"<code_postal>52", b"Chaumont</ville>", b"<date_demande_rsa>2026",
                  b"<cers>", b"<soumis_droits_devoirs>", b"rue de l"):
        assert value not in data
    back = [m.record for m in read(data)[0]]
    for record, original in zip(back, records, strict=True):
        assert record.contact is None and record.droit_rsa is None and record.contrats == []
        assert shared(record, {"identite", "referent"}) == shared(original, {"identite", "referent"})
        assert record.orientation is not None and original.orientation is not None
        assert (record.orientation.type, record.orientation.date_decision) == (original.orientation.type,
                                                                                original.orientation.date_decision)


def test_a_category_not_allowed_never_appears_in_the_bytes_and_the_person_gets_a_pseudonymous_number(tmp_path: Path) -> None:
    records = [m.record for m in read(DIFF.read_bytes())[0]]
    data = write("ali_structure", records, frozenset({C.ORIENTATION_PARCOURS}))
    assert_valid_both_ways(data, "WebRSA-ALI.xsd", tmp_path)
    for value in (b"205035212101487", b"2050352121014", b"FICTIVE", b"EXEMPLE", b"SPECIMEN", "Éloïse".encode(),
                  b"2005-03-08", b"10001", b"52000012345", b"<allocataire>"):
        assert value not in data
    ids = re.findall(rb"<id_personne>(\d+)</id_personne>", data)
    assert len(ids) == 4 and all(len(i) == 18 and i.startswith(b"9") for i in ids) and len(set(ids)) == 4


def test_the_writer_emits_each_dossier_during_its_write_so_the_run_orders_dossiers_per_recipient(tmp_path: Path) -> None:
    records = [m.record for m in read(DIFF.read_bytes())[0]]
    stream = io.BytesIO()
    writer = shuffled_writer(load_output("ali_structure"), stream, b"s" * 32, "flux", "missions-locales", "0" * 64,
                             tmp_path / "ordre.tri")
    for record in records:
        writer.write(record, record.pseudonyme, EVERY)
    writer.close()
    assert_valid_both_ways(stream.getvalue(), "WebRSA-ALI.xsd", tmp_path)
    empty = write("ali_structure", [], EVERY)
    assert_valid_both_ways(empty, "WebRSA-ALI.xsd", tmp_path)


def test_the_header_carries_the_spec_and_a_reproducible_generation_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1763186400")  # 2025-11-15 06:00:00 UTC
    root = etree.fromstring(write("ali_structure", [], EVERY))
    assert [(e.tag, e.text) for e in root.find("entete")] == [  # type: ignore[union-attr]
        ("date_generation", "2025-11-15 07:00:00"), ("id_structure_ali", "3"),
        ("libelle_ali", "Mission locale de Chaumont"), ("fichier_stock", "0")]
    assert write("ali_departement", [], EVERY).startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<ALI-WebRSA>')


def partner_record(**blocks: Any) -> PersonneSPIE:
    return PersonneSPIE.model_validate({
        "pseudonyme": "test." + "b" * 32,
        "identite": {"nir": "1031152121027", "nom": "EXEMPLE", "prenoms": ["Hugo"],
                     "identifiants": [{"systeme": "departement", "valeur": "10002"}]},
        "orientation": {"type": "pro", "organisme": "mission-locale", "date_decision": "2026-10-02",
                        "structure": "Mission locale de Saint-Dizier"},
        "rendez_vous": [{"date": "2026-11-03", "objet": "Entrée en CEJ", "statut": "honore"},
                        {"date": "2026-12-01", "statut": "prevu"}],
        "contrats": [{"type": "CER", "date_signature": "2026-11-04", "date_debut": "2026-11-05", "date_fin": "2027-05-04"},
                     {"type": "CEJ", "date_debut": "2026-11-05"}],
        "sortie": {"date": "2027-02-28", "type": "emploi-durable"},
        "provenance": {"partenaire": "missions-locales", "format": "jsonl", "position": "ligne 1"},
        **blocks})


def test_the_ali_webrsa_return_validates_and_carries_rendez_vous_cer_orientation_change_and_d2(tmp_path: Path) -> None:
    data = write("ali_departement", [partner_record()], EVERY)
    assert_valid_both_ways(data, "ALI-WebRSA.xsd", tmp_path)
    dossiers = 0
    for dossier in read_dossiers(io.BytesIO(data), InputFacts(), ALI_WEBRSA):  # each dossier is cleared after use
        dossiers += 1
        check_return(dossier)
    assert dossiers == 1


def check_return(dossier: etree._Element) -> None:
    assert dossier.findtext("id_personne") == "10002"
    assert [(r.findtext("date_rdv"), r.findtext("id_statut_rdv")) for r in dossier.iterfind("liste_rendez_vous/rendez_vous")] == [
        ("2026-11-03", "2"), ("2026-12-01", "1")]
    assert [(c.findtext("date_debut"), c.findtext("date_signature")) for c in dossier.iterfind("liste_cers/cer")] == [
        ("2026-11-05", "2026-11-04")]  # the CEJ is no CER
    change = dossier.find("liste_changements_orientation/changement_orientation")
    assert change is not None and (change.findtext("id_type_orientation"), change.findtext("id_structure_referente_accueil"),
                                   change.findtext("date_demande")) == ("2", "4", "2026-10-02")
    assert (dossier.findtext("formulaire_d2/id_statut_accompagnement"),
            dossier.findtext("formulaire_d2/sortie_accompagnement/id_motif_sortie_accompagnement")) == ("2", "1")


def test_the_ali_webrsa_return_leaves_out_every_block_whose_category_is_not_allowed(tmp_path: Path) -> None:
    data = write("ali_departement", [partner_record()], frozenset({C.ORIENTATION_PARCOURS}))
    assert_valid_both_ways(data, "ALI-WebRSA.xsd", tmp_path)
    for absent in (b"<liste_cers>", b"<formulaire_d2>", b"10002", b"2027-02-28", b"2026-11-04"):
        assert absent not in data
    assert b"<liste_rendez_vous>" in data


def test_an_ali_webrsa_file_is_read_one_record_per_rendez_vous_with_its_dossier_as_parent() -> None:
    data = write("ali_departement", [partner_record()], EVERY)
    reader = reader_class("ali-webrsa")(ReaderSettings(record_tag="rendez_vous"))
    items = [(i.position, i.element.findtext("date_rdv"), i.parent.findtext("id_personne"))
             for i in reader.records(io.BytesIO(data), InputFacts())]
    assert items == [
        ("dossier 1, rendez_vous 1", "2026-11-03", "10002"), ("dossier 1, rendez_vous 2", "2026-12-01", "10002")]
    assert isinstance(reader, AliWebrsaReader)


def leaf_paths(data: bytes) -> set[str]:
    root = etree.fromstring(data)
    paths = set()
    for element in root.iter():
        if len(element) == 0 and element.getparent() is not None and root.find("dossiers") in element.iterancestors():
            path = re.sub(r"\[\d+\]", "", root.getroottree().getpath(element))
            paths.add(path.removeprefix(f"/{root.tag}/dossiers/"))
    return paths


def test_the_dictionaries_name_every_written_element_with_its_category_and_codes() -> None:
    records = [m.record for m in read(DIFF.read_bytes())[0]]
    webrsa = {e.nom: e for e in load_output("ali_structure").dictionary()}
    assert leaf_paths(write("ali_structure", records, EVERY)) <= set(webrsa)
    assert webrsa["dossier/allocataire/nom"].categorie == "identite"
    assert webrsa["dossier/allocataire/etat_droit"].categorie == "droits-rsa"
    assert "2 = mission-locale" not in webrsa["dossier/orientations/orientation/type_orient"].valeurs
    assert "2 = pro/mission-locale" in webrsa["dossier/orientations/orientation/type_orient"].valeurs
    ali = {e.nom: e for e in load_output("ali_departement").dictionary()}
    assert leaf_paths(write("ali_departement", [partner_record()], EVERY)) <= set(ali)
    assert ali["dossier/formulaire_d2/sortie_accompagnement/id_motif_sortie_accompagnement"].categorie == "sorties"
    assert ("dossier/allocataire/nir", C.IDENTITE) in {(c.entete, c.category) for c in load_output("ali_structure").columns}
    assert "1 = Emploi durable" in ali["dossier/formulaire_d2/sortie_accompagnement/id_motif_sortie_accompagnement"].valeurs
    assert ali["dossier/liste_rendez_vous/rendez_vous/id_statut_rdv"].categorie == "orientation-parcours"


def test_the_outputs_are_found_by_their_registry_names_and_declare_xml() -> None:
    assert output_class("webrsa-ali") is WebrsaAliOutput and output_class("ali-webrsa") is AliWebrsaOutput
    assert reader_class("webrsa-ali") is WebrsaAliReader
    assert load_output("ali_structure").media()["type_media"] == "application/xml"
    assert load_output("ali_departement").extension == ".xml"


def test_the_mapping_and_the_outputs_share_one_referential_that_agrees_with_the_orientation_crosswalk() -> None:
    spec = yaml.safe_load((REPO / "mappings" / "departement_ali.yaml").read_text(encoding="utf-8"))["champs"]
    types = {str(k): v for k, v in spec["orientation.type"]["correspondance"].items()}
    organismes = {str(k): v for k, v in spec["orientation.organisme"]["correspondance"].items()}
    for name in ("ali_structure", "ali_departement"):
        table = output_spec(name)["referentiel"]["type_orient"]
        for key, ident in table.items():
            type_, _, organisme = key.partition("/")
            assert types[str(ident)] == type_ and organismes[str(ident)] == (organisme or None)
        assert set(output_spec(name)["referentiel"]["structures"].values()) == set(
            spec["orientation.structure"]["correspondance"])
    # Each type id carries a WebRSA code_type_orient (connectors/xsd/ali/README.md) that ORIENTATION translates.
    code_type_orient = {"pro": "EMPLOI", "socio-pro": "SOCIOPRO", "social": "SOCIAL"}
    assert all(ORIENTATION[code_type_orient[t]].value == t for t in types.values())


def test_an_output_spec_whose_crosswalk_misses_a_shared_code_is_refused_when_it_loads() -> None:
    spec = output_spec("ali_departement")
    del spec["referentiel"]["motif_sortie"]["abandon"]
    with pytest.raises(ConfigurationError, match="motif_sortie sans identifiant pour abandon"):
        AliWebrsaOutput.from_spec(spec)
    spec = output_spec("ali_structure")
    spec["referentiel"]["type_orient"] = {"pro": 1}
    with pytest.raises(ConfigurationError, match="type_orient sans identifiant pour socio-pro, social"):
        WebrsaAliOutput.from_spec(spec)


# -- memory ----------------------------------------------------------------------------------------------------------

def big_file(path: Path, count: int) -> Path:
    one = DIFF.read_bytes().split(b"<dossier>", 2)[1].rsplit(b"</dossier>", 1)[0]
    with path.open("wb") as out:
        out.write(dossier_xml("").split(b"<dossiers>")[0] + b"<dossiers>\n")
        for number in range(count):
            out.write(b"<dossier>" + one.replace(b"<id_personne>10001<", f"<id_personne>{number + 1}<".encode())
                      .replace(b"<nir>205035212101487</nir>", b"") + b"</dossier>\n")
        out.write(b"</dossiers>\n</WebRSA-ALI>\n")
    return path


def peak_reading(path: Path) -> tuple[int, int, int]:
    mapping = load_mapping("departement_ali")
    reader = reader_for("webrsa-ali", mapping)
    tracemalloc.start()
    count = 0
    siblings = 0
    try:
        with path.open("rb") as stream:
            for item in read_records(reader, mapping, Pseudonymiser(KEY), stream, InputFacts(),
                                     {"partenaire": "departement", "format": "webrsa-ali"}):
                assert isinstance(item, Mapped)
                count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The tree itself (libxml2's memory, which tracemalloc does not see) keeps no dossier already read: only the
    # current one, its cleared predecessor and the few the parser has read ahead in its buffer.
    with path.open("rb") as stream:
        for dossier in read_dossiers(stream, InputFacts(), WEBRSA_ALI):
            siblings = max(siblings, len(dossier.getparent()))
    return count, peak, siblings


def test_memory_stays_flat_from_5_000_to_50_000_persons(tmp_path: Path) -> None:
    schema(WEBRSA_ALI)
    small_count, small_peak, small_tree = peak_reading(big_file(tmp_path / "petit.xml", 5_000))
    big_count, big_peak, big_tree = peak_reading(big_file(tmp_path / "grand.xml", 50_000))
    assert (small_count, big_count) == (5_000, 50_000)
    assert big_tree <= small_tree < 64, (small_tree, big_tree)
    assert big_peak < small_peak * 1.5 + 256 * 1024, (small_peak, big_peak)


# -- a real run --------------------------------------------------------------------------------------------------------

RUN_REGISTRY = {"flux": {
    "essai-departement-ali": {
        "titre": "Essai : export WebRSA → ALI du Département vers une mission locale",
        "finalite": "Vérifier le lecteur et la sortie WebRSA-ALI dans une exécution réelle",
        "source": {"partenaire": "departement", "format": "webrsa-ali", "mapping": "departement_ali",
                   "transport": {"type": "dossier-local", "dossier": "inbox/departement", "motif": "export_webrsa_ali_*.xml"}},
        "destinataires": {"missions-locales": {
            "libelle": "Mission locale (essai)", "sortie": "ali_structure",
            "transport": {"type": "dossier-local", "dossier": "outbox/missions-locales"},
            "categories_requises": ["orientation-parcours"],
            "politique": {"identite": {"base": "legale", "article": "Article d'essai"},
                          "orientation-parcours": {"base": "legale", "article": "Article d'essai"}}}},
    },
}}


@pytest.fixture
def run_registry(tmp_path: Path, hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from spie_hub.core.home import HubHome
    from spie_hub.registry import clear_cache

    registry = tmp_path / "flows.yaml"
    registry.write_text(yaml.safe_dump(RUN_REGISTRY, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(registry))
    clear_cache()
    try:
        yield HubHome.from_env().ensure()
    finally:
        clear_cache()


def test_a_real_run_delivers_a_valid_webrsa_ali_file_without_the_categories_the_recipient_lacks(
        run_registry: Any, tmp_path: Path) -> None:
    from spie_hub.run.lifecycle import run_flow

    summary = run_flow("essai-departement-ali", DIFF, run_registry)
    assert summary.statut == "termine", summary.message
    assert (summary.lus, summary.rejetes, summary.destinataires["missions-locales"].livres) == (4, 0, 4)
    delivered = Path(summary.destinataires["missions-locales"].fichier or "")
    data = delivered.read_bytes()
    assert_valid_both_ways(data, "WebRSA-ALI.xsd", tmp_path)
    for absent in (b"0600000001", b"<cers>", b"<etat_droit>3<"):
        assert absent not in data


def test_a_real_run_quarantines_an_invalid_file_with_the_french_reasons_even_when_validated_on_the_other_core(
        run_registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spie_hub.run import flow_run
    from spie_hub.run.lifecycle import run_flow

    monkeypatch.setattr(flow_run, "PARALLEL_VALIDATION_BYTES", 0)  # the background check on the other core
    bad = tmp_path / "export_webrsa_ali_3_diff_2026-11-17_06-00-00.xml"
    bad.write_bytes(dossier_xml(ALLOCATAIRE.format(naissance="2001-02-30", fin="")))
    summary = run_flow("essai-departement-ali", bad, run_registry)
    assert summary.statut == "quarantaine"
    assert "ligne 11, élément <date_naissance> : valeur invalide" in summary.message
    assert "élément(s) obligatoire(s) manquant(s) : <situation_familiale>" in summary.message
    assert "2001-02-30" not in summary.message

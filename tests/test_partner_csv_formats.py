"""Partner CSV formats of issue 11: CNAF contacts (``cnaf-contacts``), the Département CSV (``cdb-csv``), France
Travail's extract SPIE (``ft-extract-spie``), and the MSA flux through the CNAF reader.

Every sample goes through the run's own read loop (``read_records`` with ``reader_for`` and the mapping), as the
golden harness calls it."""

from __future__ import annotations

import io
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.formats.base import BadRecord, InputFacts
from connectors.formats.cnaf_vrsb import XSD_PATH as XSD
from connectors.formats.cnaf_vrsb import validate_file
from connectors.formats.departement_csv import DepartementCsvReader
from connectors.formats.registry import reader_class
from schemas.categories import CategorieDonnees
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import FatalInputError
from spie_hub.mapping.compiler import load_mapping
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import load_flows
from spie_hub.run.decide import present_categories
from spie_hub.run.records import Mapped, Rejected, SeenPivots, read_records, reader_for

PARTNERS = Path(__file__).resolve().parent / "partners"
CAF = PARTNERS / "caf-msa" / "fixtures"
DEPARTEMENT = PARTNERS / "departement" / "fixtures"
FT = PARTNERS / "france-travail" / "fixtures"
CONTACTS_SEMICOLON = CAF / "contacts-caf-521_2022-03-01.csv"
CONTACTS_COMMA = CAF / "contacts-caf-521_2022-03-01-virgule.csv"
DEPT_ISO = DEPARTEMENT / "departement_orientations_2026-03.csv"
DEPT_FR = DEPARTEMENT / "departement_orientations_2026-04.csv"
FT_PRINCIPAL = FT / "i03300c.j.extract_spie_carnet_spie_carnet_de_bord_principal.csv"
FT_ACTIONS = FT / "extract_spie_actions_example.csv"
KEY = PseudonymisationKey("test", b"k" * 32)
FORMATS = {"caf_contacts": "cnaf-contacts", "departement_orientations": "cdb-csv", "ft_extract_spie": "ft-extract-spie",
           "caf_vrsb": "cnaf-vrsb0801"}


def read(mapping_name: str, data: bytes | Path, seen_dir: Path | None = None) -> tuple[list[Mapped], list[Rejected], InputFacts]:
    """The bytes through the run's records stage with the mapping's own format; a unique key is checked on disk."""
    mapping = load_mapping(mapping_name)
    facts = InputFacts()
    content = data.read_bytes() if isinstance(data, Path) else data
    seen = SeenPivots(seen_dir / "vus.sqlite3") if seen_dir is not None and mapping.unique_key else None
    try:
        items = list(read_records(reader_for(FORMATS[mapping_name], mapping), mapping, Pseudonymiser(KEY),
                                  io.BytesIO(content), facts, {"partenaire": "test", "format": FORMATS[mapping_name]},
                                  seen=seen))
    finally:
        if seen is not None:
            seen.close()
    return [i for i in items if isinstance(i, Mapped)], [i for i in items if isinstance(i, Rejected)], facts


def dump(record: PersonneSPIE) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude_defaults=True, exclude={"pseudonyme", "provenance", "version_schema"})


def identifier(record: PersonneSPIE, system: str) -> str | None:
    assert record.identite is not None
    return next((i.valeur for i in record.identite.identifiants if i.systeme == system), None)


# -- CNAF contacts ----------------------------------------------------------------------------------------------------

def test_the_semicolon_contacts_sample_maps_identity_matricule_and_dossier_contacts() -> None:
    mapped, rejected, facts = read("caf_contacts", CONTACTS_SEMICOLON)
    assert rejected == [] and facts.unites_lues == 4 and len(mapped) == 4
    demandeur, conjoint, bullock, sans_nir = (m.record for m in mapped)
    assert dump(demandeur) == {
        "identite": {"nir": "2820251108030", "nom": "TIFOUR", "prenoms": ["SOPHIE"],
                     "identifiants": [{"systeme": "cnaf-matricule", "valeur": "CAF:521:205599000000000"},
                                      {"systeme": "cnaf-numero-demande-rsa", "valeur": "01234567890"}]},
        "contact": {"telephone": "0639985201", "email": "sophie.tifour@example.fr"},
    }
    # The dossier's name is the demandeur's: a conjoint keeps only their NIR and the dossier's identifiers.
    assert conjoint.identite is not None and conjoint.identite.nom is None and conjoint.identite.nir == "1770393050005"
    assert identifier(bullock, "cnaf-matricule") == "CAF:521:208956400000000"
    assert bullock.contact is not None and bullock.contact.email == "eta.bullock@example.fr"
    assert bullock.contact.telephone == "0639985202"
    assert sans_nir.identite is not None and sans_nir.identite.nir is None
    assert sans_nir.contact is not None and sans_nir.contact.telephone == "0199005203"
    assert [m.pivot.repli for m in mapped] == [False, False, False, True]


def test_the_comma_contacts_sample_without_nir_column_gives_the_same_contacts_on_fallback_pivots() -> None:
    semicolon, _, _ = read("caf_contacts", CONTACTS_SEMICOLON)
    comma, rejected, facts = read("caf_contacts", CONTACTS_COMMA)
    assert rejected == [] and facts.anomalies == [] and len(comma) == 3
    assert all(m.pivot.repli for m in comma)
    for left, right in zip(semicolon[:3], comma, strict=True):
        assert left.record.contact == right.record.contact
        assert identifier(left.record, "cnaf-matricule") == identifier(right.record, "cnaf-matricule")
    # Fallback pivot: organism + matricule + role, so the two members of one dossier stay two people.
    assert comma[0].pivot.pseudonyme != comma[1].pivot.pseudonyme


HEADER = ("MATRICULE", "ROLE PERSONNE", "NUMERO TELEPHONE DOSSIER", "NUMERO TELEPHONE 2 DOSSIER",
          "ADRESSE ELECTRONIQUE DOSSIER")
ROW = ("2055990", "DEMANDEUR", "0199005201", "", "a@example.fr")


@pytest.mark.parametrize("separator", [";", ","])
def test_the_contacts_separator_is_sniffed_from_the_header_line(separator: str) -> None:
    data = (separator.join(HEADER) + "\n" + separator.join(ROW) + "\n").encode()
    mapped, rejected, _ = read("caf_contacts", data)
    assert rejected == [] and len(mapped) == 1
    assert identifier(mapped[0].record, "cnaf-matricule") == "CAF:521:205599000000000"


@pytest.mark.parametrize(("separator", "named"), [("\t", "tabulation"), ("|", "« | »")])
def test_a_contacts_file_with_another_separator_is_refused_naming_it(separator: str, named: str) -> None:
    data = (separator.join(HEADER) + "\n" + separator.join(ROW) + "\n").encode()
    with pytest.raises(FatalInputError, match=named) as error:
        read("caf_contacts", data)
    assert "« ; » ou virgule « , » attendu" in str(error.value)


def test_a_contacts_file_reads_the_same_with_or_without_a_bom() -> None:
    plain = CONTACTS_SEMICOLON.read_bytes().removeprefix(b"\xef\xbb\xbf")
    with_bom, _, _ = read("caf_contacts", b"\xef\xbb\xbf" + plain)
    without, _, _ = read("caf_contacts", plain)
    assert [dump(m.record) for m in with_bom] == [dump(m.record) for m in without]
    assert [m.pivot for m in with_bom] == [m.pivot for m in without]


def test_a_latin_1_contacts_file_is_refused_with_a_clear_message() -> None:
    data = (";".join(HEADER) + "\n2055990;DEMANDEUR;0199005201;;h\u00e9l\u00e8ne@example.fr\n").encode("latin-1")
    with pytest.raises(FatalInputError, match=r"UTF-8 attendu \(octet invalide ligne 2 ; fichier en Latin-1"):
        read("caf_contacts", data)


def test_a_contacts_file_missing_required_columns_is_refused_listing_them() -> None:
    data = CONTACTS_SEMICOLON.read_bytes().replace(b";ADRESSE ELECTRONIQUE DOSSIER", b";COURRIEL").replace(
        b"ROLE PERSONNE", b"ROLE")
    with pytest.raises(FatalInputError) as error:
        read("caf_contacts", data)
    assert str(error.value) == ("en-tête : colonne(s) obligatoire(s) absente(s) : ROLE PERSONNE, "
                                "ADRESSE ELECTRONIQUE DOSSIER")


def test_a_contacts_row_with_a_bad_date_or_matricule_is_rejected_with_its_line() -> None:
    lines = CONTACTS_SEMICOLON.read_bytes().split(b"\r\n")
    lines[2] = lines[2].replace(b"15/01/2022", b"2022-01-15")
    lines[3] = lines[3].replace(b"2089564", b"20895X4")
    mapped, rejected, _ = read("caf_contacts", b"\r\n".join(lines))
    assert [(r.line, r.reason) for r in rejected] == [
        (3, "DATE DEMANDE RSA : date invalide (attendu JJ/MM/AAAA)"),
        (4, "MATRICULE : format invalide (1 à 7 chiffres, ou 15 comme dans le flux XML)"),
    ]
    assert len(mapped) == 2
    assert all("2022" not in r.reason and "TIFOUR" not in r.reason for r in rejected)  # no value echoed


# -- MSA through the CNAF XML reader -----------------------------------------------------------------------------------

def test_the_msa_sample_validates_against_the_cnaf_xsd_and_goes_through_the_caf_mapping() -> None:
    _, errors = validate_file(CAF / "RSABEM-msa.xml")
    assert errors == []
    # And against libxml2's own command line tool (installed by .ci/run), independently of the hub's reader.
    done = subprocess.run(["xmllint", "--noout", "--schema", str(XSD), str(CAF / "RSABEM-msa.xml")], capture_output=True)
    assert done.returncode == 0, done.stderr
    mapped, rejected, _ = read("caf_vrsb", CAF / "RSABEM-msa.xml")
    assert rejected == [] and len(mapped) == 3
    first = mapped[0].record
    assert identifier(first, "cnaf-matricule") == "MSA:521:205599000000000"
    assert first.droit_rsa is not None and first.droit_rsa.organisme.value == "MSA"
    assert first.identite is not None and first.identite.nom == "AGRICOLA"


def test_caf_and_msa_people_with_the_same_matricule_never_collide() -> None:
    caf, _, _ = read("caf_vrsb", CAF / "RSABEM.xml")
    msa, _, _ = read("caf_vrsb", CAF / "RSABEM-msa.xml")
    caf_ids = {identifier(m.record, "cnaf-matricule") for m in caf}
    msa_ids = {identifier(m.record, "cnaf-matricule") for m in msa}
    assert "CAF:521:205599000000000" in caf_ids and "MSA:521:205599000000000" in msa_ids
    assert not caf_ids & msa_ids
    assert not {m.pivot.pseudonyme for m in caf} & {m.pivot.pseudonyme for m in msa}


def test_without_nir_the_fallback_pivots_of_caf_and_msa_differ_even_for_identical_people() -> None:
    # The hardest case: the very same foyer (NUMORG, matricule, role, birth date, first name), sent once by the CAF
    # and once by the MSA, without any NIR. Only FONORG differs, and it is part of the fallback pivot.
    import re

    caf_bytes = re.sub(rb"<NIR>\d+</NIR>", b"", (CAF / "RSABEM.xml").read_bytes())
    msa_bytes = caf_bytes.replace(b"<FONORG>CAF</FONORG>", b"<FONORG>MSA</FONORG>")
    caf, caf_rejected, _ = read("caf_vrsb", caf_bytes)
    msa, msa_rejected, _ = read("caf_vrsb", msa_bytes)
    assert caf_rejected == msa_rejected == [] and len(caf) == len(msa) == 3
    assert all(m.pivot.repli for m in caf + msa)
    for left, right in zip(caf, msa, strict=True):
        assert left.pivot.pseudonyme != right.pivot.pseudonyme
        assert identifier(left.record, "cnaf-matricule") != identifier(right.record, "cnaf-matricule")


# -- Département CSV --------------------------------------------------------------------------------------------------

def test_the_departement_sample_maps_orientations_referents_cer_rendez_vous_and_sorties() -> None:
    mapped, rejected, facts = read("departement_orientations", DEPT_ISO)
    assert rejected == [] and facts.anomalies == [] and len(mapped) == 5
    alice, bastien, camille, dominique, estelle = (m.record for m in mapped)
    assert dump(alice) == {
        "identite": {"nir": "2900452121101", "nom": "FICTIVE", "prenoms": ["Alice"], "date_naissance": "1990-04-12",
                     "identifiants": [{"systeme": "departement", "valeur": "D52-0001"}]},
        "orientation": {"type": "socio-pro", "date_decision": "2026-01-15", "structure": "EDS Chaumont",
                        "organisme": "departement"},
        "referent": {"structure": "EDS Chaumont", "fonction": "Travailleuse sociale", "date_debut": "2026-01-20"},
        "contrats": [{"type": "CER", "date_signature": "2026-02-02", "date_debut": "2026-02-02", "date_fin": "2026-07-31"}],
        "rendez_vous": [{"date": "2026-03-16", "objet": "Point d'étape du CER", "statut": "prevu"}],
        "sante_handicap": {"rqth": False},
    }
    assert bastien.orientation is not None and bastien.orientation.organisme is not None
    assert bastien.orientation.organisme.value == "mission-locale"
    assert bastien.rendez_vous[0].statut.value == "honore"
    assert camille.orientation is not None and camille.orientation.organisme is not None
    assert camille.orientation.organisme.value == "cap-emploi"
    assert camille.sante_handicap is not None and (camille.sante_handicap.rqth, camille.sante_handicap.boe) == (True, True)
    assert dump(dominique)["sortie"] == {"date": "2026-02-28", "type": "emploi-durable"}
    assert identifier(dominique, "france-travail") == "1234567A" and mapped[3].pivot.repli
    assert estelle.orientation is not None and estelle.orientation.type.value == "social"
    assert estelle.rendez_vous[0].statut.value == "absent"
    assert estelle.referent is not None and str(estelle.referent.date_fin) == "2026-05-12"


def test_departement_french_dates_and_a_header_without_stars_are_read_and_bad_rows_rejected_with_their_line() -> None:
    mapped, rejected, facts = read("departement_orientations", DEPT_FR)
    assert facts.unites_lues == 4 and len(mapped) == 2
    assert [(r.position, r.reason) for r in rejected] == [
        ("ligne 3", "Date de naissance : date impossible (jour ou mois hors calendrier)"),
        ("ligne 4", "bloc « sortie » incomplet : Sortie - type à renseigner"),
    ]
    fanny, ines = (m.record for m in mapped)
    assert fanny.identite is not None and str(fanny.identite.date_naissance) == "2002-03-21"
    assert dump(fanny)["rendez_vous"] == [{"date": "2026-04-07", "objet": "Premier rendez-vous", "statut": "prevu"}]
    assert dump(ines)["contrats"] == [{"type": "CER", "date_signature": "2026-03-20", "date_debut": "2026-03-20",
                                       "date_fin": "2026-09-19"}]


def test_a_departement_row_with_a_badly_shaped_date_is_rejected_naming_both_accepted_forms() -> None:
    data = DEPT_ISO.read_bytes().replace(b"2026-01-15", b"15.01.2026")
    _, rejected, _ = read("departement_orientations", data)
    assert [(r.line, r.reason) for r in rejected] == [
        (2, "Orientation - date : date invalide (attendu AAAA-MM-JJ ou JJ/MM/AAAA)")]


def test_a_departement_file_missing_required_columns_is_refused_listing_them() -> None:
    data = DEPT_ISO.read_bytes().replace(b"Nom*;", b"Nom de famille;").replace(
        b"Date de naissance*", b"Naissance")
    with pytest.raises(FatalInputError) as error:
        read("departement_orientations", data)
    assert str(error.value) == "en-tête : colonne(s) obligatoire(s) absente(s) : Nom, Date de naissance"


def test_a_departement_file_with_commas_is_refused_as_a_whole() -> None:
    data = DEPT_ISO.read_bytes().replace(b";", b",")
    with pytest.raises(FatalInputError, match="séparateur virgule « , » trouvé dans l'en-tête : point-virgule « ; » attendu"):
        read("departement_orientations", data)


def test_departement_rows_with_unknown_codes_or_missing_required_values_are_rejected() -> None:
    lines = DEPT_ISO.read_bytes().split(b"\r\n")
    lines[1] = lines[1].replace(b";sociopro;", b";autre;")
    lines[2] = lines[2].replace(b";EXEMPLE;", b";;")
    lines[3] = lines[3].replace(b";Oui;Oui", b";Peut-\xc3\xaatre;Oui")
    lines[5] = lines[5].replace(b";2026-05-12;", b";2025-01-01;")
    _, rejected, _ = read("departement_orientations", b"\r\n".join(lines))
    assert [(r.line, r.reason) for r in rejected] == [
        (2, "Orientation - type : valeur inconnue (attendu pro, sociopro ou social)"),
        (3, "Nom : valeur obligatoire manquante"),
        (4, "RQTH : valeur invalide (attendu Oui ou Non)"),
        (6, "Référent - fin antérieure à Référent - début"),
    ]


def test_a_person_twice_in_a_departement_file_is_rejected_with_the_first_line(tmp_path: Path) -> None:
    lines = DEPT_ISO.read_bytes().split(b"\r\n")
    mapped, rejected, _ = read("departement_orientations", b"\r\n".join([*lines[:3], lines[1], *lines[3:]]), tmp_path)
    assert len(mapped) == 5 and [(r.line, r.reason) for r in rejected] == [(4, "doublon : même personne qu'en ligne 2")]


def test_the_rqth_and_boe_columns_land_only_in_the_sante_handicap_block() -> None:
    mapped, _, _ = read("departement_orientations", DEPT_ISO)
    camille = mapped[2].record
    assert CategorieDonnees.SANTE_HANDICAP in present_categories(camille)
    ordinary = camille.model_dump(mode="json", exclude={"sante_handicap"})
    assert "rqth" not in str(ordinary).lower() and "boe" not in str(ordinary).lower()
    # A row carrying only the RQTH (no other block) has the special category and nothing else beyond identity.
    only = b"\xef\xbb\xbfIdentifiant dans le SI*;Nom*;Pr\xc3\xa9nom*;Date de naissance*;RQTH\r\nX1;NOM;P;1980-01-01;Oui\r\n"
    single, _, _ = read("departement_orientations", only)
    assert set(present_categories(single[0].record)) == {CategorieDonnees.IDENTITE, CategorieDonnees.SANTE_HANDICAP}


def test_a_star_marked_header_and_unknown_columns_are_accepted_the_unknown_ones_reported() -> None:
    data = DEPT_ISO.read_bytes().replace(b";BOE\r\n", b";BOE;Zone de mobilit\xc3\xa9\r\n", 1)
    data = b"\r\n".join(line + b";30" if i and line else line for i, line in enumerate(data.split(b"\r\n")))
    mapped, rejected, facts = read("departement_orientations", data)
    assert rejected == [] and len(mapped) == 5
    assert facts.anomalies == ["colonne(s) inconnue(s) ignorée(s) : Zone de mobilité"]


# -- France Travail extract SPIE --------------------------------------------------------------------------------------

def test_the_real_ft_extract_principal_maps_identity_inscription_ppae_and_follow_up() -> None:
    mapped, rejected, facts = read("ft_extract_spie", FT_PRINCIPAL)
    assert rejected == [] and facts.unites_lues == 4 and len(mapped) == 4
    tifour = mapped[0].record
    assert dump(tifour) == {
        "identite": {"nom": "TIFOUR", "prenoms": ["SOPHIE"], "date_naissance": "1982-02-01", "sexe": "2",
                     "identifiants": [{"systeme": "france-travail-extrait-spie",
                                       "valeur": "71288a46-3c4d-4372-9298-c32936d7e76d"}]},
        # adresse_ligne5 is the literal NULL: left out, never written "NULL".
        "contact": {"adresse": "ADRESSE_LIGNE2 1 ADRESSE_LIGNE3 1 ADRESSE_LIGNE4 1", "code_postal": "08300",
                    "commune": "RETHEL"},
        "orientation": {"type": "pro", "date_decision": "2017-05-22", "structure": "RETHEL", "organisme": "france-travail"},
        "referent": {"structure": "RETHEL", "date_debut": "2017-05-22"},
        "contrats": [{"type": "PPAE", "date_signature": "2020-02-13"}],
        "inscription_ft": {"evenement": "inscription", "date": "2019-10-17", "code": "1", "agence": "93015"},
        # FT's free-text motif may carry a health reason: the schema keeps it under the special category only.
        "sante_handicap": {"motif_inscription_ft": "FIN DE CDD OU DE CONTRAT AIDE"},
    }
    assert all(m.pivot.repli for m in mapped)  # no NIR in the extract
    assert "NULL" not in str([dump(m.record) for m in mapped])


def test_the_ft_extract_flags_become_freins_and_a_health_flag_goes_to_sante_handicap() -> None:
    data = FT_PRINCIPAL.read_bytes().replace(b";NULL;NULL;NULL;NULL;NULL;NULL;NULL;O\n", b";O;NULL;OUI;N;NULL;NULL;NULL;O\n", 1)
    mapped, rejected, _ = read("ft_extract_spie", data)
    assert rejected == []
    record = mapped[0].record
    assert record.diagnostic is not None and [f.frein.value for f in record.diagnostic.freins] == ["financier"]
    assert record.sante_handicap is not None and [f.frein.value for f in record.sante_handicap.freins] == ["sante"]


def test_ft_extract_rows_with_a_bad_date_a_bad_flag_or_no_rsa_flag_are_rejected_with_their_line() -> None:
    lines = FT_PRINCIPAL.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"1982-02-01 00:00:00.0", b"01/02/1982")
    lines[2] = lines[2].replace(b";NULL;O", b";NULL;X")
    lines[3] = lines[3].rsplit(b";", 1)[0] + b";N"
    mapped, rejected, _ = read("ft_extract_spie", b"\n".join(lines))
    assert [(r.line, r.reason) for r in rejected] == [
        (2, "date_naissance : date invalide (attendu AAAA-MM-JJ ou AAAA-MM-JJ HH:MM:SS.0)"),
        (3, "brsa : valeur invalide (attendu Oui ou Non)"),
        (4, "brsa : personne non signalée bénéficiaire du RSA (hors du champ de l'extrait SPIE)"),
    ]
    assert len(mapped) == 1


def test_the_real_ft_actions_file_gives_one_record_per_person_with_themes_and_the_cej() -> None:
    mapped, rejected, facts = read("ft_extract_spie", FT_ACTIONS)
    assert rejected == [] and facts.unites_lues == 125 and len(mapped) == 29
    assert sum(len(m.record.actions) + len(m.record.contrats) for m in mapped) + sum(
        len(m.record.sante_handicap.actions) for m in mapped if m.record.sante_handicap) == 125
    cej = mapped[0].record
    assert dump(cej)["contrats"] == [{"type": "CEJ", "date_debut": "2022-03-16", "date_fin": "2023-03-16"}]
    assert cej.actions == []
    themes = [a.theme.value for m in mapped for a in m.record.actions if a.theme is not None]
    assert themes.count("financier") == 3
    statuses = {a.statut.value for m in mapped for a in m.record.actions}
    assert statuses == {"prevue", "en-cours", "realisee"}


def test_the_principal_and_actions_records_of_one_person_share_their_pivot() -> None:
    principal, _, _ = read("ft_extract_spie", FT_PRINCIPAL)
    actions, _, _ = read("ft_extract_spie", FT_ACTIONS)
    tifour = [m for m in actions if identifier(m.record, "france-travail-extrait-spie") == "71288a46-3c4d-4372-9298-c32936d7e76d"]
    assert len(tifour) == 1 and tifour[0].pivot.pseudonyme == principal[0].pivot.pseudonyme
    assert {a.libelle for a in tifour[0].record.actions} >= {"DEMANDE D'AIDE FINANCIERE"}


def test_an_unsorted_ft_actions_file_rejects_the_later_run_of_a_person_instead_of_merging(tmp_path: Path) -> None:
    lines = FT_ACTIONS.read_bytes().split(b"\n")
    data = b"\n".join([lines[0], lines[1], lines[2], lines[1].replace(b"CEJ;CONTRAT D'ENGAGEMENT JEUNE", b"A14;ATELIER")])
    mapped, rejected, _ = read("ft_extract_spie", data, tmp_path)
    assert len(mapped) == 2 and [(r.line, r.reason) for r in rejected] == [(4, "doublon : même personne qu'en ligne 2")]


# -- the registry takes the formats and mappings ----------------------------------------------------------------------

def test_a_registry_naming_these_formats_and_mappings_loads(tmp_path: Path) -> None:
    flows: dict[str, Any] = {}
    for flow_id, (partner, fmt, mapping, motif) in {
        "caf-contacts-vers-departement": ("caf-msa", "cnaf-contacts", "caf_contacts", "contacts-*.csv"),
        "departement-csv-test": ("departement", "cdb-csv", "departement_orientations", "departement_orientations_*.csv"),
        "ft-extract-vers-departement": ("france-travail", "ft-extract-spie", "ft_extract_spie", "*extract_spie*.csv"),
    }.items():
        flows[flow_id] = {
            "titre": flow_id, "finalite": "test", "responsable": "test", "personnes_concernees": "test",
            "transferts_hors_ue": "aucun", "planification": "@daily", "conservation_jours": 30,
            "source": {"partenaire": partner, "format": fmt, "mapping": mapping,
                       "transport": {"type": "dossier-local", "dossier": f"inbox/{partner}", "motif": motif}},
            "destinataires": {"departement-052": {
                "libelle": "CD", "sortie": "csv_departement", "transport": {"type": "dossier-local", "dossier": "outbox/d"},
                "categories_requises": ["identite"], "politique": {"identite": {"base": "consentement"}}}},
        }
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump({"flux": flows}, allow_unicode=True), encoding="utf-8")
    loaded = load_flows(path)
    assert {f.format for f in loaded.values()} == {"cnaf-contacts", "cdb-csv", "ft-extract-spie"}
    assert reader_class("cdb-csv") is DepartementCsvReader


# -- memory stays flat with file size ---------------------------------------------------------------------------------

def _generated(path: Path, header: bytes, rows: bytes, lines: int) -> Path:
    with path.open("wb") as out:
        out.write(header)
        for n in range(lines // rows.count(b"\n")):
            out.write(rows.replace(b"{n}", str(n).encode()))
    return path


#: format → (header, rows written per step): lean rows (the cost under tracemalloc is per cell); the contacts reader
#: shares the Département's whole path (csv_table), the actions file adds the grouping of a person's rows.
GENERATED = {
    "cdb-csv": ("Identifiant dans le SI*;Nom*;Prénom*;Date de naissance*;Orientation - type;Orientation - date;RQTH\r\n"
                .encode(), "D{n};NOM;Prénom;1990-01-01;sociopro;12/01/2026;Oui\r\n".encode()),
    "ft-extract-spie": (b"identifiant_unique_de;codeaction;lblaction;date_debut\n",
                        b"id-{n};A14;ATELIER;2013-09-16 00:00:00.0\nid-{n};XXX;DEMANDE D'AIDE FINANCIERE;NULL\n"),
}


def _peak(fmt: str, path: Path) -> int:
    reader = reader_for(fmt, load_mapping({v: k for k, v in FORMATS.items()}[fmt]))
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            for item in reader.records(stream, InputFacts()):
                assert not isinstance(item, BadRecord), item.problem
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", sorted(GENERATED))
def test_reader_memory_stays_flat_from_20_000_to_200_000_lines(fmt: str, tmp_path: Path) -> None:
    header, rows = GENERATED[fmt]
    small = _peak(fmt, _generated(tmp_path / "small.csv", header, rows, 20_000))
    large = _peak(fmt, _generated(tmp_path / "large.csv", header, rows, 200_000))
    assert large < small * 1.5 + 256 * 1024, (small, large)

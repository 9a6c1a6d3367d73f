"""Special categories classified by VALUE (RGPD art. 9): a CNAF code whose meaning reveals health or disability
(« Hospitalisation », « Bénéficiaire AAH réduite ») and France Travail's free-text motif never leave in an ordinary
column under a legal basis. A household-level health code never shows in another member's row: it is kept, in the
``sante_handicap`` block, only for a household of one person, and withheld from everyone otherwise."""

from __future__ import annotations

import csv
import datetime as dt
import random
import re
from pathlib import Path

from lxml import etree

from schemas.categories import CODES_CNAF_PARTICULIERS
from schemas.categories import CategorieDonnees as C
from schemas.codes import cnaf_labels
from schemas.spie_v1 import PersonneSPIE
from spie_hub.demo.data import DemoStats, Personne, _foyer_xml, generate
from spie_hub.mapping.compiler import load_mapping
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.run.decide import present_categories
from spie_hub.run.lifecycle import run_flow
from spie_hub.run.records import to_record

HEALTH_WORDS = re.compile(r"hospitalis|AAH|invalid|maladi|handicap|incapacit|\bALD\b|maternit|grossesse|\bsant[ée]\b|"
                          r"m[ée]dic|soin|d[ée]pendan|inaptitude|accident du travail", re.IGNORECASE)
MOTIF_COLUMNS = ("Motif de suspension du versement", "Motif de suspension du droit", "Motif de refus", "Motif de clôture")
HEALTH_CODES = {"44", "97", "F97"}


def _person(nir: str, nom: str, birth: str, sexe: str = "2", role: str = "DEM") -> Personne:
    return Personne(nir, nom, "ANNE", dt.date.fromisoformat(birth), sexe, role, True)


def _foyer(index: int, people: list[Personne], *, motif_versement: str | None = None, refus: str | None = None) -> str:
    xml = _foyer_xml(random.Random(index), index, people, "4" if motif_versement else "2", "052", 0.0, DemoStats())
    if motif_versement is not None:
        xml = re.sub(r"<MOTISUSVERSRSA>..</MOTISUSVERSRSA>", f"<MOTISUSVERSRSA>{motif_versement}</MOTISUSVERSRSA>", xml)
    if refus is not None:
        xml = xml.replace("</SituationDossierRSA>", f"<Refus><DTREFURSA>2026-09-01</DTREFURSA><MOTIREFURSA>{refus}"
                                                    "</MOTIREFURSA></Refus></SituationDossierRSA>")
    return xml


def _write(path: Path, foyers: list[str]) -> Path:
    head = ('<?xml version="1.0" encoding="windows-1252"?>\n<Racine>\n<IdentificationFlux><APPLIEME>CRI</APPLIEME>'
            "<NUMVERSIONAPPLIEME>6200</NUMVERSIONAPPLIEME><TYPEFLUX>M</TYPEFLUX><NATFLUX>D</NATFLUX>"
            "<DTCREAFLUX>2026-10-31</DTCREAFLUX><HEUCREAFLUX>01:18:36.0000</HEUCREAFLUX>"
            "<DTREF>2026-10-31</DTREF></IdentificationFlux>\n")
    tail = (f"<TransmissionFlux><NBTOTDOSRSATRANSM>{len(foyers):08d}</NBTOTDOSRSATRANSM>"
            "<NBTOTDOSRSATRANSMANO>00000000</NBTOTDOSRSATRANSMANO></TransmissionFlux>\n</Racine>\n")
    path.write_text(head + "".join(foyers) + tail, encoding="cp1252")
    return path


ALONE_44 = _person("2920252121003", "ALPHA", "1992-02-01")
ALONE_97 = _person("1790675056002", "BETA", "1979-06-01", sexe="1")
ALONE_F97 = _person("2850152121001", "GAMMA", "1985-01-01")
COUPLE = [_person("1800175123456", "DELTA", "1980-01-01", sexe="1"),
          _person("2810175123457", "DELTA", "1981-01-01", role="CJT")]


def _households() -> list[str]:
    return [_foyer(1, [ALONE_44], motif_versement="44"), _foyer(2, [ALONE_97], motif_versement="97"),
            _foyer(3, [ALONE_F97], refus="F97"), _foyer(4, COUPLE, motif_versement="44")]


def _rows(path: str | None) -> list[dict[str, str]]:
    assert path is not None
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _records(xml: Path) -> list[PersonneSPIE]:
    mapping = load_mapping("caf_vrsb")
    pseudonymiser = Pseudonymiser(PseudonymisationKey("t1", b"k" * 32))
    out = []
    for parent in etree.parse(str(xml)).getroot().iter("InfosFoyerRSA"):
        for element in mapping.records(parent):
            out.append(to_record(mapping, pseudonymiser, element, parent,
                                 {"partenaire": "caf", "format": "vrsb", "position": "p"})[0])
    return out


def test_every_cnaf_code_whose_label_reveals_health_or_disability_is_classified_special() -> None:
    revealing = {(liste, code) for liste, codes in cnaf_labels().items() for code, label in codes.items()
                 if HEALTH_WORDS.search(label)}
    classified = {(liste, code) for liste, codes in CODES_CNAF_PARTICULIERS.items() for code in codes}
    assert revealing == classified
    assert {("MOTISUSVERSRSA", "44"), ("MOTISUSVERSRSA", "97"), ("MOTIREFURSA", "F97")} <= classified


def test_a_health_code_never_stays_in_the_ordinary_rsa_block_even_when_the_household_is_unknown() -> None:
    record = PersonneSPIE.model_validate({
        "pseudonyme": "t1." + "0" * 32, "provenance": {"partenaire": "x", "format": "y", "position": "p"},
        "droit_rsa": {"etat": "4", "soumis_droits_devoirs": True, "role": "DEM", "organisme": "CAF",
                      "departement": "052", "motif_refus": "F97",
                      "suspensions_versement": [{"motif": "44", "libelle": "Hospitalisation"}, {"motif": "01"}]}})
    assert record.droit_rsa is not None
    assert [s.motif for s in record.droit_rsa.suspensions_versement] == ["01"]
    assert record.droit_rsa.motif_refus is None
    # Whose hospitalisation it is cannot be told from a household value: it is withheld, never guessed.
    assert record.sante_handicap is None


def test_a_health_code_of_a_one_person_household_is_kept_only_in_the_special_block(tmp_path: Path) -> None:
    alone_44, alone_97, alone_f97, *couple = _records(_write(tmp_path / "h.xml", _households()))
    for record, (liste, code) in ((alone_44, ("MOTISUSVERSRSA", "44")), (alone_97, ("MOTISUSVERSRSA", "97")),
                                  (alone_f97, ("MOTIREFURSA", "F97"))):
        assert record.sante_handicap is not None
        assert [(m.liste, m.code) for m in record.sante_handicap.motifs_droit_rsa] == [(liste, code)]
        assert C.SANTE_HANDICAP in present_categories(record)
        assert record.droit_rsa is not None and not record.droit_rsa.suspensions_versement
        assert record.droit_rsa.motif_refus is None
    assert alone_44.sante_handicap and alone_44.sante_handicap.motifs_droit_rsa[0].date_debut == dt.date(2026, 9, 1)
    # Two members: the hospitalisation is one member's health; neither row carries it, in any block.
    for member in couple:
        assert member.sante_handicap is None
        assert member.droit_rsa is not None and not member.droit_rsa.suspensions_versement


def test_the_departement_receives_no_health_code_in_any_ordinary_column_under_a_legal_basis(hub_home: Path,
                                                                                             tmp_path: Path) -> None:
    summary = run_flow("caf-vers-departement", _write(tmp_path / "h.xml", _households()))
    rows = _rows(summary.destinataires["departement-052"].fichier)
    assert len(rows) == 5
    for row in rows:
        assert not {row[c] for c in MOTIF_COLUMNS} & HEALTH_CODES
    # Counted as special-category exchanges (withheld: no explicit consent), what the DPO report reads.
    counts = summary.destinataires["departement-052"]
    assert sum(counts.fondements.get(C.SANTE_HANDICAP.value, {}).values()) == 3


def test_the_demo_generators_hospitalisations_never_reach_an_ordinary_column(hub_home: Path, tmp_path: Path) -> None:
    flux = tmp_path / "demo.xml"
    generate(flux, None, 120, seed=7, anomaly_rate=0.0)
    assert "<MOTISUSVERSRSA>44</MOTISUSVERSRSA>" in flux.read_text(encoding="cp1252")
    summary = run_flow("caf-vers-departement", flux)
    for recipient in ("departement-052", "plateforme-insertion"):
        for row in _rows(summary.destinataires[recipient].fichier):
            assert not {row.get(c) for c in MOTIF_COLUMNS} & HEALTH_CODES


def test_france_travails_free_text_motif_is_never_delivered_in_an_ordinary_column(hub_home: Path,
                                                                                  tmp_path: Path) -> None:
    path = tmp_path / "ft_inscriptions.csv"
    path.write_text("nir;identifiantpe;nom;prenom;dtnai;date;code;motif;nir2;codeinsee;localite;adresse;ale\n"
                    "2920252121003;1234567A;ALPHA;ANNE;01/02/1992;15/10/2026;3;ARRET MALADIE / INVALIDITE;;52121;"
                    "CHAUMONT;8 RUE;52001\n", encoding="utf-8")
    summary = run_flow("france-travail-vers-departement", path)
    text = Path(summary.destinataires["departement-052"].fichier or "").read_text(encoding="utf-8-sig")
    assert "1234567A" in text or "ALPHA" in text or text.count("\n") >= 2  # the person was delivered
    assert "MALADIE" not in text and "INVALIDITE" not in text


def test_a_free_text_motif_is_kept_in_the_persons_special_block() -> None:
    record = PersonneSPIE.model_validate({
        "pseudonyme": "t1." + "0" * 32, "provenance": {"partenaire": "x", "format": "y", "position": "p"},
        "inscription_ft": {"evenement": "inscription", "date": "2026-10-15", "code": "3",
                           "motif": "ARRET MALADIE / INVALIDITE"}})
    assert record.inscription_ft is not None and record.inscription_ft.motif is None
    assert record.sante_handicap is not None
    assert record.sante_handicap.motif_inscription_ft == "ARRET MALADIE / INVALIDITE"


def test_a_code_the_cnaf_list_does_not_know_is_withheld_like_a_health_code() -> None:
    """A list extended since the hub's copy may carry a new health motif: fail safe, never delivered as ordinary."""
    assert "ZZ" not in cnaf_labels()["MOTISUSVERSRSA"]
    record = PersonneSPIE.model_validate({
        "pseudonyme": "t1." + "0" * 32, "provenance": {"partenaire": "x", "format": "y", "position": "p"},
        "droit_rsa": {"etat": "4", "soumis_droits_devoirs": True, "role": "DEM", "organisme": "CAF",
                      "departement": "052", "suspensions_versement": [{"motif": "ZZ"}, {"motif": "01"}]}})
    assert record.droit_rsa is not None
    assert [s.motif for s in record.droit_rsa.suspensions_versement] == ["01"]

"""Synthetic population for the demo, tests and benchmarks.

Writes a CNAF "flux bénéficiaires" (vrsb0801) that validates against the XSD — windows-1252, valid NIRs
(Corsica and fictitious months included), accented names, realistic households and RSA states — and a FHIR Bundle
of consents for part of the people. Everything is written in streams: 200,000 households take no more memory
than 2,000. All people are fictitious; NIRs are random and carry no real person's data.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from xml.sax.saxutils import escape

from consent.fhir_build import consent

PRENOMS_F = ["Éloïse", "Gaëlle", "Hélène", "Zoé", "Anaïs", "Cécile", "Maëlys", "Léa", "Noémie", "Françoise",
             "Aïcha", "Josiane", "Ophélie", "Inès", "Chloé", "Bérénice", "Sévérine", "Agnès", "Mélodie", "Rosalie"]
PRENOMS_H = ["Noël", "François", "Jérôme", "Benoît", "Loïc", "Gaël", "Mathéo", "Raphaël", "Cédric", "Hervé",
             "Aurélien", "Joël", "Stéphane", "Frédéric", "Théo", "Mamadou", "Yannick", "Régis", "Jean-Loup", "Anthime"]
NOMS = ["Lefèvre", "Béranger", "N'Diaye", "Gonçalves", "Pérez", "Müller", "Da Silva", "Le Goff", "Château",
        "Dupré", "Mérieux", "Ferrandière", "Éveillard", "Brisson", "Kowalski", "Ben Saïd", "Fabrègue", "Lemaître",
        "Roussel", "Nguyen", "Hoarau", "Ollivier", "Clément", "Mbappé", "Desprès", "Guérin", "Boëlle", "Saint-Aimé"]
COMMUNES = [("52121", "52000", "CHAUMONT"), ("52448", "52100", "SAINT-DIZIER"), ("52269", "52200", "LANGRES"),
            ("52332", "52300", "JOINVILLE"), ("52060", "52500", "BOURBONNE-LES-BAINS")]
VOIES = [("RUE", "DE LA RÉPUBLIQUE"), ("AVENUE", "DU GÉNÉRAL LECLERC"), ("RUE", "DES ÉCOLES"), ("PLACE", "DE L'ÉGLISE"),
         ("RUE", "VICTOR HUGO")]
DEPTS_NAISSANCE = ["52", "75", "93", "69", "13", "2A", "2B", "59", "99", "10", "51", "21"]
ETATS = ["2"] * 60 + ["4"] * 10 + ["3"] * 5 + ["0"] * 5 + ["5"] * 15 + ["1"] * 3 + ["6"] * 2
MOTIFS_VERSEMENT = ["01", "05", "06", "44", "70"]
MOTIFS_CLOTURE = ["PCG", "ECH", "MUT", "RFD"]


@dataclass
class Personne:
    nir: str
    nom: str
    prenom: str
    date_naissance: dt.date
    sexe: str
    role: str
    soumis: bool


@dataclass
class DemoStats:
    foyers: int = 0
    personnes: int = 0
    consentements: int = 0
    refus: int = 0
    anomalies: int = 0


def make_nir(rng: random.Random, sexe: str, birth: dt.date, fictive_month: bool) -> str:
    month = rng.choice([20, 31, 42, 50, 99]) if fictive_month else birth.month
    dept = rng.choice(DEPTS_NAISSANCE)
    commune = f"{rng.randint(1, 990):03d}"
    order = f"{rng.randint(1, 999):03d}"
    return f"{sexe}{birth.year % 100:02d}{month:02d}{dept}{commune}{order}"


def _person(rng: random.Random, role: str, sexe: str, birth: dt.date, nom: str, soumis: bool) -> Personne:
    prenom = rng.choice(PRENOMS_H if sexe == "1" else PRENOMS_F)
    return Personne(make_nir(rng, sexe, birth, rng.random() < 0.01), nom, prenom, birth, sexe, role, soumis)


def _birth(rng: random.Random, min_age: int, max_age: int, today: dt.date) -> dt.date:
    return today - dt.timedelta(days=rng.randint(min_age * 365, max_age * 365))


def _household(rng: random.Random, today: dt.date, etat: str) -> list[Personne]:
    nom = rng.choice(NOMS)
    couple, enfants = rng.random() < 0.3, rng.choice([0, 0, 0, 1, 1, 2, 3])
    active = etat in ("2", "3", "4")
    sexe_dem = rng.choice("12")
    people = [_person(rng, "DEM", sexe_dem, _birth(rng, 25, 64, today), nom, active and rng.random() < 0.9)]
    if couple:
        sexe = "2" if sexe_dem == "1" else "1"
        people.append(_person(rng, "CJT", sexe, _birth(rng, 22, 64, today), nom, active and rng.random() < 0.8))
    for _ in range(enfants):
        people.append(_person(rng, "ENF", rng.choice("12"), _birth(rng, 0, 17, today), nom, False))
    return people


def _ressources_xml(rng: random.Random) -> str:
    # Three months of declared resources, as real CNAF files carry for adults (they weigh on parsing cost).
    months = []
    for month in ("2026-07-01", "2026-08-01", "2026-09-01"):
        details = "".join(
            f"<DetailRessourcesMensuelles><NATRESS>{nat}</NATRESS><MTNATRESSMEN>{rng.randint(0, 250000) / 100:010.2f}"
            "</MTNATRESSMEN></DetailRessourcesMensuelles>" for nat in ("001", "010", "044")
        )
        months.append(f"<RessourcesMensuelles><GeneraliteRessourcesMensuelles><MOISRESS>{month}</MOISRESS>"
                      f"<NBHEUMENTRA>000</NBHEUMENTRA></GeneraliteRessourcesMensuelles>{details}</RessourcesMensuelles>")
    return ("<Ressources><GeneraliteRessourcesTrimestre><TOPRESSNUL>0</TOPRESSNUL><DDRESS>2026-07-01</DDRESS>"
            "<DFRESS>2026-09-30</DFRESS></GeneraliteRessourcesTrimestre>" + "".join(months) + "</Ressources>")


def _personne_xml(rng: random.Random, p: Personne, nir_text: str) -> str:
    adult = p.role != "ENF"
    return (
        "<Personne><Identification>"
        f"<QUAL>{'MR' if p.sexe == '1' else 'MME'}</QUAL><NOM>{escape(p.nom.upper())}</NOM>"
        f"<NOMNAI>{escape(p.nom.upper())}</NOMNAI><PRENOM>{escape(p.prenom.upper())}</PRENOM>"
        f"<NOMCOMNAI>CHAUMONT</NOMCOMNAI><DTNAI>{p.date_naissance.isoformat()}</DTNAI><TYPEDTNAI>N</TYPEDTNAI>"
        f"<NIR>{nir_text}</NIR><TOPVALIEC>1</TOPVALIEC><SEXE>{p.sexe}</SEXE></Identification>"
        "<DossierCAF><TOPRESPDOS>" + ("1" if p.role == "DEM" else "0") + "</TOPRESPDOS>"
        "<DDRATDOS>2019-05-15</DDRATDOS></DossierCAF>"
        f"<Prestations><NATPREST>PFA</NATPREST><ROLEPERS>{p.role}</ROLEPERS><TOPCHAPERS>0</TOPCHAPERS></Prestations>"
        f"<Prestations><NATPREST>RSA</NATPREST><ROLEPERS>{p.role}</ROLEPERS><TOPCHAPERS>1</TOPCHAPERS></Prestations>"
        + (f"<DossierPoleEmploi><IDASSEDIC>{rng.randint(1000000, 9999999)}X</IDASSEDIC></DossierPoleEmploi>"
           + _ressources_xml(rng) if adult else "")
        + f"<MontantCalculDroitRSAPersonne><TOPPERSDRODEVORSA>{int(p.soumis)}</TOPPERSDRODEVORSA>"
        "</MontantCalculDroitRSAPersonne>"
        + ("<Activite><REG>GE</REG><ACT>SAL</ACT><DDACT>2025-11-01</DDACT><DFACT>2026-03-19</DFACT></Activite>"
           "<Activite><REG>GE</REG><ACT>CHO</ACT><DDACT>2026-03-20</DDACT></Activite>" if adult else "")
        + "</Personne>"
    )


def _foyer_xml(rng: random.Random, index: int, people: list[Personne], etat: str, dept: str, anomaly_rate: float,
               stats: DemoStats) -> str:
    insee, cp, ville = rng.choice(COMMUNES)
    type_voie, nom_voie = rng.choice(VOIES)
    situation = ""
    if etat == "4":
        situation = (f"<SuspensionVersement><MOTISUSVERSRSA>{rng.choice(MOTIFS_VERSEMENT)}</MOTISUSVERSRSA>"
                     "<DDSUSVERSRSA>2026-09-01</DDSUSVERSRSA></SuspensionVersement>")
    elif etat in ("5", "6"):
        situation = f"<FinDroit><MOTICLORSA>{rng.choice(MOTIFS_CLOTURE)}</MOTICLORSA><DTCLORSA>2026-08-31</DTCLORSA></FinDroit>"
    personnes = []
    for p in people:
        nir_text = p.nir
        if rng.random() < anomaly_rate:  # a malformed NIR: the record must be rejected, not the file
            nir_text = p.nir[:3] + "13" + p.nir[5:]
            stats.anomalies += 1
        personnes.append(_personne_xml(rng, p, nir_text))
    return (
        "<InfosFoyerRSA><IdentificationRSA>"
        f"<Organisme><FONORG>{'MSA' if index % 17 == 0 else 'CAF'}</FONORG><NUMORG>521</NUMORG>"
        f"<MATRICULE>{index:07d}00000000</MATRICULE></Organisme>"
        f"<Partenaire><TYPEPARTE>CG</TYPEPARTE><IDEPARTE>{dept}</IDEPARTE></Partenaire>"
        f"<DemandeRSA><DTDEMRSA>2024-03-11</DTDEMRSA><NUMDEMRSA>{index:011d}</NUMDEMRSA></DemandeRSA>"
        "</IdentificationRSA>" + "".join(personnes) +
        "<DonneesAdministratives><SituationFamille><SITFAM>" + ("MAR" if any(p.role == "CJT" for p in people) else "CEL") +
        "</SITFAM><DDSITFAM>2015-06-01</DDSITFAM></SituationFamille>"
        "<Adresse><TroncCommunAdresse><RGADR>01</RGADR><DTEMM>2020-01-01</DTEMM><PAYS>FRA</PAYS><TYPEADR>D</TYPEADR>"
        "<ETATADR>CO</ETATADR></TroncCommunAdresse><AdresseDetailleeFrance>"
        "<COMPLIDEADR/><COMPLADR/>"
        f"<NUMVOIE>{rng.randint(1, 120)}</NUMVOIE><LIBTYPEVOIE>{type_voie}</LIBTYPEVOIE><NOMVOIE>{escape(nom_voie)}</NOMVOIE>"
        f"<LIEUDIST/><NUMCOM>{insee}</NUMCOM><CODEPOS>{cp}</CODEPOS><NOMCOM>{ville}</NOMCOM></AdresseDetailleeFrance></Adresse>"
        "</DonneesAdministratives><PrestationRSA><SituationDossierRSA>"
        f"<EtatDossierRSA><ETATDOSRSA>{etat}</ETATDOSRSA></EtatDossierRSA>{situation}</SituationDossierRSA>"
        "<DetailDroitRSA><TroncCommunDroitRSA><TOPSANSDOMFIXE>" + ("1" if rng.random() < 0.03 else "0") +
        "</TOPSANSDOMFIXE><ORIDEMRSA>DEM</ORIDEMRSA><DTORIDEMRSA>2024-03-11</DTORIDEMRSA></TroncCommunDroitRSA>"
        "</DetailDroitRSA></PrestationRSA></InfosFoyerRSA>\n"
    )


OPPOSED_RECIPIENT = "plateforme-insertion"


def _consent(index: int, person: Personne, decision: str, recipient: str) -> dict[str, object]:
    if decision == "deny":
        # Refusals in the demo are oppositions to the shared-pathway platform (legal basis open to objection).
        resource = consent(f"demo-{index}", person.nir, grant=False, kind="opposition", blanket=True,
                           recipients=[OPPOSED_RECIPIENT], start="2025-01-01", end=None,
                           controller="departement-052", regulatory_basis="RGPD art. 21",
                           collected_by="agent d'accueil", method="courrier de la personne")
        return {"fullUrl": f"urn:uuid:consent-demo-{index}", "resource": resource}
    resource = consent(f"demo-{index}", person.nir, grant=decision == "permit", recipients=[recipient],
                       categories=["identite", "contact"], start="2025-01-01", end="2028-12-31",
                       controller="departement-052", regulatory_basis="RGPD art. 6.1.a",
                       purpose="accompagnement-insertion", collected_by="agent d'accueil",
                       method="formulaire signé, version 3")
    return {"fullUrl": f"urn:uuid:consent-demo-{index}", "resource": resource}


def generate(flux_path: Path, consents_path: Path | None, households: int, *, seed: int = 52,
             consent_rate: float = 0.4, deny_rate: float = 0.05, anomaly_rate: float = 0.003,
             max_consents: int | None = None, recipient: str = "departement-052",
             reference: dt.date = dt.date(2026, 10, 31)) -> DemoStats:
    """Same ``seed``, same people: a later ``reference`` date gives the next monthly file about them."""
    rng = random.Random(seed)
    birth_reference = dt.date(2026, 10, 31)  # ages drawn from a fixed day, so people do not change between files
    stats = DemoStats()
    consent_out: IO[str] | None = consents_path.open("w", encoding="utf-8") if consents_path else None
    with flux_path.open("w", encoding="cp1252", newline="\n") as out:
        out.write('<?xml version="1.0" encoding="windows-1252"?>\n<Racine>\n<IdentificationFlux><APPLIEME>CRI</APPLIEME>'
                  "<NUMVERSIONAPPLIEME>6200</NUMVERSIONAPPLIEME><TYPEFLUX>M</TYPEFLUX><NATFLUX>D</NATFLUX>"
                  f"<DTCREAFLUX>{reference.isoformat()}</DTCREAFLUX><HEUCREAFLUX>01:18:36.0000</HEUCREAFLUX>"
                  f"<DTREF>{reference.isoformat()}</DTREF></IdentificationFlux>\n")
        if consent_out:
            consent_out.write('{"resourceType": "Bundle", "type": "collection", "entry": [\n')
        for index in range(1, households + 1):
            etat = rng.choice(ETATS)
            dept = "052" if rng.random() < 0.95 else rng.choice(["010", "051"])
            people = _household(rng, birth_reference, etat)
            out.write(_foyer_xml(rng, index, people, etat, dept, anomaly_rate, stats))
            stats.foyers += 1
            stats.personnes += len(people)
            for person in people:
                if consent_out is None or person.role == "ENF" or (max_consents and stats.consentements + stats.refus >= max_consents):
                    continue
                draw = rng.random()
                decision = "deny" if draw < deny_rate else "permit" if draw < deny_rate + consent_rate else None
                if decision is None:
                    continue
                entry = _consent(stats.consentements + stats.refus + 1, person, decision, recipient)
                consent_out.write(("" if stats.consentements + stats.refus == 0 else ",\n") + json.dumps(entry, ensure_ascii=False))
                if decision == "permit":
                    stats.consentements += 1
                else:
                    stats.refus += 1
        out.write(f"<TransmissionFlux><NBTOTDOSRSATRANSM>{households:08d}</NBTOTDOSRSATRANSM>"
                  "<NBTOTDOSRSATRANSMANO>00000000</NBTOTDOSRSATRANSMANO></TransmissionFlux>\n</Racine>\n")
    if consent_out:
        consent_out.write("\n]}\n")
        consent_out.close()
    return stats


WITHDRAWAL_HEADER = ["identifiant", "nir", "type", "decision", "statut", "destinataires", "categories", "debut", "fin",
                     "finalite", "date_recueil", "recueilli_par", "mode_recueil", "base_reglementaire", "responsable"]


def write_withdrawals(consents_path: Path, out: Path, count: int, *, seed: int = 52) -> int:
    """A CSV (hub layout) withdrawing ``count`` of the permissions granted in a demo bundle: same consent id,
    status ``retire``, as a Département would send after people change their mind."""
    entries = [e["resource"] for e in json.loads(consents_path.read_text(encoding="utf-8"))["entry"]]
    grants = [r for r in entries if r["decision"] == "deny" and r.get("provision")]
    chosen = random.Random(seed).sample(grants, min(count, len(grants)))
    with out.open("w", encoding="utf-8-sig", newline="") as handle:
        handle.write(";".join(WITHDRAWAL_HEADER) + "\r\n")
        for r in chosen:
            provision = r["provision"][0]
            row = {
                "identifiant": r["id"], "nir": r["subject"]["identifier"]["value"], "type": "consentement",
                "decision": "accord", "statut": "retire",
                "destinataires": "|".join(a["reference"]["identifier"]["value"] for a in provision["actor"]),
                "categories": "|".join(c["coding"][0]["code"] for c in provision["code"]),
                "debut": r["period"]["start"], "fin": r["period"].get("end", ""),
                "finalite": "accompagnement-insertion", "date_recueil": r["date"], "recueilli_par": "agent d'accueil",
                "mode_recueil": "retrait par courrier", "base_reglementaire": "RGPD art. 7.3", "responsable": "departement-052",
            }
            handle.write(";".join(row[k] for k in WITHDRAWAL_HEADER) + "\r\n")
    return len(chosen)

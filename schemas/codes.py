"""National code lists used by the shared SPIE schema.

The CNAF codes come from WebRSA's labels (see ``code_lists/cnaf.csv`` and its provenance in
``schemas/CHANGELOG.md``); the crosswalks between partners follow ``shared/formats/README.md`` §6 and §9.
"""

from __future__ import annotations

import csv
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

_CODE_LISTS = Path(__file__).with_name("code_lists") / "cnaf.csv"


@lru_cache(maxsize=1)
def cnaf_labels() -> dict[str, dict[str, str]]:
    """Return ``{list name: {code: label}}`` for the CNAF flux code lists."""
    lists: dict[str, dict[str, str]] = {}
    with _CODE_LISTS.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            lists.setdefault(row["liste"], {})[row["code"]] = row["libelle"]
    return lists


class LabelledEnum(str, Enum):
    """A code enum whose members carry a French label (``.libelle``)."""

    libelle: str

    def __new__(cls, code: str, libelle: str) -> LabelledEnum:
        member = str.__new__(cls, code)
        member._value_ = code
        member.libelle = libelle
        return member

    def __str__(self) -> str:
        return self.value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # Publish the French labels next to the codes so that partners read the schema alone.
        schema = handler(core_schema)
        schema = handler.resolve_ref_schema(schema)
        schema["x-libelles"] = {member.value: member.libelle for member in cls}
        return schema


class EtatDroitRSA(LabelledEnum):
    """CNAF ``ETATDOSRSA``: état du droit RSA du foyer."""

    EN_ATTENTE = ("0", "Nouvelle demande en attente de décision du CD")
    REFUSE = ("1", "Droit refusé")
    OUVERT_VERSABLE = ("2", "Droit ouvert et versable")
    OUVERT_SUSPENDU = ("3", "Droit ouvert et suspendu")
    VERSEMENT_SUSPENDU = ("4", "Droit ouvert mais versement suspendu")
    CLOS = ("5", "Droit clos")
    CLOS_MOIS_ANTERIEUR = ("6", "Droit clos sur mois antérieur")


class RolePersonne(LabelledEnum):
    """CNAF ``ROLEPERS``: rôle de la personne dans le dossier RSA."""

    DEMANDEUR = ("DEM", "Demandeur")
    CONJOINT = ("CJT", "Conjoint")
    ENFANT = ("ENF", "Enfant")
    AUTRE = ("AUT", "Autre personne")
    RESPONSABLE_DOSSIER = ("RDO", "Responsable du dossier")


class Sexe(LabelledEnum):
    HOMME = ("1", "Homme")
    FEMME = ("2", "Femme")


class PrecisionDate(LabelledEnum):
    """CNAF ``TYPEDTNAI``: how much of a birth date is known."""

    COMPLETE = ("N", "Date complète")
    JOUR_INCONNU = ("J", "Jour inconnu")
    JOUR_MOIS_INCONNUS = ("O", "Jour et mois inconnus")


class OrganismePayeur(LabelledEnum):
    CAF = ("CAF", "Caisse d'allocations familiales")
    MSA = ("MSA", "Mutualité sociale agricole")


class TypeOrientation(LabelledEnum):
    """Orientation RSA; ``france_travail`` gives the parcours code PED / PSO / PSP."""

    PRO = ("pro", "Professionnelle")
    SOCIO_PRO = ("socio-pro", "Socio-professionnelle")
    SOCIAL = ("social", "Sociale")

    @property
    def france_travail(self) -> str:
        return {"pro": "PED", "socio-pro": "PSO", "social": "PSP"}[self.value]

    @classmethod
    def from_france_travail(cls, code: str) -> TypeOrientation:
        return {"PED": cls.PRO, "PSO": cls.SOCIO_PRO, "PSP": cls.SOCIAL}[code]


class Organisme(LabelledEnum):
    """The body that carries a person's accompaniment (an orientation's target, a référent's employer)."""

    DEPARTEMENT = ("departement", "Conseil départemental")
    FRANCE_TRAVAIL = ("france-travail", "France Travail")
    MISSION_LOCALE = ("mission-locale", "Mission locale")
    CAP_EMPLOI = ("cap-emploi", "Cap emploi")
    AUTRE = ("autre", "Autre structure")


class Frein(LabelledEnum):
    """The national freins périphériques (crosswalk in shared/formats §6)."""

    LOGEMENT = ("logement", "Logement")
    MOBILITE = ("mobilite", "Mobilité")
    FAMILLE = ("famille", "Contraintes familiales / garde d'enfants")
    SANTE = ("sante", "Santé")
    ADMINISTRATIF = ("administratif", "Accès aux droits / démarches administratives")
    FINANCIER = ("financier", "Difficultés financières")
    LANGUE_CALCUL = ("langue-calcul", "Maîtrise de la langue, lecture, écriture, calcul")
    NUMERIQUE = ("numerique", "Numérique")


class ImpactFrein(LabelledEnum):
    """Graded impact of a frein on the return to employment."""

    AUCUN = ("0", "Aucun impact")
    FAIBLE = ("1", "Impact faible")
    MODERE = ("2", "Impact modéré")
    FORT = ("3", "Impact fort")


class TypeContrat(LabelledEnum):
    CER = ("CER", "Contrat d'engagement réciproque")
    PPAE = ("PPAE", "Projet personnalisé d'accès à l'emploi")
    CEJ = ("CEJ", "Contrat d'engagement jeune")
    PACEA = ("PACEA", "Parcours contractualisé d'accompagnement vers l'emploi et l'autonomie")


class StatutRendezVous(LabelledEnum):
    PREVU = ("prevu", "Prévu")
    HONORE = ("honore", "Honoré")
    ABSENT = ("absent", "Absent")
    EXCUSE = ("excuse", "Excusé")
    ANNULE = ("annule", "Annulé")


class StatutAction(LabelledEnum):
    PREVUE = ("prevue", "Prévue")
    EN_COURS = ("en-cours", "En cours")
    REALISEE = ("realisee", "Réalisée")
    ABANDONNEE = ("abandonnee", "Abandonnée")
    ANNULEE = ("annulee", "Annulée")


class EvenementFranceTravail(LabelledEnum):
    """Kind of event in France Travail's monthly files to the Département (inscriptions, cessations, radiations)."""

    INSCRIPTION = ("inscription", "Inscription comme demandeur d'emploi")
    CESSATION = ("cessation", "Cessation d'inscription")
    RADIATION = ("radiation", "Radiation de la liste des demandeurs d'emploi")


class TypeSortie(LabelledEnum):
    EMPLOI_DURABLE = ("emploi-durable", "Emploi durable (CDI, CDD de plus de 6 mois)")
    EMPLOI_TEMPORAIRE = ("emploi-temporaire", "Emploi temporaire")
    CREATION_ACTIVITE = ("creation-activite", "Création d'activité")
    FORMATION = ("formation", "Formation qualifiante")
    FIN_DROITS = ("fin-droits", "Sortie du RSA sans emploi")
    DEMENAGEMENT = ("demenagement", "Déménagement")
    ABANDON = ("abandon", "Abandon de l'accompagnement")
    AUTRE = ("autre", "Autre motif")

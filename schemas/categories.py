"""Data categories: the unit of consent and of a flow's policy.

Each block of ``PersonneSPIE`` belongs to exactly one category; a recipient receives a block only when the
record's decision permits its category.
"""

from __future__ import annotations

from schemas.codes import Frein, LabelledEnum

#: Values that are health data wherever they appear (classification by value, RGPD art. 9): a record built with one
#: of them in an ordinary block has it moved to the ``sante_handicap`` block (``schemas/spie_v1.py``).
FREINS_PARTICULIERS: frozenset[Frein] = frozenset({Frein.SANTE})


class CategorieDonnees(LabelledEnum):
    IDENTITE = ("identite", "Identité et identifiants (NIR, nom, prénoms, date de naissance, n° allocataire)")
    CONTACT = ("contact", "Coordonnées (adresse, téléphone, courriel)")
    DROITS_RSA = ("droits-rsa", "Droits RSA (état du droit, droits et devoirs, suspensions)")
    DIAGNOSTIC = ("diagnostic", "Diagnostic socio-professionnel et freins")
    SANTE_HANDICAP = ("sante-handicap", "Santé et handicap (catégorie particulière, art. 9 RGPD)")
    ORIENTATION_PARCOURS = ("orientation-parcours", "Orientation, référent, rendez-vous, actions")
    CONTRATS = ("contrats", "Contrats d'engagement (CER, PPAE, CEJ, PACEA)")
    SORTIES = ("sorties", "Sorties de parcours et résultats")

    @property
    def categorie_particuliere(self) -> bool:
        """Special category (RGPD art. 9): a legal basis alone never covers it."""
        return self is CategorieDonnees.SANTE_HANDICAP


#: Which category each top-level block of PersonneSPIE belongs to. ``pseudonyme``, ``version_schema`` and
#: ``provenance`` carry no personal data beyond the recipient's own pseudonym and travel with every record.
CATEGORIE_DU_BLOC: dict[str, CategorieDonnees] = {
    "identite": CategorieDonnees.IDENTITE,
    "contact": CategorieDonnees.CONTACT,
    "droit_rsa": CategorieDonnees.DROITS_RSA,
    "diagnostic": CategorieDonnees.DIAGNOSTIC,
    "orientation": CategorieDonnees.ORIENTATION_PARCOURS,
    "referent": CategorieDonnees.ORIENTATION_PARCOURS,
    "rendez_vous": CategorieDonnees.ORIENTATION_PARCOURS,
    "actions": CategorieDonnees.ORIENTATION_PARCOURS,
    "contrats": CategorieDonnees.CONTRATS,
    "sortie": CategorieDonnees.SORTIES,
    "inscription_ft": CategorieDonnees.ORIENTATION_PARCOURS,
    "sante_handicap": CategorieDonnees.SANTE_HANDICAP,
}

#: Household fields: values every member of a household shares and that identify the household (its numbers, the
#: dates of its RSA file). Two recipients holding them could join their rows, so each goes only to a recipient whose
#: policy declares it (``champs_foyer`` in flows.yaml); name → (block, attribute, identifier system or None).
CHAMPS_FOYER: dict[str, tuple[str, str, str | None]] = {
    "numero-allocataire": ("identite", "identifiants", "cnaf-matricule"),
    "numero-demande-rsa": ("identite", "identifiants", "cnaf-numero-demande-rsa"),
    "date-demande-rsa": ("droit_rsa", "date_demande", None),
    "date-origine-droit": ("droit_rsa", "date_origine_droit", None),
    "date-cloture": ("droit_rsa", "date_cloture", None),
    "suspensions-versement": ("droit_rsa", "suspensions_versement", None),
    "suspensions-droit": ("droit_rsa", "suspensions_droit", None),
}

"""Data categories: the unit of consent and of a flow's policy.

Each block of ``PersonneSPIE`` belongs to exactly one category; a recipient receives a block only when the
record's decision permits its category.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.codes import Frein, LabelledEnum, cnaf_labels

#: Values that are health data wherever they appear (classification by value, RGPD art. 9): a record built with one
#: of them in an ordinary block has it moved to the ``sante_handicap`` block (``schemas/spie_v1.py``).
FREINS_PARTICULIERS: frozenset[Frein] = frozenset({Frein.SANTE})

#: CNAF codes whose meaning reveals health or disability (classification by value, RGPD art. 9), per code list of
#: ``code_lists/cnaf.csv``: « Hospitalisation », « Bénéficiaire AAH réduite » (allocation aux adultes handicapés).
#: Decided and documented in ``schemas/CHANGELOG.md`` (1.2.0): a death (``DG``/``DH``) is not health data; no list
#: read today carries maternité, maladie, invalidité, incapacité or ALD — such a code, if added, belongs here (a test
#: checks every label of the lists against these words). Every one of these codes is a household value (the RSA file
#: of the foyer): it never stays in the ordinary ``droit_rsa`` block (``schemas/spie_v1.py``).
CODES_CNAF_PARTICULIERS: dict[str, frozenset[str]] = {
    "MOTISUSVERSRSA": frozenset({"44", "97"}),
    "MOTIREFURSA": frozenset({"F97"}),
}

#: Where the ``droit_rsa`` block holds a CNAF code: attribute → code list. A suspension list holds ``Suspension``
#: items (``motif``, ``libelle``, ``date_debut``); the others hold the code itself.
MOTIFS_DROIT_RSA: dict[str, str] = {
    "suspensions_versement": "MOTISUSVERSRSA",
    "suspensions_droit": "MOTISUSDRORSA",
    "motif_refus": "MOTIREFURSA",
    "motif_cloture": "MOTICLORSA",
}


def code_particulier(liste: str, code: object) -> bool:
    """True when ``code`` of the CNAF list ``liste`` reveals health or disability — or may: a code the list does not
    know (a list the CNAF extended since) is treated as special, since the hub cannot tell what it reveals."""
    if not isinstance(code, str) or not code.strip():
        return False
    if code.strip() in CODES_CNAF_PARTICULIERS.get(liste, frozenset()):
        return True
    known = cnaf_labels().get(liste)
    return known is not None and code.strip() not in known


def motifs_sante(droit_rsa: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The health codes a ``droit_rsa`` block (as mapped, a dict) holds, as ``sante_handicap.motifs_droit_rsa``
    items. Used by the mapping of a one-person household only: a household value cannot say whose health it is."""
    labels = cnaf_labels()
    found: list[dict[str, Any]] = []
    for attribute, liste in MOTIFS_DROIT_RSA.items():
        value = droit_rsa.get(attribute)
        items = value if isinstance(value, list) else [{"motif": value}]
        for item in items:
            code = item.get("motif") if isinstance(item, Mapping) else None
            if code_particulier(liste, code):
                found.append({"liste": liste, "code": code.strip(), "libelle": labels[liste].get(code.strip()),
                              "date_debut": item.get("date_debut")})
    return found


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

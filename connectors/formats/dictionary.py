"""Data dictionaries of the files partners receive, generated from the shared schema and each output spec.

Every output format describes what it writes (``OutputFormat.dictionary``) as entries built here from the schema
itself: the shared field, its data category (the unit of consent and policy), its type and, for a code, every value
with its French label. The run publishes the dictionary beside each delivery and names it in the signed manifest
(``spie_hub/run/deliver.py``), so that a recipient reads a file without asking the hub what a column holds.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel

from schemas.categories import CATEGORIE_DU_BLOC
from schemas.codes import LabelledEnum
from schemas.spie_v1 import SCHEMA_VERSION, PersonneSPIE

#: French names of the schema's fields that carry no description of their own.
_LABELS: dict[str, str] = {
    "pseudonyme": "Pseudonyme de la personne, propre à ce destinataire (HMAC-SHA256 à clé versionnée)",
    "version_schema": "Version du schéma SPIE des données",
    "identite.nom": "Nom d'usage", "identite.nom_naissance": "Nom de naissance", "identite.prenoms": "Prénoms",
    "identite.date_naissance": "Date de naissance", "identite.sexe": "Sexe",
    "identite.precision_date_naissance": "Précision de la date de naissance",
    "identite.identifiants": "Identifiant de la personne dans le système d'un partenaire",
    "contact.adresse": "Adresse", "contact.code_postal": "Code postal", "contact.commune": "Commune",
    "contact.telephone": "Téléphone", "contact.email": "Courriel",
    "droit_rsa.etat": "État du droit RSA", "droit_rsa.soumis_droits_devoirs": "Soumis à droits et devoirs",
    "droit_rsa.role": "Rôle dans le foyer RSA", "droit_rsa.organisme": "Organisme payeur",
    "droit_rsa.date_demande": "Date de la demande de RSA", "droit_rsa.date_origine_droit": "Date d'origine du droit",
    "droit_rsa.sans_domicile_fixe": "Sans domicile fixe", "droit_rsa.suspensions_versement": "Suspensions du versement",
    "droit_rsa.suspensions_droit": "Suspensions du droit", "droit_rsa.motif_refus": "Motif de refus (code CNAF)",
    "droit_rsa.motif_cloture": "Motif de clôture (code CNAF)", "droit_rsa.date_cloture": "Date de clôture",
    "orientation.type": "Type d'orientation", "orientation.date_decision": "Date de la décision d'orientation",
    "orientation.structure": "Structure d'accompagnement", "referent.structure": "Structure du référent",
    "referent.fonction": "Fonction du référent", "referent.date_debut": "Début de la désignation du référent",
    "referent.date_fin": "Fin de la désignation du référent", "diagnostic.date": "Date du diagnostic",
    "diagnostic.freins": "Freins identifiés et leur impact", "contrats": "Contrats d'engagement",
    "rendez_vous": "Rendez-vous", "actions": "Actions d'accompagnement", "sortie.date": "Date de sortie du parcours",
    "sortie.type": "Type de sortie", "inscription_ft.evenement": "Événement d'inscription à France Travail",
    "inscription_ft.date": "Date de l'événement", "inscription_ft.code": "Code transmis par France Travail",
    "inscription_ft.agence": "Agence France Travail", "sante_handicap.rqth": "RQTH",
    "sante_handicap.handicap": "Situation de handicap déclarée", "sante_handicap.freins": "Freins de santé",
    "sante_handicap.actions": "Actions liées à la santé",
}


#: Sub-fields of repeated blocks, named after their block (``droit_rsa.suspensions_versement.0.motif``).
_SUBFIELDS: dict[str, str] = {
    "motif": "motif (code)", "libelle": "libellé", "date_debut": "date de début", "date_fin": "date de fin",
    "date": "date", "statut": "statut", "type": "type", "objet": "objet", "frein": "frein", "impact": "impact",
    "theme": "thème", "valeur": "valeur", "systeme": "système", "date_signature": "date de signature",
    "code": "code", "liste": "liste de codes",
}


def _label(champ: str, schema_description: str | None) -> str:
    parts = [p for p in champ.split(".") if not p.isdigit()]
    key = ".".join(parts)
    if key in _LABELS:
        return _LABELS[key]
    parent = ".".join(parts[:-1])
    if parent in _LABELS and parts[-1] in _SUBFIELDS:
        return f"{_LABELS[parent]} : {_SUBFIELDS[parts[-1]]}"
    return schema_description or champ


@dataclass(frozen=True)
class DictionaryEntry:
    """One field of a delivered file."""

    nom: str  # as written in the file (a CSV header, an XML element path, a JSON key)
    champ: str  # the shared schema field it carries
    categorie: str  # its data category, or "" for what every recipient gets (pseudonym, schema version)
    description: str
    type: str
    valeurs: str = ""  # for a code: "code = libellé" for every value

    def as_row(self) -> list[str]:
        return [self.nom, self.champ, self.categorie, self.description, self.type, self.valeurs]


HEADER = ["Nom dans le fichier", "Champ du schéma SPIE", "Catégorie de données", "Description", "Type",
          "Valeurs possibles"]


def _unwrap(annotation: Any) -> Any:
    """``X | None``, ``list[X]``, ``Annotated[X, …]`` → X (and whether it was a list)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin is list:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _field(path: str) -> tuple[Any, str | None]:
    """The annotation and description of a dotted schema field (``None`` if the schema has no such field)."""
    model: Any = PersonneSPIE
    annotation: Any = None
    description = None
    for part in path.split("."):
        if part.isdigit():
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None, None
        info = model.model_fields[part]
        annotation, description = info.annotation, info.description
        model = _unwrap(annotation)
    return annotation, description


def _type(annotation: Any) -> tuple[str, str]:
    kind = _unwrap(annotation)
    plural = "liste de " if "list[" in str(annotation) else ""
    if isinstance(kind, type) and issubclass(kind, Enum):
        values = " | ".join(f"{m.value} = {m.libelle}" if isinstance(m, LabelledEnum) else str(m.value) for m in kind)
        return plural + "code", values
    if kind is dt.date:
        return plural + "date (AAAA-MM-JJ)", ""
    if kind is bool:
        return plural + "booléen", ""
    if kind is int:
        return plural + "entier", ""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return plural + "structure (" + ", ".join(kind.model_fields) + ")", ""
    return plural + "texte", ""


def entry(nom: str, champ: str, *, description: str | None = None) -> DictionaryEntry:
    """The dictionary entry of the file field ``nom`` carrying the shared field ``champ``."""
    block = champ.split(".")[0]
    category = CATEGORIE_DU_BLOC.get(block)
    annotation, schema_description = _field(champ)
    kind, values = ("texte", "") if annotation is None else _type(annotation)
    text = description or _label(champ, schema_description)
    return DictionaryEntry(nom, champ, category.value if category else "", text, kind, values)


def dictionary_csv(entries: list[DictionaryEntry], output_name: str) -> bytes:
    """The dictionary as the file a recipient receives: French CSV (``;``, CRLF, UTF-8 with BOM)."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter=";", lineterminator="\r\n")
    writer.writerow([f"Dictionnaire des données de la sortie « {output_name} » (schéma SPIE {SCHEMA_VERSION})"])
    writer.writerow(HEADER)
    writer.writerows(e.as_row() for e in entries)
    return ("\ufeff" + text.getvalue()).encode("utf-8")


def dictionary_name(output_name: str, content: bytes) -> str:
    """Stable while the dictionary does not change; a new name when it does (a recipient keeps the old one)."""
    return f"dictionnaire_{output_name}_{SCHEMA_VERSION}_{hashlib.sha256(content).hexdigest()[:8]}.csv"

"""Shared SPIE data schema, version 1.

One ``PersonneSPIE`` per person followed on an insertion pathway. The identity block (``identite``,
``contact``) is kept apart from the pathway data so that a pipeline can drop it whole when a recipient is not
entitled to it; everything else is keyed by the pivot pseudonym only.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from schemas.categories import FREINS_PARTICULIERS, MOTIFS_DROIT_RSA, code_particulier
from schemas.codes import (
    EtatDroitRSA,
    EvenementFranceTravail,
    Frein,
    ImpactFrein,
    Organisme,
    OrganismePayeur,
    PrecisionDate,
    RolePersonne,
    Sexe,
    StatutAction,
    StatutRendezVous,
    TypeContrat,
    TypeOrientation,
    TypeSortie,
    cnaf_labels,
)

SCHEMA_VERSION = "1.3.0"

Pseudonyme = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,16}\.[0-9a-f]{32}$")]
CodeInsee = Annotated[str, StringConstraints(pattern=r"^(\d{5}|2[AB]\d{3})$")]
Nir13 = Annotated[str, StringConstraints(pattern=r"^[12378]\d{4}(\d{2}|2[AB])\d{6}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, use_enum_values=False)


class IdentifiantPartenaire(_Model):
    """An identifier of the person in a partner's information system (a direct identifier)."""

    systeme: str = Field(description="ex. 'caf:521' (matricule CAF), 'rsa:numero-demande', 'france-travail'")
    valeur: str


class Identite(_Model):
    """Direct identifiers. Delivered only where the flow's policy and the person's consent allow it."""

    nir: Nir13 | None = Field(None, description="NIR normalisé sur 13 caractères (sans clé)")
    nom: str | None = None
    nom_naissance: str | None = None
    prenoms: list[str] = Field(default_factory=list)
    date_naissance: dt.date | None = None
    precision_date_naissance: PrecisionDate | None = None
    sexe: Sexe | None = None
    commune_insee: CodeInsee | None = Field(None, description="Code INSEE de la commune de résidence")
    identifiants: list[IdentifiantPartenaire] = Field(default_factory=list)


class Contact(_Model):
    adresse: str | None = None
    code_postal: str | None = None
    commune: str | None = None
    telephone: str | None = None
    email: str | None = None


class Suspension(_Model):
    motif: str
    libelle: str | None = None
    date_debut: dt.date | None = None


class DroitRSA(_Model):
    etat: EtatDroitRSA
    soumis_droits_devoirs: bool
    role: RolePersonne
    organisme: OrganismePayeur
    departement: str = Field(pattern=r"^(\d{2,3}|2[AB])$", description="Département compétent (IDEPARTE)")
    date_demande: dt.date | None = None
    date_origine_droit: dt.date | None = None
    sans_domicile_fixe: bool = False
    suspensions_versement: list[Suspension] = Field(default_factory=list)
    suspensions_droit: list[Suspension] = Field(default_factory=list)
    motif_refus: str | None = None
    motif_cloture: str | None = None
    date_cloture: dt.date | None = None

    @field_validator("motif_refus", "motif_cloture")
    @classmethod
    def _known_motif(cls, value: str | None, info: object) -> str | None:
        liste = {"motif_refus": "MOTIREFURSA", "motif_cloture": "MOTICLORSA"}[info.field_name]  # type: ignore[attr-defined]
        if value is not None and value not in cnaf_labels()[liste]:
            raise ValueError(f"code {liste} inconnu : {value!r}")
        return value


class Orientation(_Model):
    type: TypeOrientation
    date_decision: dt.date | None = None
    structure: str | None = None
    organisme: Organisme | None = Field(None, description="Organisme qui porte l'accompagnement (1.3.0)")

    @property
    def parcours_france_travail(self) -> str:
        return self.type.france_travail


class Referent(_Model):
    structure: str
    organisme: Organisme | None = Field(None, description="Organisme employeur du référent (1.3.0)")
    fonction: str | None = None
    date_debut: dt.date | None = None
    date_fin: dt.date | None = None


class FreinDiagnostique(_Model):
    frein: Frein
    impact: ImpactFrein | None = Field(None, description="Impact, quand le partenaire le gradue (1.3.0 : facultatif)")


class Diagnostic(_Model):
    date: dt.date | None = None
    freins: list[FreinDiagnostique] = Field(default_factory=list)


class Contrat(_Model):
    type: TypeContrat
    date_signature: dt.date | None = None
    date_debut: dt.date | None = None
    date_fin: dt.date | None = None


class RendezVous(_Model):
    date: dt.date
    objet: str | None = None
    statut: StatutRendezVous


class Action(_Model):
    libelle: str
    theme: Frein | None = None
    statut: StatutAction
    date_debut: dt.date | None = None
    date_fin: dt.date | None = None


class Sortie(_Model):
    date: dt.date
    type: TypeSortie


class InscriptionFranceTravail(_Model):
    """An event of the person's registration with France Travail, as the Département receives it (CASF L262-42)."""

    evenement: EvenementFranceTravail
    date: dt.date
    code: str | None = Field(None, description="Code transmis (catégorie d'inscription ou motif), tel qu'envoyé")
    motif: str | None = None
    agence: str | None = Field(None, description="Agence France Travail (ALE) de rattachement")


class MotifDroitSante(_Model):
    """A CNAF code of the RSA right whose meaning reveals health or disability (``CODES_CNAF_PARTICULIERS``)."""

    liste: str = Field(description="Liste de codes CNAF (MOTISUSVERSRSA, MOTISUSDRORSA, MOTIREFURSA, MOTICLORSA)")
    code: str
    libelle: str | None = None
    date_debut: dt.date | None = None

    @model_validator(mode="after")
    def _health_code_only(self) -> MotifDroitSante:
        if not code_particulier(self.liste, self.code):
            raise ValueError(f"le code {self.liste} {self.code!r} ne relève pas de la catégorie sante-handicap")
        return self


class SanteHandicap(_Model):
    """Health and disability (special category, RGPD art. 9): leaves the hub only under the person's explicit consent
    for ``sante-handicap``, never under a legal basis. Health values found in ordinary blocks (a health barrier in
    ``diagnostic``, a health action in ``actions``) are moved here when a record is built, so that no ordinary
    category ever carries them."""

    rqth: bool | None = Field(None, description="Reconnaissance de la qualité de travailleur handicapé (RQTH)")
    date_debut_rqth: dt.date | None = Field(None, description="Début de la RQTH (1.3.0)")
    date_fin_rqth: dt.date | None = None
    boe: bool | None = Field(None, description="Bénéficiaire de l'obligation d'emploi (BOE, 1.3.0)")
    esat: bool | None = Field(None, description="Orientation ou accueil en ESAT (1.3.0)")
    handicap: bool | None = Field(None, description="Situation de handicap déclarée (AAH, invalidité, hors RQTH)")
    freins: list[FreinDiagnostique] = Field(default_factory=list, description="Freins de santé du diagnostic")
    actions: list[Action] = Field(default_factory=list, description="Actions d'accompagnement liées à la santé")
    motifs_droit_rsa: list[MotifDroitSante] = Field(
        default_factory=list, description="Motifs CNAF du droit RSA révélant la santé ou le handicap (hospitalisation, "
        "AAH) ; valeur de foyer, retenue seulement pour un foyer d'une personne")
    motif_inscription_ft: str | None = Field(
        None, description="Motif en texte libre transmis par France Travail (peut porter un motif de santé)")

    @field_validator("freins")
    @classmethod
    def _health_barriers_only(cls, value: list[FreinDiagnostique]) -> list[FreinDiagnostique]:
        if any(f.frein not in FREINS_PARTICULIERS for f in value):
            raise ValueError("seuls les freins de santé relèvent de la catégorie sante-handicap")
        return value

    def __bool__(self) -> bool:
        return any((self.rqth is not None, self.date_debut_rqth, self.date_fin_rqth, self.handicap is not None,
                    self.boe is not None, self.esat is not None, self.freins, self.actions,
                    self.motifs_droit_rsa, self.motif_inscription_ft))


class Provenance(_Model):
    partenaire: str
    format: str
    date_reference: dt.date | None = None
    position: str = Field(description="Emplacement du record dans le fichier source (ex. 'foyer 12, personne 2')")


class PersonneSPIE(_Model):
    """A person as the hub carries it between partners."""

    version_schema: str = SCHEMA_VERSION
    pseudonyme: Pseudonyme = Field(description="Pseudonyme pivot (HMAC-SHA256, préfixé de l'identifiant de clé)")
    identite: Identite | None = None
    contact: Contact | None = None
    droit_rsa: DroitRSA | None = None
    orientation: Orientation | None = None
    referent: Referent | None = None
    diagnostic: Diagnostic | None = None
    contrats: list[Contrat] = Field(default_factory=list)
    rendez_vous: list[RendezVous] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    sortie: Sortie | None = None
    inscription_ft: InscriptionFranceTravail | None = None
    sante_handicap: SanteHandicap | None = None
    provenance: Provenance

    @model_validator(mode="after")
    def _separate_special_categories(self) -> PersonneSPIE:
        """Move every health value out of the ordinary blocks into ``sante_handicap`` (classification by value):
        the decision and every output writer then see it only under its own category."""
        health_barriers = [f for f in self.diagnostic.freins if f.frein in FREINS_PARTICULIERS] if self.diagnostic else []
        health_actions = [a for a in self.actions if a.theme in FREINS_PARTICULIERS]
        if health_barriers and self.diagnostic is not None:
            kept = [f for f in self.diagnostic.freins if f.frein not in FREINS_PARTICULIERS]
            # A dated diagnostic without barriers is an ordinary outcome (people assessed with none); without a date
            # either, nothing is left and the block goes.
            self.diagnostic = (self.diagnostic.model_copy(update={"freins": kept})
                               if kept or self.diagnostic.date is not None else None)
        if health_actions:
            self.actions = [a for a in self.actions if a.theme not in FREINS_PARTICULIERS]
        if health_barriers or health_actions:
            block = self.sante_handicap or SanteHandicap()
            self.sante_handicap = block.model_copy(update={"freins": [*block.freins, *health_barriers],
                                                           "actions": [*block.actions, *health_actions]})
        if self.droit_rsa is not None:
            # A health code of the RSA right is a household value: whose health it is cannot be told here, so it is
            # withheld from the ordinary block of every member, never moved to this person's special block (the
            # mapping of a one-person household puts it there itself, see ``sante_foyer`` in mappings/caf_vrsb.yaml).
            self.droit_rsa = _without_health_codes(self.droit_rsa)
        if self.inscription_ft is not None and self.inscription_ft.motif is not None:
            # Free text from France Travail may carry a health reason (« ARRET MALADIE / INVALIDITE »): fail-safe, it
            # is the person's own (one row per person) and leaves only under the special category.
            block = self.sante_handicap or SanteHandicap()
            self.sante_handicap = block.model_copy(update={"motif_inscription_ft": self.inscription_ft.motif})
            self.inscription_ft = self.inscription_ft.model_copy(update={"motif": None})
        if self.sante_handicap is not None and not self.sante_handicap:
            self.sante_handicap = None  # an empty block is no data: the category is not present
        return self


def _without_health_codes(droit: DroitRSA) -> DroitRSA:
    """The RSA right without any CNAF code whose meaning reveals health or disability."""
    update: dict[str, object] = {}
    for attribute, liste in MOTIFS_DROIT_RSA.items():
        value = getattr(droit, attribute)
        if isinstance(value, list):
            kept = [s for s in value if not code_particulier(liste, s.motif)]
            if len(kept) != len(value):
                update[attribute] = kept
        elif code_particulier(liste, value):
            update[attribute] = None
    return droit.model_copy(update=update) if update else droit

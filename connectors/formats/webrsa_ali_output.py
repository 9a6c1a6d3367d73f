"""The WebRSA "ALI" XML outputs: ``webrsa-ali`` (the Département's export to a referent structure, ``WebRSA-ALI.xsd``)
and ``ali-webrsa`` (a referent structure's return to the Département's WebRSA, ``ALI-WebRSA.xsd``), configured by
``mappings/sorties/<name>.yaml``. Every file written validates against its XSD (``connectors/xsd/ali/``).

Streaming: the header is written when the file is opened, each person's ``<dossier>`` is built (a few elements),
serialised and written on one line during its own ``write`` call (what lets the run give each recipient its
dossiers in an order of its own), and the closing tags on ``close``. UTF-8, XML declaration, no namespace.

Codes: ALI carries the numeric ids of the Département's WebRSA referential (``referentiels_webrsa_ali_*.xml``), not
national codes. The output spec holds the crosswalk shared code → id for each code written (``referentiel``); a
shared code missing from a crosswalk that must cover every value is refused when the spec loads.

Categories (decided per the XSD; every rule is in the data dictionary):

* A block whose category is not allowed for the person is left out when the XSD makes it optional (allocataire,
  référents, modes de contact, orientations, CER, rendez-vous, formulaire D2…): never an element that would say a
  value exists.
* ``id_personne`` is required in every dossier: the Département's own identifier when the identity category is
  allowed and the person has a numeric one; otherwise a pseudonymous number of 18 digits starting with 9, derived
  from the recipient's pseudonym of the person (stable across deliveries, linkable to nothing else).
* Inside ``allocataire`` (written only when identity is allowed and the name, first name and birth date are known),
  an element the XSD requires but whose value is unknown or whose category is not allowed takes the "non
  communiqué" value the spec declares (``non_communique``: 0 for a referential id, an empty text, ``0001-01-01``
  for a date, ``-1`` for a count): a constant that carries no data of the person.
* An element required inside an optional block whose value is unknown (an orientation without date) drops that
  block, never the person.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, ClassVar
from zoneinfo import ZoneInfo

from lxml import etree

from connectors.formats.base import OutputFormat, RecordWriter
from connectors.formats.dictionary import DictionaryEntry, entry
from schemas.categories import CategorieDonnees
from schemas.codes import StatutRendezVous, TypeOrientation, TypeSortie
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import ConfigurationError

C = CategorieDonnees
_PARIS = ZoneInfo("Europe/Paris")


def generation_time() -> str:
    """``date_generation`` of the header: ``SOURCE_DATE_EPOCH`` when set (reproducible files: golden tests, re-runs),
    else now, in Paris time as WebRSA writes it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch and epoch.isdigit()
              else dt.datetime.now(dt.timezone.utc))
    return moment.astimezone(_PARIS).strftime("%Y-%m-%d %H:%M:%S")


def pseudonymous_id(pseudonym: str, *parts: str) -> str:
    """An 18-digit number starting with 9 from the recipient's pseudonym (and what it numbers): never a real id."""
    digest = hashlib.sha256("\x1f".join((pseudonym, *parts)).encode("utf-8")).hexdigest()
    return "9" + str(int(digest[:14], 16)).zfill(17)


def _sub(parent: etree._Element, name: str, value: object) -> etree._Element:
    element = etree.SubElement(parent, name)
    element.text = value.isoformat() if isinstance(value, dt.date) else str(value)
    return element


def _code(value: Any) -> str:
    return str(getattr(value, "value", value))


def _table(spec: dict[str, Any], key: str, where: str, *, covering: type | None = None) -> dict[str, int]:
    """A crosswalk shared code → referential id from ``referentiel.<key>``; with ``covering`` (an enum), every shared
    value must have an id (checked when the spec loads, never discovered on a record)."""
    raw = (spec.get("referentiel") or {}).get(key)
    if not isinstance(raw, dict) or not raw:
        raise ConfigurationError(f"Format de sortie {where} : referentiel.{key} manquant (table code → identifiant)")
    table: dict[str, int] = {}
    for code, ident in raw.items():
        if not isinstance(ident, int) or isinstance(ident, bool):
            raise ConfigurationError(f"Format de sortie {where} : referentiel.{key} — identifiant entier attendu pour "
                                     f"{code}")
        table[str(code)] = ident
    if covering is not None:
        missing = [m.value for m in covering if m.value not in {k.split("/")[0] for k in table}]
        if missing:
            raise ConfigurationError(f"Format de sortie {where} : referentiel.{key} sans identifiant pour "
                                     + ", ".join(missing))
    return table


def _ident(spec: dict[str, Any], key: str, where: str) -> int:
    value = (spec.get("referentiel") or {}).get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"Format de sortie {where} : referentiel.{key} manquant (identifiant entier)")
    return value


def _type_id(table: dict[str, int], type_: TypeOrientation, organisme: Any) -> int:
    """The typesorients id of (type, organisme): the pair when the table has it, else the type alone, else the first
    id of that type (the spec load checked that every type has one)."""
    if organisme is not None and (exact := f"{type_.value}/{_code(organisme)}") in table:
        return table[exact]
    if type_.value in table:
        return table[type_.value]
    return next(ident for key, ident in table.items() if key.split("/")[0] == type_.value)


@dataclass(frozen=True)
class Column:
    """An element as the DPO's subject access lists it (``entete``: its path in the file, ``category``)."""

    entete: str
    category: CategorieDonnees | None


def _columns(entries: list[DictionaryEntry]) -> tuple[Column, ...]:
    return tuple(Column(e.nom, CategorieDonnees(e.categorie) if e.categorie else None) for e in entries)


def _values(table: dict[str, int], labels: dict[str, str] | None = None) -> str:
    return " | ".join(f"{ident} = {labels.get(code, code) if labels else code}" for code, ident in table.items())


@dataclass(frozen=True)
class _Common:
    """What both directions share: structures (name → id) and the header."""

    name: str
    structures: dict[str, int]
    default_structure: int
    header: dict[str, Any]

    def structure(self, name: str | None) -> int:
        if name is None:
            return self.default_structure
        if name.isdigit():
            return int(name)
        return self.structures.get(name, self.default_structure)


def _common(spec: dict[str, Any], where: str, header_keys: tuple[str, ...]) -> _Common:
    header = spec.get("entete")
    if not isinstance(header, dict) or any(k not in header for k in header_keys):
        raise ConfigurationError(f"Format de sortie {where} : entete attendu avec {', '.join(header_keys)}")
    if not isinstance(header.get("id_structure_ali"), int) or header["id_structure_ali"] < 1:
        raise ConfigurationError(f"Format de sortie {where} : entete.id_structure_ali entier positif attendu")
    if header.get("fichier_stock") not in (0, 1, True, False):
        raise ConfigurationError(f"Format de sortie {where} : entete.fichier_stock vaut 0 (différentiel) ou 1 (stock)")
    structures = _table(spec, "structures", where)
    default = int(spec.get("structure_par_defaut", header["id_structure_ali"]))
    return _Common(str(spec["sortie"]), structures, default, header)


class _XmlWriter(RecordWriter):
    def __init__(self, stream: BinaryIO, head: bytes, tail: bytes,
                 build: Callable[[PersonneSPIE, str, frozenset[CategorieDonnees]], etree._Element]) -> None:
        self.stream, self.tail, self.build = stream, tail, build
        stream.write(head)
        self.rows = 0

    def write(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> None:
        """Write one ``<dossier>`` on its own line, without any element whose category is not in ``allowed``."""
        self.stream.write(etree.tostring(self.build(record, pseudonym, allowed), encoding="utf-8") + b"\n")
        self.rows += 1

    def close(self) -> None:
        self.stream.write(self.tail)
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


def _header(root: str, fields: list[tuple[str, object]]) -> bytes:
    entete = etree.Element("entete")
    for name, value in fields:
        _sub(entete, name, value)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n<' + root.encode() + b">"
            + etree.tostring(entete, encoding="utf-8") + b"\n<dossiers>\n")


def _departement_id(record: PersonneSPIE, allowed: frozenset[CategorieDonnees]) -> str | None:
    if C.IDENTITE not in allowed or record.identite is None:
        return None
    found = next((i.valeur for i in record.identite.identifiants if i.systeme == "departement"), None)
    return found if found is not None and found.isdigit() and int(found) > 0 else None


_NON_COMMUNIQUE: dict[str, object] = {
    "numero_caf": 0, "code_postal": 0, "ville": "", "date_demande_rsa": "0001-01-01", "numero_demande_rsa": "",
    "etat_droit": 0, "role_personne": 0, "nb_enfants_foyer": -1, "situation_familiale": 0, "id_orient_webrsa": 0,
    "id_cer_webrsa": 0,
}


class WebrsaAliOutput(OutputFormat):
    """``WebRSA-ALI``: the Département's export of the people oriented to a referent structure."""

    format: ClassVar[str] = "webrsa-ali"
    extension: ClassVar[str] = ".xml"

    def __init__(self, spec: dict[str, Any]) -> None:
        where = repr(spec.get("sortie"))
        self.common = _common(spec, where, ("id_structure_ali", "libelle_ali", "fichier_stock"))
        self.name = self.common.name
        self.civilite = _table(spec, "civilite", where)
        self.etat_droit = _table(spec, "etat_droit", where)
        self.role_personne = _table(spec, "role_personne", where)
        self.type_orient = _table(spec, "type_orient", where, covering=TypeOrientation)
        self.statut_orient = _ident(spec, "statut_orient", where)
        self.origine_orient = _ident(spec, "origine_orient", where)
        self.statut_cer = _ident(spec, "statut_cer", where)
        unknown = dict(_NON_COMMUNIQUE)
        given = spec.get("non_communique") or {}
        if not isinstance(given, dict) or set(given) - set(unknown):
            raise ConfigurationError(f"Format de sortie {where} : non_communique ne connaît que "
                                     + ", ".join(sorted(unknown)))
        unknown.update(given)
        self.unknown = unknown

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WebrsaAliOutput:
        try:
            return cls(spec)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigurationError(f"Format de sortie {spec.get('sortie')!r} : clé manquante ou mal formée "
                                     f"({type(error).__name__})") from None

    def open(self, stream: BinaryIO) -> RecordWriter:
        h = self.common.header
        head = _header("WebRSA-ALI", [("date_generation", generation_time()), ("id_structure_ali", h["id_structure_ali"]),
                                      ("libelle_ali", h["libelle_ali"]), ("fichier_stock", int(h["fichier_stock"]))])
        return _XmlWriter(stream, head, b"</dossiers>\n</WebRSA-ALI>\n", self.dossier)

    @property
    def columns(self) -> tuple[Column, ...]:
        """The elements written, as the CSV format's columns: what the DPO's subject access lists."""
        return _columns(self.dictionary())

    def media(self) -> dict[str, str]:
        return {"encodage": "UTF-8", "type_media": "application/xml", "schema": "WebRSA-ALI.xsd"}

    # -- one person ---------------------------------------------------------------------------------------------
    def type_orient_id(self, type_: TypeOrientation, organisme: Any) -> int:
        return _type_id(self.type_orient, type_, organisme)

    def dossier(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> etree._Element:
        dossier = etree.Element("dossier")
        _sub(dossier, "id_personne", _departement_id(record, allowed) or pseudonymous_id(pseudonym, "personne"))
        self._allocataire(dossier, record, allowed)
        if C.ORIENTATION_PARCOURS in allowed and (ref := record.referent) is not None and ref.date_debut is not None:
            block = etree.SubElement(etree.SubElement(dossier, "referents_parcours"), "referent_parcours")
            _sub(block, "id_structure_referente", self.common.structure(ref.structure))
            _sub(block, "date_debut_designation", ref.date_debut)
            if ref.date_fin is not None:
                _sub(block, "date_fin_designation", ref.date_fin)
        contact = record.contact
        if C.CONTACT in allowed and contact is not None and (contact.telephone or contact.email):
            block = etree.SubElement(dossier, "modes_contact")
            if contact.telephone:
                _sub(block, "telephone_1", contact.telephone)
            if contact.email:
                _sub(block, "email", contact.email)
        orientation = record.orientation
        if C.ORIENTATION_PARCOURS in allowed and orientation is not None and orientation.date_decision is not None:
            block = etree.SubElement(etree.SubElement(dossier, "orientations"), "orientation")
            _sub(block, "id_orient_webrsa", self.unknown["id_orient_webrsa"])
            _sub(block, "date_orient", orientation.date_decision)
            _sub(block, "origine_orient", self.origine_orient)
            _sub(block, "statut_orient", self.statut_orient)
            _sub(block, "type_orient", self.type_orient_id(orientation.type, orientation.organisme))
            _sub(block, "structure_referente", self.common.structure(orientation.structure))
            _sub(block, "tag_entretien_diag", 0)
        cers = [c for c in record.contrats if c.type.value == "CER"]
        if C.CONTRATS in allowed and cers:
            block = etree.SubElement(dossier, "cers")
            for contrat in cers:
                cer = etree.SubElement(block, "cer")
                _sub(cer, "id_cer_webrsa", self.unknown["id_cer_webrsa"])
                _sub(cer, "structure_referente", self.common.structure(
                    orientation.structure if orientation is not None and C.ORIENTATION_PARCOURS in allowed else None))
                _sub(cer, "statut", self.statut_cer)
                if contrat.date_debut is not None:
                    _sub(cer, "date_debut", contrat.date_debut)
                if contrat.date_fin is not None:
                    _sub(cer, "date_fin", contrat.date_fin)
        return dossier

    def _allocataire(self, dossier: etree._Element, record: PersonneSPIE, allowed: frozenset[CategorieDonnees]) -> None:
        identite = record.identite
        if C.IDENTITE not in allowed or identite is None or not identite.nom or not identite.prenoms \
                or identite.date_naissance is None:
            return
        nc = self.unknown
        block = etree.SubElement(dossier, "allocataire")
        if identite.sexe is not None and identite.sexe.value in self.civilite:
            _sub(block, "civilite", self.civilite[identite.sexe.value])
        _sub(block, "nom", identite.nom)
        _sub(block, "prenom", identite.prenoms[0])
        if identite.nir is not None:
            _sub(block, "nir", identite.nir)
        matricule = next((i.valeur.rsplit(":", 1)[-1] for i in identite.identifiants if i.systeme == "cnaf-matricule"), None)
        _sub(block, "numero_caf", matricule if matricule is not None and matricule.isdigit() else nc["numero_caf"])
        _sub(block, "date_naissance", identite.date_naissance)
        contact = record.contact if C.CONTACT in allowed else None
        if contact is not None and contact.adresse:
            _sub(block, "nom_voie", contact.adresse)
        postal = contact.code_postal if contact is not None else None
        _sub(block, "code_postal", postal if postal is not None and postal.isdigit() else nc["code_postal"])
        _sub(block, "ville", (contact.commune if contact is not None else None) or nc["ville"])
        droit = record.droit_rsa if C.DROITS_RSA in allowed else None
        _sub(block, "date_demande_rsa", droit.date_demande if droit is not None and droit.date_demande else
             nc["date_demande_rsa"])
        numero = next((i.valeur for i in identite.identifiants if i.systeme == "cnaf-numero-demande-rsa"), None)
        _sub(block, "numero_demande_rsa", numero or nc["numero_demande_rsa"])
        _sub(block, "etat_droit", self.etat_droit.get(droit.etat.value, nc["etat_droit"]) if droit else nc["etat_droit"])
        if droit is not None:
            _sub(block, "soumis_droits_devoirs", int(droit.soumis_droits_devoirs))
        _sub(block, "role_personne", self.role_personne.get(droit.role.value, nc["role_personne"]) if droit
             else nc["role_personne"])
        _sub(block, "nb_enfants_foyer", nc["nb_enfants_foyer"])
        _sub(block, "situation_familiale", nc["situation_familiale"])

    # -- dictionary ---------------------------------------------------------------------------------------------
    def dictionary(self) -> list[DictionaryEntry]:
        nc = self.unknown
        d = "dossier"
        a = f"{d}/allocataire"

        def e(nom: str, champ: str, description: str | None = None, kind: str | None = None,
              values: str | None = None) -> DictionaryEntry:
            out = entry(nom, champ, description=description)
            if kind is not None:
                out = replace(out, type=kind)
            if values is not None:
                out = replace(out, valeurs=values)
            return out

        structures = _values(self.common.structures)
        return [
            e(f"{d}/id_personne", "identite.identifiants", "Identifiant de la personne dans WebRSA (identifiant "
              "« departement ») ; sans identité permise ou sans identifiant numérique : nombre pseudonyme de 18 "
              "chiffres commençant par 9, propre au destinataire", "entier"),
            e(f"{a}/civilite", "identite.sexe", "Civilité (identifiant du référentiel civilite)", "entier",
              _values(self.civilite, {"1": "Monsieur (sexe 1)", "2": "Madame (sexe 2)"})),
            e(f"{a}/nom", "identite.nom", kind="texte"),
            e(f"{a}/prenom", "identite.prenoms", "Premier prénom", "texte"),
            e(f"{a}/nir", "identite.nir", "NIR sur 13 caractères (sans clé)", "texte"),
            e(f"{a}/numero_caf", "identite.identifiants", "Matricule CAF ou MSA (identifiant cnaf-matricule) ; "
              f"{nc['numero_caf']} = non communiqué", "entier"),
            e(f"{a}/date_naissance", "identite.date_naissance"),
            e(f"{a}/nom_voie", "contact.adresse", "Adresse (voie complète)", "texte"),
            e(f"{a}/code_postal", "contact.code_postal", f"Code postal ; {nc['code_postal']} = non communiqué", "entier"),
            e(f"{a}/ville", "contact.commune", "Commune ; vide = non communiqué", "texte"),
            e(f"{a}/date_demande_rsa", "droit_rsa.date_demande", f"Date de la demande de RSA ; {nc['date_demande_rsa']} "
              "= non communiqué"),
            e(f"{a}/numero_demande_rsa", "identite.identifiants", "Numéro de demande RSA (cnaf-numero-demande-rsa) ; "
              "vide = non communiqué", "texte"),
            e(f"{a}/etat_droit", "droit_rsa.etat", f"État du droit RSA (référentiel etatdos) ; {nc['etat_droit']} = "
              "non communiqué", "entier", _values(self.etat_droit)),
            e(f"{a}/soumis_droits_devoirs", "droit_rsa.soumis_droits_devoirs", "Soumis à droits et devoirs (0 ou 1)",
              "booléen 0/1"),
            e(f"{a}/role_personne", "droit_rsa.role", f"Rôle dans le foyer (référentiel rolepers) ; "
              f"{nc['role_personne']} = non communiqué", "entier", _values(self.role_personne)),
            DictionaryEntry(f"{a}/nb_enfants_foyer", "", "", f"Non porté par le schéma SPIE : toujours "
                            f"{nc['nb_enfants_foyer']} (non communiqué)", "entier"),
            DictionaryEntry(f"{a}/situation_familiale", "", "", f"Non portée par le schéma SPIE : toujours "
                            f"{nc['situation_familiale']} (non communiqué)", "entier"),
            e(f"{d}/referents_parcours/referent_parcours/id_structure_referente", "referent.structure",
              "Structure du référent (référentiel structuresreferentes)", "entier", structures),
            e(f"{d}/referents_parcours/referent_parcours/date_debut_designation", "referent.date_debut"),
            e(f"{d}/referents_parcours/referent_parcours/date_fin_designation", "referent.date_fin"),
            e(f"{d}/modes_contact/telephone_1", "contact.telephone", kind="texte"),
            e(f"{d}/modes_contact/email", "contact.email", kind="texte"),
            e(f"{d}/orientations/orientation/id_orient_webrsa", "orientation.date_decision", "Identifiant WebRSA de "
              f"l'orientation : toujours {nc['id_orient_webrsa']} (non communiqué)", "entier"),
            e(f"{d}/orientations/orientation/date_orient", "orientation.date_decision"),
            e(f"{d}/orientations/orientation/origine_orient", "orientation.type", "Origine de l'orientation : "
              f"toujours {self.origine_orient}", "entier"),
            e(f"{d}/orientations/orientation/statut_orient", "orientation.type", "Statut de l'orientation : toujours "
              f"{self.statut_orient} (orienté)", "entier"),
            e(f"{d}/orientations/orientation/type_orient", "orientation.type", "Type d'orientation (référentiel "
              "typesorients ; type/organisme)", "entier", _values(self.type_orient)),
            e(f"{d}/orientations/orientation/structure_referente", "orientation.structure", "Structure d'accompagnement "
              f"(référentiel structuresreferentes ; inconnue : {self.common.default_structure})", "entier", structures),
            e(f"{d}/orientations/orientation/tag_entretien_diag", "orientation.type", "Toujours 0", "booléen 0/1"),
            e(f"{d}/cers/cer/id_cer_webrsa", "contrats", f"Toujours {nc['id_cer_webrsa']} (non communiqué)", "entier"),
            e(f"{d}/cers/cer/structure_referente", "contrats", "Structure de l'orientation", "entier", structures),
            e(f"{d}/cers/cer/statut", "contrats", f"Statut du CER : toujours {self.statut_cer} (validé)", "entier"),
            e(f"{d}/cers/cer/date_debut", "contrats.0.date_debut", "Début du CER", "date (AAAA-MM-JJ)"),
            e(f"{d}/cers/cer/date_fin", "contrats.0.date_fin", "Fin du CER", "date (AAAA-MM-JJ)"),
        ]


class AliWebrsaOutput(OutputFormat):
    """``ALI-WebRSA``: a referent structure's return to the Département (rendez-vous, CER, sorties, orientations)."""

    format: ClassVar[str] = "ali-webrsa"
    extension: ClassVar[str] = ".xml"

    def __init__(self, spec: dict[str, Any]) -> None:
        where = repr(spec.get("sortie"))
        self.common = _common(spec, where, ("id_structure_ali", "fichier_stock"))
        self.name = self.common.name
        self.statut_rdv = _table(spec, "statut_rdv", where, covering=StatutRendezVous)
        self.type_orient = _table(spec, "type_orient", where, covering=TypeOrientation)
        self.motif_sortie = _table(spec, "motif_sortie", where, covering=TypeSortie)
        self.statut_accompagnement = _table(spec, "statut_accompagnement", where)
        if "defaut" not in self.statut_accompagnement:
            raise ConfigurationError(f"Format de sortie {where} : referentiel.statut_accompagnement.defaut manquant")
        defaults = spec.get("valeurs_par_defaut")
        needed = ("id_referent", "id_objet_rdv", "id_thematique_rdv", "heure_rdv", "id_cmu", "id_cmu_c",
                  "id_niveau_etude", "inscrit_PE", "emploi_trouve", "mois_a_venir", "id_duree_cer",
                  "id_point_parcours", "id_origine", "id_statut")
        if not isinstance(defaults, dict) or (missing := [k for k in needed if k not in defaults]):
            raise ConfigurationError(f"Format de sortie {where} : valeurs_par_defaut manquantes : "
                                     + ", ".join(missing if isinstance(defaults, dict) else needed))
        self.defaults = defaults

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> AliWebrsaOutput:
        try:
            return cls(spec)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigurationError(f"Format de sortie {spec.get('sortie')!r} : clé manquante ou mal formée "
                                     f"({type(error).__name__})") from None

    def open(self, stream: BinaryIO) -> RecordWriter:
        h = self.common.header
        head = _header("ALI-WebRSA", [("date_generation", generation_time()), ("id_structure_ali", h["id_structure_ali"]),
                                      ("fichier_stock", int(h["fichier_stock"]))])
        return _XmlWriter(stream, head, b"</dossiers>\n</ALI-WebRSA>\n", self.dossier)

    @property
    def columns(self) -> tuple[Column, ...]:
        """The elements written, as the CSV format's columns: what the DPO's subject access lists."""
        return _columns(self.dictionary())

    def media(self) -> dict[str, str]:
        return {"encodage": "UTF-8", "type_media": "application/xml", "schema": "ALI-WebRSA.xsd"}

    def type_orient_id(self, type_: TypeOrientation, organisme: Any) -> int:
        return _type_id(self.type_orient, type_, organisme)

    def dossier(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> etree._Element:
        v = self.defaults
        dossier = etree.Element("dossier")
        _sub(dossier, "id_personne", _departement_id(record, allowed) or pseudonymous_id(pseudonym, "personne"))
        structure = self.common.default_structure
        if C.ORIENTATION_PARCOURS in allowed and record.rendez_vous:
            block = etree.SubElement(dossier, "liste_rendez_vous")
            for rdv in record.rendez_vous:
                item = etree.SubElement(block, "rendez_vous")
                _sub(item, "id_ali", pseudonymous_id(pseudonym, "rendez-vous", rdv.date.isoformat(), rdv.objet or ""))
                _sub(item, "id_structurereferente", structure)
                _sub(item, "id_objet_rdv", v["id_objet_rdv"])
                _sub(etree.SubElement(item, "thematiques"), "id_thematique_rdv", v["id_thematique_rdv"])
                _sub(item, "id_statut_rdv", self.statut_rdv[rdv.statut.value])
                _sub(item, "date_rdv", rdv.date)
                _sub(item, "heure_rdv", v["heure_rdv"])
                if rdv.objet:
                    _sub(item, "objectif_rdv", rdv.objet)
        cers = [c for c in record.contrats if c.type.value == "CER" and c.date_debut is not None]
        if C.CONTRATS in allowed and cers:
            block = etree.SubElement(dossier, "liste_cers")
            for contrat in cers:
                cer = etree.SubElement(block, "cer")
                assert contrat.date_debut is not None
                signed = contrat.date_signature or contrat.date_debut
                _sub(cer, "id_ali", pseudonymous_id(pseudonym, "cer", contrat.date_debut.isoformat()))
                _sub(cer, "id_referent", v["id_referent"])
                _sub(cer, "inscrit_PE", v["inscrit_PE"])
                _sub(cer, "id_cmu", v["id_cmu"])
                _sub(cer, "id_cmu_c", v["id_cmu_c"])
                _sub(cer, "id_niveau_etude", v["id_niveau_etude"])
                _sub(cer, "emploi_trouve", v["emploi_trouve"])
                _sub(cer, "mois_a_venir", v["mois_a_venir"])
                _sub(cer, "id_duree_cer", v["id_duree_cer"])
                _sub(cer, "id_point_parcours", v["id_point_parcours"])
                _sub(cer, "date_debut", contrat.date_debut)
                _sub(cer, "date_saisie", signed)
                _sub(cer, "date_signature", signed)
        orientation = record.orientation
        if C.ORIENTATION_PARCOURS in allowed and orientation is not None and orientation.date_decision is not None:
            # One change per dossier: the XSD allows exactly one changement_orientation in its list.
            change = etree.SubElement(etree.SubElement(dossier, "liste_changements_orientation"), "changement_orientation")
            _sub(change, "id_ali", pseudonymous_id(pseudonym, "orientation", orientation.date_decision.isoformat()))
            _sub(change, "id_referent", v["id_referent"])
            _sub(change, "date_demande", orientation.date_decision)
            _sub(change, "id_origine", v["id_origine"])
            _sub(change, "id_type_orientation", self.type_orient_id(orientation.type, orientation.organisme))
            _sub(change, "id_structure_referente_accueil", self.common.structure(orientation.structure))
            _sub(change, "id_statut", v["id_statut"])
        sortie = record.sortie
        if C.SORTIES in allowed and sortie is not None:
            d2 = etree.SubElement(dossier, "formulaire_d2")
            _sub(d2, "id_ali", pseudonymous_id(pseudonym, "sortie", sortie.date.isoformat()))
            _sub(d2, "id_statut_accompagnement", self.statut_accompagnement.get(
                sortie.type.value, self.statut_accompagnement["defaut"]))
            _sub(etree.SubElement(d2, "sortie_accompagnement"), "id_motif_sortie_accompagnement",
                 self.motif_sortie[sortie.type.value])
        return dossier

    def dictionary(self) -> list[DictionaryEntry]:
        v = self.defaults
        d = "dossier"
        r = f"{d}/liste_rendez_vous/rendez_vous"
        c = f"{d}/liste_cers/cer"
        o = f"{d}/liste_changements_orientation/changement_orientation"
        s = f"{d}/formulaire_d2"

        def e(nom: str, champ: str, description: str | None = None, kind: str | None = None,
              values: str | None = None) -> DictionaryEntry:
            out = entry(nom, champ, description=description)
            if kind is not None:
                out = replace(out, type=kind)
            if values is not None:
                out = replace(out, valeurs=values)
            return out

        fixed = "identifiant pseudonyme stable (18 chiffres commençant par 9)"
        return [
            e(f"{d}/id_personne", "identite.identifiants", "Identifiant de la personne dans WebRSA (identifiant "
              "« departement ») ; sans identité permise ou sans identifiant numérique : nombre pseudonyme de 18 "
              "chiffres commençant par 9, propre au destinataire", "entier"),
            e(f"{r}/id_ali", "rendez_vous", f"Identifiant du rendez-vous : {fixed}", "entier"),
            e(f"{r}/id_structurereferente", "rendez_vous", f"Structure émettrice : toujours "
              f"{self.common.default_structure}", "entier"),
            e(f"{r}/id_objet_rdv", "rendez_vous", f"Objet : toujours {v['id_objet_rdv']}", "entier"),
            e(f"{r}/thematiques/id_thematique_rdv", "rendez_vous", f"Thématique : toujours {v['id_thematique_rdv']}",
              "entier"),
            e(f"{r}/id_statut_rdv", "rendez_vous.0.statut", "Statut du rendez-vous (référentiel statutrdv)", "entier",
              _values(self.statut_rdv, {m.value: m.libelle for m in StatutRendezVous})),
            e(f"{r}/date_rdv", "rendez_vous.0.date", "Date du rendez-vous", "date (AAAA-MM-JJ)"),
            e(f"{r}/heure_rdv", "rendez_vous", f"Heure non portée par le schéma SPIE : toujours {v['heure_rdv']}",
              "heure HH:MM:SS"),
            e(f"{r}/objectif_rdv", "rendez_vous.0.objet", "Objet du rendez-vous", "texte"),
            e(f"{c}/id_ali", "contrats", f"Identifiant du CER : {fixed}", "entier"),
            *[e(f"{c}/{k}", "contrats", f"Non porté par le schéma SPIE : toujours {v[k]}",
                "texte" if k == "mois_a_venir" else "entier")
              for k in ("id_referent", "inscrit_PE", "id_cmu", "id_cmu_c", "id_niveau_etude", "emploi_trouve",
                        "mois_a_venir", "id_duree_cer", "id_point_parcours")],
            e(f"{c}/date_debut", "contrats.0.date_debut", "Début du CER", "date (AAAA-MM-JJ)"),
            e(f"{c}/date_saisie", "contrats.0.date_signature", "Date de signature (à défaut, de début)",
              "date (AAAA-MM-JJ)"),
            e(f"{c}/date_signature", "contrats.0.date_signature", "Date de signature (à défaut, de début)",
              "date (AAAA-MM-JJ)"),
            e(f"{o}/id_ali", "orientation.date_decision", f"Identifiant de la demande : {fixed}", "entier"),
            e(f"{o}/id_referent", "orientation.type", f"Toujours {v['id_referent']}", "entier"),
            e(f"{o}/date_demande", "orientation.date_decision"),
            e(f"{o}/id_origine", "orientation.type", f"Toujours {v['id_origine']}", "entier"),
            e(f"{o}/id_type_orientation", "orientation.type", "Type d'orientation (référentiel typesorients ; "
              "type/organisme)", "entier", _values(self.type_orient)),
            e(f"{o}/id_structure_referente_accueil", "orientation.structure", "Structure d'accueil (référentiel "
              f"structuresreferentes ; inconnue : {self.common.default_structure})", "entier",
              _values(self.common.structures)),
            e(f"{o}/id_statut", "orientation.type", f"Toujours {v['id_statut']}", "entier"),
            e(f"{s}/id_ali", "sortie.date", f"Identifiant du formulaire : {fixed}", "entier"),
            e(f"{s}/id_statut_accompagnement", "sortie.type", "Statut de l'accompagnement (référentiel "
              "statut_accompagnement)", "entier", _values(self.statut_accompagnement)),
            e(f"{s}/sortie_accompagnement/id_motif_sortie_accompagnement", "sortie.type", "Motif de sortie "
              "(référentiel motif_sortie_obligation_accompagnement)", "entier",
              _values(self.motif_sortie, {m.value: m.libelle for m in TypeSortie})),
        ]

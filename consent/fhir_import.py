"""Import FHIR R5 ``Consent`` resources (Bundle JSON, or rows of the documented CSV) into the hub's registry.

The person is identified by NIR (INS-NIR system) and turned into the pivot pseudonym on entry: no NIR is stored.
R5 semantics: the base ``decision`` applies by default and each ``provision`` is an exception with the opposite
effect, naming recipients (``actor``, else ``grantee``) and data categories (``code``). The hub stores the
resulting *rules* (effect, recipients, categories, period).

The reading fails safe (docs/consentement.md, « Lecture prudente »):

* a permit applies only where every criterion it states matches what the hub shares (recipient it can identify,
  disclosure action, one of the hub's purposes, the issuer's authority, an explicit-consent marker for special
  categories); what cannot be evaluated narrows it, and the report says so per entry;
* a refusal is widened by what cannot be evaluated (an actor the hub cannot identify → every recipient, an
  unknown category → every category), and a refusal naming nobody refuses everything;
* a withdrawal (``inactive``, ``entered-in-error``) of any shape ends the consent it replaces; one that replaces
  nothing blocks the person for the recipients it names, or the issuer's recipients when it names none.

Consents are scoped by issuer (``emetteur``, given by the inbox the file came through): the same ``id`` from two
partners is two consents, the same ``id`` from one partner for two people is refused. Partner ids stay in the
consent registry: decisions, withdrawals and the audit cite the hub's opaque reference (``c-`` + 16 hex). Each
change is a new version; a batch of consents and its audit entries commit in one transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.consent import Consent
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, insert, select, text, update

from connectors.transports.local import LocalFolderOptions
from consent.csv_import import UnreadableRow
from consent.decision import (
    ALL_RECIPIENTS,
    ConsentIndex,
    ConsentVersion,
    permitted_pairs,
    version_from_row,
)
from consent.evidence import controlled_source, registry_terms
from consent.fhir_build import (
    CATEGORY_SYSTEM,
    CONSENT_ACTION,
    EXPLICIT_CODE,
    EXPLICIT_SYSTEM,
    INS_NIR,
    KIND_SYSTEM,
    KINDS,
    PARTICIPATION,
    PARTNER_SYSTEM,
    PURPOSE_SYSTEM,
)
from consent.json_stream import TooLarge, bundle_entries
from schemas.categories import CategorieDonnees
from spie_hub.audit.actions import record_action, remove_orphan_actions
from spie_hub.audit.log import AuditEvent, AuditLog, canonical, now
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.failpoints import failpoint
from spie_hub.core.home import HubHome
from spie_hub.core.nir import NirInvalide, normaliser_nir
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import ConsentIssuer, ConsentRegistry, consent_registry
from spie_hub.store import audit_head, consents, revocations

__all__ = ["CATEGORY_SYSTEM", "INS_NIR", "PARTNER_SYSTEM", "ImportReport", "hub_reference", "import_consents",
           "import_resources"]
STATUSES = {"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}
#: Statuses by which a partner takes a consent back: never rejected into inaction, whatever the resource's shape.
WITHDRAWN = {"inactive", "entered-in-error"}
ALL_CATEGORIES = sorted(c.value for c in CategorieDonnees)
#: Actor roles naming who receives the data (HL7 v3 ParticipationType): information recipient, primary recipient.
RECIPIENT_ROLES = {"IRCP", "PRCP"}
#: Provision criteria the hub cannot evaluate against what it shares (FHIR resources, data periods, labels).
UNEVALUABLE = {"dataPeriod": "période des données", "securityLabel": "étiquette de sécurité", "data": "données visées",
               "documentType": "type de document", "resourceType": "type de ressource", "expression": "expression"}
MAX_ID = 128
PARIS = ZoneInfo("Europe/Paris")


@dataclass
class ImportReport:
    importes: int = 0
    inchanges: int = 0
    retraits: int = 0
    #: Entries refused, each with its number (or line) and reason; never a NIR nor a partner's id.
    erreurs: list[str] = field(default_factory=list)
    #: Entries stored with part of what they asked left out (a permit the hub cannot evaluate, outside the
    #: issuer's authority, a special category without explicit consent), each with its number and reason.
    restrictions: list[str] = field(default_factory=list)


class _Refused(ValueError):
    """An entry refused with a French reason (never quoting the partner's values)."""


@dataclass(frozen=True)
class _Context:
    emetteur: str
    #: None: an issuer the registry does not declare (the Python API only: the CLI reads declared inboxes).
    issuer: ConsentIssuer | None
    finalites: frozenset[str]
    #: every recipient the registry knows: what a refusal of "every recipient" means for withdrawal propagation
    recipients: frozenset[str]
    registry_unreadable: bool = False
    #: declared partners and the articles the registry cites: the only values the proof of collection keeps
    partners: frozenset[str] = frozenset()
    articles: frozenset[str] = frozenset()

    @property
    def own_recipients(self) -> list[str]:
        """Who a withdrawal or refusal naming nobody applies to: the issuer's recipients, else every recipient."""
        if self.issuer is not None and self.issuer.destinataires:
            return sorted(self.issuer.destinataires)
        return [ALL_RECIPIENTS]


def hub_reference(secret: bytes, emetteur: str, consent_id: str) -> str:
    """The hub's opaque reference of a partner's consent: a keyed hash, so a Consent.id equal to a NIR (seen) cannot
    be recovered from it, and stable across versions (the first version's reference is kept)."""
    digest = hmac.digest(secret, f"consentement|{emetteur}|{consent_id}".encode(), "sha256")
    return "c-" + digest.hex()[:16]


# -- reading one resource ------------------------------------------------------------------------------------------


def _fhir_day(value: Any) -> str | None:
    """A FHIR date or dateTime as an ISO date; partial dates stay partial (the decision reads them as ranges)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        # A moment with its zone is read as the date it is in France (the hub's day is France's day).
        return (value.astimezone(PARIS) if value.tzinfo else value).date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value)
    return text[:10] if len(text) >= 10 else text


def _nir13(value: str) -> tuple[str, bool]:
    """The 13-character NIR and whether its 2-digit key was wrong (the 13 characters themselves being valid)."""
    try:
        return normaliser_nir(value), False
    except NirInvalide as error:
        compact = re.sub(r"[\s.\-]", "", value)
        if len(compact) == 15 and compact.isascii() and compact[13:].isdigit():
            try:
                return normaliser_nir(compact[:13]), True
            except NirInvalide:
                pass
        raise _Refused(str(error)) from None


def _period(period: Any) -> tuple[str | None, str | None]:
    if period is None:
        return None, None
    return _fhir_day(period.start), _fhir_day(period.end)


def _partner(ref: Any) -> str | None:
    if ref is None:
        return None
    if ref.reference and ref.reference.startswith("Organization/"):
        return ref.reference.removeprefix("Organization/")
    if ref.identifier and ref.identifier.system == PARTNER_SYSTEM:
        return ref.identifier.value
    return None


def _codes(concepts: Iterable[Any], system: str) -> tuple[set[str], bool]:
    """Codes of ``system`` in a list of CodeableConcepts, and whether any coding was of another system."""
    found: set[str] = set()
    foreign = False
    for concept in concepts:
        for coding in concept.coding or []:
            if coding.system == system and coding.code:
                found.add(coding.code)
            else:
                foreign = True
    return found, foreign


class _Reader:
    """Turns one Consent into the hub's rules, noting what it left out of a permit."""

    def __init__(self, resource: Consent, ctx: _Context) -> None:
        self.resource, self.ctx = resource, ctx
        self.notes: list[str] = []
        self.outside_registry = False
        self.kind = "consentement"
        self.decision = resource.decision
        self.explicit = any(c.system == EXPLICIT_SYSTEM and c.code == EXPLICIT_CODE
                            for cat in resource.category or [] for c in cat.coding or [])

    # recipients --------------------------------------------------------------------------------------------------

    def _known(self, partner: str | None) -> str | None:
        """A partner the registry knows as a recipient; any other name (free text from the partner's file, which
        could be anything, a NIR included) is never stored, audited nor reported."""
        if partner is not None and partner not in self.ctx.recipients:
            self.outside_registry = True
            return None
        return partner

    def _grantees(self) -> tuple[list[str], bool]:
        named = [_partner(ref) for ref in self.resource.grantee or []]
        unknown = any(g is None for g in named)
        return sorted({k for g in named if (k := self._known(g))}), unknown

    def _actors(self, prov: Any) -> tuple[list[str], bool]:
        """Recipients a provision names, and whether it names someone the hub cannot identify as a recipient
        (a Practitioner, an identifier of another system, a role other than recipient)."""
        found: set[str] = set()
        unknown = False
        for actor in prov.actor or []:
            roles, _foreign = _codes([actor.role] if actor.role else [], PARTICIPATION)
            partner = _partner(actor.reference)
            if partner is None or (actor.role is not None and not roles & RECIPIENT_ROLES):
                unknown = True
            elif known := self._known(partner):
                found.add(known)
        return sorted(found), unknown

    # provisions --------------------------------------------------------------------------------------------------

    def _deny(self, number: int, prov: Any, base: tuple[str | None, str | None]) -> dict[str, Any]:
        """A refusal, widened by what the hub cannot evaluate (never narrowed)."""
        actors, unknown_actor = self._actors(prov)
        if prov.actor:
            recipients = [ALL_RECIPIENTS] if unknown_actor or not actors else actors
        else:
            grantees, unknown_grantee = self._grantees()
            recipients = grantees if grantees and not unknown_grantee else [ALL_RECIPIENTS]
        codes, foreign = _codes(prov.code or [], CATEGORY_SYSTEM)
        known = {c for c in codes if c in ALL_CATEGORIES}
        categories = sorted(known) if known and known == codes and not foreign else ALL_CATEGORIES
        start, end = _period(prov.period)
        return {"effet": "deny", "destinataires": recipients, "categories": categories,
                "debut": start or base[0], "fin": end or base[1]}

    def _permit(self, number: int, prov: Any, base: tuple[str | None, str | None]) -> list[dict[str, Any]]:
        """A grant, applied only where every criterion it states matches; otherwise narrowed (and noted)."""
        where = f"provision {number}"
        if self.kind == "opposition":
            self.notes.append(f"{where} : une opposition ne peut rien autoriser (autorisation ignorée)")
            return []
        if prov.provision:
            self.notes.append(f"{where} : provisions imbriquées non prises en charge (autorisation non retenue)")
            return []
        unevaluable = [label for name, label in UNEVALUABLE.items() if getattr(prov, name, None)]
        if unevaluable:
            self.notes.append(f"{where} : critère non évaluable par le hub ({', '.join(unevaluable)}) : "
                              "autorisation non retenue")
            return []
        if prov.action:
            actions, _ = _codes(prov.action, CONSENT_ACTION)
            if "disclose" not in actions:
                self.notes.append(f"{where} : action autre que la communication (disclose) : autorisation non retenue")
                return []
        if prov.purpose and not any(p.system == PURPOSE_SYSTEM and p.code in self.ctx.finalites for p in prov.purpose):
            self.notes.append(f"{where} : finalité différente de celles des flux du hub : autorisation non retenue")
            return []
        if prov.actor:
            recipients, unknown = self._actors(prov)
            if unknown:
                self.notes.append(f"{where} : destinataire non identifiable (acteur hors partenaires du hub ou rôle "
                                  "autre que destinataire) : non retenu")
        else:
            recipients, unknown = self._grantees()
            if unknown:
                self.notes.append(f"{where} : bénéficiaire ('grantee') non identifiable : non retenu")
        if self.outside_registry:
            self.notes.append(f"{where} : destinataire inconnu du registre des flux : non retenu")
            self.outside_registry = False
        if not recipients:
            self.notes.append(f"{where} : aucun destinataire identifiable (actor ou grantee) : autorisation non retenue")
            return []
        codes, foreign = _codes(prov.code or [], CATEGORY_SYSTEM)
        categories = {c for c in codes if c in ALL_CATEGORIES}
        if codes - categories or foreign:
            self.notes.append(f"{where} : code de catégorie inconnu : non retenu")
        if not categories:
            self.notes.append(f"{where} : aucune catégorie de données (code, système {CATEGORY_SYSTEM}) : un "
                              "consentement doit être spécifique (RGPD art. 4.11), autorisation non retenue")
            return []
        if CategorieDonnees.SANTE_HANDICAP.value in categories and not self.explicit:
            categories.discard(CategorieDonnees.SANTE_HANDICAP.value)
            self.notes.append(f"{where} : sante-handicap sans marqueur de consentement exprès (RGPD art. 9, "
                              f"{EXPLICIT_SYSTEM}#{EXPLICIT_CODE}) : non retenue")
        start, end = _period(prov.period)
        rules = []
        for recipient in recipients:
            allowed = sorted(categories)
            issuer = self.ctx.issuer
            if issuer is not None:
                outside = [c for c in allowed if not issuer.may_permit(recipient, c)]
                if outside and self.resource.status == "active":  # a withdrawal grants nothing: nothing refused
                    self.notes.append(f"{where} : hors de l'autorité de l'émetteur {self.ctx.emetteur} pour "
                                      f"{recipient} ({', '.join(outside)}) : autorisation refusée")
                allowed = [c for c in allowed if c not in outside]
            if allowed:
                rules.append({"effet": "permit", "destinataires": [recipient], "categories": allowed,
                              "debut": start or base[0], "fin": end or base[1]})
        return rules

    def rules(self) -> list[dict[str, Any]]:
        resource = self.resource
        base = _period(resource.period)
        exception = "permit" if self.decision == "deny" else "deny"
        rules: list[dict[str, Any]] = []
        for number, prov in enumerate(resource.provision or [], start=1):
            if exception == "deny":
                rules.append(self._deny(number, prov, base))
            else:
                rules.extend(self._permit(number, prov, base))
        if self.decision == "deny" and (not resource.provision or self.kind == "opposition"):
            # A refusal without exceptions (or an opposition, whatever its exceptions) refuses everything to the
            # organisations it names; naming none, or one the hub cannot identify, it refuses it to everyone.
            grantees, unknown = self._grantees()
            recipients = grantees if grantees and not unknown else [ALL_RECIPIENTS]
            rules.append({"effet": "deny", "destinataires": recipients, "categories": ALL_CATEGORIES,
                          "debut": base[0], "fin": base[1]})
        elif self.decision == "permit" and not resource.provision:
            if self.kind == "opposition":
                rules.append({"effet": "deny", "destinataires": self.ctx.own_recipients, "categories": ALL_CATEGORIES,
                              "debut": base[0], "fin": base[1]})
            else:
                self.notes.append("accord sans provision ni catégorie : un consentement doit être spécifique "
                                  "(RGPD art. 4.11), rien n'est autorisé")
        return rules

    def parse(self) -> dict[str, Any]:
        resource = self.resource
        if not resource.id:
            raise _Refused("Consent sans 'id'")
        if len(resource.id) > MAX_ID:
            raise _Refused(f"'id' trop long (plus de {MAX_ID} caractères)")
        if resource.status not in STATUSES:
            raise _Refused("statut inconnu (active, inactive, entered-in-error… attendu)")
        effective = resource.status == "active"
        if self.decision not in ("permit", "deny"):
            if effective:
                raise _Refused("'decision' doit valoir permit ou deny")
            self.decision = "deny"  # a withdrawal's own decision does not matter: it ends what it replaces
        ident = resource.subject.identifier if resource.subject else None
        if ident is None or ident.system != INS_NIR or not ident.value:
            raise _Refused(f"'subject.identifier' doit porter le NIR (système {INS_NIR})")
        nir13, wrong_key = _nir13(ident.value)
        kinds, _ = _codes(resource.category or [], KIND_SYSTEM)
        unknown_kinds = bool(kinds - set(KINDS))
        # An opposition coded together with anything else is an opposition: the reading that restricts.
        self.kind = "opposition" if "opposition" in kinds else "consentement"
        rules = self.rules()
        if unknown_kinds and "opposition" not in kinds and resource.status not in WITHDRAWN:
            if any(r["effet"] == "permit" for r in rules):
                # Only what grants is refused for a type the hub does not know.
                raise _Refused("type de consentement inconnu (consentement ou opposition attendu)")
            # A refusal of a type the hub does not know is read as an opposition (it refuses everything to the
            # organisations it names): an odd extra code must never reject a refusal into inaction.
            self.kind = "opposition"
            rules = self.rules()
        if unknown_kinds:
            self.notes.append("type de consentement inconnu : refus ou retrait lu comme une opposition (tout est "
                              "refusé aux destinataires nommés, à tous s'il n'en nomme aucun)" if self.kind ==
                              "opposition" else "type de consentement inconnu ignoré : retrait appliqué")
        if wrong_key:
            # A refusal only restricts: applied to the 13 characters that name the person (a key mistyped must not
            # deliver someone who objected). A permit with a wrong key is refused whole: it could be anyone's.
            if resource.status not in WITHDRAWN and (not rules or any(r["effet"] == "permit" for r in rules)):
                raise _Refused("NIR invalide : la clé de contrôle ne correspond pas")
            self.notes.append("NIR à clé de contrôle erronée : refus appliqué au NIR sans sa clé (13 caractères)")
        purposes = sorted({c.code for p in resource.provision or [] for c in p.purpose or [] if c.code})
        start, end = _period(resource.period)
        # The proof of collection, reduced to controlled values (consent/evidence.py): free text there may be anyone's
        # NIR or name, and the registry keeps no identity.
        collected: list[Any] = []
        for ref in resource.sourceReference or []:
            if ref.reference or ref.identifier:
                collected.append(_partner(ref))
            if ref.display:
                collected.append(ref.display)
        source = controlled_source({
            "date": _fhir_day(resource.date),
            "controleur": [_partner(c) for c in resource.controller or []],
            "base_reglementaire": [b.text or "" for b in resource.regulatoryBasis or []],
            "recueil": collected,
        }, self.ctx.partners, self.ctx.articles)
        source["consentement_expres"] = self.explicit
        return {
            "consent_id": resource.id,
            "nir13": nir13,
            "kind": self.kind,
            "status": resource.status,
            "decision": self.decision,
            "grantees": json.dumps(sorted({g for r in rules for g in r["destinataires"]})),
            "categories": json.dumps(sorted({c for r in rules for c in r["categories"]})),
            "rules": canonical(rules),
            "purposes": json.dumps(purposes),
            "period_start": start,
            "period_end": end,
            "source": canonical(source),
        }


def _context(emetteur: str, issuer: ConsentIssuer | None = None, registry: ConsentRegistry | None = None) -> _Context:
    from spie_hub.registry import load_flows

    try:
        registry = registry if registry is not None else consent_registry()
        flows = load_flows()
        recipients = frozenset(r.id for flow in flows.values() for r in flow.destinataires)
    except ConfigurationError:
        # The registry cannot be read: nobody's authority nor any recipient can be checked. Fail safe: no permit
        # is kept (no recipient is known), refusals and withdrawals still apply, to every recipient.
        nobody = ConsentIssuer(emetteur, LocalFolderOptions(type="dossier-local", dossier="inbox"), {}, frozenset())
        return _Context(emetteur, nobody, frozenset(), frozenset(), registry_unreadable=True)
    if issuer is None:
        issuer = registry.emetteurs.get(emetteur)
    partners, articles = registry_terms(flows)
    return _Context(emetteur, issuer, registry.finalites, recipients,
                    partners=frozenset({*partners, *registry.emetteurs, emetteur}), articles=frozenset(articles))


def _parse(resource: Consent, ctx: _Context | None = None) -> dict[str, Any]:
    """Extract what the hub stores; raise ValueError with a French reason (never echoing the NIR)."""
    reader = _Reader(resource, ctx or _context("hub"))
    row = reader.parse()
    row["notes"] = reader.notes
    return row


def _latest(connection: Connection, emetteur: str, consent_id: str) -> Any:
    return connection.execute(
        select(consents).where(consents.c.emetteur == emetteur, consents.c.consent_id == consent_id)
        .order_by(consents.c.version.desc()).limit(1)
    ).first()


def _blocking(row: dict[str, Any], ctx: _Context, named: list[str]) -> None:
    """A withdrawal that replaces nothing the hub knows: the person is blocked for the recipients it names (or the
    issuer's recipients), every category, as an active refusal (recorded as such in ``source``)."""
    recipients = [ALL_RECIPIENTS] if ALL_RECIPIENTS in named else named or ctx.own_recipients
    rules = [{"effet": "deny", "destinataires": sorted(set(recipients)), "categories": ALL_CATEGORIES,
              "debut": None, "fin": None}]
    source = json.loads(row["source"])
    # A controlled value only: the partner's status text could be anything, a NIR included (shown on subject access).
    source["retrait_sans_consentement_connu"] = row["status"] if row["status"] in {*WITHDRAWN, "active"} else "autre"
    row.update(status="active", decision="deny", rules=canonical(rules), source=canonical(source),
               grantees=json.dumps(sorted(set(recipients))), categories=json.dumps(ALL_CATEGORIES))


def _own_id(reason: str, emetteur: str, consent_id: str, pivot: str) -> str:
    """An id of the hub's own for a refusal it could not store under the partner's id (another person's id, no id):
    deterministic, so the same entry sent again is recognised as unchanged."""
    digest = hashlib.sha256(f"{reason}|{emetteur}|{consent_id}|{pivot}".encode()).hexdigest()[:24]
    return f"~{reason}-{digest}"


def _named_recipients(grantees: Any, ctx: _Context) -> list[str]:
    """Recipients a raw (unvalidated) entry names, when every one is a recipient the registry knows; otherwise none
    (a refusal then applies to the issuer's recipients: what cannot be read widens a refusal)."""
    if not isinstance(grantees, list) or not grantees:
        return []
    found: list[str] = []
    for grantee in grantees:
        ref = grantee.get("reference") if isinstance(grantee, dict) else None
        ident = grantee.get("identifier") if isinstance(grantee, dict) else None
        name = ref.removeprefix("Organization/") if isinstance(ref, str) and ref.startswith("Organization/") else \
            ident.get("value") if isinstance(ident, dict) and ident.get("system") == PARTNER_SYSTEM else None
        if not isinstance(name, str) or name not in ctx.recipients:
            return []
        found.append(name)
    return sorted(set(found))


def _field(part: Any) -> str:
    """A validation error's location as the report shows it: FHIR element names and positions only; a key the
    partner made up (which could be a NIR) is shown as '?'."""
    if isinstance(part, int) or (isinstance(part, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,40}", part)
                                 and sum(c.isdigit() for c in part) < 4):
        return str(part)
    return "?"


def _is_block(row: Any) -> bool:
    return "retrait_sans_consentement_connu" in json.loads(row.source or "{}")


class _Importer:
    def __init__(self, engine: Engine, pseudonymiser: Pseudonymiser, ctx: _Context, today: dt.date) -> None:
        self.engine, self.pseudonymiser, self.ctx, self.today = engine, pseudonymiser, ctx, today
        self.emetteur = ctx.emetteur
        self.report = ImportReport()
        self.events: list[AuditEvent] = []
        #: set by ``_prepare`` when a refusal reuses the id of another person's consent (the report's reason)
        self._reused_id: str | None = None

    def _end_previous(self, connection: Connection, raw: Any, reason: str, where: str) -> None:
        """A refused entry that replaces an active consent of this issuer ends it: a partner's new state of a consent,
        even unreadable, makes the old one obsolete (fail safe: a permit never outlives a refused update)."""
        cid = raw.get("id") if isinstance(raw, dict) else raw.consent_id if isinstance(raw, UnreadableRow) else None
        if not isinstance(cid, str) or not cid or len(cid) > MAX_ID:
            return
        latest = _latest(connection, self.emetteur, cid)
        if latest is None or latest.status != "active" or not any(
                r["effet"] == "permit" for r in json.loads(latest.rules)):
            return
        subjects = [latest.subject]
        row = {c: getattr(latest, c) for c in ("consent_id", "kind", "subject", "grantees", "categories", "purposes",
                                                "period_start", "period_end", "emetteur", "ref")}
        rules = [r for r in json.loads(latest.rules) if r["effet"] == "deny"]
        row.update(status="inactive", decision=latest.decision, rules=canonical(rules),
                   source=canonical({"fin_par_mise_a_jour_refusee": reason}),
                   ref=latest.ref or hub_reference(self.pseudonymiser.key.secret, self.emetteur, cid))
        row["resource_sha256"] = hashlib.sha256(canonical(row).encode()).hexdigest()
        before = self._current(connection, subjects)
        self._store(connection, row, latest, subjects, before, where)

    def add(self, connection: Connection, where: str, raw: Any) -> None:
        try:
            prepared = self._prepare(connection, raw)
        except ValidationError as error:
            fields = sorted({".".join(_field(p) for p in e["loc"]) for e in error.errors()})
            self._refuse(connection, raw, where, f"ressource Consent invalide (champs : {', '.join(fields)})")
            return
        except _Refused as error:
            self._refuse(connection, raw, where, str(error))
            return
        except Exception as error:  # noqa: BLE001 - one entry's unexpected failure must not lose the batch
            self._refuse(connection, raw, where, f"erreur inattendue ({type(error).__name__}) : entrée refusée seule")
            return
        if self._reused_id is not None:
            # A refusal or withdrawal naming another person under a known id: ending the consent of that id only
            # restricts, and the person it names is refused (stored apart, never a version of the other's consent).
            self.report.erreurs.append(f"{where} : {self._reused_id}")
            self._end_previous(connection, raw, self._reused_id, where)
        if prepared is None:
            return
        row, latest, subjects, notes = prepared
        for note in notes:
            self.report.restrictions.append(f"{where} : {note}")
        before = self._current(connection, subjects)
        self._store(connection, row, latest, subjects, before, where)

    def _refuse(self, connection: Connection, raw: Any, where: str, reason: str) -> None:
        self.report.erreurs.append(f"{where} : {reason}")
        if reason.startswith("identifiant de consentement déjà utilisé"):
            return  # a permit naming another person: the other person's consent is never touched
        self._end_previous(connection, raw, reason, where)
        self._block_refused(connection, raw, where)

    def _block_refused(self, connection: Connection, raw: Any, where: str) -> None:
        """A refused entry that names a readable NIR and says deny, opposition, inactive or entered-in-error still
        refuses: the person is blocked, every category, for the recipients it names (the issuer's when it names none
        or names one the hub cannot identify). A refusal rejected into inaction would deliver who objected."""
        if not isinstance(raw, dict):
            return
        status, decision = raw.get("status"), raw.get("decision")
        # Any shape may come from a partner: a status that is no string is no withdrawal word (never a TypeError
        # that would roll the whole batch back, the oppositions before it with it).
        status = status if isinstance(status, str) else None
        decision = decision if isinstance(decision, str) else None
        opposition = "opposition" in json.dumps(raw.get("category"), default=str)
        # decision deny with provisions is a grant (its provisions are the permitted exceptions): not a refusal
        if not (status in WITHDRAWN or (decision == "deny" and not raw.get("provision")) or opposition):
            return
        subject = raw.get("subject")
        ident = subject.get("identifier") if isinstance(subject, dict) else None
        value = ident.get("value") if isinstance(ident, dict) else None
        if not isinstance(value, str) or not isinstance(ident, dict) or ident.get("system") not in (INS_NIR, None):
            return
        try:
            nir13, _wrong_key = _nir13(value)
        except _Refused:
            return
        person = self.pseudonymiser.pivot_from_nir(nir13)
        subjects = [person.pseudonyme, *person.aliases]
        cid = raw.get("id")
        cid = cid if isinstance(cid, str) and cid and len(cid) <= MAX_ID else None
        latest = _latest(connection, self.emetteur, cid) if cid is not None else None
        if cid is None or (latest is not None and latest.subject not in subjects):
            cid = _own_id("refus-illisible", self.emetteur, cid or "", person.pseudonyme)
            latest = _latest(connection, self.emetteur, cid)
        named = _named_recipients(raw.get("grantee"), self.ctx)
        row: dict[str, Any] = {
            "consent_id": cid, "kind": "opposition" if opposition else "consentement", "subject": person.pseudonyme,
            "emetteur": self.emetteur, "status": str(status)[:20], "decision": "deny", "purposes": "[]",
            "period_start": None, "period_end": None, "grantees": "[]", "categories": "[]", "rules": "[]",
            "source": canonical({"refus_entree_refusee": True}),
        }
        _blocking(row, self.ctx, named)
        row["resource_sha256"] = hashlib.sha256(canonical(row).encode()).hexdigest()
        if latest is not None and latest.resource_sha256 == row["resource_sha256"]:
            return
        row["ref"] = (latest.ref if latest is not None else None) or \
            hub_reference(self.pseudonymiser.key.secret, self.emetteur, cid)
        self.report.restrictions.append(
            f"{where} : entrée refusée portant un refus ou un retrait : la personne est bloquée (toutes catégories) "
            f"pour {', '.join(json.loads(row['grantees'])) or 'tous les destinataires'}")
        before = self._current(connection, subjects)
        self._store(connection, row, latest, subjects, before, where)

    def _prepare(self, connection: Connection, raw: Any) -> tuple[dict[str, Any], Any, list[str], list[str]] | None:
        """Everything that can fail on the entry's content, before any write (a failure refuses the entry alone)."""
        self._reused_id = None
        if isinstance(raw, UnreadableRow):
            raise _Refused(raw.reason)
        if isinstance(raw, TooLarge):
            raise _Refused(f"entrée trop volumineuse (plus de {raw.limit} caractères)")
        if not isinstance(raw, dict) or raw.get("resourceType") != "Consent":
            raise _Refused("l'entrée n'est pas une ressource Consent")
        reader = _Reader(Consent.model_validate(raw), self.ctx)
        row = reader.parse()
        if row["status"] == "active" and row["rules"] == "[]":
            # Nothing the hub can apply (every permit narrowed away): refused, with each reason.
            raise _Refused(" ; ".join(reader.notes) or "aucune règle applicable")
        person = self.pseudonymiser.pivot_from_nir(row.pop("nir13"))
        pivot = person.pseudonyme
        subjects = [pivot, *person.aliases]
        row["subject"], row["emetteur"] = pivot, self.emetteur
        latest = _latest(connection, self.emetteur, row["consent_id"])
        if latest is not None and latest.subject not in subjects:
            rules = json.loads(row["rules"])
            if row["status"] not in WITHDRAWN and any(r["effet"] == "permit" for r in rules):
                raise _Refused("identifiant de consentement déjà utilisé par cet émetteur pour une autre personne : "
                               "refusé (jamais une nouvelle version du consentement d'autrui)")
            # A refusal or withdrawal: the consent of that id ends (``add``) and the person named is blocked for the
            # recipients the entry refuses (the issuer's when it names none), under an id of the hub's own.
            row["consent_id"] = _own_id("autre-personne", self.emetteur, row["consent_id"], pivot)
            latest = _latest(connection, self.emetteur, row["consent_id"])
            named = json.loads(row["grantees"]) if row["status"] in WITHDRAWN else sorted(
                {g for r in rules if r["effet"] == "deny" for g in r["destinataires"]})
            _blocking(row, self.ctx, named)
            self._reused_id = ("identifiant de consentement déjà utilisé par cet émetteur pour une autre personne : le "
                               "consentement de cet identifiant est terminé et la personne nommée est bloquée")
        if row["status"] in WITHDRAWN and (latest is None or _is_block(latest)):
            # Re-sent, the same withdrawal must stay the block it became (not lift it as a "new version").
            _blocking(row, self.ctx, json.loads(row["grantees"]))
        row["resource_sha256"] = hashlib.sha256(canonical(row).encode()).hexdigest()
        if latest is not None and latest.resource_sha256 == row["resource_sha256"]:
            self.report.inchanges += 1
            return None
        row["ref"] = (latest.ref if latest is not None else None) or \
            hub_reference(self.pseudonymiser.key.secret, self.emetteur, row["consent_id"])
        return row, latest, subjects, reader.notes

    def _store(self, connection: Connection, row: dict[str, Any], latest: Any, subjects: list[str],
               before: list[ConsentVersion], where: str) -> None:
        row["version"] = (latest.version if latest else 0) + 1
        row["imported_at"] = now()
        connection.execute(insert(consents).values(**row))
        self.report.importes += 1
        self.events.append(AuditEvent(
            "consentement-importe",
            {"consentement": f"{row['ref']}/v{row['version']}", "emetteur": self.emetteur, "version": row["version"],
             "type": row["kind"], "statut": row["status"], "decision": row["decision"],
             "regles": json.loads(row["rules"]), "empreinte": row["resource_sha256"]},
            subject=row["subject"],
        ))
        self._detect_withdrawal(connection, subjects, before, row)

    def _current(self, connection: Connection, subjects: list[str]) -> list[ConsentVersion]:
        rows = connection.execute(select(consents).where(consents.c.subject.in_(subjects))).all()
        return ConsentIndex.latest_versions(version_from_row(r) for r in rows)

    def _expand(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Concrete (recipient, category) pairs for propagation: "every recipient" is every recipient declared."""
        out: set[tuple[str, str]] = set()
        for recipient, category in pairs:
            if recipient == ALL_RECIPIENTS:
                out.update((r, category) for r in self.ctx.recipients)
            else:
                out.add((recipient, category))
        return out

    def _detect_withdrawal(self, connection: Connection, subjects: list[str], before: list[ConsentVersion],
                           row: dict[str, Any]) -> None:
        pivot = subjects[0]
        after = self._current(connection, subjects)
        lost = permitted_pairs(before, self.today) - permitted_pairs(after, self.today)
        new = next(v for v in after if v.consent_id == row["consent_id"] and v.emetteur == self.emetteur)
        # An opposition or refusal also withdraws what a legal basis open to objection had allowed: the
        # propagation step re-decides each pair against the flows' policies before sending any notice.
        refused = {(r, c) for rule in new.rules if rule.effect == "deny" and rule.in_period(self.today)
                   for r in rule.recipients for c in rule.categories} if new.status == "active" else set()
        pairs = sorted(self._expand(lost | refused))
        if not pairs:
            return
        connection.execute(insert(revocations).values(
            subject=row["subject"], aliases=json.dumps([s for s in subjects if s != row["subject"]]),
            consent_ref=new.ref, pairs=json.dumps(pairs), recorded_at=now(),
        ))
        self.report.retraits += 1
        self.events.append(AuditEvent("consentement-retire", {"consentement": new.ref, "paires": pairs},
                                      subject=pivot))


#: The audited action a consent import batch is (spie_hub/audit/actions.py).
IMPORT_ACTION = "import-consentements"

#: "SPIEHUB" + 3: consent import batches, one at a time (the store's creation is + 1, the publication gate + 2).
_IMPORT_LOCK_KEY = 0x5350_4945_4855_4203


def _one_import_at_a_time(connection: Connection) -> None:
    """Two imports at once (two inboxes, a CLI beside the DAG) would both read "no version yet" for one consent and
    both write version 1. Each batch first takes a lock held until its commit: a transaction advisory lock on
    PostgreSQL; on SQLite a write as first statement, which takes the database's single write lock before any read
    (a read first would leave a stale snapshot that cannot be upgraded to a write)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _IMPORT_LOCK_KEY})
    else:
        connection.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq))


def import_resources(entries: Iterable[tuple[str, Any]], engine: Engine, pseudonymiser: Pseudonymiser, *,
                     emetteur: str = "hub", today: dt.date | None = None, batch: int = 1000,
                     issuer: ConsentIssuer | None = None, registry: ConsentRegistry | None = None,
                     home: HubHome | None = None) -> ImportReport:
    """Import entries by batches: each batch's consents and their audit entries commit in one transaction.

    ``emetteur``'s authority is ``issuer``, else its declaration in the registry's ``consentements`` section. An
    issuer the registry does not declare has no authority check here: only the hub's own tooling and tests call this
    API that way; files from partners come through ``spie-hub consent importer``, which reads declared inboxes. At
    decision time such an issuer's grants count for nothing, except the operator's (``hub``): see
    ``consent.decision.registry_authority``.
    """
    importer = _Importer(engine, pseudonymiser, _context(emetteur, issuer, registry), today or dt.date.today())
    home = home or HubHome.from_env()
    audit = AuditLog(engine)
    if importer.ctx.registry_unreadable:
        importer.report.restrictions.append("registre des flux illisible : aucun accord retenu, seuls les refus, "
                                            "oppositions et retraits s'appliquent (à tous les destinataires)")
    iterator, seen = iter(entries), 0
    while True:
        try:
            chunk = list(islice(iterator, batch))
        except UnicodeDecodeError:
            importer.report.erreurs.append(f"fichier illisible après {seen} entrée(s) : encodage UTF-8 attendu")
            chunk = []
        except ValueError as error:
            importer.report.erreurs.append(f"fichier illisible après {seen} entrée(s) : {error}")
            chunk = []
        if not chunk:
            break
        seen += len(chunk)
        before = (importer.report.importes, importer.report.retraits)
        with engine.begin() as connection:
            _one_import_at_a_time(connection)
            remove_orphan_actions(engine, home, IMPORT_ACTION)  # under the import lock: none is being written
            for where, raw in chunk:
                importer.add(connection, where, raw)
            failpoint("consentements-lot")  # stored, not yet audited: a kill here must leave neither
            # One log entry per batch, however many people it holds (the log's size counts actions: receipts
            # carry it); each consent's event is in the batch file it names.
            record_action(audit, connection, home, IMPORT_ACTION, {
                "emetteur": importer.emetteur, "importes": importer.report.importes - before[0],
                "retraits": importer.report.retraits - before[1]}, importer.events)
            failpoint("consentements-journal")  # batch file written, entry not committed: an orphan, removed next time
        importer.events = []
    return importer.report


def import_consents(path: Path, engine: Engine, pseudonymiser: Pseudonymiser, *, emetteur: str = "hub",
                    today: dt.date | None = None, issuer: ConsentIssuer | None = None,
                    registry: ConsentRegistry | None = None, home: HubHome | None = None) -> ImportReport:
    """Import a FHIR JSON file (Bundle, streamed entry by entry, or one Consent) or a CSV file in the hub's layout."""
    if path.suffix.lower() == ".csv":
        from consent.csv_import import read_csv_consents

        try:
            entries, row_errors = read_csv_consents(path)
        except UnicodeDecodeError:
            return ImportReport(erreurs=[f"{path.name} : fichier illisible (encodage UTF-8 attendu)"])
        except (OSError, ValueError) as error:
            reason = type(error).__name__ if isinstance(error, OSError) else str(error)
            return ImportReport(erreurs=[f"{path.name} : fichier illisible ({reason})"])
        report = import_resources(entries, engine, pseudonymiser, emetteur=emetteur, today=today, issuer=issuer,
                                  registry=registry, home=home)
        report.erreurs[:0] = row_errors
        return report
    try:
        handle = path.open(encoding="utf-8-sig")  # a byte order mark (Windows tools) is not content
    except OSError as error:
        return ImportReport(erreurs=[f"{path.name} : fichier illisible ({type(error).__name__})"])
    with handle:
        report = import_resources(bundle_entries(handle), engine, pseudonymiser, emetteur=emetteur, today=today,
                                  issuer=issuer, registry=registry, home=home)
    report.erreurs = [e if not e.startswith("fichier illisible") else f"{path.name} : {e}" for e in report.erreurs]
    return report

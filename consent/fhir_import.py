"""Import FHIR R5 ``Consent`` resources (Bundle JSON, or rows of the documented CSV) into the hub's registry.

The person is identified by NIR (INS-NIR system) and turned into the pivot pseudonym on entry: no NIR is stored.
R5 semantics: the base ``decision`` applies by default and each ``provision`` is an exception with the opposite
effect, naming recipients (``actor``, else ``grantee``) and data categories (``code``). The hub stores the
resulting *rules* (effect, recipients, categories, period). Anything it cannot read safely (nested provisions,
a permit naming no category) is refused with a reason rather than guessed.

Consents are scoped by issuer (``emetteur``): the same ``id`` from two partners is two consents. Each change is a
new version; nothing is overwritten. A change that takes away a permission (``inactive``, a new ``deny``, a
shorter period) is recorded as a *retrait* whose propagation sends deletion notices (consent/revocation.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from fhir.resources.consent import Consent
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, insert, select

from consent.decision import ConsentIndex, ConsentVersion, permitted_pairs, version_from_row
from consent.fhir_build import CATEGORY_SYSTEM, INS_NIR, KIND_SYSTEM, KINDS, PARTNER_SYSTEM
from consent.json_stream import bundle_entries
from schemas.categories import CategorieDonnees
from spie_hub.audit.log import AuditEvent, AuditLog, canonical, now
from spie_hub.core.nir import NirInvalide, normaliser_nir
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.store import consents, revocations

__all__ = ["CATEGORY_SYSTEM", "INS_NIR", "PARTNER_SYSTEM", "ImportReport", "import_consents", "import_resources"]
STATUSES = {"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}
ALL_CATEGORIES = sorted(c.value for c in CategorieDonnees)


@dataclass
class ImportReport:
    importes: int = 0
    inchanges: int = 0
    retraits: int = 0
    erreurs: list[str] = field(default_factory=list)


def _partner(ref: Any) -> str | None:
    if ref is None:
        return None
    if ref.reference and ref.reference.startswith("Organization/"):
        return ref.reference.removeprefix("Organization/")
    if ref.identifier and ref.identifier.system == PARTNER_SYSTEM:
        return ref.identifier.value
    return None


def _categories(concepts: Iterable[Any]) -> list[str]:
    found: set[str] = set()
    for concept in concepts:
        for coding in concept.coding or []:
            if coding.system == CATEGORY_SYSTEM:
                try:
                    found.add(CategorieDonnees(coding.code).value)
                except ValueError:
                    raise ValueError(f"catégorie de données inconnue : {coding.code!r}") from None
    return sorted(found)


def _period(period: Any) -> tuple[str | None, str | None]:
    if period is None:
        return None, None
    return (str(period.start) if period.start else None, str(period.end) if period.end else None)


def _rules(resource: Consent, grantees: list[str]) -> list[dict[str, Any]]:
    exception = "permit" if resource.decision == "deny" else "deny"
    base_period = _period(resource.period)
    rules = []
    for index, prov in enumerate(resource.provision or [], start=1):
        if prov.provision:
            raise ValueError(f"provision {index} : provisions imbriquées non prises en charge")
        categories = _categories(prov.code or [])
        if not categories:
            raise ValueError(f"provision {index} : aucune catégorie de données (code, système {CATEGORY_SYSTEM})")
        recipients = sorted({p for a in prov.actor or [] if (p := _partner(a.reference))}) or grantees
        if not recipients:
            raise ValueError(f"provision {index} : aucun destinataire (actor ou grantee)")
        start, end = _period(prov.period)
        rules.append({"effet": exception, "destinataires": recipients, "categories": categories,
                      "debut": start or base_period[0], "fin": end or base_period[1]})
    if not rules:
        if resource.decision == "permit":
            raise ValueError("accord sans provision ni catégorie : un consentement doit être spécifique (RGPD art. 4.11)")
        if not grantees:
            raise ValueError("refus sans destinataire ('grantee')")
        rules.append({"effet": "deny", "destinataires": grantees, "categories": ALL_CATEGORIES,
                      "debut": base_period[0], "fin": base_period[1]})
    return rules


def _parse(resource: Consent) -> dict[str, Any]:
    """Extract what the hub stores; raise ValueError with a French reason (never echoing the NIR)."""
    if not resource.id:
        raise ValueError("Consent sans 'id'")
    if resource.status not in STATUSES:
        raise ValueError(f"statut {resource.status!r} inconnu")
    if resource.decision not in ("permit", "deny"):
        raise ValueError("'decision' doit valoir permit ou deny")
    ident = resource.subject.identifier if resource.subject else None
    if ident is None or ident.system != INS_NIR or not ident.value:
        raise ValueError(f"'subject.identifier' doit porter le NIR (système {INS_NIR})")
    try:
        nir13 = normaliser_nir(ident.value)
    except NirInvalide as error:
        raise ValueError(str(error)) from None
    kinds = {c.code for cat in resource.category or [] for c in cat.coding or [] if c.system == KIND_SYSTEM}
    kind = kinds.pop() if len(kinds) == 1 else "consentement"
    if kind not in KINDS:
        raise ValueError(f"type {kind!r} inconnu (consentement ou opposition)")
    grantees = sorted({g for ref in resource.grantee or [] if (g := _partner(ref))})
    rules = _rules(resource, grantees)
    if kind == "opposition" and any(r["effet"] == "permit" for r in rules):
        raise ValueError("une opposition ne peut rien autoriser")
    purposes = sorted({c.code for p in resource.provision or [] for c in p.purpose or [] if c.code})
    start, end = _period(resource.period)
    source = {
        "date": str(resource.date) if resource.date else None,
        "controleur": sorted({p for c in resource.controller or [] if (p := _partner(c))}),
        "base_reglementaire": [b.text for b in resource.regulatoryBasis or [] if b.text],
        "recueil": [r.display for r in resource.sourceReference or [] if r.display],
    }
    return {
        "consent_id": resource.id,
        "nir13": nir13,
        "kind": kind,
        "status": resource.status,
        "decision": resource.decision,
        "grantees": json.dumps(sorted({g for r in rules for g in r["destinataires"]})),
        "categories": json.dumps(sorted({c for r in rules for c in r["categories"]})),
        "rules": canonical(rules),
        "purposes": json.dumps(purposes),
        "period_start": start,
        "period_end": end,
        "source": canonical(source),
    }


def _latest(connection: Connection, emetteur: str, consent_id: str) -> Any:
    return connection.execute(
        select(consents).where(consents.c.emetteur == emetteur, consents.c.consent_id == consent_id)
        .order_by(consents.c.version.desc()).limit(1)
    ).first()


class _Importer:
    def __init__(self, engine: Engine, pseudonymiser: Pseudonymiser, emetteur: str, today: dt.date) -> None:
        self.engine, self.pseudonymiser, self.emetteur, self.today = engine, pseudonymiser, emetteur, today
        self.report = ImportReport()
        self.events: list[AuditEvent] = []

    def add(self, connection: Connection, where: str, raw: Any) -> None:
        try:
            if not isinstance(raw, dict) or raw.get("resourceType") != "Consent":
                raise ValueError("l'entrée n'est pas une ressource Consent")
            row = _parse(Consent.model_validate(raw))
        except ValidationError as error:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors()})
            self.report.erreurs.append(f"{where} : ressource Consent invalide (champs : {', '.join(fields)})")
            return
        except ValueError as error:
            self.report.erreurs.append(f"{where} : {error}")
            return
        person = self.pseudonymiser.pivot_from_nir(row.pop("nir13"))
        pivot = person.pseudonyme
        row["subject"], row["emetteur"] = pivot, self.emetteur
        row["resource_sha256"] = hashlib.sha256(canonical(row).encode()).hexdigest()
        latest = _latest(connection, self.emetteur, row["consent_id"])
        if latest is not None and latest.resource_sha256 == row["resource_sha256"]:
            self.report.inchanges += 1
            return
        subjects = [pivot, *person.aliases]
        before = self._current(connection, subjects)
        row["version"] = (latest.version if latest else 0) + 1
        row["imported_at"] = now()
        connection.execute(insert(consents).values(**row))
        self.report.importes += 1
        self.events.append(AuditEvent(
            "consentement-importe",
            {"consentement": row["consent_id"], "emetteur": self.emetteur, "version": row["version"],
             "type": row["kind"], "statut": row["status"], "decision": row["decision"],
             "regles": json.loads(row["rules"]), "empreinte": row["resource_sha256"]},
            subject=pivot,
        ))
        self._detect_withdrawal(connection, subjects, before, row)

    def _current(self, connection: Connection, subjects: list[str]) -> list[ConsentVersion]:
        rows = connection.execute(select(consents).where(consents.c.subject.in_(subjects))).all()
        return ConsentIndex.latest_versions(version_from_row(r) for r in rows)

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
        pairs = sorted(lost | refused)
        if not pairs:
            return
        connection.execute(insert(revocations).values(
            subject=pivot, aliases=json.dumps(subjects[1:]), consent_ref=new.ref, pairs=json.dumps(pairs), recorded_at=now(),
        ))
        self.report.retraits += 1
        self.events.append(AuditEvent("consentement-retire", {"consentement": new.ref, "paires": pairs}, subject=pivot))


def import_resources(entries: Iterable[tuple[str, Any]], engine: Engine, pseudonymiser: Pseudonymiser, *,
                     emetteur: str = "hub", today: dt.date | None = None, batch: int = 1000) -> ImportReport:
    """Import entries by batches (one transaction and one audit append each): memory stays flat however many."""
    importer = _Importer(engine, pseudonymiser, emetteur, today or dt.date.today())
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
        with engine.begin() as connection:
            for where, raw in chunk:
                importer.add(connection, where, raw)
        AuditLog(engine).append(importer.events)
        importer.events = []
    return importer.report


def import_consents(path: Path, engine: Engine, pseudonymiser: Pseudonymiser, *, emetteur: str = "hub",
                    today: dt.date | None = None) -> ImportReport:
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
        report = import_resources(entries, engine, pseudonymiser, emetteur=emetteur, today=today)
        report.erreurs[:0] = row_errors
        return report
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        return ImportReport(erreurs=[f"{path.name} : fichier illisible ({type(error).__name__})"])
    with handle:
        report = import_resources(bundle_entries(handle), engine, pseudonymiser, emetteur=emetteur, today=today)
    report.erreurs = [e if not e.startswith("fichier illisible") else f"{path.name} : {e}" for e in report.erreurs]
    return report

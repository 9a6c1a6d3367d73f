"""Import a FHIR R5 Bundle of ``Consent`` resources into the hub's registry.

The person is identified by NIR (INS-NIR system ``urn:oid:1.2.250.1.213.1.4.8``); the hub turns it into the pivot
pseudonym on entry and stores no NIR. Recipients are named by ``grantee`` (``Organization/<id>`` or an identifier
of the hub's partner system); data categories by ``provision.code`` in the hub's category code system.
Each change of a Consent is stored as a new version; nothing is overwritten.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir.resources.consent import Consent
from pydantic import ValidationError
from sqlalchemy import Engine, insert, select

from schemas.categories import CategorieDonnees
from spie_hub.audit import AuditEvent, AuditLog, canonical, now
from spie_hub.nir import NirInvalide, normaliser_nir
from spie_hub.pseudonym import Pseudonymiser
from spie_hub.store import consents

INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
PARTNER_SYSTEM = "https://spie-hub.example.fr/partenaires"
CATEGORY_SYSTEM = "https://spie-hub.example.fr/CodeSystem/categorie-donnees"
STATUSES = {"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}


@dataclass
class ImportReport:
    importes: int = 0
    inchanges: int = 0
    erreurs: list[str] = field(default_factory=list)


def _grantee_id(ref: Any) -> str | None:
    if ref.reference and ref.reference.startswith("Organization/"):
        return ref.reference.removeprefix("Organization/")
    if ref.identifier and ref.identifier.system == PARTNER_SYSTEM:
        return ref.identifier.value
    return None


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
    grantees = sorted({g for ref in (resource.grantee or []) if (g := _grantee_id(ref))})
    if not grantees:
        raise ValueError("aucun destinataire ('grantee' Organization/<id> ou identifiant partenaire)")
    categories: set[str] = set()
    purposes: set[str] = set()
    for provision in resource.provision or []:
        for concept in provision.code or []:
            for coding in concept.coding or []:
                if coding.system == CATEGORY_SYSTEM:
                    try:
                        categories.add(CategorieDonnees(coding.code).value)
                    except ValueError:
                        raise ValueError(f"catégorie de données inconnue : {coding.code!r}") from None
        purposes.update(c.code for c in provision.purpose or [] if c.code)
    if not categories:
        raise ValueError(f"aucune catégorie de données (provision.code, système {CATEGORY_SYSTEM})")
    period = resource.period
    source = {"date": str(resource.date) if resource.date else None,
              "controleur": [c.reference for c in resource.controller or [] if c.reference]}
    return {
        "consent_id": resource.id,
        "nir13": nir13,
        "status": resource.status,
        "decision": resource.decision,
        "grantees": json.dumps(grantees),
        "categories": json.dumps(sorted(categories)),
        "purposes": json.dumps(sorted(purposes)),
        "period_start": str(period.start) if period and period.start else None,
        "period_end": str(period.end) if period and period.end else None,
        "source": canonical(source),
    }


def _entries(text: str) -> list[tuple[int, Any]]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("un objet JSON FHIR est attendu")
    if data.get("resourceType") == "Consent":
        return [(1, data)]
    if data.get("resourceType") != "Bundle":
        raise ValueError("un Bundle FHIR (ou une ressource Consent) est attendu")
    return [(i, (e or {}).get("resource")) for i, e in enumerate(data.get("entry") or [], start=1)]


def import_consents(path: Path, engine: Engine, pseudonymiser: Pseudonymiser) -> ImportReport:
    report = ImportReport()
    try:
        entries = _entries(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        report.erreurs.append(f"{path.name} : fichier illisible ou non FHIR ({type(error).__name__})")
        return report
    events: list[AuditEvent] = []
    with engine.begin() as connection:
        for index, raw in entries:
            try:
                if not isinstance(raw, dict) or raw.get("resourceType") != "Consent":
                    raise ValueError("l'entrée n'est pas une ressource Consent")
                row = _parse(Consent.model_validate(raw))
            except ValidationError as error:
                fields = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors()})
                report.erreurs.append(f"entrée {index} : ressource Consent invalide (champs : {', '.join(fields)})")
                continue
            except ValueError as error:
                report.erreurs.append(f"entrée {index} : {error}")
                continue
            pivot = pseudonymiser.pivot_from_nir(row.pop("nir13")).pseudonyme
            row["subject"] = pivot
            row["resource_sha256"] = hashlib.sha256(canonical(row).encode()).hexdigest()
            latest = connection.execute(
                select(consents.c.version, consents.c.resource_sha256)
                .where(consents.c.consent_id == row["consent_id"])
                .order_by(consents.c.version.desc())
                .limit(1)
            ).first()
            if latest is not None and latest.resource_sha256 == row["resource_sha256"]:
                report.inchanges += 1
                continue
            row["version"] = (latest.version if latest else 0) + 1
            row["imported_at"] = now()
            connection.execute(insert(consents).values(**row))
            report.importes += 1
            events.append(AuditEvent(
                "consentement-importe",
                {"consentement": row["consent_id"], "version": row["version"], "statut": row["status"],
                 "decision": row["decision"], "destinataires": json.loads(row["grantees"]),
                 "categories": json.loads(row["categories"]), "empreinte": row["resource_sha256"]},
                subject=pivot,
            ))
    AuditLog(engine).append(events)
    return report


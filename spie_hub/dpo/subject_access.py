"""Subject access (RGPD art. 15): every exchange about one person, found by recomputing pseudonyms from the NIR.

The hub keeps no table from pseudonyms back to NIRs. Given a NIR, it recomputes the pivot pseudonym and each
recipient's pseudonym with the current key, then reads the audit. The search itself is a re-identification: it
is audited (who asked, why, with which key) before any result is read, and the NIR is never written anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from connectors.formats.registry import load_output
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.core.errors import HubError
from spie_hub.core.nir import NirInvalide, normaliser_nir
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import Flow
from spie_hub.store import audit_log, consents, deliveries, runs


@dataclass
class Exchange:
    date: str
    flux: str | None
    destinataire: str | None
    evenement: str
    decision: str | None = None
    fichier: str | None = None
    categories: dict[str, str] = field(default_factory=dict)  # category → ground
    champs: list[str] = field(default_factory=list)
    motif: str | None = None


@dataclass
class AccessReport:
    pseudonyme_pivot: str
    cle: str
    consentements: list[dict[str, Any]] = field(default_factory=list)
    echanges: list[Exchange] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fields(flows: dict[str, Flow]) -> dict[str, dict[str | None, list[str]]]:
    """recipient → category → column headers of its output (None: columns every row carries)."""
    out: dict[str, dict[str | None, list[str]]] = {}
    for flow in flows.values():
        for recipient in flow.destinataires:
            by_category: dict[str | None, list[str]] = {}
            for column in load_output(recipient.sortie).columns:
                by_category.setdefault(column.category.value if column.category else None, []).append(column.entete)
            out[recipient.id] = by_category
    return out


def _not_delivered(status: str | None) -> tuple[str, str]:
    if status in ("en-cours", "publication"):
        return "en-attente", "livraison en cours ou en attente (dépôt du destinataire indisponible) ; pas encore reçue"
    if status == "incomplete":
        return "non-livre", "exécution interrompue, données préparées perdues : rien n'a été reçu de cette exécution"
    if status in ("termine", "deja-livre"):
        return "non-livre", "ce fichier avait déjà été livré à ce destinataire par une autre exécution"
    return "non-livre", "exécution interrompue puis annulée : rien n'a été livré"


def subject_access(engine: Engine, pseudonymiser: Pseudonymiser, nir: str, flows: dict[str, Flow], *,
                   demandeur: str, motif: str) -> AccessReport:
    try:
        pivot = pseudonymiser.pivot_from_nir(normaliser_nir(nir))
    except NirInvalide as error:
        raise HubError(f"NIR invalide : {error}") from None
    recipients = sorted({r.id for f in flows.values() for r in f.destinataires})
    pivots = [pivot.pseudonyme, *pivot.aliases]  # under every key of the ring: old pseudonyms stay resolvable
    pseudonyms = {p: rid for rid in recipients for p in pseudonymiser.recipient_pseudonyms(pivot, rid)}
    AuditLog(engine).append([AuditEvent("acces-personne", {"demandeur": demandeur, "motif": motif,
                                                           "cle": ",".join(pseudonymiser.kids)}, subject=pivot.pseudonyme)])
    report = AccessReport(pivot.pseudonyme, ",".join(pseudonymiser.kids))
    columns = _fields(flows)
    with engine.connect() as connection:
        for row in connection.execute(select(consents).where(consents.c.subject.in_(pivots))
                                      .order_by(consents.c.emetteur, consents.c.consent_id, consents.c.version)):
            report.consentements.append({
                "emetteur": row.emetteur, "consentement": row.consent_id, "version": row.version, "type": row.kind,
                "statut": row.status, "regles": json.loads(row.rules), "importe_le": row.imported_at,
                "source": json.loads(row.source or "{}")})
        rows = connection.execute(select(audit_log).where(
            audit_log.c.subject.in_([*pivots, *pseudonyms])).order_by(audit_log.c.seq)).all()
        run_ids = {r.run_id for r in rows if r.run_id}
        files = {(d.run_id, d.recipient): d.file_name for d in connection.execute(
            select(deliveries).where(deliveries.c.run_id.in_(run_ids)))}
        statuses = {r.run_id: r.status for r in connection.execute(
            select(runs.c.run_id, runs.c.status).where(runs.c.run_id.in_(run_ids)))}
    for row in rows:
        payload = json.loads(row.payload)
        exchange = Exchange(row.ts[:19], row.flow, row.recipient, row.event)
        if row.event == "decision":
            exchange.decision = payload.get("decision")
            exchange.motif = payload.get("motif")
            exchange.categories = {c: d["fondement"] for c, d in payload.get("categories", {}).items()}
            if exchange.decision == "livre" and (row.run_id, row.recipient) not in files:
                # Decided, not (yet) published: the run's state says why, in the person's words.
                exchange.decision, exchange.motif = _not_delivered(statuses.get(row.run_id))
            elif exchange.decision == "livre":
                exchange.fichier = files.get((row.run_id, row.recipient))
                allowed = [c for c, d in payload.get("categories", {}).items() if d.get("permis")]
                by_category = columns.get(row.recipient or "", {})
                exchange.champs = [h for c in [None, *allowed] for h in by_category.get(c, [])]
        elif row.event == "avis-suppression":
            exchange.categories = {c: "à supprimer" for c in payload.get("categories", [])}
            exchange.fichier = ", ".join(payload.get("fichiers", []))
            exchange.motif = f"retrait {payload.get('consentement')}"
        else:
            exchange.motif = payload.get("consentement") or payload.get("motif")
        report.echanges.append(exchange)
    return report

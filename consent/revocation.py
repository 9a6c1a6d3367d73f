"""Propagate withdrawals: a deletion notice in the drop of every recipient that received data it may no longer hold.

A withdrawal (consent/fhir_import.py) names (recipient, category) pairs. For each, the hub re-decides with the
person's current consents and the flows' current policies: a category still covered (another consent, a legal
basis not open to objection) is not to be deleted. For the categories that lost their ground, the audit says
whether and in which files the recipient received them; only then is a notice line written, under the pseudonym
that recipient knows the person by. Notices are audited before the file becomes visible, like deliveries.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from connectors.formats.reports import write_report
from connectors.transports.registry import open_transport
from consent.decision import ConsentIndex, decide
from schemas.categories import CategorieDonnees
from spie_hub.audit.log import AuditEvent, AuditLog, now
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import Pivot, Pseudonymiser
from spie_hub.registry import Flow, Recipient
from spie_hub.store import audit_log, deliveries, revocations

NOTICE_HEADER = ["Pseudonyme", "Catégories à supprimer", "Fichiers concernés", "Motif", "Référence du retrait",
                 "Date d'effet"]


@dataclass
class PropagationReport:
    retraits: int = 0
    avis: int = 0
    fichiers: list[str] = field(default_factory=list)


def _received(engine: Engine, recipient: str, pseudonym: str) -> dict[str, set[str]]:
    """Category → names of the files in which ``recipient`` received it about this person (from the audit)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(audit_log.c.run_id, audit_log.c.payload).where(
                audit_log.c.subject == pseudonym, audit_log.c.recipient == recipient, audit_log.c.event == "decision")
        ).all()
        runs = {r.run_id for r in rows}
        files = {d.run_id: d.file_name for d in connection.execute(
            select(deliveries.c.run_id, deliveries.c.file_name).where(
                deliveries.c.recipient == recipient, deliveries.c.run_id.in_(runs)))} if runs else {}
    received: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        payload = json.loads(row.payload)
        if payload.get("decision") != "livre" or row.run_id not in files:
            continue
        for category, decision in payload.get("categories", {}).items():
            if decision.get("permis"):
                received[category].add(files[row.run_id])
    return received


def _recipients(flows: dict[str, Flow]) -> dict[str, Recipient]:
    return {r.id: r for flow in flows.values() for r in flow.destinataires}


def propagate_withdrawals(engine: Engine, home: HubHome, pseudonymiser: Pseudonymiser, flows: dict[str, Flow],
                          today: dt.date | None = None) -> PropagationReport:
    today = today or dt.date.today()
    known = _recipients(flows)
    plan_path = home.staging / PLAN_FILE
    plan = _read_plan(plan_path)
    if plan is not None and (plan["journalise"] or _audited(engine, plan)):
        return _carry_out(engine, home, known, plan, plan_path)  # an interrupted propagation, finished as planned
    report = PropagationReport()
    with engine.connect() as connection:
        pending = connection.execute(select(revocations).where(revocations.c.propagated_at.is_(None))
                                     .order_by(revocations.c.id)).all()
    if not pending:
        return report
    lines: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    events: list[AuditEvent] = []
    token = uuid.uuid4().hex
    done: list[tuple[int, int]] = []
    index = ConsentIndex(engine)
    for revocation in pending:
        aliases = tuple(json.loads(revocation.aliases or "[]"))
        looked_up = index.lookup([revocation.subject, *aliases])
        found = ConsentIndex.latest_versions(v for s in (revocation.subject, *aliases) for v in looked_up.get(s, []))
        pivot = Pivot(Pivot.from_pseudonyme(revocation.subject).digest, revocation.subject, aliases=aliases)
        by_recipient: dict[str, set[str]] = defaultdict(set)
        for rid, category in json.loads(revocation.pairs):
            by_recipient[rid].add(category)
        notices = 0
        for rid, categories in sorted(by_recipient.items()):
            recipient = known.get(rid)
            if recipient is None:
                continue  # a partner no flow delivers to has received nothing from the hub
            present = [CategorieDonnees(c) for c in sorted(categories)]
            current = decide(recipient, present, found, today)
            lost = {c.value for c in present if not current.categories[c].permis}
            reasons = sorted({current.categories[CategorieDonnees(c)].fondement for c in lost})
            # One line per pseudonym the recipient received data under (a key rotation gives it a new one).
            for pseudonym in pseudonymiser.recipient_pseudonyms(pivot, rid):
                received = _received(engine, rid, pseudonym)
                to_delete = sorted(c for c in lost if received.get(c))
                if not to_delete:
                    continue
                files = sorted({f for c in to_delete for f in received[c]})
                lines[rid].append((pseudonym, " | ".join(to_delete), " | ".join(files),
                                   "retrait ou opposition de la personne : " + " ; ".join(reasons),
                                   revocation.consent_ref, today.isoformat()))
                events.append(AuditEvent("avis-suppression", {"retrait": revocation.id, "consentement": revocation.consent_ref,
                                                               "categories": to_delete, "fichiers": files},
                                         recipient=rid, subject=pseudonym))
                notices += 1
        events.append(AuditEvent("retrait-propage", {"retrait": revocation.id, "consentement": revocation.consent_ref,
                                                      "avis": notices, "enregistre_le": revocation.recorded_at,
                                                      "propagation": token},
                                 subject=revocation.subject))
        done.append((revocation.id, notices))
        report.retraits += 1
        report.avis += notices
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    plan = {"jeton": token, "journalise": False, "sujet": pending[0].subject, "faits": done,
            "retraits": report.retraits, "avis": report.avis,
            "fichiers": {rid: {"nom": f"avis-suppression_{rid}_{stamp}_{pending[0].id}.csv", "lignes": rows}
                         for rid, rows in sorted(lines.items())}}
    # A plan first (private), so that an interruption anywhere below is finished as planned, never done twice.
    _write_plan(plan_path, plan)
    # Write-ahead, as for deliveries: the notices are in the audit before any file is visible.
    AuditLog(engine).append(events)
    plan["journalise"] = True
    _write_plan(plan_path, plan)
    return _carry_out(engine, home, known, plan, plan_path)


PLAN_FILE = "retraits-en-cours.json"


def _read_plan(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _write_plan(path: Path, plan: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def _audited(engine: Engine, plan: dict[str, Any]) -> bool:
    """Whether the plan's audit entries were appended before an interruption (they carry its token)."""
    with engine.connect() as connection:
        payloads = connection.execute(select(audit_log.c.payload).where(
            audit_log.c.subject == plan["sujet"], audit_log.c.event == "retrait-propage")).scalars().all()
    return any(json.loads(p).get("propagation") == plan["jeton"] for p in payloads)


def _carry_out(engine: Engine, home: HubHome, known: dict[str, Recipient], plan: dict[str, Any],
               plan_path: Path) -> PropagationReport:
    """Write the planned notices (a notice already there, identical, is left as is) and mark the withdrawals done."""
    report = PropagationReport(retraits=plan["retraits"], avis=plan["avis"])
    for rid, notice in plan["fichiers"].items():
        folder = open_transport(known[rid].transport, home)
        with folder.store(notice["nom"]) as raw:
            handle = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            write_report(handle, NOTICE_HEADER, [tuple(r) for r in notice["lignes"]])
            handle.flush()
            handle.detach()
        report.fichiers.append(folder.location(notice["nom"]))
    with engine.begin() as connection:
        for rev_id, notices in plan["faits"]:
            connection.execute(update(revocations).where(revocations.c.id == rev_id)
                               .values(propagated_at=now(), notices=notices))
    plan_path.unlink(missing_ok=True)
    return report

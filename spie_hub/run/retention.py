"""Retention: each flow's ``conservation_jours`` enforced by a purge (DAG ``spie_purge_conservation``), audited.

What the hub holds about a flow's people outside the audit is files: received files (archive), quarantined files,
delivered files still in the drops with their manifests, withdrawal notices, rejection reports and receipts sent
back to the sender. Past the retention period they are deleted and the purge is written in the audit (names,
counts, cut-off date: proof of erasure, as the CNIL's developer guide asks). Delivery rows stay: they hold no
personal data and keep a re-sent old file from being delivered twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, func, select

from connectors.transports.base import FileInfo, Transport
from connectors.transports.registry import open_transport
from spie_hub.audit.chain import seal
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.audit.signing import SigningKey
from spie_hub.core.errors import HubError
from spie_hub.core.home import HubHome
from spie_hub.registry import Flow
from spie_hub.run.deliver import Names, hub_folder, sender_returns
from spie_hub.run.flow_run import RunContext
from spie_hub.run.lock import FlowBusy, FlowLock
from spie_hub.run.recovery import RecoveryReport, cancel_pending
from spie_hub.store import audit_log, deliveries, runs
from spie_hub.store.guards import purge_upto

#: Default retention of the audit itself (organisation.conservation_journal_jours in flows.yaml): it must outlast
#: the data it proves (730 days for the demo flow) so that what left can be shown as long as it may be held.
AUDIT_RETENTION_DAYS = 1095


@dataclass
class PurgeReport:
    flux: str
    limite: str
    fichiers: list[str] = field(default_factory=list)
    refus: list[str] = field(default_factory=list)
    #: Runs whose delivery was still waiting for a broken drop past the retention period: given up.
    expirees: list[str] = field(default_factory=list)


def _label(transport: Transport, name: str) -> str:
    """How a purged file is named in the purge report and the audit: relative to the home for the hub's folders."""
    folder = getattr(transport, "folder", None)
    return f"{folder}/{name}" if folder is not None else transport.uri(name)


def _remove(transport: Transport, name: str, report: PurgeReport) -> None:
    if transport.delete(name):
        report.fichiers.append(_label(transport, name))


def _older(entry: FileInfo, cutoff: dt.datetime) -> bool:
    return dt.datetime.fromtimestamp(entry.mtime, dt.timezone.utc) < cutoff


def purge_flow(engine: Engine, home: HubHome, flow: Flow, now: dt.datetime) -> PurgeReport:
    cutoff = now - dt.timedelta(days=flow.conservation_jours)
    report = PurgeReport(flow.id, cutoff.date().isoformat())
    iso = cutoff.isoformat()
    with engine.connect() as connection:
        old_deliveries = connection.execute(select(deliveries).where(
            deliveries.c.flow == flow.id, deliveries.c.delivered_at < iso)).all()
        quarantined = connection.execute(select(runs.c.run_id).where(
            runs.c.flow == flow.id, runs.c.status == "quarantaine", runs.c.started_at < iso)).all()
    drops = {r.id: open_transport(r.transport, home) for r in flow.destinataires}
    report.expirees = _expire_pending(engine, home, flow, iso)

    # Folder by folder: one that is refused (a drop replaced by a link, a file) is said in the report and the audit,
    # and the purge goes on everywhere else — data past its retention must not outlive a partner's mistake.
    def each(transport: Transport, work: Callable[[], None]) -> None:
        try:
            work()
        except (HubError, OSError) as error:
            report.refus.append(f"{_label(transport, '')} : {error if isinstance(error, HubError) else type(error).__name__}")

    for row in old_deliveries:
        drop = drops.get(row.recipient)
        if drop is not None:
            each(drop, lambda d=drop, r=row: (_remove(d, r.file_name, report), _remove(d, Names.manifest(r.file_name), report)))
    for row in quarantined:
        folder = hub_folder(home, f"quarantine/{row.run_id}")
        each(folder, lambda f=folder: ([_remove(f, e.name, report) for e in f.list()], f.remove_if_empty()))
    archive = hub_folder(home, f"archive/{flow.id}")
    returns = sender_returns(flow, home)
    # Drops and the sender's folders are shared between flows: only this flow's files (by name) are its to purge.
    for transport, mine in [(archive, lambda _name: True),
                            *[(drop, _flow_file(flow)) for drop in drops.values()],
                            (returns.child("rejets"), _flow_file(flow)), (returns.child("accuses"), _flow_file(flow))]:
        each(transport, lambda t=transport, m=mine: [_remove(t, e.name, report) for e in t.list()
                                                     if e.regular and m(e.name) and _older(e, cutoff)])
    AuditLog(engine).append([AuditEvent("purge", {"limite": report.limite, "conservation_jours": flow.conservation_jours,
                                                  "nombre": len(report.fichiers), "fichiers": report.fichiers,
                                                  "dossiers_refuses": report.refus,
                                                  "livraisons_en_attente_abandonnees": report.expirees}, flow=flow.id)])
    return report


def _expire_pending(engine: Engine, home: HubHome, flow: Flow, cutoff_iso: str) -> list[str]:
    """A delivery still waiting for its drop past the flow's retention is given up (audited, staged data removed):
    no data outlives its retention because a drop stayed broken. Skipped while a run of the flow holds its lock."""
    with engine.connect() as connection:
        stale = connection.execute(select(runs.c.run_id, runs.c.input_sha256).where(
            runs.c.flow == flow.id, runs.c.status == "publication", runs.c.started_at < cutoff_iso)).all()
    if not stale:
        return []
    try:
        with FlowLock(engine, home, flow.id, wait=0) as lock:
            ctx = RunContext(flow, home, engine, cast(Any, None), cast(Any, None), lock, dt.date.today())
            report = RecoveryReport(flow.id)
            for row in stale:
                cancel_pending(ctx, row.run_id, row.input_sha256, home.staging / row.run_id, report,
                               event="livraison-annulee", requeue=False,
                               motif=f"livraison en attente au-delà de la durée de conservation ({flow.conservation_jours} jours)")
    except FlowBusy:
        return []
    return [row.run_id for row in stale]


def _flow_file(flow: Flow) -> Callable[[str], bool]:
    return lambda name: name.startswith((flow.id + "_", "avis-suppression_"))


def purge_audit(engine: Engine, signer: SigningKey, before: dt.datetime) -> int:
    """Drop audit entries older than ``before`` while keeping the rest verifiable: a signed checkpoint over the
    last dropped entry becomes the anchor the remaining chain starts from. Returns the number of entries dropped."""
    with engine.connect() as connection:
        upto = connection.execute(select(func.max(audit_log.c.seq)).where(audit_log.c.ts < before.isoformat())).scalar()
        if upto is None:
            return 0
        digest = connection.execute(select(audit_log.c.hash).where(audit_log.c.seq == upto)).scalar_one()
    seal(engine, signer, at=(upto, digest))
    removed = purge_upto(engine, upto)
    AuditLog(engine).append([AuditEvent("purge-journal", {"jusqua": upto, "ancre": digest, "entrees": removed,
                                                          "avant": before.isoformat()})])
    seal(engine, signer)
    return removed


def purge(engine: Engine, home: HubHome, flows: dict[str, Flow], now: dt.datetime | None = None, *,
          signer: SigningKey | None = None, audit_days: int = AUDIT_RETENTION_DAYS) -> list[PurgeReport]:
    now = now or dt.datetime.now(dt.timezone.utc)
    reports = [purge_flow(engine, home, flow, now) for flow in flows.values()]
    if signer is not None:
        purge_audit(engine, signer, now - dt.timedelta(days=audit_days))
    return reports

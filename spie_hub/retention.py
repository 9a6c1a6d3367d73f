"""Retention: each flow's ``conservation_jours`` enforced by a purge (DAG ``spie_purge_conservation``), audited.

What the hub holds about a flow's people outside the audit is files: received files (archive), quarantined files,
delivered files still in the drops with their manifests, withdrawal notices, rejection reports and receipts sent
back to the sender. Past the retention period they are deleted and the purge is written in the audit (names,
counts, cut-off date: proof of erasure, as the CNIL's developer guide asks). Delivery rows stay: they hold no
personal data and keep a re-sent old file from being delivered twice.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select

from spie_hub.audit import AuditEvent, AuditLog
from spie_hub.config import HubHome
from spie_hub.registry import Flow
from spie_hub.store import deliveries, runs


@dataclass
class PurgeReport:
    flux: str
    limite: str
    fichiers: list[str] = field(default_factory=list)


def _older(path: Path, cutoff: dt.datetime) -> bool:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc) < cutoff


def _remove(path: Path, report: PurgeReport, root: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    else:
        return
    report.fichiers.append(str(path.relative_to(root)))


def purge_flow(engine: Engine, home: HubHome, flow: Flow, now: dt.datetime) -> PurgeReport:
    cutoff = now - dt.timedelta(days=flow.conservation_jours)
    report = PurgeReport(flow.id, cutoff.date().isoformat())
    iso = cutoff.isoformat()
    with engine.connect() as connection:
        old_deliveries = connection.execute(select(deliveries).where(
            deliveries.c.flow == flow.id, deliveries.c.delivered_at < iso)).all()
        quarantined = connection.execute(select(runs.c.run_id).where(
            runs.c.flow == flow.id, runs.c.status == "quarantaine", runs.c.started_at < iso)).all()
    drops = {r.id: home.root / r.transport.dossier for r in flow.destinataires}
    for row in old_deliveries:
        folder = drops.get(row.recipient)
        if folder is not None:
            _remove(folder / row.file_name, report, home.root)
            _remove(folder / (row.file_name.removesuffix(".csv") + ".manifest.json"), report, home.root)
    for row in quarantined:
        _remove(home.quarantine / row.run_id, report, home.root)
    archive = home.root / "archive" / flow.id
    # Drops and the sender's folders are shared between flows: only this flow's files (by name) are its to purge.
    folders = [archive, *drops.values(), home.outbox / flow.partenaire / "rejets", home.outbox / flow.partenaire / "accuses"]
    for folder in folders:
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            mine = folder == archive or path.name.startswith((flow.id + "_", "avis-suppression_"))
            if path.is_file() and mine and _older(path, cutoff):
                _remove(path, report, home.root)
    AuditLog(engine).append([AuditEvent("purge", {"limite": report.limite, "conservation_jours": flow.conservation_jours,
                                                  "nombre": len(report.fichiers), "fichiers": report.fichiers},
                                        flow=flow.id)])
    return report


def purge(engine: Engine, home: HubHome, flows: dict[str, Flow], now: dt.datetime | None = None) -> list[PurgeReport]:
    now = now or dt.datetime.now(dt.timezone.utc)
    return [purge_flow(engine, home, flow, now) for flow in flows.values()]

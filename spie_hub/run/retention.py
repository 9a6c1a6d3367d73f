"""Retention: every store the hub keeps is purged past its own duration (DAG ``spie_purge_conservation``,
``spie-hub purger``), and every purge is audited.

Per flow (``conservation_jours``): received files (archive), quarantined files, delivered files still in the drops
with their manifests, withdrawal notices, rejection reports and receipts sent back to the sender — deleted and
written in the audit (names, counts, cut-off date: proof of erasure, as the CNIL's developer guide asks).

A flow removed from the registry: its archive and its quarantined files, past the longest retention of the flows
still declared (``removed_flow_retention``), in a report that names it "flux retiré du registre". Its drops and the
sender's folders are no longer known to the hub: what it delivered there is not purged (docs/exploitation.md).

The hub's own stores (durations in ``organisation`` of flows.yaml, defaults in ``StoreRetention``): consents after
the end of their period or their withdrawal, the consent files the consent inboxes archived (same duration, from
their import), withdrawals once propagated, runs and delivery metadata, audit exports and DPO reports, staging left
by crashed runs. Audited as counts only (``purge-stockage``): a purge must not become
a list of the people it forgot. What is still needed is never purged: an unfinished run and its staging, the
consents, runs and delivery rows an unpropagated withdrawal will consult, an open-ended opposition.

The runs' segments of per-record events (spie_hub/audit/segments.py) go with the audit they belong to
(``purge_segments``): past the longest of the flow's and the audit's retention, named with their roots in a
``purge-lots`` entry, so that a purged segment is never taken for a deleted one.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, and_, delete, func, not_, select

from connectors.transports.base import FileInfo, Transport
from connectors.transports.registry import open_transport
from spie_hub.audit import segments
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.audit.signing import SigningKey
from spie_hub.core.errors import HubError
from spie_hub.core.home import HubHome
from spie_hub.registry import Flow
from spie_hub.run.deliver import Names, hub_folder, sender_returns
from spie_hub.run.flow_run import RunContext
from spie_hub.run.lock import FlowBusy, FlowLock
from spie_hub.run.recovery import CLAIM_FILE, RecoveryReport, cancel_pending
from spie_hub.store import consents, deliveries, revocations, runs

#: Default retention of the audit itself (organisation.conservation_journal_jours in flows.yaml): it must outlast
#: the data it proves (730 days for the demo flow) so that what left can be shown as long as it may be held.
AUDIT_RETENTION_DAYS = 1095


#: The consent inboxes' archive under ``archive/`` (spie_hub/run/consent_inbox.py): never a flow's archive.
CONSENT_ARCHIVE = "consentements"
#: The default of a flow's ``conservation_jours`` (registry FlowSpec): a removed flow's files when none is declared.
DEFAULT_FLOW_RETENTION_DAYS = 730
_UNFINISHED = ("en-cours", "publication")


@dataclass
class PurgeReport:
    flux: str
    limite: str
    fichiers: list[str] = field(default_factory=list)
    refus: list[str] = field(default_factory=list)
    #: Runs whose delivery was still waiting for a broken drop past the retention period: given up.
    expirees: list[str] = field(default_factory=list)
    conservation_jours: int = 0
    #: A flow no longer in the registry (its archive and quarantine, under ``removed_flow_retention``).
    retire: bool = False


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
    report = PurgeReport(flow.id, cutoff.date().isoformat(), conservation_jours=flow.conservation_jours)
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


def removed_flow_retention(flows: dict[str, Flow]) -> int:
    """How long the files of a flow removed from the registry are kept: its own duration is gone with its entry, so
    the longest of the flows still declared (never shorter than any flow's), else the default of ``conservation_jours``."""
    return max((f.conservation_jours for f in flows.values()), default=DEFAULT_FLOW_RETENTION_DAYS)


def _open_dir(name: str | Path, parent: int | None = None) -> int:
    """A directory opened without following a link (``name`` relative to ``parent`` when given): what is then
    removed through it cannot be redirected elsewhere by a link swapped in meanwhile."""
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)


def _remove_old_files(folder: int, cutoff: float) -> list[str]:
    """Remove the non-directory entries of an opened folder last modified before ``cutoff`` (links themselves,
    never their targets), one entry at a time; returns their names."""
    removed: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) or info.st_mtime >= cutoff:
                continue
            try:
                os.unlink(entry.name, dir_fd=folder)
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return removed


def _unfinished_flows(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {r.flow for r in connection.execute(select(runs.c.flow).where(runs.c.status.in_(_UNFINISHED)).distinct())}


def purge_removed_flows(engine: Engine, home: HubHome, flows: dict[str, Flow], now: dt.datetime) -> list[PurgeReport]:
    """The archive and quarantine of flows no longer in the registry, past ``removed_flow_retention``: one report
    (and one audited ``purge``) per such flow. A flow with an unfinished run keeps everything (a run in progress of a
    flow re-added meanwhile, or one recovery must settle)."""
    days = removed_flow_retention(flows)
    cutoff = now - dt.timedelta(days=days)
    limit = cutoff.timestamp()
    reports: dict[str, PurgeReport] = {}
    busy = _unfinished_flows(engine)

    def report_of(flow_id: str) -> PurgeReport:
        if flow_id not in reports:
            reports[flow_id] = PurgeReport(flow_id, cutoff.date().isoformat(), conservation_jours=days, retire=True)
        return reports[flow_id]

    def gone(flow_id: str) -> bool:
        return flow_id not in flows and flow_id != CONSENT_ARCHIVE

    for top in ("archive", "quarantine"):
        try:
            root = _open_dir(home.root / top)
        except OSError:
            continue  # absent, or a link or a file: each declared flow's purge already says it is refused
        try:
            with os.scandir(root) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                        continue
                    if top == "archive":
                        if gone(entry.name):
                            _purge_removed_archive(root, entry.name, limit, entry.name in busy, report_of(entry.name))
                    else:
                        _purge_removed_quarantine(engine, root, entry.name, limit, flows, busy, report_of)
        finally:
            os.close(root)
    audit = AuditLog(engine)
    for report in reports.values():
        audit.append([AuditEvent("purge", {"limite": report.limite, "conservation_jours": days, "flux_retire": True,
                                           "nombre": len(report.fichiers), "fichiers": report.fichiers,
                                           "dossiers_refuses": report.refus}, flow=report.flux)])
    return list(reports.values())


def _purge_removed_archive(root: int, flow_id: str, limit: float, busy: bool, report: PurgeReport) -> None:
    if busy:
        report.refus.append(f"archive/{flow_id} : conservée, exécution non terminée de ce flux")
        return
    try:
        folder = _open_dir(flow_id, root)
    except OSError as error:
        report.refus.append(f"archive/{flow_id} : {type(error).__name__}")
        return
    try:
        report.fichiers += [f"archive/{flow_id}/{name}" for name in _remove_old_files(folder, limit)]
    except OSError as error:
        report.refus.append(f"archive/{flow_id} : {type(error).__name__}")
    finally:
        os.close(folder)
    with contextlib.suppress(OSError):  # not empty (files still within the retention): kept
        os.rmdir(flow_id, dir_fd=root)  # emptied: the flow is gone, its folder with it


def _purge_removed_quarantine(engine: Engine, root: int, run_id: str, limit: float, flows: dict[str, Flow],
                              busy: set[str], report_of: Callable[[str], PurgeReport]) -> None:
    """``quarantine/<run_id>``: the flow is known through the run's row (kept at least as long, see
    ``_purge_runs_with_floor``); a folder whose run belongs to a declared flow is that flow's purge."""
    with engine.connect() as connection:
        row = connection.execute(select(runs.c.flow, runs.c.status).where(runs.c.run_id == run_id)).first()
    # A run row purged first (a folder modified after its run, restored from a backup): the flow the hub wrote in
    # the folder's report says whose it is.
    flow_id = row.flow if row is not None else _quarantined_flow(root, run_id)
    if flow_id is None or flow_id in flows:
        return
    report = report_of(flow_id)
    if (row is not None and row.status in _UNFINISHED) or flow_id in busy:
        report.refus.append(f"quarantine/{run_id} : conservée, exécution non terminée de ce flux")
        return
    try:
        folder = _open_dir(run_id, root)
    except OSError as error:
        report.refus.append(f"quarantine/{run_id} : {type(error).__name__}")
        return
    try:
        # The whole folder or nothing: its newest entry decides (a report written later keeps the file with it).
        with os.scandir(folder) as entries:
            newest = max([os.fstat(folder).st_mtime, *(e.stat(follow_symlinks=False).st_mtime for e in entries)])
        if newest >= limit:
            return
        shutil.rmtree(run_id, dir_fd=root)  # fd-based: never follows a link inside
        report.fichiers.append(f"quarantine/{run_id}")
    except OSError as error:
        report.refus.append(f"quarantine/{run_id} : {type(error).__name__}")
    finally:
        os.close(folder)


_FLOW_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")


def _quarantined_flow(root: int, run_id: str) -> str | None:
    """The ``Flux :`` line of ``quarantine/<run_id>/rapport.txt`` (written by the hub), read without following links."""
    try:
        fd = os.open(f"{run_id}/rapport.txt", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=root)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        head = handle.read(4096).decode("utf-8", "replace")
    for line in head.splitlines():
        if line.startswith("Flux : ") and _FLOW_ID.fullmatch(line[7:].strip()):
            return line[7:].strip()
    return None


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
    """Drop audit entries older than ``before`` at the last signed head among them, the purge announced in the log
    first (spie_hub/audit/purge.py); the tree's nodes stay, so what remains keeps its proofs. Entries removed."""
    from spie_hub.audit.purge import purge_audit as purge_log

    return purge_log(engine, signer, before)


def purge_segments(engine: Engine, home: HubHome, flows: dict[str, Flow], now: dt.datetime, *,
                   audit_days: int = AUDIT_RETENTION_DAYS) -> list[str]:
    """Delete the segments of per-record events (spie_hub/audit/segments.py) past their retention, with their day
    folder once empty, and say which in one ``purge-lots`` entry (path, root and leaves of each), so that
    ``audit verify`` tells a purged segment from a deleted one (``segments.segment_purged``).

    A segment is the evidence of what its run delivered: it is kept as long as the flow's data may be held and as
    long as the audit itself (``max(conservation_jours, audit_days)``; a flow no longer declared: ``audit_days``),
    as the decision rows it replaces were. Day by day on the commit day (UTC) of the segment's folder."""
    removed: list[dict[str, Any]] = []
    for path in list(segments.segment_files(home)):
        day = dt.date(*(int(part) for part in path.parent.relative_to(segments.lots_root(home)).parts))
        try:
            info = segments.segment_info(home, path)
        except (OSError, sqlite3.Error):
            info = {}
        flow = flows.get(info.get("flow", ""))
        days = max(flow.conservation_jours if flow else 0, audit_days)
        if day >= (now - dt.timedelta(days=days)).date():
            continue
        rel = path.relative_to(home.root).as_posix()
        removed.append({"lot": rel, "racine": info.get("racine"), "feuilles": int(info.get("feuilles") or 0)})
    if not removed:
        return []
    # The entry first: a crash after it leaves files the next purge deletes (and names again); never a segment gone
    # without an entry saying it was purged.
    AuditLog(engine).append([AuditEvent(segments.PURGE_EVENT, {"lots": removed, "nombre": len(removed),
                                                                "avant": now.isoformat()})])
    for lot in removed:
        segments.remove_segment(home, lot["lot"])
    return [lot["lot"] for lot in removed]


@dataclass(frozen=True)
class StoreRetention:
    """How long the hub keeps its own stores, in days (``organisation.conservation_<store>_jours``)."""

    #: A consent after the end of its period, or after its withdrawal: the proof of what was permitted must last
    #: as long as the audit that shows what left under it.
    consentements: int = AUDIT_RETENTION_DAYS
    #: A withdrawal once propagated (its deletion notices are in the audit).
    retraits: int = 365
    #: Runs and delivery rows, never less than the audit (notices of later withdrawals are found through them)
    #: nor than the flow's own retention (they describe files still in the drops).
    executions: int = AUDIT_RETENTION_DAYS
    #: Audit exports (``exports/``) and DPO reports (``rapports/``) under the hub's home.
    exports: int = 90
    #: Staging left by a run that finished or crashed (recovery normally removes it at the flow's next start).
    preparation: int = 7


_SETTINGS = {"consentements": "conservation_consentements_jours", "retraits": "conservation_retraits_jours",
             "executions": "conservation_executions_jours", "exports": "conservation_exports_jours",
             "preparation": "conservation_preparation_jours"}


def store_retention(path: Path | None = None) -> StoreRetention:
    """The stores' durations from the registry's ``organisation`` section (validated there), else the defaults."""
    from spie_hub.registry import organisation

    section = organisation(path)
    chosen = {field_name: int(section[key]) for field_name, key in _SETTINGS.items() if key in section}
    return StoreRetention(**chosen)


@dataclass
class StorePurge:
    """What a store purge removed (counts only) and what it kept on purpose."""

    consentements: int = 0  # consent versions
    #: Consent files the consent inboxes archived (``archive/consentements/<émetteur>/``).
    consentements_fichiers: int = 0
    retraits: int = 0
    executions: int = 0
    livraisons: int = 0
    exports: int = 0
    preparations: int = 0
    #: Why something past its retention was kept (a pending withdrawal, a staging recovery must settle...).
    gardes: list[str] = field(default_factory=list)


def _end_of(text: str | None) -> dt.date | None:
    """The last day a FHIR date covers: a partial date ("2026", "2026-11") covers its whole year or month."""
    if not text:
        return None
    try:
        if len(text) == 4:
            return dt.date(int(text), 12, 31)
        if len(text) == 7:
            year, month = int(text[:4]), int(text[5:7])
            return dt.date(year, month, calendar.monthrange(year, month)[1])
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return None  # unreadable: never taken as ended


def _consent_ended(latest: Any) -> dt.date | None:
    """When a consent stopped applying (latest version): withdrawn or in error at its import, else at the end of its
    last rule; ``None`` while it may still apply (an open-ended rule, an opposition without end)."""
    if latest.status != "active":
        return dt.date.fromisoformat(latest.imported_at[:10])
    rules = json.loads(latest.rules or "[]")
    ends = [r.get("fin") or latest.period_end for r in rules] if rules else [latest.period_end]
    days = [_end_of(e) for e in ends]
    if not days or any(d is None for d in days):
        return None
    return max(d for d in days if d is not None)


def _purge_consents(connection: Connection, cutoff: dt.date, out: StorePurge) -> None:
    pending = revocations.c.propagated_at.is_(None)
    # The consents of a person with a withdrawal still to propagate stay: the propagation decides from them.
    needed = select(revocations.c.id).where(pending, (revocations.c.subject == consents.c.subject)
                                            | revocations.c.aliases.contains(consents.c.subject)).exists()
    # One consent at a time (versions in order), so memory holds the ids to delete, never the registry.
    doomed: list[int] = []
    group: list[Any] = []

    def settle() -> None:
        if group and (end := _consent_ended(group[-1])) is not None and end < cutoff:
            doomed.extend(r.id for r in group)

    query = (select(consents.c.id, consents.c.emetteur, consents.c.consent_id, consents.c.version, consents.c.status,
                    consents.c.rules, consents.c.period_end, consents.c.imported_at)
             .order_by(consents.c.emetteur, consents.c.consent_id, consents.c.version))
    for row in connection.execute(query).yield_per(5000):
        if group and (group[-1].emetteur, group[-1].consent_id) != (row.emetteur, row.consent_id):
            settle()
            group = []
        group.append(row)
    settle()
    for start in range(0, len(doomed), 1000):
        out.consentements += connection.execute(
            delete(consents).where(consents.c.id.in_(doomed[start:start + 1000]), not_(needed))).rowcount or 0
    kept = len(doomed) - out.consentements
    if kept:
        out.gardes.append(f"{kept} version(s) de consentement échues conservées : retrait en attente de propagation")


def _newest_mtime(path: Path) -> float:
    """The newest modification under ``path`` (itself and its direct entries), links never followed."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for entry in os.scandir(path):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _purge_folder(folder: Path, cutoff: dt.datetime, keep: Callable[[Path], str | None], out: StorePurge) -> int:
    """Remove the entries of one of the hub's folders older than ``cutoff``; ``keep`` says why one must stay."""
    if not folder.exists():
        return 0
    if folder.is_symlink() or not folder.is_dir():
        out.gardes.append(f"{folder.name} : n'est pas un dossier ordinaire (lien ou fichier), non purgé")
        return 0
    removed = 0
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            if dt.datetime.fromtimestamp(_newest_mtime(entry), dt.timezone.utc) >= cutoff:
                continue
            reason = keep(entry)
            if reason:
                out.gardes.append(reason)
                continue
            _remove_tree(entry)
            removed += 1
        except OSError as error:
            out.gardes.append(f"{folder.name}/{entry.name} : {type(error).__name__}")
    return removed


def _purge_consent_files(home: HubHome, cutoff: dt.datetime, out: StorePurge) -> None:
    """The consent files archived by the consent inboxes, one issuer folder at a time (declared or not any more):
    those imported before ``cutoff`` are removed. The registry keeps what they said; the files, full of NIRs, go."""
    limit = cutoff.timestamp()
    try:
        archive = _open_dir(home.root / "archive")
    except FileNotFoundError:
        return
    except OSError:
        out.gardes.append("archive : n'est pas un dossier ordinaire (lien ou fichier), non purgé")
        return
    try:
        try:
            root = _open_dir(CONSENT_ARCHIVE, archive)
        except FileNotFoundError:
            return
        except OSError:
            out.gardes.append(f"archive/{CONSENT_ARCHIVE} : n'est pas un dossier ordinaire (lien ou fichier), non purgé")
            return
        try:
            with os.scandir(root) as issuers:
                for issuer in issuers:
                    if issuer.name.startswith("."):
                        continue
                    try:
                        folder = _open_dir(issuer.name, root)
                    except OSError:
                        out.gardes.append(f"archive/{CONSENT_ARCHIVE}/{issuer.name} : n'est pas un dossier ordinaire "
                                          "(lien ou fichier), non purgé")
                        continue
                    try:
                        out.consentements_fichiers += len(_remove_old_files(folder, limit))
                    except OSError as error:
                        out.gardes.append(f"archive/{CONSENT_ARCHIVE}/{issuer.name} : {type(error).__name__}")
                    finally:
                        os.close(folder)
        finally:
            os.close(root)
    finally:
        os.close(archive)


def _staging_keeper(engine: Engine, flows: dict[str, Flow]) -> Callable[[Path], str | None]:
    with engine.connect() as connection:
        statuses = {r.run_id: r.status for r in connection.execute(select(runs.c.run_id, runs.c.status))}

    def keep(private: Path) -> str | None:
        status = statuses.get(private.name)
        if status in ("en-cours", "publication"):
            return f"préparation {private.name} conservée : exécution non terminée"
        if status is None:
            try:
                flow = json.loads((private / CLAIM_FILE).read_text(encoding="utf-8")).get("flux")
            except (OSError, ValueError):
                flow = None
            if flow in flows:
                # Claimed, then killed before the run was recorded: the input is there, recovery gives it back.
                return f"préparation {private.name} conservée : entrée à rendre par la reprise du flux {flow}"
        return None

    return keep


def purge_stores(engine: Engine, home: HubHome, flows: dict[str, Flow], now: dt.datetime,
                 settings: StoreRetention) -> StorePurge:
    """Purge the hub's own stores past their retention and audit it (counts only) in the same transaction."""
    from spie_hub.registry import organisation

    out = StorePurge()
    audit_days = int(organisation().get("conservation_journal_jours", AUDIT_RETENTION_DAYS))
    runs_days = max(settings.executions, audit_days)
    # Files first (they cannot be rolled back), then the rows and the audit entry saying it all, in one transaction:
    # a purge interrupted there leaves the rows and no entry, never rows gone without their entry.
    exports_cutoff = now - dt.timedelta(days=settings.exports)
    out.exports = sum(_purge_folder(home.root / name, exports_cutoff, lambda _p: None, out) for name in ("exports", "rapports"))
    out.preparations = _purge_folder(home.staging, now - dt.timedelta(days=settings.preparation),
                                     _staging_keeper(engine, flows), out)
    consent_files_cutoff = now - dt.timedelta(days=settings.consentements)
    _purge_consent_files(home, consent_files_cutoff, out)
    with engine.begin() as connection:
        _purge_consents(connection, (now - dt.timedelta(days=settings.consentements)).date(), out)
        out.retraits = connection.execute(delete(revocations).where(
            revocations.c.propagated_at.is_not(None),
            revocations.c.propagated_at < (now - dt.timedelta(days=settings.retraits)).isoformat())).rowcount or 0
        _purge_runs_with_floor(connection, flows, now, runs_days, out)
        AuditLog(engine).append([AuditEvent("purge-stockage", {
            **{k: v for k, v in asdict(out).items() if k != "gardes"},
            "conservation_jours": {**asdict(settings), "executions": runs_days,
                                   "consentements_fichiers": settings.consentements},
            "limites": {"consentements": (now - dt.timedelta(days=settings.consentements)).date().isoformat(),
                        "consentements_fichiers": consent_files_cutoff.isoformat()[:19],
                        "retraits": (now - dt.timedelta(days=settings.retraits)).isoformat()[:19],
                        "executions": (now - dt.timedelta(days=runs_days)).isoformat()[:19]},
            "gardes": out.gardes})], connection=connection)
    return out


def _purge_runs_with_floor(connection: Connection, flows: dict[str, Flow], now: dt.datetime, days: int,
                           out: StorePurge) -> None:
    if connection.execute(select(revocations.c.id).where(revocations.c.propagated_at.is_(None)).limit(1)).first():
        # Propagation finds who received a person's data through these rows: none goes while a withdrawal waits.
        out.gardes.append("exécutions et livraisons conservées : retrait en attente de propagation")
        return
    removed = removed_flow_retention(flows)
    for flow_id in sorted({r.flow for r in connection.execute(select(runs.c.flow).distinct())}):
        flow = flows.get(flow_id)
        # Never younger than the flow's retention: the rows describe files that may still be in the drops (for a
        # flow removed from the registry, its quarantine is found through them until purge_removed_flows runs).
        limit = (now - dt.timedelta(days=max(days, flow.conservation_jours if flow else removed))).isoformat()
        finished = and_(runs.c.flow == flow_id, runs.c.status.not_in(("en-cours", "publication")),
                        func.coalesce(runs.c.finished_at, runs.c.started_at) < limit)
        old = select(runs.c.run_id).where(finished)
        out.livraisons += connection.execute(delete(deliveries).where(
            deliveries.c.run_id.in_(old), deliveries.c.delivered_at < limit)).rowcount or 0
        out.executions += connection.execute(delete(runs).where(
            finished, not_(select(deliveries.c.id).where(deliveries.c.run_id == runs.c.run_id).exists()))).rowcount or 0


def purge_all(engine: Engine, home: HubHome, flows: dict[str, Flow], now: dt.datetime | None = None, *,
              signer: SigningKey | None = None, audit_days: int = AUDIT_RETENTION_DAYS,
              stores: StoreRetention | None = None) -> tuple[list[PurgeReport], StorePurge, int]:
    """Every retention at once: each flow's files, the hub's stores, then the audit (entries dropped)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    reports = [purge_flow(engine, home, flow, now) for flow in flows.values()]
    reports += purge_removed_flows(engine, home, flows, now)
    stored = purge_stores(engine, home, flows, now, stores or store_retention())
    dropped = 0
    if signer is not None:
        with engine.connect() as connection:
            waiting = connection.execute(select(revocations.c.id).where(revocations.c.propagated_at.is_(None)).limit(1)).first()
        # A withdrawal still to propagate finds who received the person's data in the audit: it is kept until then.
        if waiting is None:
            purge_segments(engine, home, flows, now, audit_days=audit_days)
            dropped = purge_audit(engine, signer, now - dt.timedelta(days=audit_days))
        else:
            stored.gardes.append("journal d'audit non purgé : retrait en attente de propagation")
    return reports, stored, dropped


def purge(engine: Engine, home: HubHome, flows: dict[str, Flow], now: dt.datetime | None = None, *,
          signer: SigningKey | None = None, audit_days: int = AUDIT_RETENTION_DAYS,
          stores: StoreRetention | None = None) -> list[PurgeReport]:
    return purge_all(engine, home, flows, now, signer=signer, audit_days=audit_days, stores=stores)[0]

"""What an interruption left, found and settled at the next start (or by ``spie-hub reprise``), and said in the audit.

Called with the flow's lock held, so every unfinished run it finds is dead:
- a run still ``en-cours`` streamed into private staging only: it is rolled back (input returned to the inbox,
  staging removed, ``execution-annulee`` in the audit); its decisions, if any reached the audit, are not deliveries
  (no delivery row, and the closing entry says so);
- a run in ``publication`` had everything staged, signed and audited: it is completed (idempotent publication);
- a claim without a run (killed between the copy and the first write) is returned to the inbox;
- temporaries of interrupted stores are removed from every folder the flow writes to;
- a segment of per-record events (spie_hub/audit/segments.py) that a killed run wrote without committing its ``lot``
  row is an orphan: removed, and said (report and audit).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from connectors.formats.registry import load_output
from connectors.transports.base import FileExists, Transport, safe_name, sha256_stream
from connectors.transports.local import clean_scratch
from connectors.transports.registry import open_transport
from consent.revocation import reopen_withdrawals
from spie_hub.audit import segments
from spie_hub.audit.chain import seal
from spie_hub.audit.log import AuditEvent, AuditLog, now
from spie_hub.audit.spool import AuditSpool
from spie_hub.core.errors import FatalInputError, HubError, StorageError
from spie_hub.run import deliver
from spie_hub.run.claim import INPUT_NAME
from spie_hub.run.flow_run import (
    PUBLICATION_STATE,
    RunContext,
    archive_input,
    decision_stale,
    finish_run,
    publish_staged,
    set_status,
)
from spie_hub.run.summary import RecipientCounts, RunSummary
from spie_hub.store import audit_log, deliveries, runs
from spie_hub.store.withdrawal_order import PublicationGate

CLAIM_FILE = "prise.json"
log = logging.getLogger("spie_hub.run")


@dataclass
class RecoveryReport:
    flux: str
    completees: list[str] = field(default_factory=list)
    #: Runs given up with part of their recipients delivered (the audit says which; see ``erreurs`` for what to do).
    incompletes: list[str] = field(default_factory=list)
    annulees: list[str] = field(default_factory=list)
    entrees_restituees: int = 0
    temporaires: int = 0
    #: What could not be settled now (a drop still broken): left as it is for the next start, and said.
    erreurs: list[str] = field(default_factory=list)
    #: Segments of per-record events written by a killed run without their ``lot`` row (relative paths): removed.
    lots_orphelins: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.completees or self.incompletes or self.annulees or self.entrees_restituees or self.temporaires
                    or self.erreurs or self.lots_orphelins)

    def lignes_lots(self) -> list[str]:
        """What the operator is told of the orphan segments removed (one line, French), [] when none."""
        if not self.lots_orphelins:
            return []
        return [f"lots orphelins supprimés (écrits par une exécution interrompue avant leur entrée au journal) : "
                f"{len(self.lots_orphelins)} ({', '.join(self.lots_orphelins)})"]

    def as_payload(self) -> dict[str, Any]:
        return {"executions_completees": self.completees, "executions_incompletes": self.incompletes,
                "executions_annulees": self.annulees,
                "entrees_restituees": self.entrees_restituees, "temporaires_supprimes": self.temporaires,
                "erreurs": self.erreurs, **({"lots_orphelins_supprimes": self.lots_orphelins} if self.lots_orphelins else {})}


def _claim(private: Path) -> dict[str, str]:
    try:
        return dict(json.loads((private / CLAIM_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _free_outputs(private: Path) -> None:
    """Remove what a run staged (files with people's data in clear), keeping only the input and its claim: on a
    full disk, that is also the room the input needs to go back to the inbox."""
    for path in private.iterdir() if private.is_dir() else []:
        if path.name not in (INPUT_NAME, CLAIM_FILE):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _restore_input(ctx: RunContext, private: Path, run_id: str, *, any_origin: bool = False) -> bool:
    """Put a claimed inbox file back where it came from, so that nothing is lost; never over another file. With
    ``any_origin``, a file given by path goes to the flow's inbox too (to be run again)."""
    claim, copy = _claim(private), private / INPUT_NAME
    if (claim.get("origine") != "boite" and not any_origin) or not copy.exists():
        return False
    _free_outputs(private)
    inbox = open_transport(ctx.flow.transport, ctx.home)
    name = _restorable(claim.get("nom") or "", ctx.flow.transport.motif, run_id)
    try:
        _copy_back(inbox, name, copy)
    except FileExists:  # the partner dropped another file under that name meanwhile: keep both
        stem, dot, ext = name.rpartition(".")
        _copy_back(inbox, f"{stem}.repris-{run_id}.{ext}" if dot else f"{name}.repris-{run_id}", copy)
    return True


def _copy_back(inbox: Transport, name: str, copy: Path) -> None:
    """Bytes copied, never linked: the private copy may already be the archive's inode, and an inbox is the
    partner's to write (a link would let it rewrite the hub's evidence, and the claim refuses linked files)."""
    with copy.open("rb") as source, inbox.store(name) as target:
        shutil.copyfileobj(source, target, 1 << 20)


def _restorable(name: str, pattern: str, run_id: str) -> str:
    """The name an input goes back under: its own when the hub can write it, else one built from the flow's pattern
    (so that the next listing takes it again)."""
    try:
        if len(name.encode("utf-8")) <= 200:
            return safe_name(name)
    except FatalInputError:
        pass
    # A name the flow's own pattern matches, so that the next listing takes it again: "*" carries the run id, each
    # "?" and character class takes the first filler the pattern accepts ("caf_[0-9]*.csv" → "caf_0repris-….csv").
    stem = pattern.replace("*", f"repris-{run_id}")
    for filler in "0ax_-A":
        candidate = re.sub(r"\[[^\]]*\]|\?", filler, stem)
        if fnmatch.fnmatchcase(candidate, pattern):
            return candidate
    return stem.replace("?", "x").replace("[", "").replace("]", "")  # a pattern no plain name matches


def rollback(ctx: RunContext, run_id: str, private: Path, reason: str, report: RecoveryReport | None = None) -> None:
    """Undo a run that published nothing: input back to the inbox, staging removed, the audit told."""
    _free_outputs(private)
    quarantine = deliver.hub_folder(ctx.home, f"quarantine/{run_id}")  # a quarantine copy made before the failure
    for entry in quarantine.list():
        quarantine.delete(entry.name)
    quarantine.remove_if_empty()
    restored = _restore_input(ctx, private, run_id)
    if restored or _claim(private).get("origine") == "chemin":
        # Back in the inbox, or still where the operator named it: the private copy goes now, whatever happens next.
        (private / INPUT_NAME).unlink(missing_ok=True)
    AuditLog(ctx.engine).append([AuditEvent("execution-annulee", {
        "motif": reason, "livraisons": 0, "entree_restituee": restored,
        "note": "aucun fichier n'a été publié ; les décisions de cette exécution ne sont pas des livraisons"},
        run_id, ctx.flow.id)])
    set_status(ctx.engine, run_id, "annule")
    shutil.rmtree(private, ignore_errors=True)
    if report is not None:
        report.annulees.append(run_id)
        report.entrees_restituees += int(restored)


def _summary_from(private: Path, run_id: str, flow_id: str) -> RunSummary:
    data = json.loads((private / PUBLICATION_STATE).read_text(encoding="utf-8"))
    counts = {rid: RecipientCounts(livres=c["livres"], retenus=c["retenus"], deja_livre=c["deja_livre"], fichier=c["fichier"],
                                   motifs=Counter(c["motifs"]), fondements={k: Counter(v) for k, v in c["fondements"].items()})
              for rid, c in data.pop("destinataires").items()}
    summary = RunSummary(**{k: v for k, v in data.items() if k in RunSummary.__dataclass_fields__})
    summary.destinataires = counts
    summary.run_id, summary.flux = run_id, flow_id
    return summary


def cancel_pending(ctx: RunContext, run_id: str, input_sha: str, private: Path, report: RecoveryReport, *,
                    event: str, motif: str, requeue: bool) -> list[str]:
    """Give up the undelivered part of a run in publication: the audit says exactly who received what (the delivery
    rows) and who did not, manifests published without their file are withdrawn from the drops, and with
    ``requeue`` the input goes back to the inbox so that a new run decides again for those recipients (the ones
    already delivered are skipped by their delivery rows). Returns the recipients not delivered."""
    with ctx.engine.connect() as connection:
        delivered = {r.recipient: r.file_name for r in connection.execute(select(deliveries).where(
            deliveries.c.run_id == run_id))}
    withdrawn: list[str] = []
    short = input_sha[:12]
    for recipient in ctx.flow.destinataires:
        if recipient.id in delivered:
            continue
        drop = open_transport(recipient.transport, ctx.home)
        try:
            entries = drop.list(f"{ctx.flow.id}_{recipient.id}_*_{short}.manifest.json")
        except (HubError, OSError):
            entries = []  # the drop is still broken: nothing of this run can be in it
        for entry in entries:
            data = entry.name.removesuffix(".manifest.json") + load_output(recipient.sortie).extension
            if not drop.exists(data):
                if drop.delete(entry.name):
                    withdrawn.append(f"{recipient.id}/{entry.name}")
            elif _placed_by(drop, entry.name, data, run_id, input_sha):
                # Killed after the file was in place, before its row: it was delivered, and the audit must say so.
                _record_delivery(ctx, recipient.id, run_id, input_sha, drop, entry.name)
                delivered[recipient.id] = data
    missing = [r.id for r in ctx.flow.destinataires if r.id not in delivered]
    requeued = requeue and _restore_input(ctx, private, run_id, any_origin=True)
    AuditLog(ctx.engine).append([AuditEvent(event, {
        "motif": motif, "livres_a": sorted(delivered), "non_livres_a": missing, "manifestes_retires": withdrawn,
        "entree_remise_en_boite": requeued,
        "note": "les destinataires non livrés n'ont rien reçu de cette exécution"}, run_id, ctx.flow.id)])
    set_status(ctx.engine, run_id, "incomplete" if delivered else "annule")
    shutil.rmtree(private, ignore_errors=True)
    (report.incompletes if delivered else report.annulees).append(run_id)
    report.entrees_restituees += int(requeued)
    return missing


def _placed_by(drop: Transport, manifest_name: str, data_name: str, run_id: str, input_sha: str) -> bool:
    """The pair in the drop is this run's: its signed manifest names the run and the data file has its SHA-256."""
    try:
        with drop.open(manifest_name) as handle:
            manifest = json.loads(handle.read(1 << 20))
        with drop.open(data_name) as handle:
            digest = sha256_stream(handle)
    except (HubError, OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("execution") == run_id and manifest.get("sha256") == digest


def _record_delivery(ctx: RunContext, rid: str, run_id: str, input_sha: str, drop: Transport, manifest_name: str) -> None:
    with drop.open(manifest_name) as handle:
        manifest = json.loads(handle.read(1 << 20))
    # Under the publication gate, like a live run's row: a withdrawal propagated since this run started could not
    # see this delivery, so it is propagated again once the row is there (only the missing notices are sent).
    with PublicationGate(ctx.engine, ctx.home).shared():
        with ctx.engine.begin() as connection:
            connection.execute(insert(deliveries).values(
                flow=ctx.flow.id, recipient=rid, input_sha256=input_sha, run_id=run_id, file_name=manifest["fichier"],
                file_sha256=manifest["sha256"], records=int(manifest.get("enregistrements", 0)), delivered_at=now()))
            started = connection.execute(select(runs.c.started_at).where(runs.c.run_id == run_id)).scalar()
        if started is not None:
            reopen_withdrawals(ctx.engine, started)


def _undelivered(ctx: RunContext, run_id: str, private: Path) -> bool:
    """Whether some recipient staged by the run has no delivery row yet (else there is nothing left to decide)."""
    staged = {p.name.removesuffix(".manifest.json") for p in private.glob("*.manifest.json")}
    with ctx.engine.connect() as connection:
        delivered = {r.recipient for r in connection.execute(select(deliveries.c.recipient).where(
            deliveries.c.run_id == run_id))}
    return bool(staged - delivered)


def _staging_lost(ctx: RunContext, run_id: str, input_sha: str, private: Path, report: RecoveryReport) -> None:
    """A run in publication whose staging was lost (removed by hand, another disk): it cannot be completed."""
    missing = cancel_pending(ctx, run_id, input_sha, private, report, event="execution-incomplete",
                              motif="publication interrompue et données préparées perdues", requeue=False)
    if missing:
        report.erreurs.append(f"exécution {run_id} : données préparées perdues, non livrée à {', '.join(missing)} "
                              "(fichier à renvoyer)")


def _complete(ctx: RunContext, run_id: str, input_sha: str, private: Path, report: RecoveryReport) -> None:
    if not (private / PUBLICATION_STATE).exists():
        _staging_lost(ctx, run_id, input_sha, private, report)
        return
    if decision_stale(ctx, run_id, private) and _undelivered(ctx, run_id, private):
        # Decided before a withdrawal: what is still undelivered is decided again by a new run, never sent as staged.
        cancel_pending(ctx, run_id, input_sha, private, report, event="livraison-annulee", requeue=True,
                        motif="retrait ou opposition enregistré depuis la décision, ou décision d'un autre jour : "
                              "nouvelle décision")
        return
    summary = _summary_from(private, run_id, ctx.flow.id)
    names = deliver.Names(ctx.flow, input_sha)
    publish_staged(ctx, run_id, private, summary, names)
    if (private / INPUT_NAME).exists():
        archive_input(ctx, run_id, private / INPUT_NAME)
    summary.statut = "termine"
    spool = AuditSpool(private / "reprise.spool", run_id, ctx.flow.id, ctx.home)
    finish_run(ctx, summary, spool, {"reprise": True})
    shutil.rmtree(private, ignore_errors=True)
    report.completees.append(run_id)


def _remove_orphan_lots(ctx: RunContext, report: RecoveryReport) -> None:
    """Segments of this flow's runs that no ``lot`` row names: a run killed between writing its segment and
    committing its row (every run of the flow is dead here: the caller holds its lock)."""
    with ctx.engine.connect() as connection:
        dead = {r.run_id for r in connection.execute(select(runs.c.run_id).where(
            runs.c.flow == ctx.flow.id, runs.c.status.not_in(("en-cours", "publication"))))}
        log_starts = connection.execute(select(func.min(audit_log.c.ts))).scalar()
    if not dead:
        return
    committed = segments.committed_lots(ctx.engine, ctx.flow.id)
    try:
        report.lots_orphelins = segments.remove_orphans(ctx.home, lambda rel: rel in committed, dead, log_starts)
    except OSError as error:
        report.erreurs.append(f"lots orphelins non supprimés : {StorageError.from_os(error, segments.lots_root(ctx.home))}")
    for line in report.lignes_lots():
        log.warning("Flux %s : %s", ctx.flow.id, line)


def recover_flow(ctx: RunContext) -> RecoveryReport:
    """Settle every unfinished run of ``ctx.flow`` (the caller holds its lock); audit what was done."""
    report = RecoveryReport(ctx.flow.id)
    with ctx.engine.connect() as connection:
        unfinished = connection.execute(select(runs.c.run_id, runs.c.status, runs.c.input_sha256).where(
            runs.c.flow == ctx.flow.id, runs.c.status.in_(("en-cours", "publication"))).order_by(runs.c.started_at)).all()
        finished = {r.run_id for r in connection.execute(select(runs.c.run_id).where(runs.c.flow == ctx.flow.id))}
    for row in unfinished:
        private = ctx.home.staging / row.run_id
        # One run that cannot be settled now (its drop still broken) never holds back the others nor new inputs.
        try:
            if row.status == "publication":
                _complete(ctx, row.run_id, row.input_sha256, private, report)
            else:
                rollback(ctx, row.run_id, private, "exécution interrompue (arrêt brutal ou redémarrage)", report)
        except (HubError, OSError) as error:
            reason = error if isinstance(error, HubError) else StorageError.from_os(error, private)
            report.erreurs.append(f"exécution {row.run_id} : {reason}")
            log.warning("Flux %s : exécution %s non reprise pour l'instant : %s", ctx.flow.id, row.run_id, reason)
    unfinished_ids = {r.run_id for r in unfinished}
    for private in sorted(ctx.home.staging.iterdir()) if ctx.home.staging.is_dir() else []:
        if not private.is_dir() or private.name.startswith(".") or private.name in unfinished_ids:
            continue
        if _claim(private).get("flux") != ctx.flow.id:
            continue
        if private.name not in finished:  # claimed, then killed before the run was recorded
            report.entrees_restituees += int(_restore_input(ctx, private, private.name))
        shutil.rmtree(private, ignore_errors=True)
    transports = [open_transport(r.transport, ctx.home) for r in ctx.flow.destinataires]
    returns = deliver.sender_returns(ctx.flow, ctx.home)
    # The source too: a claim killed between its steps may leave a hidden copy of the input (people's data) there.
    source = open_transport(ctx.flow.transport, ctx.home)
    for transport in [source, *transports, returns, returns.child("rejets"), returns.child("accuses")]:
        try:
            report.temporaires += len(transport.clean_temporaries())
        except (HubError, OSError) as error:  # a drop replaced by a link or a file: refused, said, not fatal
            report.erreurs.append(f"{transport.location()} : {error}")
    report.temporaires += len(clean_scratch(ctx.home.staging / ".stores"))
    _remove_orphan_lots(ctx, report)
    if report:
        AuditLog(ctx.engine).append([AuditEvent("reprise", report.as_payload(), flow=ctx.flow.id)])
        seal(ctx.engine, ctx.signer)
    return report

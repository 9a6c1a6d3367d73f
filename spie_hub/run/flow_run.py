"""The run of one flow on one claimed input, plain Python: it sequences the three stages along the data path.

    records (format → shared records or rejections)  →  decide (consent, statistics)  →  deliver (through transports)

Airflow and the CLI both reach it through ``spie_hub/run/lifecycle.py`` (claim, run, archive or quarantine). Records
stream through in batches, so memory does not grow with the input. Every input record ends delivered, rejected
(reason written back to the sender) or withheld (decision recorded), for each recipient; a file that cannot be read
at all is quarantined whole.

Phases, recorded in the store so that the next start knows what an interruption left (``recovery.py``):
``en-cours`` (streaming into private staging: nothing visible, rolled back after a crash) → ``publication`` (audit
committed, everything staged and signed: completed after a crash) → ``termine`` / ``quarantaine`` / ``deja-livre``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, insert, select, update

from connectors.formats.base import InputFacts
from consent.decision import ConsentIndex, registry_authority
from consent.revocation import withdrawal_concerns
from schemas.spie_v1 import SCHEMA_VERSION
from spie_hub.audit.log import AuditEvent, AuditLog, now
from spie_hub.audit.receipts import ACKNOWLEDGEMENT_TYPE, journal_proof, sign_document, sign_manifest
from spie_hub.audit.signing import SigningKey
from spie_hub.audit.spool import AuditSpool
from spie_hub.audit.trust import fingerprint
from spie_hub.core.errors import FatalInputError, HubError, RetriableError, StorageError
from spie_hub.core.failpoints import failpoint
from spie_hub.core.home import HubHome
from spie_hub.mapping.compiler import CompiledMapping, load_mapping
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import Flow, consent_registry
from spie_hub.run import deliver
from spie_hub.run.claim import ClaimedInput
from spie_hub.run.decide import Decider
from spie_hub.run.deliver import Names, StagedDeliveries
from spie_hub.run.interrupt import raise_if_interrupted
from spie_hub.run.lock import FlowLock
from spie_hub.run.records import Mapped, SeenPivots, read_records, reader_for
from spie_hub.run.summary import RecipientCounts, RunSummary
from spie_hub.store import deliveries, runs
from spie_hub.store.withdrawal_order import PublicationGate, withdrawal_mark

log = logging.getLogger("spie_hub.run")
BATCH = 1000
#: Above this size a format's whole-file check (the CNAF XSD) runs in a child process on the other core.
PARALLEL_VALIDATION_BYTES = 8 * 1024 * 1024
ProgressCallback = Callable[[int], None]

#: Files a run leaves in its private staging folder when it enters publication (what recovery completes from).
PUBLICATION_STATE = "publication.json"
REJECTIONS_STAGED = "rejets.json"


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


class _ProgressReader(io.RawIOBase):
    """File wrapper reporting bytes read, for progress bars on long files (a raw stream: lxml and io both read it)."""

    def __init__(self, handle: IO[bytes], callback: ProgressCallback | None) -> None:
        super().__init__()
        self.handle, self.callback = handle, callback

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)  # type: ignore[attr-defined]
        if self.callback is not None and count:
            self.callback(count)
        return count

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


@dataclass
class RunContext:
    """What a run needs from outside: resolved once by the life cycle, passed explicitly."""

    flow: Flow
    home: HubHome
    engine: Engine
    pseudonymiser: Pseudonymiser
    signer: SigningKey
    lock: FlowLock
    today: dt.date


def set_status(engine: Engine, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
    values: dict[str, Any] = {"status": status}
    if status not in ("en-cours", "publication"):
        values["finished_at"] = now()
    if summary is not None:
        values["summary"] = json.dumps(summary)
    with engine.begin() as connection:
        connection.execute(update(runs).where(runs.c.run_id == run_id).values(**values))


def preflight(flow: Flow, home: HubHome) -> CompiledMapping:
    """Everything a run reads from its configuration, loaded before the input is touched: a wrong mapping, format
    or output spec fails here, with the inbox as it was and nothing in the audit.

    A recipient's drop is deliberately not checked here: a drop that is full, read-only or holds a name of the
    delivery affects that recipient only. The others are delivered; its own delivery stays staged (the run in
    ``publication``), the DAG run fails and alerts, and the next start completes it once the drop is repaired."""
    from connectors.formats.registry import load_output

    mapping = load_mapping(flow.mapping)
    reader_for(flow.format, mapping)
    consent_registry()  # the issuers' authority, read at decision time
    for recipient in flow.destinataires:
        load_output(recipient.sortie)
    return mapping


class FlowRun:
    def __init__(self, ctx: RunContext, claimed: ClaimedInput, run_id: str, mapping: CompiledMapping | None = None) -> None:
        self.ctx, self.flow, self.claimed, self.run_id = ctx, ctx.flow, claimed, run_id
        self.staging = claimed.path.parent
        self.audit = AuditLog(ctx.engine, ctx.signer)
        self.mapping: CompiledMapping = mapping or load_mapping(self.flow.mapping)
        self.spool = AuditSpool(self.staging / "audit.spool", run_id, self.flow.id, ctx.home)
        self.summary = RunSummary(run_id, self.flow.id, "en-cours", reference=claimed.ref)
        self.names = Names(self.flow, claimed.sha256)
        self.parallel_validation_bytes = PARALLEL_VALIDATION_BYTES
        self.reference_date: str | None = None

    # -- start ---------------------------------------------------------------------------------------------------
    def _already_delivered(self) -> set[str]:
        """Recipients this input already went to, or is waiting to go to (a run of the same bytes still in
        publication: its delivery is staged and audited; a second decision would be a second delivery)."""
        with self.ctx.engine.connect() as connection:
            rows = connection.execute(select(deliveries.c.recipient).where(
                deliveries.c.flow == self.flow.id, deliveries.c.input_sha256 == self.claimed.sha256))
            done = {r.recipient for r in rows}
            pending = connection.execute(select(runs.c.run_id).where(
                runs.c.flow == self.flow.id, runs.c.input_sha256 == self.claimed.sha256,
                runs.c.status == "publication", runs.c.run_id != self.run_id)).first()
        return {r.id for r in self.flow.destinataires} if pending is not None else done

    def _start(self) -> None:
        with self.ctx.engine.begin() as connection:
            connection.execute(insert(runs).values(
                run_id=self.run_id, flow=self.flow.id, input_name=self.claimed.name, input_sha256=self.claimed.sha256,
                started_at=now(), status="en-cours", summary="{}"))
        self.audit.append([AuditEvent("execution-debut", {
            "fichier_sha256": self.claimed.sha256, "octets": self.claimed.size, "format": self.flow.format,
            "partenaire": self.flow.partenaire, "version_schema": SCHEMA_VERSION}, self.run_id, self.flow.id)])

    # -- stream: records → decide → stage -------------------------------------------------------------------------
    def _stream(self, staged: StagedDeliveries, decider: Decider, progress: ProgressCallback | None) -> InputFacts:
        reader = reader_for(self.flow.format, self.mapping)
        facts = InputFacts()
        background = None
        if self.claimed.size >= self.parallel_validation_bytes:
            background = reader.background_check(self.claimed.path)
        provenance = {"partenaire": self.flow.partenaire, "format": self.flow.format}
        batch: list[Mapped] = []
        try:
            with ExitStack() as cleanup:
                seen = SeenPivots(self.staging / "vus.sqlite3") if self.mapping.unique_key else None
                if seen is not None:
                    cleanup.callback(seen.close)
                raw = cleanup.enter_context(self.claimed.path.open("rb"))
                for item in read_records(reader, self.mapping, self.ctx.pseudonymiser, _ProgressReader(raw, progress),  # type: ignore[arg-type]
                                         facts, provenance, validate=background is None, seen=seen):
                    self.summary.lus += 1
                    if not isinstance(item, Mapped):
                        staged.reject(item.position, item.line, item.reason)
                        continue
                    batch.append(item)
                    failpoint("lecture")
                    if len(batch) >= BATCH:
                        self._decide(batch, staged, decider)
                        batch = []
                if batch:
                    self._decide(batch, staged, decider)
        except BaseException:
            if background is not None:
                background.cancel()
            raise
        if background is not None and (errors := background.result()):
            raise FatalInputError(errors[0])
        return facts

    @staticmethod
    def _decide(batch: list[Mapped], staged: StagedDeliveries, decider: Decider) -> None:
        for recipient, pseudonym, decision, text, mapped in decider.decide(batch):
            staged.accept(recipient, pseudonym, decision, text, mapped)

    # -- run -------------------------------------------------------------------------------------------------------
    def execute(self, progress: ProgressCallback | None = None) -> RunSummary:
        self._start()
        done = self._already_delivered()
        active = [r for r in self.flow.destinataires if r.id not in done]
        for recipient in self.flow.destinataires:
            self.summary.destinataires[recipient.id] = RecipientCounts(deja_livre=recipient.id in done)
        if not active:
            self.summary.statut = "deja-livre"
            self.summary.message = "Ce fichier a déjà été livré à tous les destinataires : aucune nouvelle livraison."
            archive_input(self.ctx, self.run_id, self.claimed.path)
            return self._finish()
        # Before the first consent is read: every withdrawal above this mark may be missing from the decisions.
        self.withdrawal_mark = withdrawal_mark(self.ctx.engine)
        # Permits count only within their issuer's authority as the registry declares it now (not only at import).
        consents_now = ConsentIndex(self.ctx.engine, registry_authority(consent_registry()))
        decider = Decider(self.flow, active, consents_now, self.ctx.pseudonymiser, self.ctx.today)
        staged = StagedDeliveries(self.flow, active, self.staging, self.spool, self.summary,
                                  self.ctx.pseudonymiser.key.secret, self.claimed.sha256)
        try:
            with staged:
                facts = self._stream(staged, decider, progress)
        except FatalInputError as error:
            return self._quarantine(error)
        except OSError as error:  # the private staging folder: disk full, most likely
            raise StorageError.from_os(error, self.staging) from None
        self.summary.anomalies = facts.anomalies
        decider.fold_into(self.summary.destinataires)
        day = facts.date_reference or self.ctx.today.isoformat()
        sequences = {r.id: deliver.next_sequence(self.ctx.engine, self.flow, r, day) for r in active}
        manifests = staged.manifests(self.names, self.run_id, day, sequences)
        self._stage_returns(staged.rejections)
        # Write-ahead: the decisions and deliveries enter the audit before any file becomes visible, so nothing
        # can leave without its trail. Until the status says "publication", a crash rolls the run back.
        failpoint("avant-journal")
        self.spool.commit(self.audit)
        failpoint("apres-journal")
        # Each receipt makes its recipient a witness: the signed tree head sealing the commit above, the inclusion
        # proof of its own delivery entry, and a consistency proof from its previous receipt's head. The log has
        # one entry per action, decisions being batched: its size counts actions, never people (docs/divulgation.md).
        for rid, manifest in manifests.items():
            manifest["journal"] = journal_proof(self.ctx.engine, self.run_id, rid)
            # The signing key's fingerprint (SHA-256 of the raw public key), to check against the published one.
            manifest["cle_signature"] = {"identifiant": self.ctx.signer.kid,
                                         "empreinte_sha256": fingerprint(self.ctx.signer.public_b64)}
            signed = sign_manifest(manifest, self.ctx.signer)
            deliver.staged_manifest(self.staging, rid).write_text(json.dumps(signed, ensure_ascii=False, indent=2),
                                                                  encoding="utf-8")
        state = self.summary.to_dict() | {"date_decision": self.ctx.today.isoformat(),
                                          "marque_retraits": self.withdrawal_mark}
        (self.staging / PUBLICATION_STATE).write_text(json.dumps(state), encoding="utf-8")
        self.ctx.lock.ensure_held()
        raise_if_interrupted()  # a SIGTERM whose exception a finaliser swallowed still rolls the run back
        set_status(self.ctx.engine, self.run_id, "publication")
        failpoint("publication")
        publish_staged(self.ctx, self.run_id, self.staging, self.summary, self.names)
        archive_input(self.ctx, self.run_id, self.claimed.path)
        self.summary.statut = "termine"
        failpoint("avant-fin")
        return self._finish()

    def _stage_returns(self, rejections: list[tuple[str, int | None, str]]) -> None:
        (self.staging / REJECTIONS_STAGED).write_text(json.dumps(rejections, ensure_ascii=False), encoding="utf-8")
        document = deliver.acknowledgement(self.names, self.flow, self.run_id, self.claimed.name, read=self.summary.lus,
                                           rejections=rejections)
        deliver.staged_acknowledgement(self.staging).write_text(json.dumps(
            sign_document(document, self.ctx.signer, ACKNOWLEDGEMENT_TYPE), ensure_ascii=False), encoding="utf-8")

    def _quarantine(self, error: FatalInputError) -> RunSummary:
        self.spool.reset()
        quarantine_input(self.ctx, self.run_id, self.claimed, self.names, str(error))
        returns = deliver.sender_returns(self.flow, self.ctx.home)
        _best_effort(self.summary, "avis de rejet du fichier", lambda: setattr(
            self.summary, "rapport_rejets", deliver.write_refusal_notice(returns, self.names, str(error))))
        refusal = deliver.acknowledgement(self.names, self.flow, self.run_id, self.claimed.name, read=self.summary.lus,
                                          rejections=[], refusal=str(error), element=error.element)
        _best_effort(self.summary, "accusé de rejet", lambda: deliver.write_acknowledgement(
            returns, self.names, sign_document(refusal, self.ctx.signer, ACKNOWLEDGEMENT_TYPE)))
        # Records parsed before the error are rejected with the file: none was delivered.
        self.summary.rejetes = self.summary.lus
        self.summary.statut = "quarantaine"
        self.summary.quarantaine = deliver.hub_folder(self.ctx.home, f"quarantine/{self.run_id}").location()
        self.summary.message = str(error)
        for counts in self.summary.destinataires.values():
            counts.livres = counts.retenus = 0
            counts.motifs.clear()
            counts.fondements.clear()
        self._event("fichier-quarantaine", {"fichier_sha256": self.claimed.sha256, "motif": str(error),
                                            "element": error.element, "enregistrements_rejetes": self.summary.lus})
        return self._finish()

    def _event(self, event: str, payload: dict[str, Any]) -> None:
        self.spool.add(event, payload)

    def _finish(self) -> RunSummary:
        return finish_run(self.ctx, self.summary, self.spool)


def archive_input(ctx: RunContext, run_id: str, copy: Path) -> None:
    """Keep the received bytes (archive, purged with the flow's retention) before the run says it is over, so that a
    crash after this point leaves nothing to archive. Idempotent: recovery may call it again."""
    deliver.copy_into(deliver.hub_folder(ctx.home, f"archive/{ctx.flow.id}"), deliver.archive_name(run_id), copy,
                      replace=True)


def quarantine_input(ctx: RunContext, run_id: str, claimed: ClaimedInput, names: Names, reason: str) -> None:
    folder = deliver.hub_folder(ctx.home, f"quarantine/{run_id}")
    deliver.copy_into(folder, "fichier-recu", claimed.path, replace=True)
    with deliver.text_store(folder, "rapport.txt") as handle:
        handle.write(f"Fichier mis en quarantaine le {now()}\nFlux : {ctx.flow.id}\nEmpreinte SHA-256 : {names.input_sha}\n"
                     f"Motif : {reason}\nAucun enregistrement de ce fichier n'a été livré.\n")


def publish_staged(ctx: RunContext, run_id: str, staging: Path, summary: RunSummary, names: Names) -> None:
    """Publish everything a run staged (idempotent, so that recovery can call it again after a crash)."""
    recipients = {r.id: r for r in ctx.flow.destinataires}
    ctx.lock.ensure_held(publishing=True)
    with ctx.engine.connect() as connection:
        status = connection.execute(select(runs.c.status).where(runs.c.run_id == run_id)).scalar()
    if status != "publication" or not staging.is_dir():
        raise RetriableError(f"Exécution {run_id} : sa publication a été terminée ou annulée par une reprise entre-temps ; "
                             "rien de plus n'est publié ici")
    failures: list[str] = []
    with ctx.engine.connect() as connection:
        done = {r.recipient: r.file_name for r in connection.execute(select(deliveries.c.recipient, deliveries.c.file_name)
                .where(deliveries.c.flow == ctx.flow.id, deliveries.c.input_sha256 == names.input_sha))}
    for manifest in sorted(staging.glob("*.manifest.json")):
        rid = manifest.name.removesuffix(".manifest.json")
        if rid in done and rid in recipients:  # published before an interruption: nothing more to decide or send
            summary.destinataires[rid].fichier = deliver.recipient_transport(recipients[rid], ctx.home).location(done[rid])
            continue
        if rid in recipients:
            ctx.lock.ensure_held(publishing=True)
            # From the last staleness check to the delivery row, no withdrawal propagation reads who received what:
            # a withdrawal committed before the check sends this part back for a new decision; one committed after
            # it is propagated once the delivery row is there, with its deletion notice (store/withdrawal_order.py).
            with PublicationGate(ctx.engine, ctx.home).shared():
                if decision_stale(ctx, run_id, staging):
                    raise DecisionStale(f"Exécution {run_id} : un retrait ou une opposition a été enregistré depuis la "
                                        "décision ; la part non livrée sera décidée à nouveau (reprise au prochain "
                                        "passage)")
                # Each recipient on its own: one unusable drop (full, read-only, a name taken) never holds back
                # another.
                try:
                    summary.destinataires[rid].fichier = deliver.publish(ctx.engine, ctx.home, ctx.flow,
                                                                         recipients[rid], staging, run_id,
                                                                         names.input_sha)
                except (HubError, OSError) as error:
                    failures.append(f"{rid} : "
                                    f"{error if isinstance(error, HubError) else StorageError.from_os(error, staging)}")
            failpoint("entre-destinataires")
    if failures:
        raise StorageError("Livraison inachevée (" + " ; ".join(failures) + ") ; les autres destinataires ont reçu la "
                           "leur ; elle sera terminée au prochain démarrage, une fois le dépôt réparé")
    # The sender's returns come after the deliveries, on a best-effort basis: a return folder the sender broke
    # (a folder or a link under the report's name) is noted in the run's anomalies, never undoes a delivery.
    returns = deliver.sender_returns(ctx.flow, ctx.home)
    rejections_file = staging / REJECTIONS_STAGED
    if rejections_file.exists():
        rejections = [tuple(r) for r in json.loads(rejections_file.read_text(encoding="utf-8"))]
        _best_effort(summary, "rapport de rejets", lambda: setattr(
            summary, "rapport_rejets", deliver.write_rejections(returns, names, rejections)))  # type: ignore[arg-type]
    staged_ack = deliver.staged_acknowledgement(staging)
    if staged_ack.exists():
        document = json.loads(staged_ack.read_text(encoding="utf-8"))
        _best_effort(summary, "accusé de traitement", lambda: deliver.write_acknowledgement(returns, names, document))


class DecisionStale(RetriableError):
    """What a run staged was decided before a withdrawal, or on an earlier day: it is decided again, never sent."""


def decision_stale(ctx: RunContext, run_id: str, staging: Path | None = None) -> bool:
    """A withdrawal or an opposition recorded after the run took its mark (before its first decision) that concerns
    one of the flow's recipients, or a decision made on an earlier day (a consent may have ended since, a period
    begun): what the run staged may no longer go as it is.

    Withdrawals are compared by id with the run's mark, never by time: a withdrawal's time is taken when its import
    inserts it, and the import may commit after the run started deciding (store/withdrawal_order.py)."""
    from spie_hub.store import revocations

    state_file = (staging / PUBLICATION_STATE) if staging is not None else None
    state: dict[str, Any] = {}
    if state_file is not None and state_file.exists():
        state = dict(json.loads(state_file.read_text(encoding="utf-8")))
        decided = state.get("date_decision")
        if not isinstance(decided, str) or decided < ctx.today.isoformat():
            return True
    mark = state.get("marque_retraits")
    recipients = {r.id for r in ctx.flow.destinataires}
    with ctx.engine.connect() as connection:
        started = connection.execute(select(runs.c.started_at).where(runs.c.run_id == run_id)).scalar()
        if started is None or started[:10] < now()[:10]:  # both UTC
            return True
        # The time of the start as well: a run staged before runs took a mark, and on SQLite an id freed by the
        # retention purge of the highest withdrawal may be drawn again (a withdrawal recorded since the start).
        later = revocations.c.recorded_at >= started
        if isinstance(mark, int) and not isinstance(mark, bool):
            later = later | (revocations.c.id > mark)
        pairs = connection.execute(select(revocations.c.pairs).where(later)).scalars()
        return any(withdrawal_concerns(p, recipients) for p in pairs)


def _best_effort(summary: RunSummary, what: str, write: Callable[[], object]) -> None:
    try:
        write()
    except (HubError, OSError) as error:
        reason = error if isinstance(error, HubError) else StorageError.from_os(error, Path("."))
        summary.anomalies.append(f"{what} non déposé chez l'émetteur : {reason}")
        log.warning("Flux %s, exécution %s : %s non déposé chez l'émetteur", summary.flux, summary.run_id, what)


def finish_run(ctx: RunContext, summary: RunSummary, spool: AuditSpool, extra: dict[str, Any] | None = None) -> RunSummary:
    counts = summary.counts_record()
    spool.add("execution-fin", {"statut": summary.statut, "lus": summary.lus, "rejetes": summary.rejetes,
                                "destinataires": counts, "anomalies": summary.anomalies, **(extra or {})})
    spool.commit(AuditLog(ctx.engine, ctx.signer))  # sealed by a signed tree head in the same transaction
    spool.close()
    set_status(ctx.engine, summary.run_id, summary.statut,
               counts | {"lus": summary.lus, "rejetes": summary.rejetes, "anomalies": summary.anomalies})
    log.info("Flux %s, exécution %s : %s ; lus %d, rejetés %d, %s", summary.flux, summary.run_id, summary.statut,
             summary.lus, summary.rejetes,
             ", ".join(f"{rid} livrés {c['livres']} retenus {c['retenus']}" for rid, c in counts.items()))
    return summary

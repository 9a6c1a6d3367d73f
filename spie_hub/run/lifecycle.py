"""One input life cycle for the CLI and the DAG: claim, run, then archive or quarantine — or roll back.

    lock the flow → recover what an interruption left → claim the input (private copy) → run → archive → clean

Everything is resolved before the input is touched (registry, keys, store): a configuration error leaves the inbox
as it was. An interruption (SIGINT, SIGTERM, an error) before publication rolls the run back — input returned to
the inbox, staging removed, the audit told; after publication started, the next start completes it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, select

from connectors.transports.base import FileInfo, Transport
from connectors.transports.registry import open_transport
from spie_hub.audit.chain import ensure_signer
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.audit.signing import load_hub_signer
from spie_hub.core.errors import HubError, StorageError
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import Flow, get_flow
from spie_hub.run.claim import ClaimedInput, Gone, NotReady, Refused, claim_from, claim_path, input_ref
from spie_hub.run.flow_run import FlowRun, ProgressCallback, RunContext, new_run_id, preflight
from spie_hub.run.interrupt import Interrupted, sigterm_as_interrupt
from spie_hub.run.lock import FlowBusy, FlowLock
from spie_hub.run.recovery import CLAIM_FILE, RecoveryReport, recover_flow, rollback
from spie_hub.run.summary import RunSummary
from spie_hub.store import open_store, runs

log = logging.getLogger("spie_hub.run")


#: An input whose delivery to some recipient waits for its drop to be repaired (the run stays in publication).
PENDING = "livraison-en-attente"


def source_transport(flow: Flow, home: HubHome) -> Transport:
    return open_transport(flow.transport, home)


def pending_inputs(flow: Flow, home: HubHome, *, settle_first: bool = True) -> list[str]:
    """Opaque references of the inbox entries the flow would take (links and special files included: they are
    refused and reported, never read). First settles what an interruption left (``settle``): the DAG's detection
    and the CLI's inbox pass are what runs next after a crash, even when no new file arrives."""
    if settle_first:
        settle(flow, home)
    transport = source_transport(flow, home)
    return [input_ref(entry.name) for entry in transport.list(flow.transport.motif)]


def _find(transport: Transport, flow: Flow, ref: str) -> FileInfo | None:
    return next((e for e in transport.list(flow.transport.motif) if input_ref(e.name) == ref), None)


def _status_summary(flow: Flow, run_id: str, status: str, ref: str, message: str) -> RunSummary:
    return RunSummary(run_id, flow.id, status, message=message, reference=ref)


def _run(flow: Flow, home: HubHome, engine: Engine, claim: Callable[[Path], ClaimedInput], origin: dict[str, str],
         ref: str, progress: ProgressCallback | None, *, on_refused: Callable[[], None] | None = None) -> RunSummary:
    # Keys first: a missing key must fail before the input is touched.
    pseudonymiser = load_pseudonymiser(home)
    signer = load_hub_signer(home)
    ensure_signer(engine, signer)
    mapping = preflight(flow, home)
    with sigterm_as_interrupt(), FlowLock(engine, home, flow.id) as lock:
        ctx = RunContext(flow, home, engine, pseudonymiser, signer, lock, dt.date.today())
        recover_flow(ctx)
        run_id = new_run_id()
        private = home.staging / run_id
        private.mkdir(parents=True, mode=0o700)
        (private / CLAIM_FILE).write_text(json.dumps({"flux": flow.id, **origin}), encoding="utf-8")
        try:
            claimed = claim(private)
        except Gone as error:
            shutil.rmtree(private, ignore_errors=True)
            return _status_summary(flow, run_id, "absent", ref, str(error))
        except NotReady as error:
            shutil.rmtree(private, ignore_errors=True)
            return _status_summary(flow, run_id, "en-attente", ref, str(error))
        except Refused as error:
            shutil.rmtree(private, ignore_errors=True)
            if on_refused is not None:
                on_refused()
            AuditLog(engine).append([AuditEvent("fichier-refuse", {"reference": ref, "motif": str(error)},
                                                run_id, flow.id)])
            return _status_summary(flow, run_id, "refuse", ref, str(error))
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        try:
            run = FlowRun(ctx, claimed, run_id, mapping)
            summary = run.execute(progress)
        except BaseException as error:
            with engine.connect() as connection:
                status = connection.execute(select(runs.c.status).where(runs.c.run_id == run_id)).scalar()
            if status in (None, "en-cours"):
                try:
                    rollback(ctx, run_id, private, _reason(error))
                except Exception:  # noqa: BLE001 - the first error is the one to report; the next start finishes this
                    log.warning("Annulation de l'exécution %s inachevée : elle sera reprise au prochain démarrage", run_id)
            elif status == "publication" and isinstance(error, HubError):
                # Some recipient's drop refused its delivery (the others have theirs): it waits, staged, for the next
                # start. Said as this input's outcome, so that a pass over several inputs goes on with the next.
                summary = run.summary
                summary.statut, summary.message = PENDING, str(error)
                return summary
            converted = _storage(error, home)
            if converted is error:
                raise
            raise converted from None
        shutil.rmtree(private, ignore_errors=True)
        return summary


def _storage(error: BaseException, home: HubHome) -> BaseException:
    """An OS error, or SQLite's "disk is full", as the French ``StorageError`` naming the folder."""
    if isinstance(error, OSError):
        return StorageError.from_os(error, Path(error.filename).parent if error.filename else home.staging)
    text = str(getattr(error, "orig", error)).lower()
    if "disk is full" in text or "disk i/o" in text or "readonly database" in text:
        reason = "disque plein" if "full" in text else "base en lecture seule ou erreur disque"
        return StorageError(f"Écriture impossible dans la base du hub ({home.root}) : {reason}")
    return error


def _reason(error: BaseException) -> str:
    if isinstance(error, Interrupted):
        return "exécution interrompue (SIGTERM)"
    if isinstance(error, KeyboardInterrupt):
        return "exécution interrompue (SIGINT)"
    if isinstance(error, HubError):
        return str(error)
    return f"erreur inattendue ({type(error).__name__})"


@contextmanager
def _store(home: HubHome) -> Iterator[Engine]:
    engine = open_store(home.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def process_inbox_file(flow: Flow | str, ref: str, home: HubHome | None = None, *,
                       progress: ProgressCallback | None = None) -> RunSummary:
    """Run the flow on the inbox entry whose opaque reference is ``ref``."""
    flow = get_flow(flow) if isinstance(flow, str) else flow
    home = (home or HubHome.from_env()).ensure()
    transport = source_transport(flow, home)
    with _store(home) as engine:
        entry = _find(transport, flow, ref)
        if entry is None:
            return _status_summary(flow, "", "absent", ref, "Fichier absent de la boîte de dépôt (déjà traité ?)")
        stability = float(flow.transport.stabilite_secondes)
        return _run(flow, home, engine, lambda private: claim_from(transport, entry.name, private, stability=stability),
                    {"origine": "boite", "nom": entry.name}, ref, progress,
                    on_refused=lambda: transport.delete(entry.name, expected=entry))


def process_path(flow: Flow | str, path: Path, home: HubHome | None = None, *,
                 progress: ProgressCallback | None = None) -> RunSummary:
    """Run the flow on a file named by the operator (left where it is; the hub archives its own copy)."""
    flow = get_flow(flow) if isinstance(flow, str) else flow
    home = (home or HubHome.from_env()).ensure()
    path = Path(os.path.abspath(path))
    with _store(home) as engine:
        return _run(flow, home, engine, lambda private: claim_path(path, private), {"origine": "chemin"},
                    input_ref(path.name), progress)


def settle(flow: Flow | str, home: HubHome | None = None) -> RecoveryReport | None:
    """Settle what an interruption left for the flow, if no run of it is under way (None when one is). Called
    before every listing of the inbox: a claimed input is no longer there to trigger a run that would recover it."""
    flow = get_flow(flow) if isinstance(flow, str) else flow
    home = (home or HubHome.from_env()).ensure()
    pseudonymiser, signer = load_pseudonymiser(home), load_hub_signer(home)
    with _store(home) as engine:
        ensure_signer(engine, signer)
        try:
            with FlowLock(engine, home, flow.id, wait=0) as lock:
                return recover_flow(RunContext(flow, home, engine, pseudonymiser, signer, lock, dt.date.today()))
        except FlowBusy:
            return None


def process_inbox(flow: Flow | str, home: HubHome | None = None) -> list[RunSummary]:
    """Every pending inbox file of the flow, one after the other (the CLI's ``run`` without ``--input``)."""
    flow = get_flow(flow) if isinstance(flow, str) else flow
    home = (home or HubHome.from_env()).ensure()
    return [process_inbox_file(flow, ref, home) for ref in pending_inputs(flow, home)]


def run_flow(flow_id: str, input_path: Path, home: HubHome | None = None, *,
             progress: ProgressCallback | None = None) -> RunSummary:
    """The plain-Python entry point: run ``flow_id`` on a file (the same life cycle as the DAG's)."""
    return process_path(flow_id, input_path, home, progress=progress)

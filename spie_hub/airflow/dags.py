"""Airflow side of the hub: one DAG per registry entry, each task a thin call into the plain pipeline.

Nothing here touches a database, a key or the network at import (parse) time: Airflow is imported inside
``build_dag`` and the tasks resolve everything when they run. XComs carry counts and opaque file references,
never a partner's file name or a person's data.

Shape of a flow's DAG: ``propager_retraits`` → ``detecter_fichiers`` → ``executer_flux`` (mapped, one per inbox
file, labelled by its opaque reference) → ``verifier_audit`` (runs whatever happened before it).

What Airflow shows (``airflow_error``): a quarantined or refused input fails its mapped task, a file still being
written skips it, a file already gone succeeds quietly. A configuration error (missing key, bad registry) fails at
once; only transient errors (``RetriableError`` — the flow's lock busy among them — and ``StorageError``) are
retried, with exponential backoff; anything unexpected fails without retry. Every failure is alerted on once by
``spie_hub.airflow.notify``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from spie_hub.core.home import HubHome
from spie_hub.registry import Flow
from spie_hub.run.claim import input_ref

log = logging.getLogger("spie_hub.airflow")
DAG_PREFIX = "spie_"
OWNER = "hub-spie"
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

#: One flow run on one input: a national CNAF file (several GB) takes hours, plus up to SPIE_HUB_LOCK_WAIT
#: (10 min) waiting for another run of the flow. Past this, Airflow stops the task (the run rolls back).
FLOW_EXECUTION_TIMEOUT = dt.timedelta(hours=6)
#: Withdrawal notices for every flow (a few thousand withdrawals at most between two runs).
PROPAGATION_TIMEOUT = dt.timedelta(minutes=30)
#: Listing an inbox.
DETECTION_TIMEOUT = dt.timedelta(minutes=10)
#: Verifying the whole audit chain (it grows with every run until the purge).
AUDIT_CHECK_TIMEOUT = dt.timedelta(hours=1)
#: The daily retention purge.
PURGE_TIMEOUT = dt.timedelta(hours=2)
#: Any task added without a timeout of its own.
DEFAULT_TASK_TIMEOUT = dt.timedelta(minutes=30)

#: Transient errors only: 2 retries after 5 then 10 minutes (at most 1 hour).
RETRIES = 2
RETRY_DELAY = dt.timedelta(minutes=5)
RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY = dt.timedelta(hours=1)

#: The mapped task's label in the UI: the input's opaque reference, never the partner's file name.
MAP_INDEX_TEMPLATE = "{{ task.op_kwargs['ref'] }}"

T = TypeVar("T")


def dag_id(flow: Flow) -> str:
    return DAG_PREFIX + flow.id.replace("-", "_")


def file_ref(name: str) -> str:
    return input_ref(name)


def default_args() -> dict[str, Any]:
    """Every task of the hub's DAGs: owner, transient-only retries with backoff, a timeout, the failure alert."""
    from spie_hub.airflow.notify import HubFailureNotifier

    return {
        "owner": OWNER,
        "retries": RETRIES,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": RETRY_BACKOFF,
        "max_retry_delay": MAX_RETRY_DELAY,
        "execution_timeout": DEFAULT_TASK_TIMEOUT,
        "on_failure_callback": [HubFailureNotifier()],
    }


def airflow_error(error: Exception, where: str) -> BaseException:
    """What to raise in Airflow for ``error``, raised by a task at ``where`` (flow and opaque reference, in French).

    Transient errors come back as they are (Airflow's retries apply); configuration errors, unusable inputs and
    anything unexpected become ``AirflowFailException`` (no retry), raised from the original error. The message
    quotes the hub's own errors (written without identifiers), never an unexpected error's text (it may quote a
    path or a value): its class names it, the traceback stays in the task's log.
    """
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from sqlalchemy.exc import DBAPIError, OperationalError

    from spie_hub.core.errors import ConfigurationError, HubError, RetriableError, StorageError

    if isinstance(error, (RetriableError, StorageError, AirflowException)):
        return error
    if isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated):
        # The hub's database unreachable or restarting: worth another try; the driver's text stays in the log.
        return RetriableError(f"{where} : base de données du hub injoignable ({type(error.orig).__name__}), nouvel essai")
    if isinstance(error, ConfigurationError):
        return AirflowFailException(f"{where} : configuration à corriger, pas de nouvel essai — {error}")
    if isinstance(error, HubError):
        return AirflowFailException(f"{where} : {error}")
    return AirflowFailException(f"{where} : erreur inattendue ({type(error).__name__}), pas de nouvel essai ; "
                                "détail dans le journal de la tâche")


def guarded(where: str, call: Callable[[], T]) -> T:
    """Run ``call``, turning its errors into what Airflow should do with them (``airflow_error``)."""
    try:
        return call()
    except Exception as error:
        raised = airflow_error(error, where)
        if raised is error:
            raise
        raise raised from error


def _place(flow: Flow, ref: str | None = None) -> str:
    return f"Flux {flow.id}" + (f", fichier {ref}" if ref else "")


def run_inbox_file(flow: Flow, ref: str, home: HubHome | None = None) -> dict[str, Any]:
    """Run the flow on the inbox file whose reference is ``ref`` (claim, run, archive or quarantine), and say to
    Airflow how it ended: the summary for XCom, or the exception the task must raise."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from spie_hub.run.lifecycle import process_inbox_file

    where = _place(flow, ref)
    summary = guarded(where, lambda: process_inbox_file(flow, ref, home))
    if summary.statut == "quarantaine":
        raise AirflowFailException(f"{where} : mis en quarantaine (exécution {summary.run_id}), rien n'a été livré ; "
                                   f"motif : {summary.message}")
    if summary.statut == "refuse":
        raise AirflowFailException(f"{where} : refusé sans être lu (exécution {summary.run_id}) ; motif : {summary.message}")
    if summary.statut == "livraison-en-attente":
        raise AirflowFailException(f"{where} : livré aux autres destinataires, en attente pour un dépôt qui refuse "
                                   f"l'écriture (exécution {summary.run_id}) ; terminé au prochain passage une fois le "
                                   f"dépôt réparé — {summary.message}")
    if summary.statut == "en-attente":
        raise AirflowSkipException(f"{where} : pas encore prêt ({summary.message})")
    return summary.for_xcom()


def _upstream_failures(context: Any, task_ids: list[str]) -> int:
    ti = context["ti"]
    return ti.get_ti_count(dag_id=ti.dag_id, task_ids=task_ids, run_ids=[ti.run_id],
                           states=["failed", "upstream_failed"])


def verify_audit(flow_id: str | None = None) -> dict[str, Any]:
    """The chain verifies, and (for a flow) no delivery is left half-published by an earlier interruption that the
    start of this DAG run could not complete (a drop still broken): someone must look."""
    from sqlalchemy import select

    from spie_hub.audit.chain import verify
    from spie_hub.core.errors import HubError
    from spie_hub.store import open_store, runs

    engine = open_store(HubHome.from_env().database_url)
    try:
        # Incremental: from the head this hub last verified, whose root the stored tree must still give; the whole
        # log is re-read by `spie-hub audit verify --complet` (docs/exploitation.md), not at the end of every run.
        result = verify(engine, incremental=True)
        with engine.connect() as connection:
            stuck = connection.execute(select(runs.c.run_id).where(
                runs.c.flow == flow_id, runs.c.status == "publication")).scalars().all() if flow_id else []
    finally:
        engine.dispose()
    if not result.ok:
        raise HubError(f"Journal d'audit altéré à l'entrée n° {result.first_bad_seq} : {result.reason}")
    if stuck:
        raise HubError(f"Livraison inachevée (exécution(s) {', '.join(stuck)}) : interrompue (un dépôt de destinataire "
                       "qui refuse l'écriture, un retrait arrivé pendant la publication, un arrêt) ; `spie-hub reprise` "
                       "la complète ou l'annule et dit pourquoi (détail dans le journal d'audit, « reprise »)")
    return {"entrees": result.entries}


def _max_map_length() -> int:
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)


def build_dag(flow: Flow) -> Any:
    from airflow.sdk import DAG, get_current_context, task

    from spie_hub.airflow.notify import UpstreamFailures

    with DAG(
        dag_id=dag_id(flow),
        description=flow.titre,
        schedule=flow.planification,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        tags=["spie", flow.partenaire, *[r.id for r in flow.destinataires]],
        doc_md=f"**{flow.titre}**\n\nFinalité : {flow.finalite}\n\nGénéré depuis `flows.yaml` (flux `{flow.id}`).",
    ) as dag:

        @task(execution_timeout=PROPAGATION_TIMEOUT)
        def propager_retraits() -> dict[str, int]:
            from spie_hub.run.withdrawals import propagate

            report = guarded(f"{_place(flow)}, propagation des retraits", lambda: propagate())
            return {"retraits": report.retraits, "avis": report.avis}

        # all_done: a failed propagation (alerted on, and failing the DAG run) does not hold the inputs back —
        # each run decides on the consents as recorded, withdrawals included; the notices follow at the next pass.
        @task(trigger_rule="all_done", execution_timeout=DETECTION_TIMEOUT)
        def detecter_fichiers() -> list[str]:
            from spie_hub.run.lifecycle import pending_inputs

            refs = guarded(_place(flow), lambda: pending_inputs(flow, HubHome.from_env().ensure()))
            # Airflow maps at most [core] max_map_length items: the rest waits for the next DAG run, in order.
            limit = _max_map_length()
            if len(refs) > limit:
                log.info("%s : %d fichiers en attente, %d traités dans cette exécution du DAG", _place(flow), len(refs), limit)
            return refs[:limit]

        @task(max_active_tis_per_dag=1, execution_timeout=FLOW_EXECUTION_TIMEOUT, map_index_template=MAP_INDEX_TEMPLATE)
        def executer_flux(ref: str) -> dict[str, Any]:
            return run_inbox_file(flow, ref)

        @task(trigger_rule="all_done", execution_timeout=AUDIT_CHECK_TIMEOUT)
        def verifier_audit(resultats: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            checked = guarded(f"{_place(flow)}, vérification du journal d'audit", lambda: verify_audit(flow.id))
            # The only leaf: unless it fails too, a failed file would leave the DAG run green.
            failed = _upstream_failures(get_current_context(), ["propager_retraits", "detecter_fichiers", "executer_flux"])
            if failed:
                raise UpstreamFailures(f"{_place(flow)} : journal d'audit intègre ({checked['entrees']} entrées), mais "
                                       f"{failed} tâche(s) en échec dans cette exécution (déjà signalées)")
            return checked | {"executions": len(resultats) if resultats is not None else 0}

        refs = detecter_fichiers()
        propager_retraits() >> refs
        verifier_audit(executer_flux.expand(ref=refs))
    return dag


PURGE_DAG_ID = DAG_PREFIX + "purge_conservation"


def run_purge(home: HubHome | None = None) -> dict[str, int]:
    from spie_hub.audit.signing import load_hub_signer
    from spie_hub.registry import load_flows, organisation
    from spie_hub.run.retention import AUDIT_RETENTION_DAYS, purge
    from spie_hub.store import open_store

    home = (home or HubHome.from_env()).ensure()
    engine = open_store(home.database_url)
    signer = load_hub_signer(home)
    days = int(organisation().get("conservation_journal_jours", AUDIT_RETENTION_DAYS))
    try:
        return {report.flux: len(report.fichiers) for report in purge(engine, home, load_flows(), signer=signer, audit_days=days)}
    finally:
        engine.dispose()


def build_purge_dag() -> Any:
    """Daily purge of what each flow keeps beyond its retention period (see spie_hub/run/retention.py)."""
    from airflow.sdk import DAG, task

    with DAG(
        dag_id=PURGE_DAG_ID,
        description="Purge des fichiers au-delà de la durée de conservation de chaque flux",
        schedule="@daily",
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        tags=["spie", "conservation"],
        doc_md="Supprime ce qui dépasse `conservation_jours` (flows.yaml) et inscrit chaque purge au journal d'audit.",
    ) as dag:

        @task(execution_timeout=PURGE_TIMEOUT)
        def purger() -> dict[str, int]:
            return guarded("Purge de conservation", run_purge)

        purger()
    return dag

"""Airflow side of the hub: one DAG per registry entry, each task a thin call into the plain pipeline.

Nothing here touches a database, a key or the network at import (parse) time: Airflow is imported inside
``build_dag`` and the tasks resolve everything when they run. XComs carry counts and opaque file references,
never a partner's file name or a person's data.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from spie_hub.core.home import HubHome
from spie_hub.registry import Flow
from spie_hub.run.claim import input_ref

DAG_PREFIX = "spie_"


def dag_id(flow: Flow) -> str:
    return DAG_PREFIX + flow.id.replace("-", "_")


def file_ref(name: str) -> str:
    return input_ref(name)


def run_inbox_file(flow: Flow, ref: str, home: HubHome | None = None) -> dict[str, Any]:
    """Run the flow on the inbox file whose reference is ``ref`` (claim, run, archive or quarantine)."""
    from spie_hub.run.lifecycle import process_inbox_file

    return process_inbox_file(flow, ref, home).for_xcom()


def build_dag(flow: Flow) -> Any:
    from airflow.sdk import DAG, task

    with DAG(
        dag_id=dag_id(flow),
        description=flow.titre,
        schedule=flow.planification,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        tags=["spie", flow.partenaire, *[r.id for r in flow.destinataires]],
        doc_md=f"**{flow.titre}**\n\nFinalité : {flow.finalite}\n\nGénéré depuis `flows.yaml` (flux `{flow.id}`).",
    ) as dag:

        @task
        def detecter_fichiers() -> list[str]:
            from spie_hub.run.lifecycle import pending_inputs

            return pending_inputs(flow, HubHome.from_env().ensure())

        @task(max_active_tis_per_dag=1, retries=2, retry_delay=dt.timedelta(minutes=5))
        def executer_flux(ref: str) -> dict[str, Any]:
            return run_inbox_file(flow, ref)

        @task(trigger_rule="all_done")
        def verifier_audit(resultats: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            from spie_hub.audit.chain import verify
            from spie_hub.core.errors import HubError
            from spie_hub.store import open_store

            engine = open_store(HubHome.from_env().database_url)
            result = verify(engine)
            engine.dispose()
            if not result.ok:
                raise HubError(f"Journal d'audit altéré à l'entrée n° {result.first_bad_seq} : {result.reason}")
            return {"entrees": result.entries, "executions": len(resultats) if resultats is not None else 0}

        verifier_audit(executer_flux.expand(ref=detecter_fichiers()))
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
    """Daily purge of what each flow keeps beyond its retention period (see spie_hub/retention.py)."""
    from airflow.sdk import DAG, task

    with DAG(
        dag_id=PURGE_DAG_ID,
        description="Purge des fichiers au-delà de la durée de conservation de chaque flux",
        schedule="@daily",
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        tags=["spie", "conservation"],
        doc_md="Supprime ce qui dépasse `conservation_jours` (flows.yaml) et inscrit chaque purge au journal d'audit.",
    ) as dag:

        @task
        def purger() -> dict[str, int]:
            return run_purge()

        purger()
    return dag

"""Airflow side of the hub: one DAG per registry entry, each task a thin call into the plain pipeline.

Nothing here touches a database, a key or the network at import (parse) time: Airflow is imported inside
``build_dag`` and the tasks resolve everything when they run. XComs carry counts and opaque file references,
never a partner's file name or a person's data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path
from typing import Any

from connectors.transports.local import printable_name
from spie_hub.core.home import HubHome
from spie_hub.core.registry import Flow

DAG_PREFIX = "spie_"


def dag_id(flow: Flow) -> str:
    return DAG_PREFIX + flow.id.replace("-", "_")


def file_ref(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]


def inbox_files(flow: Flow, home: HubHome) -> list[Path]:
    folder = home.root / flow.transport.dossier
    return sorted(p for p in folder.glob(flow.transport.motif) if p.is_file() and not p.name.startswith("."))


def run_inbox_file(flow: Flow, ref: str, home: HubHome | None = None) -> dict[str, Any]:
    """Run the flow on the inbox file whose reference is ``ref``, then archive (or drop, if quarantined) it."""
    from spie_hub.run.flow_run import run_flow

    home = (home or HubHome.from_env()).ensure()
    path = next((p for p in inbox_files(flow, home) if file_ref(p.name) == ref), None)
    if path is None:
        return {"fichier": ref, "statut": "absent"}
    summary = run_flow(flow.id, path, home)
    if summary.statut == "quarantaine":
        path.unlink()  # a copy is kept in the quarantine folder with its report
    else:
        archive = home.root / "archive" / flow.id
        archive.mkdir(parents=True, exist_ok=True)
        shutil.move(path, archive / f"{summary.run_id}_{printable_name(path.name)}")
    return {
        "fichier": ref, "execution": summary.run_id, "statut": summary.statut, "lus": summary.lus,
        "rejetes": summary.rejetes, "anomalies": summary.anomalies,
        "destinataires": {rid: {"livres": c.livres, "retenus": c.retenus} for rid, c in summary.destinataires.items()},
    }


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
            return [file_ref(p.name) for p in inbox_files(flow, HubHome.from_env().ensure())]

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
    from spie_hub.core.registry import load_flows, organisation
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

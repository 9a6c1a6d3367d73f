"""Real Airflow 3: the generated DAGs import cleanly, parse fast, and run the flow end to end with dag.test()."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from helpers import people_of

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    from airflow.utils import db

    db.resetdb()
    return Path(os.environ["AIRFLOW_HOME"])


def test_the_dag_folder_imports_without_error_and_has_one_dag_per_flow(airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from spie_hub.airflow.dags import dag_id
    from spie_hub.registry import load_flows

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {dag_id(f) for f in load_flows().values()} | {"spie_purge_conservation"}
    dag = bag.get_dag("spie_caf_vers_departement")
    assert {t.task_id for t in dag.tasks} == {"propager_retraits", "detecter_fichiers", "executer_flux", "verifier_audit"}


def test_parsing_the_dag_file_touches_no_database_and_is_quick(tmp_path, monkeypatch) -> None:
    # Point the hub at a database URL that cannot work: parsing must not notice.
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path / "absent"))
    import runpy

    started = time.perf_counter()
    namespace = runpy.run_path(str(REPO / "dags" / "spie_flux.py"))
    elapsed = time.perf_counter() - started
    assert "spie_caf_vers_departement" in namespace
    assert not (tmp_path / "absent").exists()
    assert elapsed < 2.0, f"DAG parse took {elapsed:.2f}s"


def test_the_flow_runs_end_to_end_in_airflow_with_no_identity_in_xcoms(airflow_db, hub_home, capfd) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate

    home = HubHome.from_env().ensure()
    inbox = home.root / "inbox" / "caf-msa"
    inbox.mkdir(parents=True)
    generate(inbox / "NRSACGIM_RSABEM_TEST.xml", None, 50, seed=3)
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("spie_caf_vers_departement")
    run = dag.test()
    assert str(run.state) == "success"
    assert list((home.outbox / "departement-052").glob("*.csv"))
    assert not list(inbox.glob("*.xml")) and list((home.root / "archive" / "caf-vers-departement").glob("*_entree"))

    people = people_of(next((home.root / "archive" / "caf-vers-departement").glob("*_entree")))
    with sqlite3.connect(airflow_db / "airflow.db") as connection:
        xcoms = " ".join(str(row) for row in connection.execute("SELECT * FROM xcom"))
    output = capfd.readouterr()
    logs = output.out + output.err
    assert "RSABEM_TEST" not in xcoms  # partner file names travel as opaque references
    for person in people:
        for value in (person["NIR"], person["DTNAI"], f'{person["PRENOM"]}'):
            assert value not in xcoms
        assert person["NIR"] not in logs and person["DTNAI"] not in logs


def test_the_purge_dag_runs_in_airflow_and_audits_each_flows_purge(airflow_db, hub_home) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from sqlalchemy import select

    from spie_hub.core.home import HubHome
    from spie_hub.registry import load_flows
    from spie_hub.store import audit_log, open_store

    home = HubHome.from_env().ensure()
    stale = home.root / "archive" / "caf-vers-departement" / "ancien.xml"
    stale.parent.mkdir(parents=True)
    stale.write_text("<Racine/>")
    os.utime(stale, (time.time() - 800 * 86400,) * 2)
    run = DagBag(dag_folder=str(REPO / "dags")).get_dag("spie_purge_conservation").test()
    assert str(run.state) == "success" and not stale.exists()
    with open_store(home.database_url).connect() as c:
        purged = c.execute(select(audit_log.c.flow, audit_log.c.payload).where(audit_log.c.event == "purge")).all()
    assert {flow for flow, _ in purged} == set(load_flows())
    assert "archive/caf-vers-departement/ancien.xml" in purged[0].payload


@pytest.mark.parametrize("backend", ["variable", "connection"])
def test_inside_airflow_both_keys_come_from_the_secrets_backend(airflow_db, hub_home, monkeypatch, backend) -> None:
    import base64
    import csv
    import json

    from airflow.dag_processing.dagbag import DagBag

    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate

    monkeypatch.delenv("SPIE_HUB_PSEUDO_KEY")
    monkeypatch.delenv("SPIE_HUB_SIGNING_KEY")
    secret = base64.b64encode(b"a" * 32).decode()
    seed = base64.b64encode(b"e" * 32).decode()
    if backend == "variable":
        monkeypatch.setenv("AIRFLOW_VAR_SPIE_HUB_PSEUDO_KEY", f"airflowvar:{secret}")
        monkeypatch.setenv("AIRFLOW_VAR_SPIE_HUB_SIGNING_KEY", f"sigvar:{seed}")
    else:
        monkeypatch.setenv("AIRFLOW_CONN_SPIE_HUB_PSEUDO_KEY",
                           json.dumps({"conn_type": "generic", "login": "airflowconn", "password": secret}))
        monkeypatch.setenv("AIRFLOW_CONN_SPIE_HUB_SIGNING_KEY",
                           json.dumps({"conn_type": "generic", "login": "sigconn", "password": seed}))
    home = HubHome.from_env().ensure()
    (home.root / "inbox" / "caf-msa").mkdir(parents=True)
    generate(home.root / "inbox" / "caf-msa" / "flux.xml", None, 20, seed=5)
    run = DagBag(dag_folder=str(REPO / "dags")).get_dag("spie_caf_vers_departement").test()
    assert str(run.state) == "success"
    delivered = next((home.outbox / "departement-052").glob("*.csv"))
    with delivered.open(encoding="utf-8-sig") as handle:
        kids = {row["Pseudonyme"].split(".")[0] for row in csv.DictReader(handle, delimiter=";")}
    assert kids == {"airflowvar" if backend == "variable" else "airflowconn"}
    manifest = json.loads(delivered.with_name(delivered.stem + ".manifest.json").read_text(encoding="utf-8"))
    assert manifest["signature"]["cle"] == ("sigvar" if backend == "variable" else "sigconn")


# -- what Airflow shows: failures, skips, retries, labels, alerts -------------------------------------------------

CAF_DAG = "spie_caf_vers_departement"


def _caf_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).get_dag(CAF_DAG)


def _task_instances(airflow_db: Path, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    with sqlite3.connect(airflow_db / "airflow.db") as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT task_id, map_index, state, try_number, rendered_map_index FROM task_instance "
                                  "WHERE dag_id = ? AND run_id = ?", (CAF_DAG, run_id)).fetchall()
    return {(r["task_id"], r["map_index"]): dict(r) for r in rows}


def _caf_inbox() -> Path:
    from spie_hub.core.home import HubHome

    inbox = HubHome.from_env().ensure().root / "inbox" / "caf-msa"
    inbox.mkdir(parents=True, exist_ok=True)
    return inbox


def test_every_task_of_every_generated_dag_has_a_timeout_an_owner_backoff_and_the_failure_alert(airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from spie_hub.airflow.dags import FLOW_EXECUTION_TIMEOUT, MAP_INDEX_TEMPLATE
    from spie_hub.airflow.notify import HubFailureNotifier

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {} and len(bag.dags) >= 2
    for dag in bag.dags.values():
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.execution_timeout is not None and task.execution_timeout.total_seconds() > 0, where
            assert task.owner == "hub-spie", where
            assert task.retry_exponential_backoff > 1 and task.max_retry_delay is not None, where
            assert any(isinstance(c, HubFailureNotifier) for c in task.on_failure_callback), where
        if dag.dag_id != "spie_purge_conservation":
            flow_task = dag.get_task("executer_flux")
            assert flow_task.map_index_template == MAP_INDEX_TEMPLATE
            assert flow_task.execution_timeout == FLOW_EXECUTION_TIMEOUT
            assert dag.get_task("propager_retraits").downstream_task_ids == {"detecter_fichiers"}
            assert dag.get_task("verifier_audit").trigger_rule == "all_done"


def test_a_quarantined_input_fails_its_mapped_task_and_the_dag_run_and_alerts_exactly_once(
        airflow_db, hub_home, monkeypatch) -> None:
    from test_notify import MailSink, use_alert_connection

    from spie_hub.airflow.dags import file_ref
    from spie_hub.airflow.notify import _warned_missing

    name = "NRSACGIM_RSABEM_CASSE.xml"
    (_caf_inbox() / name).write_text("ceci n'est pas un flux CNAF", encoding="utf-8")
    ref = file_ref(name)
    _warned_missing.clear()
    with MailSink() as sink:
        use_alert_connection(monkeypatch, sink.connection())
        run = _caf_dag().test()

    assert str(run.state) == "failed"
    tis = _task_instances(airflow_db, run.run_id)
    mapped = tis[("executer_flux", 0)]
    assert (mapped["state"], mapped["try_number"]) == ("failed", 1)  # failed at once, not retried
    assert mapped["rendered_map_index"] == ref  # the UI label is the opaque reference
    assert tis[("propager_retraits", -1)]["state"] == "success" and tis[("detecter_fichiers", -1)]["state"] == "success"
    assert tis[("verifier_audit", -1)]["state"] == "failed"  # audit intact, but it carries the failure to the run
    assert list((hub_home / "quarantine").iterdir())

    assert len(sink.messages) == 1  # one alert: the closing task's summary is not alerted on again
    mail = sink.messages[0].as_string()
    body = sink.messages[0].get_payload(decode=True).decode("utf-8")
    assert "Tâche : executer_flux" in body and f"Fichier (référence opaque) : {ref}" in body
    assert "AirflowFailException" in body and "quarantaine" in body and "caf-vers-departement" in body
    assert "RSABEM" not in mail and "CASSE" not in mail


def test_a_missing_pseudonymisation_key_fails_the_dag_run_at_once_without_retry(
        airflow_db, hub_home, monkeypatch) -> None:
    from test_notify import WebhookSink, use_alert_connection

    from spie_hub.demo.data import generate

    monkeypatch.delenv("SPIE_HUB_PSEUDO_KEY")
    inbox = _caf_inbox()
    generate(inbox / "flux.xml", None, 5, seed=8)
    assert not (hub_home / "keys" / "pseudonymisation.json").exists()
    dag = _caf_dag()
    for task_id in ("propager_retraits", "detecter_fichiers", "executer_flux"):
        task = dag.get_task(task_id)
        task.retries, task.retry_delay = 3, dt.timedelta(0)  # retried at once if it ever were
    with WebhookSink() as sink:
        use_alert_connection(monkeypatch, sink.connection())
        run = dag.test()

    assert str(run.state) == "failed"
    tis = _task_instances(airflow_db, run.run_id)
    # Detection settles interrupted runs first, which needs the keys: it fails there, before any input is touched.
    for task_id in ("propager_retraits", "detecter_fichiers"):
        assert (tis[(task_id, -1)]["state"], tis[(task_id, -1)]["try_number"]) == ("failed", 1)
    assert all(key[0] != "executer_flux" or ti["state"] == "upstream_failed" for key, ti in tis.items())
    assert (inbox / "flux.xml").exists()  # a configuration error leaves the inbox as it was
    alerted = {post["json"]["tache"]: post["json"] for post in sink.posts}
    assert set(alerted) == {"propager_retraits", "detecter_fichiers"} and len(sink.posts) == 2
    assert alerted["detecter_fichiers"]["erreur"] == "ConfigurationError (AirflowFailException)"
    assert "SPIE_HUB_PSEUDO_KEY" in alerted["detecter_fichiers"]["message"]  # names the variable to set


def test_a_busy_flow_is_a_transient_error_that_airflow_retries(airflow_db, hub_home, monkeypatch) -> None:
    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate
    from spie_hub.run import lock
    from spie_hub.store import open_store

    monkeypatch.setattr(lock, "DEFAULT_WAIT_SECONDS", 0.2)
    generate(_caf_inbox() / "flux.xml", None, 5, seed=9)
    dag = _caf_dag()
    flow_task = dag.get_task("executer_flux")
    flow_task.retries, flow_task.retry_delay = 1, dt.timedelta(0)
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    try:
        with lock.FlowLock(engine, home, "caf-vers-departement", wait=0):  # another run holds the flow
            run = dag.test()
    finally:
        engine.dispose()
    mapped = _task_instances(airflow_db, run.run_id)[("executer_flux", 0)]
    assert (mapped["state"], mapped["try_number"]) == ("failed", 2)  # FlowBusy, retried once, busy again
    assert str(run.state) == "failed"


def test_a_file_still_being_written_skips_its_mapped_task_and_stays_in_the_inbox(airflow_db, hub_home) -> None:
    from spie_hub.demo.data import generate

    inbox = _caf_inbox()
    generate(inbox / "flux.xml", None, 5, seed=4)
    later = time.time() + 3600  # modified "in the future": too recent for any stability delay
    os.utime(inbox / "flux.xml", (later, later))
    run = _caf_dag().test()

    assert str(run.state) == "success"
    tis = _task_instances(airflow_db, run.run_id)
    assert tis[("executer_flux", 0)]["state"] == "skipped"
    assert tis[("verifier_audit", -1)]["state"] == "success"
    assert (inbox / "flux.xml").exists()


def test_the_flow_task_passes_a_vanished_file_quietly_and_fails_a_quarantined_or_refused_one_by_reference_only(hub_home) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from spie_hub.airflow.dags import file_ref, run_inbox_file
    from spie_hub.registry import get_flow

    flow = get_flow("caf-vers-departement")
    inbox = _caf_inbox()
    assert run_inbox_file(flow, file_ref("parti.xml"))["statut"] == "absent"
    (inbox / "NRSACGIM_RSABEM_VIDE.xml").write_bytes(b"")
    with pytest.raises(AirflowFailException) as raised:
        run_inbox_file(flow, file_ref("NRSACGIM_RSABEM_VIDE.xml"))
    message = str(raised.value)
    assert file_ref("NRSACGIM_RSABEM_VIDE.xml") in message and "caf-vers-departement" in message
    assert "quarantaine" in message and "RSABEM" not in message
    (inbox / "NRSACGIM_RSABEM_LIEN.xml").symlink_to("/etc/passwd")
    with pytest.raises(AirflowFailException, match="refusé") as raised:
        run_inbox_file(flow, file_ref("NRSACGIM_RSABEM_LIEN.xml"))
    assert "RSABEM" not in str(raised.value) and "passwd" not in str(raised.value)


def test_only_transient_errors_reach_airflow_as_they_are() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from spie_hub.airflow.dags import airflow_error
    from spie_hub.core.errors import ConfigurationError, FatalInputError, RetriableError, StorageError
    from spie_hub.run.lock import FlowBusy

    for transient in (RetriableError("réseau"), FlowBusy("occupé"), StorageError("disque plein")):
        assert airflow_error(transient, "Flux x") is transient
    for final in (ConfigurationError("clé absente"), FatalInputError("illisible"), KeyError("NRSACGIM_RSABEM.xml")):
        converted = airflow_error(final, "Flux x, fichier abc")
        assert isinstance(converted, AirflowFailException) and "Flux x" in str(converted)
    assert "RSABEM" not in str(airflow_error(KeyError("NRSACGIM_RSABEM.xml"), "Flux x"))

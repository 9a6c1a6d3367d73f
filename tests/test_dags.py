"""Real Airflow 3: the generated DAGs import cleanly, parse fast, and run the flow end to end with dag.test()."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

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
    assert {t.task_id for t in dag.tasks} == {"detecter_fichiers", "executer_flux", "verifier_audit"}


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
    assert not list(inbox.glob("*.xml")) and list((home.root / "archive" / "caf-vers-departement").glob("*.xml"))

    people = people_of(next((home.root / "archive" / "caf-vers-departement").glob("*.xml")))
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

"""The whole demo, as a newcomer runs it, leaves no identity of the synthetic population in any log (Airflow task
logs included), XCom or audit entry: NIRs (13 characters and with their key), names, birth dates."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from helpers import people_of

from spie_hub.core.nir import cle_nir

pytestmark = pytest.mark.airflow


def _other_dates(home: Path) -> set[str]:
    """Dates the hub legitimately writes that are not anyone's birth date (consent periods, RSA request dates…):
    a birth date equal to one of them, found in the audit, identifies nobody."""
    import re

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in (home / "demo").glob("*")]
    texts += [re.sub(r"<DTNAI>[^<]*</DTNAI>", "", p.read_text(encoding="cp1252"))
              for p in (home / "archive" / "caf-vers-departement").glob("*_entree")]
    return {d for text in texts for d in re.findall(r"\d{4}-\d{2}-\d{2}", text)}


def _forms(person: dict[str, str], other_dates: set[str]) -> list[str]:
    forms = []
    nir = person["NIR"] or ""
    if len(nir) >= 13:
        forms.append(nir[:13])
        if nir[3:5] != "13":  # the deliberately invalid NIRs have no key to add
            forms.append(f"{nir[:13]}{cle_nir(nir[:13]):02d}")
    if person["DTNAI"] and person["DTNAI"] not in other_dates:
        year, month, day = person["DTNAI"].split("-")
        forms += [person["DTNAI"], f"{day}/{month}/{year}"]
    forms += [person["NOM"], person["PRENOM"]]
    return [f for f in forms if f and len(f) > 3]


def test_the_demo_leaves_no_identity_in_logs_xcoms_or_the_audit(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SPIE_HUB"))}
    # dag.test() runs the tasks in process: their logs go to the console, at INFO so that they are all there.
    env.update({"SPIE_HUB_HOME": str(home), "PYTHONWARNINGS": "ignore", "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"})
    result = subprocess.run([sys.executable, "-m", "spie_hub.cli", "demo", "--foyers", "150"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Rapport DPO" in result.stdout
    # Every flow of the registry ran on its partners' samples, and each recipient's files and withholdings are told.
    from spie_hub.core.home import REGISTRY_PATH
    from spie_hub.registry import load_flows

    for flow_id in load_flows(REGISTRY_PATH):
        if flow_id != "caf-vers-departement":
            assert f"   {flow_id} : termine" in result.stdout, flow_id
    for recipient in ("france-travail", "missions-locales", "cap-emploi", "departement-052"):
        assert f"\n   {recipient}\n     reçu   : " in result.stdout, recipient
    assert "retenu : " in result.stdout and "hors périmètre du flux" in result.stdout

    flux = next((home / "archive" / "caf-vers-departement").glob("*_entree"))
    people = people_of(flux)
    assert len(people) > 200

    airflow_home = home / "airflow"
    texts = {"sortie de la démo": result.stdout + result.stderr}
    for path in airflow_home.rglob("*"):
        if path.is_file() and path.suffix in {".log", ".json", ".txt", ""} and "logs" in path.parts:
            texts[str(path.relative_to(home))] = path.read_text(encoding="utf-8", errors="replace")
    assert "Flux caf-vers-departement, exécution" in texts["sortie de la démo"], "the task logs are in the scan"
    with sqlite3.connect(airflow_home / "airflow.db") as connection:
        texts["xcom"] = " ".join(str(row) for row in connection.execute("SELECT * FROM xcom"))
        texts["journal des tâches Airflow"] = " ".join(str(row) for row in connection.execute("SELECT * FROM log"))
        texts["champs rendus des tâches"] = " ".join(
            str(row) for row in connection.execute("SELECT * FROM rendered_task_instance_fields"))
    with sqlite3.connect(home / "hub.sqlite3") as connection:
        texts["journal d'audit"] = " ".join(str(row) for row in connection.execute("SELECT * FROM audit_log"))
        texts["exécutions"] = " ".join(str(row) for row in connection.execute("SELECT * FROM runs"))
    assert texts["xcom"] and texts["journal d'audit"]

    other_dates = _other_dates(home)
    assert sum(1 for p in people if p["DTNAI"] not in other_dates) > 0.9 * len(people)  # the scan still covers them
    leaks = [(where, form) for person in people for form in _forms(person, other_dates)
             for where, text in texts.items() if form in text]
    assert leaks == []

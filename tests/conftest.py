"""Shared fixtures: an isolated hub home, a key, and the store on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
CAF_FIXTURES = FIXTURES / "caf_msa"
PG_ADMIN_URL = os.environ.get("SPIE_HUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# Airflow must be configured before anything imports it (tests/test_dags.py imports it).
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="spie-hub-tests-airflow-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ.setdefault("PYTHONWARNINGS", "ignore")


@pytest.fixture(autouse=True)
def _embedded_store_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.delenv("SPIE_HUB_DATABASE_URL", raising=False)
    # Every audit append is sealed by a signed head: a test that appends without the hub_home fixture signs with a
    # test key, in a home of its own (never the checkout's .spie-hub). Tests about a missing key remove it.
    if "SPIE_HUB_HOME" not in os.environ:
        monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path_factory.mktemp("hub-par-defaut")))
    if "SPIE_HUB_SIGNING_KEY" not in os.environ and "SPIE_HUB_SIGNING_KEY_FILE" not in os.environ:
        monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(b"s" * 32).decode())


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hub"
    monkeypatch.setenv("SPIE_HUB_HOME", str(home))
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", "t1:" + base64.b64encode(b"k" * 32).decode())
    monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(b"s" * 32).decode())
    return home


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the session; a missing server fails the run under CI=true."""
    if not _pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL injoignable ({PG_ADMIN_URL}) : requis quand CI=true")
        pytest.skip("PostgreSQL injoignable (définir CI=true pour en faire une erreur)")
    import psycopg

    name = f"spie_hub_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store URL on both engines; on PostgreSQL each test gets its own schema-free database reset."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
        from sqlalchemy import create_engine

        from spie_hub.store import metadata

        engine = create_engine(url)
        metadata.drop_all(engine)
        engine.dispose()
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", url)
    return url


@pytest.fixture
def held_processes() -> Iterator[list]:
    """Processes the test holds stopped: resumed and killed at the end, whatever happened (only these)."""
    held: list = []
    yield held
    for process in held:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.communicate()

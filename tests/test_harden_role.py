"""`spie-hub base durcir` leaves the hub working: everything it does, done connected AS the restricted role on the
real PostgreSQL (a login of its own, not the owner switching roles), and a re-run delivers nothing twice."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import consent_resource, people_of, write_bundle
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import DBAPIError

from spie_hub.audit.chain import verify
from spie_hub.audit.signing import load_hub_signer
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.run.retention import purge_audit
from spie_hub.store import audit_log, deliveries, metadata, open_store, pseudo_keys, revocations

DEP = "departement-052"


@pytest.fixture
def restricted(postgres_url: str, hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(owner URL, restricted role URL): the owner created the store and hardened the role, as in production."""
    reset = create_engine(postgres_url)
    metadata.drop_all(reset)
    reset.dispose()
    role = f"spie_app_{uuid.uuid4().hex[:8]}"
    owner = open_store(postgres_url)
    with owner.begin() as c:
        c.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    owner.dispose()
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", postgres_url)
    assert main(["base", "durcir", "--role", role]) == 0
    app_url = postgres_url.replace("postgres@", f"{role}@", 1)
    assert "postgres@" in postgres_url and app_url != postgres_url
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", app_url)
    try:
        yield postgres_url, app_url
    finally:
        admin = create_engine(postgres_url)
        with admin.begin() as c:
            c.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            c.exec_driver_sql(f'DROP OWNED BY "{role}"')
            c.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()


def test_after_hardening_the_hub_runs_imports_propagates_and_purges_as_the_restricted_role(
        restricted: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    owner_url, app_url = restricted
    flux = tmp_path / "flux.xml"
    generate(flux, None, 30, seed=11, anomaly_rate=0)
    people = [p for p in people_of(flux) if p["NIR"]][:5]
    bundle = write_bundle(tmp_path / "accords.json",
                          *[consent_resource(f"c{i}", p["NIR"]) for i, p in enumerate(people)])
    home = HubHome.from_env().ensure()

    app = create_engine(app_url)
    with app.connect() as c:  # really connected as the restricted login, not the owner
        assert c.exec_driver_sql("SELECT current_user").scalar_one() == app_url.split("//", 1)[1].split("@", 1)[0]
    assert main(["consent", "import", str(bundle), "--emetteur", DEP]) == 0
    assert main(["run", "--flux", "caf-vers-departement", "--input", str(flux)]) == 0
    with app.connect() as c:
        delivered = c.execute(select(deliveries.c.recipient)).scalars().all()
    assert sorted(delivered) == sorted(set(delivered)) and len(delivered) >= 2  # every recipient, once

    # The same file again: nothing is delivered a second time.
    files_before = sorted(p.name for p in home.outbox.rglob("*.csv"))
    assert main(["run", "--flux", "caf-vers-departement", "--input", str(flux)]) == 0
    assert sorted(p.name for p in home.outbox.rglob("*.csv")) == files_before
    with app.connect() as c:
        assert c.execute(select(func.count()).select_from(deliveries)).scalar_one() == len(delivered)

    # A withdrawal, its propagation (deletion notice), then the retention purge.
    withdrawal = write_bundle(tmp_path / "retrait.json", consent_resource("c0", people[0]["NIR"], status="inactive"))
    assert main(["consent", "import", str(withdrawal), "--emetteur", DEP]) == 0
    assert main(["consent", "propager"]) == 0
    with app.connect() as c:
        assert c.execute(select(func.count()).select_from(revocations)
                         .where(revocations.c.propagated_at.is_(None))).scalar_one() == 0
    assert main(["purge"]) == 0
    # The audit's own retention goes through the purge function the role may execute: announced, at a signed head,
    # never on entries younger than the floor the owner sets (a test deployment lowers it; the role cannot).
    app_store = open_store(app_url)
    with pytest.raises(DBAPIError, match="moins de 365 jours"):
        purge_audit(app_store, load_hub_signer(home), dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    with pytest.raises(DBAPIError, match="permission denied|droit refusé"), app_store.begin() as c:
        c.exec_driver_sql("UPDATE audit_policy SET min_age_days = 0")
    owner = create_engine(owner_url)
    with owner.begin() as c:
        c.exec_driver_sql("UPDATE audit_policy SET min_age_days = 0")
    owner.dispose()
    monkeypatch.setenv("SPIE_HUB_AUDIT_MIN_AGE_DAYS", "0")  # the verifier's own floor, agreed for this deployment
    removed = purge_audit(app_store, load_hub_signer(home), dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert removed > 0 and verify(app_store).ok
    with app_store.connect() as c:
        assert c.execute(select(func.count()).select_from(pseudo_keys)).scalar_one() >= 1
    with app_store.begin() as c:  # retiring a key is the one change the role may make to the key registry
        c.exec_driver_sql("UPDATE pseudo_keys SET retired_at = retired_at")
    # Still append-only for that role.
    for statement in ("DELETE FROM audit_log", "UPDATE audit_anchor SET seq = 0", "DELETE FROM pseudo_keys",
                      "UPDATE pseudo_keys SET fingerprint = 'x'"):
        with pytest.raises(DBAPIError, match="permission denied|droit refusé"), app_store.begin() as c:
            c.exec_driver_sql(statement)
    app_store.dispose()
    app.dispose()
    assert main(["audit", "verify"]) == 0
    owner = create_engine(owner_url)
    with owner.connect() as c:
        assert c.execute(select(func.count()).select_from(audit_log)).scalar_one() >= 1
    owner.dispose()


def test_an_operation_the_database_refuses_to_the_role_ends_in_a_french_message_without_traceback(
        restricted: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """A grant missing (a table added by a later version, a DBA's own revoke): exit 77, what to do, no statement
    text (SQLAlchemy's message carries the statement's parameters)."""
    owner_url, app_url = restricted
    role = app_url.split("://", 1)[1].split("@", 1)[0]
    owner = create_engine(owner_url)
    with owner.begin() as c:
        c.exec_driver_sql(f'REVOKE SELECT ON runs FROM "{role}"')
    owner.dispose()
    code = main(["executions"])
    err = capsys.readouterr().err
    assert code == 77, err
    assert "Droits insuffisants" in err and "Traceback" not in err and "SELECT" not in err


def test_hardening_from_the_restricted_login_is_refused_rather_than_reported_done(
        restricted: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL only warns when a role that owns nothing grants: the hub must not print a hardening it did not do."""
    _owner_url, app_url = restricted
    role = app_url.split("://", 1)[1].split("@", 1)[0]
    code = main(["base", "durcir", "--role", role])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "rôle propriétaire" in err and "lecture et ajout seuls" not in out

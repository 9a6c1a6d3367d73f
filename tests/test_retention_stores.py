"""Retention covers every store, not only the flows' files: consents after the end of their period, withdrawals once
propagated, runs and delivery metadata, audit exports and DPO reports, staging left by crashed runs — each past its
own duration, never what an unfinished run or an unpropagated withdrawal still needs, each purge audited (counts)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import first_delivery
from sqlalchemy import func, insert, select

from consent.fhir_import import import_consents
from consent.revocation import propagate_withdrawals
from spie_hub.demo.data import write_withdrawals
from spie_hub.registry import load_flows
from spie_hub.run.retention import StoreRetention, purge, purge_stores
from spie_hub.store import audit_log, consents, deliveries, revocations, runs

CAF = "caf-vers-departement"
#: Far enough for every default duration to have passed since the test's own data (2026), not for the demo's
#: oppositions, which have no end and must stay.
LATER = dt.datetime(2033, 1, 1, tzinfo=dt.timezone.utc)


def _all(engine, table) -> list:  # noqa: ANN001 - SQLAlchemy objects
    with engine.connect() as c:
        return list(c.execute(select(table)).all())


def _count(engine, table, *where) -> int:  # noqa: ANN001 - SQLAlchemy objects
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


@pytest.fixture
def stores(hub_home: Path, database_url: str, tmp_path: Path):
    home, engine, pseudonymiser, _flux, bundle, summary = first_delivery(tmp_path, 40, seed=9)
    # Withdrawals: six propagated, then two more imported and left pending (their propagation has not run yet).
    write_withdrawals(bundle, tmp_path / "retraits.csv", 6, seed=1)
    import_consents(tmp_path / "retraits.csv", engine, pseudonymiser, emetteur="departement-052")
    propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    write_withdrawals(bundle, tmp_path / "retraits2.csv", 8, seed=1)  # the same six, and two more
    import_consents(tmp_path / "retraits2.csv", engine, pseudonymiser, emetteur="departement-052")
    assert _count(engine, revocations, revocations.c.propagated_at.is_(None)) >= 1
    # A run still streaming (killed, not yet recovered) with its private staging; and the staging a finished run
    # left behind (a crash after it was recorded as finished).
    with engine.begin() as c:
        c.execute(insert(runs).values(run_id="en-cours-1", flow=CAF, input_name="x.xml", input_sha256="0" * 64,
                                      started_at="2026-01-02T00:00:00+00:00", status="en-cours", summary="{}"))
    (home.staging / "en-cours-1").mkdir(parents=True)
    (home.staging / "en-cours-1" / "entree.xml").write_text("<NIR>…</NIR>", encoding="utf-8")
    finished = home.staging / summary.run_id
    finished.mkdir(parents=True, exist_ok=True)
    (finished / "reste.csv").write_text("NIR;…", encoding="utf-8")
    old = (dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)).timestamp()
    os.utime(finished, (old, old))
    os.utime(home.staging / "en-cours-1", (old, old))
    export = home.root / "exports" / "audit_20260101"
    export.mkdir(parents=True)
    (export / "journal.jsonl").write_text("{}\n", encoding="utf-8")
    report = home.root / "rapports" / "rapport-dpo_2026-01-01.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>", encoding="utf-8")
    for path in (export / "journal.jsonl", export, report):
        os.utime(path, (old, old))
    yield home, engine, pseudonymiser, summary
    engine.dispose()


def test_nothing_is_purged_from_the_stores_within_their_retention(stores) -> None:
    home, engine, _pseudonymiser, _summary = stores
    before = {t.name: _count(engine, t) for t in (consents, revocations, runs, deliveries)}
    counts = purge_stores(engine, home, load_flows(), dt.datetime.now(dt.timezone.utc), StoreRetention())
    assert {t.name: _count(engine, t) for t in (consents, revocations, runs, deliveries)} == before
    assert counts.consentements == counts.retraits == counts.executions == counts.livraisons == 0
    # The exports and the report date from 2026-01-01, long enough ago for the default 90 days... but not the
    # staging of the unfinished run, which recovery still needs.
    assert (home.staging / "en-cours-1").is_dir()


def test_every_store_is_purged_past_its_retention_except_what_is_still_needed(stores) -> None:
    home, engine, pseudonymiser, summary = stores
    with engine.connect() as c:
        pending_subjects = {r.subject for r in c.execute(select(revocations).where(revocations.c.propagated_at.is_(None)))}
        oppositions = _count(engine, consents, consents.c.kind == "opposition")
    assert oppositions, "the demo has open-ended oppositions"
    purge(engine, home, load_flows(), LATER)
    # Consents: ended (withdrawn, or expired in 2028) long ago → gone; open-ended oppositions stay (they must keep
    # applying); the consents of a person whose withdrawal is not propagated yet stay (propagation re-decides).
    with engine.connect() as c:
        left = c.execute(select(consents)).all()
    assert {r.kind for r in left if r.subject not in pending_subjects} == {"opposition"}
    assert _count(engine, consents, consents.c.kind == "opposition") == oppositions
    assert pending_subjects and all(_count(engine, consents, consents.c.subject == s) for s in pending_subjects)
    # Withdrawals: propagated ones gone, pending ones kept.
    assert _count(engine, revocations, revocations.c.propagated_at.is_not(None)) == 0
    assert _count(engine, revocations, revocations.c.propagated_at.is_(None)) >= 1
    # Runs and delivery rows: the pending withdrawal will look its recipients up through them, so they stay...
    assert _count(engine, runs, runs.c.run_id == summary.run_id) == 1 and _count(engine, deliveries) == 2
    # ... and the staging of the unfinished run too, while the finished run's leftover staging is gone.
    assert _count(engine, runs, runs.c.run_id == "en-cours-1") == 1
    assert (home.staging / "en-cours-1" / "entree.xml").is_file()
    assert not (home.staging / summary.run_id).exists()
    # Exports and reports.
    assert not (home.root / "exports" / "audit_20260101").exists()
    assert not (home.root / "rapports" / "rapport-dpo_2026-01-01.html").exists()
    # Audited, counts only: no pseudonym, no consent reference, no run id of a person.
    with engine.connect() as c:
        entry = c.execute(select(audit_log).where(audit_log.c.event == "purge-stockage")).one()
    payload = json.loads(entry.payload)
    assert entry.subject is None
    assert payload["consentements"] > 0 and payload["retraits"] > 0 and payload["executions"] == 0
    assert payload["livraisons"] == 0 and payload["exports"] == 2 and payload["preparations"] == 1
    assert set(payload) >= {"limites", "conservation_jours"}
    assert all(isinstance(v, int) for k, v in payload.items() if k not in ("limites", "conservation_jours", "gardes", "sel"))
    for subject in pending_subjects:
        assert subject not in entry.payload
    assert any("retrait en attente" in g for g in payload["gardes"])
    # Once the withdrawals are propagated, the runs and their delivery rows go (not the unfinished run).
    propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    purge(engine, home, load_flows(), LATER)
    assert _count(engine, runs, runs.c.run_id == summary.run_id) == 0 and _count(engine, deliveries) == 0
    assert _count(engine, runs, runs.c.run_id == "en-cours-1") == 1
    assert _count(engine, revocations) == 0
    assert {r.kind for r in _all(engine, consents)} == {"opposition"}


def test_retention_durations_come_from_the_registry_organisation(tmp_path: Path) -> None:
    from spie_hub.run.retention import store_retention

    registry = (Path(__file__).resolve().parent.parent / "flows.yaml").read_text(encoding="utf-8")
    changed = registry.replace("  conservation_journal_jours: 1095\n",
                               "  conservation_journal_jours: 1095\n  conservation_consentements_jours: 400\n"
                               "  conservation_exports_jours: 30\n")
    assert changed != registry
    path = tmp_path / "flows.yaml"
    path.write_text(changed, encoding="utf-8")
    settings = store_retention(path)
    assert settings.consentements == 400 and settings.exports == 30
    assert settings.retraits == StoreRetention().retraits
    broken = tmp_path / "bad.yaml"
    broken.write_text(registry.replace("  conservation_journal_jours: 1095\n",
                                       "  conservation_journal_jours: 1095\n  conservation_retraits_jours: -3\n"), encoding="utf-8")
    from spie_hub.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="conservation_retraits_jours"):
        store_retention(broken)


def test_the_cli_purger_reports_every_store(stores) -> None:
    result = subprocess.run([sys.executable, "-m", "spie_hub.cli", "purger"], capture_output=True, text=True,
                            env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert "consentement" in result.stdout and "retrait" in result.stdout and "exécution" in result.stdout
    assert "Traceback" not in result.stderr

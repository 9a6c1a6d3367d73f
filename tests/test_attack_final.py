"""Final attack round: errors the hub does not know (a bug, Ctrl-C, a database that refuses) raised inside a run,
in-process. The run must be rolled back before publication (input kept, staging gone, audit told without any
identity), the original exception must come out unchanged (type, object, traceback), and only an OS error or a
full database becomes the French StorageError."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import traceback
from pathlib import Path

import pytest
from helpers import people_of
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from consent.fhir_import import import_consents
from spie_hub.core.errors import StorageError
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import get_flow
from spie_hub.run import flow_run
from spie_hub.run.lifecycle import pending_inputs, process_inbox_file, settle
from spie_hub.store import audit_log, open_store, runs

FLOW = "caf-vers-departement"
DEP = "departement-052"
PARTNER_NAME = "flux_CAF_1850575123456_DUPONT.xml"  # a partner's file name holding a NIR and a name


def _hub(tmp_path: Path):  # noqa: ANN202
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    inbox = home.root / get_flow(FLOW).transport.dossier
    inbox.mkdir(parents=True, exist_ok=True)
    flux, bundle = inbox / PARTNER_NAME, tmp_path / "consents.json"
    generate(flux, bundle, 40, seed=5)
    import_consents(bundle, engine, load_pseudonymiser(home), emetteur=DEP)
    return home, engine, flux


def _secrets(flux: Path) -> list[str]:
    people = people_of(flux)
    values = [p[k] for p in people for k in ("NIR", "DTNAI") if p[k]]
    values += [p["NOM"] for p in people if p["NOM"] and len(p["NOM"]) > 3]
    return values + ["1850575123456", "DUPONT"]


def _runs(engine) -> list[tuple[str, str]]:  # noqa: ANN001
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(select(runs.c.run_id, runs.c.status))]


def _audit_text(engine) -> str:  # noqa: ANN001
    with engine.connect() as c:
        return "\n".join(json.dumps([*map(str, r)], ensure_ascii=False) for r in c.execute(select(audit_log)))


def _audit_events(engine, event: str) -> list[dict]:  # noqa: ANN001
    with engine.connect() as c:
        rows = c.execute(select(audit_log)).mappings().all()
    out = []
    for row in rows:
        if row.get("event") == event:
            payload = row.get("payload")
            out.append(json.loads(payload) if isinstance(payload, str) else payload)
    return out


def _staged(home: HubHome) -> list[Path]:
    """What is left in staging: run folders, and any file (the hidden scratch folder may stay, empty)."""
    return [p for p in home.staging.rglob("*") if not (p.is_dir() and p.name.startswith("."))]


def _no_secret(where: str, text: str, secrets: list[str]) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{where} leaks {leaked[:3]}"


def _process(home: HubHome):  # noqa: ANN202
    return process_inbox_file(FLOW, pending_inputs(get_flow(FLOW), home)[0], home)


class Bug(RuntimeError):
    pass


def test_an_unexpected_bug_while_deciding_rolls_the_run_back_and_comes_out_unchanged(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    home, engine, flux = _hub(tmp_path)
    original = flux.read_bytes()
    secrets = _secrets(flux)
    raised = Bug(f"valeur inattendue {secrets[0]}")  # a third-party error quoting a record: the operator's traceback

    def boom(batch, staged, decider) -> None:  # noqa: ANN001
        raise raised

    monkeypatch.setattr(flow_run.FlowRun, "_decide", staticmethod(boom))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Bug) as info:
        _process(home)
    assert info.value is raised
    assert info.value.__cause__ is None  # not chained to itself, nor to a StorageError
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "boom" in frames and "_run" in frames  # the traceback reaches the raising frame
    assert [s for _, s in _runs(engine)] == ["annule"]
    assert flux.read_bytes() == original  # the input went back to the inbox, intact
    assert not _staged(home)
    assert not list((home.outbox).rglob("*.csv")) if home.outbox.exists() else True
    (cancelled,) = _audit_events(engine, "execution-annulee")
    assert cancelled["motif"] == "erreur inattendue (Bug)" and cancelled["entree_restituee"] is True
    _no_secret("audit", _audit_text(engine), secrets)
    _no_secret("logs", "\n".join(r.getMessage() for r in caplog.records), secrets)


def test_a_keyboard_interrupt_inside_a_run_rolls_it_back_and_stays_a_keyboard_interrupt(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, engine, flux = _hub(tmp_path)
    original = flux.read_bytes()

    def interrupt(batch, staged, decider) -> None:  # noqa: ANN001
        raise KeyboardInterrupt

    real = flow_run.FlowRun.__dict__["_decide"]
    monkeypatch.setattr(flow_run.FlowRun, "_decide", staticmethod(interrupt))
    with pytest.raises(KeyboardInterrupt):
        _process(home)
    assert [s for _, s in _runs(engine)] == ["annule"]
    assert flux.read_bytes() == original and not _staged(home)
    (cancelled,) = _audit_events(engine, "execution-annulee")
    assert cancelled["motif"] == "exécution interrompue (SIGINT)"
    monkeypatch.setattr(flow_run.FlowRun, "_decide", real)
    assert _process(home).statut == "termine"  # the next pass runs it normally


def test_a_full_disk_raised_inside_a_run_becomes_a_french_storage_error_without_the_partner_name(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, engine, flux = _hub(tmp_path)
    secrets = _secrets(flux)

    def full(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise OSError(errno.ENOSPC, "No space left on device", str(home.staging / "x" / PARTNER_NAME))

    monkeypatch.setattr(flow_run.FlowRun, "_stage_returns", full)
    with pytest.raises(StorageError) as info:
        _process(home)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    _no_secret("StorageError", str(info.value), secrets)
    assert [s for _, s in _runs(engine)] == ["annule"] and flux.exists()


def test_a_full_database_raised_inside_a_run_becomes_a_french_storage_error(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, engine, flux = _hub(tmp_path)

    def full(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(flow_run.FlowRun, "_stage_returns", full)
    with pytest.raises(StorageError, match="disque plein") as info:
        _process(home)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert flux.exists()


def test_another_database_error_inside_a_run_is_reraised_as_the_same_object(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, engine, flux = _hub(tmp_path)
    raised = OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))

    def locked(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise raised

    monkeypatch.setattr(flow_run.FlowRun, "_stage_returns", locked)
    with pytest.raises(OperationalError) as info:
        _process(home)
    assert info.value is raised and info.value.__cause__ is None
    assert [s for _, s in _runs(engine)] == ["annule"] and flux.exists()


def test_a_bug_during_publication_keeps_the_staged_deliveries_for_the_next_start_which_completes_them(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    home, engine, flux = _hub(tmp_path)
    secrets = _secrets(flux)
    real = flow_run.publish_staged

    def boom(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise Bug("bogue pendant la publication")

    monkeypatch.setattr(flow_run, "publish_staged", boom)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Bug):
        _process(home)
    assert [s for _, s in _runs(engine)] == ["publication"]  # past the point of no return: not rolled back
    monkeypatch.setattr(flow_run, "publish_staged", real)
    settle(get_flow(FLOW), home)
    assert [s for _, s in _runs(engine)] == ["termine"]
    assert list((home.outbox / DEP).glob("*.csv"))
    assert not _staged(home)
    _no_secret("audit", _audit_text(engine), secrets)
    _no_secret("logs", "\n".join(r.getMessage() for r in caplog.records), secrets)


def test_a_failing_rollback_still_reports_the_first_error_and_logs_no_identity(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from spie_hub.run import lifecycle

    home, engine, flux = _hub(tmp_path)
    secrets = _secrets(flux)

    def boom(batch, staged, decider) -> None:  # noqa: ANN001
        raise Bug("premier")

    def broken_rollback(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise ValueError(f"second {PARTNER_NAME}")

    real_decide, real_rollback = flow_run.FlowRun.__dict__["_decide"], lifecycle.rollback
    monkeypatch.setattr(flow_run.FlowRun, "_decide", staticmethod(boom))
    monkeypatch.setattr(lifecycle, "rollback", broken_rollback)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Bug, match="premier"):
        _process(home)
    _no_secret("logs", "\n".join(r.getMessage() for r in caplog.records), secrets)
    monkeypatch.setattr(flow_run.FlowRun, "_decide", real_decide)
    monkeypatch.setattr(lifecycle, "rollback", real_rollback)
    settle(get_flow(FLOW), home)  # the next start cancels the dead run and gives the input back
    assert [s for _, s in _runs(engine)] == ["annule"]
    assert flux.exists() and not _staged(home)

"""Two retention gaps: the consent files the consent inboxes archive (full of NIRs) and the files of a flow removed
from the registry must be purged past a declared duration, counted in the purge report and the audit — never
what an unfinished run still needs."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import first_delivery
from sqlalchemy import insert, select

from spie_hub.registry import load_flows
from spie_hub.run.consent_inbox import import_consent_inboxes
from spie_hub.run.retention import StoreRetention, purge_all, purge_stores, removed_flow_retention
from spie_hub.store import audit_log, runs

CAF = "caf-vers-departement"
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
OLD = dt.datetime(2016, 1, 1, tzinfo=dt.timezone.utc).timestamp()


def _age(root: Path) -> None:
    """Every file and folder under ``root`` dated 2016 (links not followed)."""
    for path in [root, *root.rglob("*")]:
        os.utime(path, (OLD, OLD), follow_symlinks=False)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _events(engine, kind: str) -> list[dict]:  # noqa: ANN001 - SQLAlchemy engine
    with engine.connect() as c:
        return [{"flow": r.flow, **json.loads(r.payload)} for r in
                c.execute(select(audit_log.c.flow, audit_log.c.payload).where(audit_log.c.event == kind)).all()]


@pytest.fixture
def delivered(hub_home: Path, database_url: str, tmp_path: Path):
    home, engine, pseudonymiser, _flux, bundle, summary = first_delivery(tmp_path, 20, seed=3)
    yield home, engine, pseudonymiser, bundle, summary
    engine.dispose()


def test_consent_files_archived_by_an_inbox_are_purged_past_the_consent_retention_and_counted(delivered) -> None:
    home, engine, pseudonymiser, bundle, _summary = delivered
    inbox = home.root / "inbox" / "consentements" / "departement-052"
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle, inbox / "lot.json")
    import_consent_inboxes(home, engine, pseudonymiser)
    archived = _files(home.root / "archive" / "consentements")
    assert len(archived) == 1
    # Within the retention (archived today): kept.
    kept = purge_stores(engine, home, load_flows(), dt.datetime.now(dt.timezone.utc), StoreRetention())
    assert kept.consentements_fichiers == 0 and _files(home.root / "archive" / "consentements") == archived
    _age(home.root / "archive" / "consentements")
    out = purge_stores(engine, home, load_flows(), NOW, StoreRetention())
    assert out.consentements_fichiers == 1
    assert _files(home.root / "archive" / "consentements") == []
    entry = _events(engine, "purge-stockage")[-1]
    assert entry["consentements_fichiers"] == 1
    assert entry["conservation_jours"]["consentements_fichiers"] == StoreRetention().consentements
    # Counts only: no file name (a name is opaque, but the rule is the same for every store).
    assert "lot.json" not in json.dumps(entry) and archived[0].name not in json.dumps(entry)


def test_a_consent_archive_replaced_by_a_link_is_not_followed(delivered, tmp_path: Path) -> None:
    home, engine, _pseudonymiser, _bundle, _summary = delivered
    elsewhere = tmp_path / "ailleurs"
    elsewhere.mkdir()
    (elsewhere / "precieux.json").write_text("{}", encoding="utf-8")
    _age(elsewhere)
    (home.root / "archive" / "consentements").mkdir(parents=True, exist_ok=True)
    (home.root / "archive" / "consentements" / "departement-052").symlink_to(elsewhere)
    out = purge_stores(engine, home, load_flows(), NOW, StoreRetention())
    assert (elsewhere / "precieux.json").exists()
    assert out.consentements_fichiers == 0 and any("departement-052" in g for g in out.gardes)


def _without_caf() -> dict:
    flows = load_flows()
    return {k: v for k, v in flows.items() if k != CAF}


def test_the_archive_and_quarantine_of_a_flow_removed_from_the_registry_are_purged_and_named(delivered) -> None:
    home, engine, _pseudonymiser, _bundle, summary = delivered
    archive = home.root / "archive" / CAF
    assert _files(archive)
    # A quarantined run of that flow, with the partner's file.
    with engine.begin() as c:
        c.execute(insert(runs).values(run_id="q-retire", flow=CAF, input_name="x.xml", input_sha256="1" * 64,
                                      started_at="2026-05-01T00:00:00+00:00", status="quarantaine", summary="{}"))
    quarantine = home.root / "quarantine" / "q-retire"
    quarantine.mkdir(parents=True)
    (quarantine / "fichier-recu").write_text("<NIR>…</NIR>", encoding="utf-8")
    # Another whose run row is already gone: the flow the hub wrote in its report says whose it is.
    orphan = home.root / "quarantine" / "q-orphelin"
    orphan.mkdir()
    (orphan / "fichier-recu").write_text("<NIR>…</NIR>", encoding="utf-8")
    (orphan / "rapport.txt").write_text(f"Fichier mis en quarantaine\nFlux : {CAF}\n", encoding="utf-8")
    flows = _without_caf()
    # Within the removed flows' retention: nothing goes.
    reports, _stored, _dropped = purge_all(engine, home, flows, dt.datetime.now(dt.timezone.utc))
    assert _files(archive) and _files(quarantine) and _files(orphan)
    _age(home.root / "archive")
    _age(home.root / "quarantine")
    reports, _stored, _dropped = purge_all(engine, home, flows, NOW)
    assert _files(archive) == [] and not quarantine.exists() and not orphan.exists(), [(r.flux, r.fichiers, r.refus) for r in reports]
    removed = [r for r in reports if r.flux == CAF]
    assert len(removed) == 1 and removed[0].retire
    assert removed[0].conservation_jours == removed_flow_retention(flows)
    assert len(removed[0].fichiers) == 3
    entry = [e for e in _events(engine, "purge") if e["flow"] == CAF][-1]
    assert entry["flux_retire"] is True and entry["nombre"] == 3
    # The consent archive is not a flow: never purged as one.
    assert all(r.flux != "consentements" for r in reports)


def test_the_archive_of_a_removed_flow_with_an_unfinished_run_is_kept(delivered) -> None:
    home, engine, _pseudonymiser, _bundle, _summary = delivered
    with engine.begin() as c:
        c.execute(insert(runs).values(run_id="en-cours-retire", flow=CAF, input_name="x.xml", input_sha256="2" * 64,
                                      started_at="2016-01-01T00:00:00+00:00", status="publication", summary="{}"))
    _age(home.root / "archive")
    reports, _stored, _dropped = purge_all(engine, home, _without_caf(), NOW)
    assert _files(home.root / "archive" / CAF)
    removed = [r for r in reports if r.flux == CAF]
    assert removed and removed[0].fichiers == [] and any("non terminée" in g for g in removed[0].refus)


def test_the_cli_purger_names_a_removed_flow_without_a_traceback(delivered, tmp_path: Path) -> None:
    home, _engine, _pseudonymiser, _bundle, _summary = delivered
    registry = yaml.safe_load((Path(__file__).resolve().parent.parent / "flows.yaml").read_text(encoding="utf-8"))
    del registry["flux"][CAF]
    path = tmp_path / "sans-caf.yaml"
    path.write_text(yaml.safe_dump(registry, allow_unicode=True), encoding="utf-8")
    _age(home.root / "archive")
    result = subprocess.run([sys.executable, "-m", "spie_hub.cli", "purger"], capture_output=True, text=True,
                            env={**os.environ, "SPIE_HUB_FLOWS": str(path)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Flux {CAF} (flux retiré du registre)" in result.stdout
    assert _files(home.root / "archive" / CAF) == []

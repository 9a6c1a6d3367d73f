"""The CLI as a user runs it: a real subprocess, French messages, documented exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import CAF_FIXTURES
from helpers import consent_resource, write_bundle


def spie_hub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spie_hub.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_validate_exits_0_on_a_valid_file() -> None:
    result = spie_hub("validate", "caf-vrsb", str(CAF_FIXTURES / "RSABEM-ouvert.xml"))
    assert result.returncode == 0 and "VALIDE" in result.stdout


def test_validate_exits_1_and_lists_the_errors_on_an_invalid_file() -> None:
    result = spie_hub("validate", "caf-vrsb", str(CAF_FIXTURES / "RSABEI_invalid.xml"))
    assert result.returncode == 1 and "INVALIDE" in result.stdout and "<InfosFoyerRSA>" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_validate_exits_2_on_a_usage_error(tmp_path: Path) -> None:
    assert spie_hub("validate", "format-inconnu", "x.xml").returncode == 2
    assert spie_hub("validate", "caf-vrsb", str(tmp_path / "absent.xml")).returncode == 2


def test_consent_import_then_run_then_audit_verify(hub_home: Path) -> None:
    bundle = write_bundle(hub_home.parent / "b.json", consent_resource("c1", "2730799404078"))
    imported = spie_hub("consent", "import", str(bundle))
    assert imported.returncode == 0 and "importés : 1" in imported.stdout
    run = spie_hub("run", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM-ouvert.xml"))
    assert run.returncode == 0 and "livrés 1, retenus 0" in run.stdout
    assert "2730799404078" not in run.stdout + run.stderr and "BULLOCK" not in run.stdout + run.stderr
    delivered = next((hub_home / "outbox" / "departement-052").glob("*.csv")).read_text(encoding="utf-8-sig")
    assert "2730799404078;BULLOCK" in delivered  # consent given: identity delivered
    verify = spie_hub("audit", "verify")
    assert verify.returncode == 0 and "intègre" in verify.stdout


def test_run_reports_a_quarantine_with_exit_1(hub_home: Path) -> None:
    run = spie_hub("run", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEI_invalid.xml"))
    assert run.returncode == 1 and "quarantaine" in run.stdout.lower()


def test_a_missing_key_is_a_configuration_error_naming_the_variable(tmp_path: Path) -> None:
    env = {"SPIE_HUB_HOME": str(tmp_path / "empty"), "SPIE_HUB_PSEUDO_KEY": ""}
    run = spie_hub("run", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM-ouvert.xml"), env=env)
    assert run.returncode == 2 and "SPIE_HUB_PSEUDO_KEY" in run.stderr and "Traceback" not in run.stderr


def test_an_unknown_flow_lists_the_declared_ones(hub_home: Path) -> None:
    run = spie_hub("run", "flux-inconnu", "--input", str(CAF_FIXTURES / "RSABEM-ouvert.xml"))
    assert run.returncode == 2 and "caf-vers-departement" in run.stderr


def test_flux_lists_every_flow_with_its_recipients_and_bases(hub_home: Path) -> None:
    result = spie_hub("flux")
    assert result.returncode == 0
    assert "caf-vers-departement" in result.stdout and "base légale : CASF art. L262-40" in result.stdout


def test_executions_lists_the_last_runs_with_their_counts(hub_home: Path) -> None:
    assert "Aucune exécution" in spie_hub("executions").stdout
    spie_hub("run", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM.xml"))
    listed = spie_hub("executions")
    assert listed.returncode == 0 and "termine" in listed.stdout and "lus 3" in listed.stdout


def test_an_unreachable_database_is_named_without_its_password(hub_home: Path) -> None:
    result = spie_hub("audit", "verify", env={"SPIE_HUB_DATABASE_URL": "postgresql+psycopg://hub:s3cr3t@127.0.0.1:1/hub"})
    assert result.returncode == 2 and "SPIE_HUB_DATABASE_URL" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout and "Traceback" not in result.stderr

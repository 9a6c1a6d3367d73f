"""The CLI as a user runs it: a real subprocess, French messages, documented exit codes."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import CAF_FIXTURES, REPO
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


# -- run without --input, reprise, signals and I/O errors -------------------------------------------------------------
CAF_INBOX = Path("inbox") / "caf-msa"


def drop(hub_home: Path, *names: str) -> Path:
    inbox = hub_home / CAF_INBOX
    inbox.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(CAF_FIXTURES / name, inbox / name)
    return inbox


def test_run_without_input_processes_every_pending_inbox_file_and_archives_it(hub_home: Path) -> None:
    inbox = drop(hub_home, "RSABEM.xml", "RSABEM-ouvert.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(": termine") == 2 and "2 fichier(s) de la boîte de dépôt traité(s)" in run.stdout
    assert list(inbox.iterdir()) == []
    # Archived under opaque names (a partner's file name may hold anything), byte for byte.
    archived = {p.read_bytes() for p in (hub_home / "archive" / "caf-vers-departement").iterdir()}
    assert archived == {(CAF_FIXTURES / n).read_bytes() for n in ("RSABEM-ouvert.xml", "RSABEM.xml")}
    again = spie_hub("run", "--flux", "caf-vers-departement")
    assert again.returncode == 0 and "aucun fichier en attente" in again.stdout


def test_run_without_input_exits_1_when_an_inbox_file_is_quarantined(hub_home: Path) -> None:
    drop(hub_home, "RSABEM.xml", "RSABEI_invalid.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement")
    assert run.returncode == 1 and ": quarantaine" in run.stdout and ": termine" in run.stdout


def test_run_with_a_relative_input_leaves_the_file_in_place_and_says_the_hub_archived_its_copy(hub_home: Path) -> None:
    work = hub_home.parent / "poste"
    work.mkdir()
    shutil.copyfile(CAF_FIXTURES / "RSABEM.xml", work / "RSABEM.xml")
    run = subprocess.run([sys.executable, "-m", "spie_hub.cli", "run", "--flux", "caf-vers-departement", "--input",
                          "RSABEM.xml"], capture_output=True, text=True, cwd=work, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (work / "RSABEM.xml").is_file()
    assert f"Fichier d'entrée laissé en place : {work / 'RSABEM.xml'}" in run.stdout and "archivé sa propre copie" in run.stdout
    assert len(list((hub_home / "archive" / "caf-vers-departement").iterdir())) == 1


def test_a_file_still_being_written_exits_75_and_stays_in_the_inbox(hub_home: Path) -> None:
    registry = (REPO / "flows.yaml").read_text(encoding="utf-8").replace(
        'dossier: inbox/caf-msa, motif: "*.xml"}', 'dossier: inbox/caf-msa, motif: "*.xml", stabilite_secondes: 3600}')
    (hub_home.parent / "flows.yaml").write_text(registry, encoding="utf-8")
    inbox = drop(hub_home, "RSABEM.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement", env={"SPIE_HUB_FLOWS": str(hub_home.parent / "flows.yaml")})
    assert run.returncode == 75 and "en-attente" in run.stdout and "trop récent" in run.stdout
    assert [p.name for p in inbox.iterdir()] == ["RSABEM.xml"]


def test_reprise_on_a_clean_hub_says_there_is_nothing_to_recover(hub_home: Path) -> None:
    result = spie_hub("reprise")
    assert result.returncode == 0 and result.stdout.strip() == "Rien à reprendre."


def test_a_run_killed_during_publication_is_completed_by_reprise_and_reported(hub_home: Path) -> None:
    drop(hub_home, "RSABEM.xml")
    killed = spie_hub("run", "--flux", "caf-vers-departement", env={"SPIE_HUB_FAILPOINT": "publication"})
    assert killed.returncode == -signal.SIGKILL
    outbox = hub_home / "outbox" / "departement-052"
    assert not list(outbox.glob("*.csv")) and "publication" in spie_hub("executions").stdout

    recovered = spie_hub("reprise")
    assert recovered.returncode == 0, recovered.stderr
    assert "Flux caf-vers-departement :" in recovered.stdout and "exécutions complétées : 1" in recovered.stdout
    assert "exécutions annulées : 0" in recovered.stdout and "entrées restituées à la boîte de dépôt : 0" in recovered.stdout
    assert len(list(outbox.glob("*.csv"))) == 1 and len(list(outbox.glob("*.manifest.json"))) == 1
    assert "termine" in spie_hub("executions").stdout
    assert spie_hub("reprise", "--flux", "caf-vers-departement").stdout.strip() == "Rien à reprendre."


def test_a_run_killed_while_reading_is_rolled_back_by_reprise_and_its_input_returned(hub_home: Path) -> None:
    inbox = drop(hub_home, "RSABEM.xml")
    killed = spie_hub("run", "--flux", "caf-vers-departement", env={"SPIE_HUB_FAILPOINT": "lecture"})
    assert killed.returncode == -signal.SIGKILL and list(inbox.iterdir()) == []
    recovered = spie_hub("reprise")
    assert "exécutions annulées : 1" in recovered.stdout and "entrées restituées à la boîte de dépôt : 1" in recovered.stdout
    assert [p.name for p in inbox.iterdir()] == ["RSABEM.xml"]


def test_reprise_reports_a_flow_whose_lock_is_held_as_running_and_run_exits_75(hub_home: Path) -> None:
    locks = hub_home / "verrous"
    locks.mkdir(parents=True)
    with open(locks / "caf-vers-departement.verrou", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        recovered = spie_hub("reprise", "--flux", "caf-vers-departement")
        assert recovered.returncode == 0 and "Flux caf-vers-departement : exécution en cours" in recovered.stdout
        run = spie_hub("run", "--flux", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM.xml"),
                       env={"SPIE_HUB_LOCK_WAIT": "0"})
        assert run.returncode == 75 and "en cours" in run.stderr and "Traceback" not in run.stderr


def test_sigterm_interrupts_a_run_like_ctrl_c_rolls_it_back_and_exits_143(hub_home: Path) -> None:
    inbox = drop(hub_home, "RSABEM.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement",
                   env={"SPIE_HUB_FAILPOINT": "lecture", "SPIE_HUB_FAILPOINT_SIGNAL": "TERM"})
    assert run.returncode == 143 and run.stderr.strip() == "Interrompu."
    assert [p.name for p in inbox.iterdir()] == ["RSABEM.xml"] and "annule" in spie_hub("executions").stdout
    interrupted = spie_hub("run", "--flux", "caf-vers-departement",
                           env={"SPIE_HUB_FAILPOINT": "lecture", "SPIE_HUB_FAILPOINT_SIGNAL": "INT"})
    assert interrupted.returncode == 130 and interrupted.stderr.strip() == "Interrompu."


def test_a_missing_key_exits_2_with_a_french_message_and_no_traceback(hub_home: Path) -> None:
    inbox = drop(hub_home, "RSABEM.xml")
    for args in (["run", "--flux", "caf-vers-departement"], ["reprise"]):
        result = spie_hub(*args, env={"SPIE_HUB_SIGNING_KEY": ""})
        assert result.returncode == 2 and result.stderr.startswith("Erreur de configuration :"), result.stderr
        assert "SPIE_HUB_SIGNING_KEY" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in inbox.iterdir()] == ["RSABEM.xml"]


def test_a_hub_folder_that_cannot_be_written_exits_74_naming_it_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "fichier").write_text("pas un dossier", encoding="utf-8")
    env = {"SPIE_HUB_HOME": str(tmp_path / "fichier" / "hub")}
    for args in (["reprise"], ["run", "--flux", "caf-vers-departement"]):
        result = spie_hub(*args, env=env)
        assert result.returncode == 74, result.stderr
        assert "Erreur d'entrée-sortie" in result.stderr and str(tmp_path / "fichier") in result.stderr
        assert "Traceback" not in result.stderr


def test_consent_propager_says_when_no_withdrawal_is_pending(hub_home: Path) -> None:
    result = spie_hub("consent", "propager")
    assert result.returncode == 0 and "Aucun retrait en attente de propagation." in result.stdout

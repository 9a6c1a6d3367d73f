"""The CLI's output through pipes and JSON, as scripts use it: a real ``spie-hub`` process each time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import CAF_FIXTURES, FIXTURES
from helpers import consent_resource, write_bundle

#: What a shell reports for a command whose reader went away (128 + SIGPIPE).
EXIT_SIGPIPE = 141


def spie_hub(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spie_hub.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ), timeout=180)


def into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its stdout on a pipe nobody reads any more (``| head`` once it has its lines): the reader
    is gone before the first write, so the broken pipe is certain, not a race."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return spie_hub(*args, stdout=write_end)
    finally:
        os.close(write_end)


def test_run_json_after_delivering_prints_the_summary_as_valid_json(hub_home: Path) -> None:
    bundle = write_bundle(hub_home.parent / "b.json", consent_resource("c1", "2730799404078"))
    assert spie_hub("consent", "import", str(bundle)).returncode == 0
    run = spie_hub("run", "--flux", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM.xml"), "--json")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    summary = json.loads(run.stdout)
    assert summary["statut"] == "termine"
    departement = summary["destinataires"]["departement-052"]
    assert departement["livres"] >= 1 and Path(departement["fichier"]).is_file()
    assert all(isinstance(k, str) for k in departement["fondements"]) and "2730799404078" not in run.stdout


def test_run_json_over_the_inbox_prints_one_json_list_of_every_input(hub_home: Path) -> None:
    inbox = hub_home / "inbox"
    (inbox / "caf-msa").mkdir(parents=True)
    (inbox / "france-travail").mkdir(parents=True)
    shutil.copyfile(CAF_FIXTURES / "RSABEM.xml", inbox / "caf-msa" / "RSABEM.xml")
    shutil.copyfile(CAF_FIXTURES / "RSABEM-ouvert.xml", inbox / "caf-msa" / "RSABEM-ouvert.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement", "--json")
    assert run.returncode == 0, run.stderr
    assert [s["statut"] for s in json.loads(run.stdout)] == ["termine", "termine"]
    ft = FIXTURES / "france_travail" / "FT_inscriptions_052_202611.csv"
    other = spie_hub("run", "--flux", "france-travail-vers-departement", "--input", str(ft), "--json")
    assert other.returncode == 0 and json.loads(other.stdout)["statut"] == "termine", other.stderr


def test_a_run_whose_reader_went_away_exits_141_quietly_after_delivering(hub_home: Path) -> None:
    run = into_a_closed_pipe("run", "--flux", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM.xml"),
                             "--json")
    assert run.returncode == EXIT_SIGPIPE and run.stderr == ""
    # Delivered all the same: the broken pipe came after the work, which stays done.
    assert list((hub_home / "outbox" / "departement-052").glob("*.csv"))
    assert "termine" in spie_hub("executions").stdout


def test_every_kind_of_output_into_a_gone_reader_exits_141_without_a_traceback(hub_home: Path) -> None:
    for args in (("run", "--flux", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM.xml")),
                 ("dpo", "registre"), ("flux",), ("executions",), ("reprise",)):
        result = into_a_closed_pipe(*args)
        assert result.returncode == EXIT_SIGPIPE and result.stderr == "", (args, result.returncode, result.stderr)


def test_piping_into_head_prints_the_first_lines_and_never_a_traceback(hub_home: Path) -> None:
    spie = f"{sys.executable} -m spie_hub.cli"
    result = subprocess.run(["bash", "-c", f"{spie} dpo registre | head -n 1; exit ${{PIPESTATUS[0]}}"],
                            capture_output=True, text=True, env=dict(os.environ), timeout=180)
    # 0 if everything fitted in the pipe before head left, 141 otherwise: never an error, never a traceback.
    assert result.returncode in (0, EXIT_SIGPIPE) and result.stdout.startswith("#")
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr and result.stderr == ""

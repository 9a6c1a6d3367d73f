"""Every case of the hostile corpus (tests/hostile/corpus.py), through the real pipeline entry point the DAG uses:
a clear error, the file quarantined and the sender notified (or the bad records rejected with their reason), other
records and flows unaffected, every CSV the hub writes free of spreadsheet formulas, and exact accounting."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from hostile.corpus import CAF_FLOW, CASES, FT_FLOW, Case, caf_base, ft_base
from sqlalchemy import select

from connectors.transports.local import LocalFolder
from spie_hub.audit.chain import verify
from spie_hub.core.errors import FatalInputError
from spie_hub.core.home import HubHome
from spie_hub.registry import get_flow
from spie_hub.run.claim import input_ref
from spie_hub.run.lifecycle import process_inbox_file, run_flow
from spie_hub.store import deliveries, open_store, runs

FORMULA = re.compile(r"^[=+\-@\t\r]")


def _cells(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return [cell for row in csv.reader(handle, delimiter=";") for cell in row]


def _written_csvs(home: HubHome) -> list[Path]:
    return [p for p in (home.root / "outbox").rglob("*.csv") if not p.name.startswith(".")]


def _drop(home: HubHome, case: Case) -> Path:
    flow = get_flow(case.flow)
    inbox = home.root / flow.transport.dossier
    inbox.mkdir(parents=True, exist_ok=True)
    name = case.file_name or ("NRSACGIM_RSABEM_hostile.xml" if case.flow == CAF_FLOW else "FT_inscriptions_hostile.csv")
    path = inbox / name
    path.write_bytes(case.build())
    return path


def test_the_corpus_has_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_input_is_refused_or_sorted_with_exact_accounting(case: Case, hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    flow = get_flow(case.flow)
    path = _drop(home, case)
    outcome = process_inbox_file(flow, input_ref(path.name), home).for_xcom()  # the DAG task's call, its XCom
    engine = open_store(home.database_url)
    with engine.connect() as c:
        run = c.execute(select(runs).where(runs.c.run_id == outcome["execution"])).one()
        delivered = c.execute(select(deliveries).where(deliveries.c.run_id == outcome["execution"])).all()
    assert not any(ord(ch) < 32 for ch in run.input_name), "control characters kept in the stored file name"
    assert outcome["statut"] == case.outcome
    counts = outcome["destinataires"]
    for each in counts.values():
        assert each["livres"] + each["retenus"] + outcome["rejetes"] == outcome["lus"]

    notices = list((home.outbox / flow.partenaire / "rejets").glob("*"))
    if case.outcome == "quarantaine":
        quarantine = home.quarantine / outcome["execution"]
        report = (quarantine / "rapport.txt").read_text(encoding="utf-8")
        assert (quarantine / "fichier-recu").read_bytes() == case.build()
        assert case.words in report and "Traceback" not in report
        assert [n for n in notices if n.name.endswith("_fichier-rejete.txt")], "the sender is told"
        assert outcome["rejetes"] == outcome["lus"] and delivered == []
        assert not path.exists()  # removed from the inbox, kept in quarantine
    else:
        assert (outcome["lus"], outcome["rejetes"]) == (case.read if case.read is not None else outcome["lus"], case.rejected)
        assert len(delivered) == len(flow.destinataires)
        reasons = [cell for n in notices if n.suffix == ".csv" for cell in _cells(n)]
        if case.rejected:
            assert any(case.words in r for r in reasons), reasons
        elif case.words:
            assert case.words in " ".join(outcome["anomalies"])
        archived = list((home.root / "archive" / flow.id).glob("*"))
        assert len(archived) == 1 and not any(ord(ch) < 32 for ch in archived[0].name)
    for written in _written_csvs(home):
        assert not [cell for cell in _cells(written) if FORMULA.match(cell)], f"formula left in {written.name}"
    if "injection" in case.id:  # the values did reach a recipient, neutralised rather than dropped
        assert any(cell[:2] in ("'=", "'@", "'+", "'-") for w in _written_csvs(home) for cell in _cells(w))

    # Another flow of the same hub is unaffected, and the audit holds.
    other = FT_FLOW if case.flow == CAF_FLOW else CAF_FLOW
    sample = tmp_path / ("autre.csv" if other == FT_FLOW else "autre.xml")
    sample.write_bytes(ft_base() if other == FT_FLOW else caf_base())
    after = run_flow(other, sample, home)
    assert after.statut == "termine" and after.rejetes == 0 and after.accounted()
    assert verify(engine).ok
    engine.dispose()


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/cron.d/x", "..", "a/b.csv", "rapport\n.csv", "x\x00y"])
def test_file_names_that_could_escape_a_folder_are_refused_by_the_transport(tmp_path: Path, name: str) -> None:
    folder = LocalFolder(tmp_path, "depot")
    if "\n" not in name:  # a partner's own name may hold control characters: readable, never written by the hub
        with pytest.raises(FatalInputError, match="Nom de fichier refusé"), folder.open(name):
            pass
    with pytest.raises(FatalInputError, match="Nom de fichier refusé"), folder.store(name) as handle:
        handle.write(b"x")
    assert not list(tmp_path.rglob("x*")) and not (tmp_path / "etc").exists()


@pytest.mark.parametrize("bad", ["../outbox", "/tmp/x", "Département 52", "a\nb"])
def test_partner_and_recipient_ids_that_become_folder_names_are_checked_when_the_registry_loads(tmp_path, bad: str) -> None:
    from spie_hub.core.errors import ConfigurationError
    from spie_hub.registry import load_flows

    registry = tmp_path / "flows.yaml"
    import yaml

    registry.write_text(yaml.safe_dump({"flux": {"f": {
        "titre": "t", "finalite": "f", "destinataires": {},
        "source": {"partenaire": bad, "format": "x", "mapping": "caf_vrsb",
                   "transport": {"type": "dossier-local", "dossier": "inbox/x"}}}}}), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="identifiant"):
        load_flows(registry)

"""A withdrawal reaches every run and every recipient, exactly once, whatever the interleaving (issue 9).

Real processes on SQLite and on PostgreSQL: a scheduler pass held (SIGSTOP) at a failpoint of its run, people's
consents withdrawn (the same ``Consent`` in ``inactive``) and the withdrawals propagated (``spie-hub consent
propager``, its own process) while it is held, then the run released, and the next passes of the scheduler and of
the propagation. What users expect: a person whose withdrawal was recorded is never delivered to the Département
with their identity unless the Département also receives a deletion notice for it — each notice line once.
"""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attack_support as attack
import pytest
from crash_support import (
    CAF,
    RECIPIENTS,
    Outcome,
    cli,
    database_url,
    finish,
    scheduler_pass,
    start_cli,
    start_pass,
    store_state,
    wait_for,
)
from test_crash import Population, _population, _prepare

DEP = RECIPIENTS[0]  # identity under consent: a withdrawal takes it away; published first (sorted)
WITHDRAWN = 50


@pytest.fixture(scope="module")
def pop(tmp_path_factory: pytest.TempPathFactory) -> Population:
    return _population(tmp_path_factory.mktemp("race"), 150, 21)


# -- helpers ---------------------------------------------------------------------------------------------------------
def _hub() -> tuple[Any, Any]:
    from spie_hub.core.home import HubHome
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    return open_store(home.database_url), load_pseudonymiser(home)


def _withdrawal_bundle(population: Population, folder: Path, limit: int = WITHDRAWN) -> tuple[Path, list[str]]:
    """The population's active consents of people in the flux, sent again in ``inactive`` (a withdrawal, same id)."""
    bundle = json.loads(population.bundle.read_text(encoding="utf-8"))
    in_flux = {n.decode()[:13] for n in population.nirs}
    entries, nirs = [], []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        nir = resource["subject"]["identifier"]["value"]
        if resource.get("status") == "active" and nir[:13] in in_flux and nir not in nirs and len(nirs) < limit:
            entries.append({**entry, "resource": {**resource, "status": "inactive"}})
            nirs.append(nir)
    path = folder / "retraits.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}), encoding="utf-8")
    assert len(nirs) >= 20, f"only {len(nirs)} consents to withdraw"
    return path, nirs


def _import(path: Path, engine: Any = None) -> None:
    """A partner's consent import job (no propagation: that is the DAG's own step)."""
    from consent.fhir_import import import_consents

    own = engine is None
    if own:
        engine, pseudonymiser = _hub()
    else:
        pseudonymiser = _hub()[1]
    try:
        report = import_consents(path, engine, pseudonymiser, emetteur=DEP)
    finally:
        if own:
            engine.dispose()
    assert report.retraits and not report.erreurs, report


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _clean(outcome: Outcome) -> list[str]:
    if outcome.traceback:
        return [f"traceback: {outcome.describe()}"]
    if outcome.returncode not in (0, 74) and not outcome.stderr.strip():
        return [f"failed without a word: {outcome.describe()}"]
    return []


def _exposure(home: Path, nirs: list[str]) -> tuple[list[str], int]:
    """(problems, withdrawn people delivered to DEP with their identity): every such delivery needs a notice line,
    and no notice line is sent twice."""
    engine, pseudonymiser = _hub()
    engine.dispose()
    drop = home / "outbox" / DEP
    delivered: dict[str, list[str]] = {}
    notices: Counter[tuple[str, str]] = Counter()
    for path in sorted(drop.glob("*.csv")) if drop.is_dir() else []:
        if path.name.startswith("avis-suppression_"):
            for row in _rows(path):
                for name in row["Fichiers concernés"].split(" | "):
                    notices[(row["Pseudonyme"], name)] += 1
        else:
            for row in _rows(path):
                if row.get("NIR"):
                    delivered.setdefault(row["Pseudonyme"], []).append(path.name)
    problems = [f"notice line sent {n} times: {key}" for key, n in notices.items() if n > 1]
    exposed = 0
    for nir in nirs:
        pseudonym = pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(nir), DEP)
        for name in delivered.get(pseudonym, []):
            exposed += 1
            if (pseudonym, name) not in notices:
                problems.append(f"{pseudonym}: consent withdrawn, identity delivered to {DEP} in {name}, no deletion "
                                "notice")
    return problems, exposed


def _settled(home: Path) -> list[str]:
    """The passes that follow (propagation, scheduler, propagation) end cleanly and leave nothing open."""
    problems = _clean(cli("consent", "propager"))
    problems += _clean(scheduler_pass())
    problems += _clean(cli("consent", "propager"))
    state = store_state(database_url(home))
    if open_runs := [(r["run_id"], r["status"]) for r in state.runs if r["status"] in ("en-cours", "publication")]:
        problems.append(f"runs left open: {open_runs}")
    if not state.verify_ok:
        problems.append(f"audit chain: {state.verify_reason}")
    return problems


def _pending_withdrawals(home: Path) -> int:
    from sqlalchemy import func, select

    from spie_hub.store import revocations

    engine, _ = _hub()
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(revocations)
                                          .where(revocations.c.propagated_at.is_(None))).scalar() or 0)
    finally:
        engine.dispose()


# -- 1. every interleaving of a run and a withdrawal -----------------------------------------------------------------
#: Where the run is held while the withdrawal is imported and propagated: before any decision is made public to
#: the audit (reading/deciding), decisions audited but not published, publication entered, the Département's
#: manifest in its drop but not its file, its file there but no delivery row, and between the two recipients.
INSTANTS = ["lecture:5", "apres-journal", "publication", "entre-manifeste-et-fichier", "avant-ligne-livraison",
            "entre-destinataires"]


@pytest.mark.parametrize("instant", INSTANTS)
def test_a_withdrawal_recorded_and_propagated_while_a_run_is_held_is_applied_or_noticed(
        hub_home: Path, database_url: str, pop: Population, tmp_path: Path, held_processes: list,
        instant: str) -> None:
    _prepare(hub_home, pop)
    withdrawals, nirs = _withdrawal_bundle(pop, tmp_path)
    process = attack.start_pass(CAF, SPIE_HUB_FAILPOINT=instant, SPIE_HUB_FAILPOINT_SIGNAL="STOP")
    held_processes.append(process)
    assert attack.wait_stopped(process), finish(process).describe()
    _import(withdrawals)
    # The propagation may have to wait for the held run (it holds the publication gate between its last check and
    # its delivery row): given a few seconds alone, then the run is released.
    propagation = start_cli("consent", "propager")
    wait_for(lambda: propagation.poll() is not None, 8)
    attack.resume(process)
    done = finish(process)
    propagated = finish(propagation)
    problems = _clean(propagated) + _clean(done) + _settled(hub_home)
    exposure, _ = _exposure(hub_home, nirs)
    problems += exposure
    if pending := _pending_withdrawals(hub_home):
        problems.append(f"{pending} withdrawal(s) still pending after the run ended and two propagations")
    assert not problems, ("propagation said: " + propagated.stdout.strip() + "\n" + "\n".join(problems))


@pytest.mark.parametrize("instant", ["avant-ligne-livraison", "entre-manifeste-et-fichier"])
def test_a_withdrawal_propagated_while_a_killed_run_left_its_file_without_its_row_is_noticed_once_recovered(
        hub_home: Path, database_url: str, pop: Population, tmp_path: Path, instant: str) -> None:
    """Killed with the Département's file (or only its manifest) in the drop and no delivery row; the withdrawal is
    propagated before the next start finds the file and records the delivery: that delivery needs its notice."""
    _prepare(hub_home, pop)
    withdrawals, nirs = _withdrawal_bundle(pop, tmp_path)
    killed = finish(start_pass(CAF, SPIE_HUB_FAILPOINT=instant))
    assert killed.returncode == -9, killed.describe()
    _import(withdrawals)
    propagated = cli("consent", "propager")
    problems = _clean(propagated) + _settled(hub_home)
    problems += _exposure(hub_home, nirs)[0]
    assert not problems, ("propagation said: " + propagated.stdout.strip() + "\n" + "\n".join(problems))


def test_a_withdrawal_recorded_before_the_run_is_never_delivered(hub_home: Path, database_url: str,
                                                                  pop: Population, tmp_path: Path) -> None:
    _prepare(hub_home, pop)
    withdrawals, nirs = _withdrawal_bundle(pop, tmp_path)
    _import(withdrawals)
    problems = _clean(cli("consent", "propager")) + _clean(scheduler_pass()) + _settled(hub_home)
    exposure, exposed = _exposure(hub_home, nirs)
    assert not problems + exposure and exposed == 0, "\n".join(problems + exposure) + f"\nexposed: {exposed}"


def test_a_withdrawal_recorded_after_the_delivery_sends_one_notice_per_person_delivered(
        hub_home: Path, database_url: str, pop: Population, tmp_path: Path) -> None:
    _prepare(hub_home, pop)
    withdrawals, nirs = _withdrawal_bundle(pop, tmp_path)
    first = scheduler_pass()
    assert [s["statut"] for s in first.summaries] == ["termine"], first.describe()
    _import(withdrawals)
    problems = _clean(cli("consent", "propager")) + _settled(hub_home)
    exposure, exposed = _exposure(hub_home, nirs)
    assert not problems + exposure and exposed >= 20, "\n".join(problems + exposure) + f"\nexposed: {exposed}"


# -- 2. an import whose transaction is still open when the run starts ----------------------------------------------
@pytest.fixture
def held_commit() -> Iterator[dict[str, threading.Event]]:
    events = {"reached": threading.Event(), "release": threading.Event()}
    yield events
    events["release"].set()


def test_a_withdrawal_whose_import_commits_after_the_run_started_deciding_is_applied_or_noticed(
        hub_home: Path, database_url: str, pop: Population, tmp_path: Path, held_processes: list,
        held_commit: dict[str, threading.Event]) -> None:
    """The import's batch inserted the withdrawals (their time recorded) and is committing — slowly (a batch of a
    thousand validated resources takes seconds) — while a run starts and decides on the consents as they were."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite serialises writers: a run cannot start while an import holds the write lock")
    from sqlalchemy import event

    _prepare(hub_home, pop)
    withdrawals, nirs = _withdrawal_bundle(pop, tmp_path)
    engine, _ = _hub()
    first_commit = {"done": False}

    def slow_commit(_connection: Any) -> None:
        if not first_commit["done"]:
            first_commit["done"] = True
            held_commit["reached"].set()
            held_commit["release"].wait(120)

    event.listen(engine, "commit", slow_commit)
    failures: list[BaseException] = []

    def run_import() -> None:
        try:
            _import(withdrawals, engine)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    importer = threading.Thread(target=run_import)
    importer.start()
    try:
        assert held_commit["reached"].wait(60), "the import never reached its commit"
        process = attack.start_pass(CAF, SPIE_HUB_FAILPOINT="lecture:5", SPIE_HUB_FAILPOINT_SIGNAL="STOP")
        held_processes.append(process)
        # When the import writes its audit in its own transaction, the run waits for it at its first audit entry
        # (the chain's head): it cannot decide before the commit. Otherwise it decides on the old consents.
        attack.wait_stopped(process, timeout=10)
    finally:
        held_commit["release"].set()
        importer.join(120)
        engine.dispose()
    assert not failures, failures
    assert attack.wait_stopped(process), finish(process).describe()
    propagated = cli("consent", "propager")
    attack.resume(process)
    done = finish(process)
    problems = _clean(propagated) + _clean(done) + _settled(hub_home)
    problems += _exposure(hub_home, nirs)[0]
    assert not problems, ("propagation said: " + propagated.stdout.strip() + "\n" + "\n".join(problems))


# -- 3. two propagations at once --------------------------------------------------------------------------------------
def test_two_propagations_at_once_send_each_notice_exactly_once(hub_home: Path, database_url: str, pop: Population,
                                                                tmp_path: Path) -> None:
    _prepare(hub_home, pop)
    withdrawals, nirs = _withdrawal_bundle(pop, tmp_path)
    first = scheduler_pass()
    assert [s["statut"] for s in first.summaries] == ["termine"], first.describe()
    _import(withdrawals)
    processes = [start_cli("consent", "propager") for _ in range(2)]
    outcomes = [finish(p) for p in processes]
    problems = [p for o in outcomes for p in _clean(o)]
    problems += [f"exit {o.returncode}: {o.describe()}" for o in outcomes if o.returncode != 0]
    exposure, exposed = _exposure(hub_home, nirs)
    problems += exposure
    state = store_state(database_url)
    audited = Counter((e["recipient"], json.loads(e["payload"])["retrait"]) for e in state.events_of("avis-suppression"))
    problems += [f"'avis-suppression' audited {n} times for {key}" for key, n in audited.items() if n > 1]
    if len(audited) != exposed:
        problems.append(f"{len(audited)} notices audited for {exposed} identities delivered then withdrawn")
    assert not problems and exposed >= 20, "\n".join(problems) + f"\nexposed: {exposed}"

"""An operator, a crash and a second process attacking the run life cycle — what tests/test_crash.py did not try.

PostgreSQL restarted while a run streams or publishes (the run held at a failpoint with SIGSTOP, on a private
server so that nothing else is disturbed), recovery killed or run twice at once, the operator's own hands (the
staging folder or the run row deleted, an old database backup restored, the lock file removed, the drops removed),
recipients taking their files, a withdrawal propagated twice or killed half-way, two flows on one inbox, a burst of
2,000 files, two flows sharing a drop.

What a user expects after each: every input delivered exactly once (or refused once, cleanly), nothing in clear
outside the drops, the archive and the quarantine, no run left open, the audit chain verifying and telling the
truth, messages in French without a traceback.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attack_support as attack
import pytest
from crash_support import (
    CAF,
    INBOX,
    INPUT_NAME,
    RECIPIENTS,
    Outcome,
    cli,
    database_url,
    drop_problems,
    files_with_nirs,
    finish,
    listing,
    scheduler_pass,
    staging_leftovers,
    start_cli,
    start_pass,
    store_state,
    wait_for,
)
from test_crash import SMALL, Population, _population, _prepare, _redrop, final_problems

FT = "france-travail-vers-departement"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Population:
    return _population(tmp_path_factory.mktemp("small"), SMALL, 11)


def _runs(home: Path) -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in store_state(database_url(home)).runs}


def _open_runs(home: Path) -> dict[str, str]:
    return {k: v for k, v in _runs(home).items() if v in ("en-cours", "publication")}


def _clean_message(outcome: Outcome) -> list[str]:
    """A process that failed must say why in French, in a line or two, without a traceback."""
    if outcome.traceback:
        return [f"traceback: {outcome.describe()}"]
    if outcome.returncode != 0 and not outcome.stderr.strip():
        return [f"failed without a word: {outcome.describe()}"]
    return []


def _held(home: Path, failpoint: str, *, flow: str = CAF) -> subprocess.Popen[str]:
    """A scheduler pass stopped (SIGSTOP) at ``failpoint``; the caller resumes it."""
    process = start_pass(flow, SPIE_HUB_FAILPOINT=failpoint, SPIE_HUB_FAILPOINT_SIGNAL="STOP")
    if not attack.wait_stopped(process):
        outcome = finish(process)
        raise AssertionError(f"the pass never reached {failpoint}: {outcome.describe()}")
    return process




@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- PostgreSQL restarted under a run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_pg() -> Iterator[attack.PrivatePostgres]:
    with attack.private_postgres() as server:
        if server is None:
            pytest.skip("no private PostgreSQL server here (binaries of PostgreSQL 15 and root needed)")
        yield server


@pytest.fixture
def on_private_pg(private_pg: attack.PrivatePostgres, monkeypatch: pytest.MonkeyPatch) -> attack.PrivatePostgres:
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", private_pg.new_database())
    return private_pg


@pytest.mark.parametrize("failpoint", ["lecture:1", "apres-journal"])
def test_a_postgresql_restart_while_a_run_streams_stops_it_cleanly_and_the_next_pass_delivers_once(
        failpoint: str, hub_home: Path, small: Population, on_private_pg: attack.PrivatePostgres,
        held_processes: list) -> None:
    _prepare(hub_home, small)
    process = _held(hub_home, failpoint)
    held_processes.append(process)
    on_private_pg.restart()
    attack.resume(process)
    held = finish(process)
    problems = _clean_message(held)
    if any(listing(hub_home / "outbox" / r) for r in RECIPIENTS):
        problems.append(f"published before publication: {[listing(hub_home / 'outbox' / r) for r in RECIPIENTS]}")
    _redrop(hub_home, small)
    after = scheduler_pass()
    problems += _clean_message(after)
    problems += final_problems(hub_home, small)
    assert not problems, f"held run: {held.describe()}\n" + "\n".join(problems)


@pytest.mark.parametrize("failpoint", ["publication", "entre-manifeste-et-fichier:1", "avant-ligne-livraison:1",
                                       "entre-destinataires:1"])
def test_a_postgresql_restart_while_a_run_publishes_says_the_truth_and_the_next_start_completes_it_once(
        failpoint: str, hub_home: Path, small: Population, on_private_pg: attack.PrivatePostgres,
        held_processes: list) -> None:
    """The held run loses its lock with the restart: it must stop, and say what it left — not "nothing is
    published" when a recipient already has its file or its manifest."""
    _prepare(hub_home, small)
    process = _held(hub_home, failpoint)
    held_processes.append(process)
    on_private_pg.restart()
    attack.resume(process)
    held = finish(process)
    problems = _clean_message(held)
    visible = {r: listing(hub_home / "outbox" / r) for r in RECIPIENTS if listing(hub_home / "outbox" / r)}
    if visible and "rien n'est publié" in held.stderr:
        problems.append(f"the held run says nothing is published, yet the drops hold {visible}: {held.stderr.strip()!r}")
    after = scheduler_pass()  # no new file: the next start completes what was publishing
    problems += _clean_message(after)
    problems += final_problems(hub_home, small)
    assert not problems, f"held run: {held.describe()}\n" + "\n".join(problems)


@pytest.mark.parametrize("failpoint", ["publication", "entre-manifeste-et-fichier:1"])
def test_reprise_after_a_postgresql_restart_completes_a_held_run_which_then_stops_without_blaming_a_sound_folder(
        failpoint: str, hub_home: Path, small: Population, on_private_pg: attack.PrivatePostgres,
        held_processes: list) -> None:
    """The restart frees the lock: ``spie-hub reprise`` completes the held run. Resumed, the held run must not publish
    a second time, and its message must not send the operator to a folder that is fine."""
    _prepare(hub_home, small)
    process = _held(hub_home, failpoint)
    held_processes.append(process)
    on_private_pg.restart()
    recovered = cli("reprise", "--flux", CAF)
    problems = _clean_message(recovered)
    if "exécutions complétées : 1" not in recovered.stdout:
        problems.append(f"reprise did not complete the run: {recovered.describe()}")
    attack.resume(process)
    held = finish(process)
    problems += _clean_message(held)
    for line in held.stderr.splitlines():
        if "introuvable" in line and "dans le dossier " in line:
            folder = line.split("dans le dossier ", 1)[1].split(" :", 1)[0]
            if Path(folder).is_dir():
                problems.append(f"the held run blames {folder} (\"introuvable\"), which exists and is fine; what was "
                                f"gone is its own staging, settled by reprise: {line!r}")
    problems += final_problems(hub_home, small)
    assert not problems, f"held run: {held.describe()}\n" + "\n".join(problems)


# -- recovery attacked -------------------------------------------------------------------------------------------
def test_reprise_leaves_a_live_run_alone_and_the_run_then_completes(hub_home: Path, small: Population,
                                                                    held_processes: list) -> None:
    _prepare(hub_home, small)
    process = _held(hub_home, "publication")
    held_processes.append(process)
    recovered = cli("reprise", "--flux", CAF)
    problems = _clean_message(recovered)
    if recovered.returncode != 0 or "exécution en cours" not in recovered.stdout:
        problems.append(f"reprise should have left the live run alone: {recovered.describe()}")
    attack.resume(process)
    done = finish(process)
    if done.returncode != 0 or [s["statut"] for s in done.summaries] != ["termine"]:
        problems.append(f"the live run did not complete: {done.describe()}")
    problems += final_problems(hub_home, small)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("reprise_failpoint", ["ecriture-depot:1", "avant-ligne-livraison:2", "entre-destinataires:2"])
def test_a_reprise_killed_while_completing_a_publication_is_finished_once_by_the_next_start(
        reprise_failpoint: str, hub_home: Path, small: Population) -> None:
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="publication")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs(hub_home)
    recovery = cli("reprise", SPIE_HUB_FAILPOINT=reprise_failpoint)
    assert recovery.returncode == -signal.SIGKILL, f"reprise did not reach {reprise_failpoint}: {recovery.describe()}"
    again = cli("reprise")
    problems = _clean_message(again)
    after = scheduler_pass()
    problems += _clean_message(after)
    problems += final_problems(hub_home, small, killed=killed)
    assert not problems, "\n".join(problems)


def test_a_reprise_killed_while_returning_an_input_to_the_inbox_loses_nothing(hub_home: Path, small: Population) -> None:
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="lecture:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs(hub_home)
    recovery = cli("reprise", SPIE_HUB_FAILPOINT="ecriture-depot:1")  # the store putting the input back
    assert recovery.returncode == -signal.SIGKILL, recovery.describe()
    after = scheduler_pass()
    problems = _clean_message(after) + final_problems(hub_home, small, killed=killed, expect_rollback_only=True)
    assert not problems, "\n".join(problems)


def test_two_reprise_and_a_scheduler_pass_at_once_settle_a_crash_exactly_once(hub_home: Path, small: Population) -> None:
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="entre-destinataires:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs(hub_home)
    processes = [start_cli("reprise", "--flux", CAF), start_cli("reprise"), start_pass()]
    outcomes = [finish(p) for p in processes]
    problems = [p for o in outcomes for p in _clean_message(o)]
    problems += [f"exit {o.returncode}: {o.describe()}" for o in outcomes if o.returncode not in (0, 75)]
    state = store_state(database_url(hub_home))
    completions = [p for p in state.payloads("reprise") if next(iter(killed)) in p.get("executions_completees", [])]
    if len(completions) != 1:
        problems.append(f"the killed run is said completed {len(completions)} times")
    problems += final_problems(hub_home, small, killed=killed)
    assert not problems, "\n".join(problems)


def test_the_operator_removing_the_lock_file_of_a_live_run_still_gets_one_delivery(hub_home: Path, small: Population,
                                                                                  held_processes: list) -> None:
    """A "stale" lock file removed by hand while a run is in fact alive (stopped): a second pass then runs beside it."""
    _prepare(hub_home, small)
    process = _held(hub_home, "lecture:1")
    held_processes.append(process)
    shutil.rmtree(hub_home / "verrous")
    second = scheduler_pass()
    attack.resume(process)
    held = finish(process)
    problems = _clean_message(second) + _clean_message(held)
    after = scheduler_pass()
    problems += _clean_message(after)
    problems += final_problems(hub_home, small)
    assert not problems, f"second: {second.describe()}\nheld: {held.describe()}\n" + "\n".join(problems)


# -- the operator's hands on the hub's state after a crash ------------------------------------------------------
def test_deleting_the_staging_of_a_run_killed_while_streaming_annuls_it_and_the_resent_file_is_delivered_once(
        hub_home: Path, small: Population) -> None:
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="lecture:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs(hub_home)
    shutil.rmtree(hub_home / "staging" / next(iter(killed)))
    recovered = cli("reprise")
    problems = _clean_message(recovered)
    if "entrées restituées à la boîte de dépôt : 0" not in recovered.stdout:
        problems.append(f"reprise should say no input could be returned: {recovered.describe()}")
    _redrop(hub_home, small)  # the partner sends it again
    problems += _clean_message(scheduler_pass())
    problems += final_problems(hub_home, small, killed=killed, expect_rollback_only=True)
    assert not problems, "\n".join(problems)


def test_deleting_the_staging_of_a_run_killed_mid_publication_never_audits_a_delivered_run_as_unpublished(
        hub_home: Path, small: Population) -> None:
    """Killed after the first recipient got its file (delivery row written); the operator then deletes staging/<run>.
    The run cannot be completed, but what the audit and the runs table say about it must stay true."""
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="entre-destinataires:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    run_id = next(iter(_runs(hub_home)))
    shutil.rmtree(hub_home / "staging" / run_id)
    problems = _clean_message(cli("reprise"))
    _redrop(hub_home, small)
    problems += _clean_message(scheduler_pass())
    state = store_state(database_url(hub_home))
    delivered = sorted(d["recipient"] for d in state.deliveries if d["run_id"] == run_id)
    if delivered:
        if state.run(run_id)["status"] == "annule":
            problems.append(f"run {run_id} delivered to {delivered} (delivery rows, files in the drops) but ends 'annule'")
        for payload in state.payloads("execution-annulee", run_id):
            if payload.get("livraisons") == 0 or "aucun fichier n'a été publié" in payload.get("note", ""):
                problems.append(f"the audit says of run {run_id} {payload} — yet {delivered} received its file")
    for recipient in RECIPIENTS:
        problems += drop_problems(hub_home, recipient)
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty: {left}")
    if open_runs := _open_runs(hub_home):
        problems.append(f"runs left open: {open_runs}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("what", ["staging", "run-row"])
def test_removing_the_state_of_a_run_killed_between_manifest_and_file_leaves_no_orphan_manifest_nor_open_run(
        what: str, hub_home: Path, small: Population) -> None:
    """Killed after the first manifest was published, before its file; the operator deletes staging/<run> (or the
    run's row). The partner resends the file: the drop must not keep a manifest announcing a file that never comes,
    and the new run must not stay open forever with the input in clear in staging."""
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="entre-manifeste-et-fichier:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    run_id = next(iter(_runs(hub_home)))
    if what == "staging":
        shutil.rmtree(hub_home / "staging" / run_id)
    else:
        from sqlalchemy import delete

        from spie_hub.store import open_store, runs

        engine = open_store(database_url(hub_home))
        with engine.begin() as connection:
            connection.execute(delete(runs).where(runs.c.run_id == run_id))
        engine.dispose()
    outcomes = [cli("reprise")]
    _redrop(hub_home, small)
    outcomes += [scheduler_pass(), scheduler_pass()]
    problems = [p for o in outcomes for p in _clean_message(o)]
    for recipient in RECIPIENTS:
        problems += drop_problems(hub_home, recipient)
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty (input in clear): {left}")
    if open_runs := _open_runs(hub_home):
        problems.append(f"runs left open: {open_runs}")
    assert not problems, "\n".join(problems) + "\n" + "\n".join(o.stderr.strip() for o in outcomes if o.stderr.strip())


def test_restoring_an_old_database_backup_then_receiving_the_same_file_leaves_no_run_open(hub_home: Path,
                                                                                          small: Population) -> None:
    """The operator restores yesterday's database (before the delivery); the partner sends the same file again."""
    _prepare(hub_home, small, in_inbox=False)
    database = Path(database_url(hub_home).removeprefix("sqlite:///"))
    backup = hub_home.parent / "sauvegarde.sqlite3"
    shutil.copyfile(database, backup)  # no writer: the WAL is checkpointed at close
    _redrop(hub_home, small)
    first = scheduler_pass()
    assert [s["statut"] for s in first.summaries] == ["termine"], first.describe()
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, database)
    _redrop(hub_home, small)
    outcomes = [scheduler_pass(), scheduler_pass()]
    problems = [p for o in outcomes for p in _clean_message(o)]
    for recipient in RECIPIENTS:
        problems += drop_problems(hub_home, recipient)
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty (input in clear): {left}")
    if open_runs := _open_runs(hub_home):
        problems.append(f"runs left open: {open_runs}")
    if inbox := listing(hub_home / INBOX):
        problems.append(f"inbox not empty: {inbox}")
    assert not problems, "\n".join(problems) + "\n" + "\n".join(o.stderr.strip() for o in outcomes if o.stderr.strip())


@pytest.mark.parametrize("failpoint", ["avant-fin", "entre-destinataires:1"])
def test_a_recipient_that_took_its_files_does_not_get_them_again_when_the_crash_is_completed(
        failpoint: str, hub_home: Path, small: Population, tmp_path: Path) -> None:
    """Recipients poll their drop and take what they find (an SFTP get, then delete). A run killed after a recipient's
    delivery was complete (file, manifest, delivery row) must not deliver it again when the next start completes it."""
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT=failpoint)
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs(hub_home)
    delivered = {d["recipient"] for d in store_state(database_url(hub_home)).deliveries}
    assert delivered, "no recipient was complete at the crash"
    taken = tmp_path / "pris"
    taken.mkdir()
    for recipient in delivered:
        for path in (hub_home / "outbox" / recipient).iterdir():
            shutil.move(str(path), taken / path.name)
    after = scheduler_pass()
    problems = _clean_message(after)
    for recipient in delivered:
        if again := listing(hub_home / "outbox" / recipient):
            problems.append(f"{recipient} had taken its delivery; the completion put it back: {again}")
    state = store_state(database_url(hub_home))
    if open_runs := _open_runs(hub_home):
        problems.append(f"runs left open: {open_runs}")
    if [r["status"] for r in state.runs] != ["termine"]:
        problems.append(f"runs: {[(r['run_id'], r['status']) for r in state.runs]} (killed: {killed})")
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty: {left}")
    assert not problems, "\n".join(problems)


def test_a_crash_at_publication_then_the_drops_removed_by_the_operator_still_delivers_once(hub_home: Path,
                                                                                           small: Population) -> None:
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="publication")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs(hub_home)
    shutil.rmtree(hub_home / "outbox")
    after = scheduler_pass()
    problems = _clean_message(after) + final_problems(hub_home, small, killed=killed)
    assert not problems, "\n".join(problems)


# -- the inbox -----------------------------------------------------------------------------------------------------
def test_an_inbox_file_removed_between_listing_and_claim_is_reported_absent_and_leaves_nothing(
        hub_home: Path, small: Population) -> None:
    from spie_hub.core.home import HubHome
    from spie_hub.registry import get_flow
    from spie_hub.run.lifecycle import pending_inputs, process_inbox_file

    _prepare(hub_home, small)
    flow = get_flow(CAF)
    refs = pending_inputs(flow, HubHome.from_env().ensure())
    assert len(refs) == 1
    (hub_home / INBOX / INPUT_NAME).unlink()  # taken by hand (or by another tool) after the listing
    summary = process_inbox_file(flow, refs[0])
    problems = [] if summary.statut == "absent" else [f"status {summary.statut!r}, 'absent' expected"]
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty: {left}")
    if runs := _runs(hub_home):
        problems.append(f"a run was recorded for a file that was not there: {runs}")
    if any(listing(hub_home / "outbox" / r) for r in RECIPIENTS):
        problems.append("something was published")
    assert not problems, "\n".join(problems)


def _two_flows_on_one_inbox(tmp_path: Path) -> Path:
    import yaml

    from spie_hub.core.home import REGISTRY_PATH

    document = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8"))
    document["flux"]["caf-vers-departement-bis"] = json.loads(json.dumps(document["flux"][CAF]))
    registry = tmp_path / "flows.yaml"
    registry.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return registry


def test_two_flows_on_the_same_inbox_never_take_the_same_file_twice(hub_home: Path, small: Population, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two flows declared on one inbox folder and pattern, their passes started at once: the registry refuses the
    pair in both processes (a clean French message), and the partner's file stays in the inbox, untouched. (Were
    two claims to race anyway, only the one whose removal of the inbox entry succeeds keeps its copy:
    tests/test_inputs_claim.py.)"""
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(_two_flows_on_one_inbox(tmp_path)))
    _prepare(hub_home, small)
    inbox = sorted((hub_home / "inbox" / "caf-msa").iterdir())
    before = [p.read_bytes() for p in inbox]
    processes = [attack.start_pass(flow) for flow in (CAF, "caf-vers-departement-bis")]
    outcomes = [finish(p) for p in processes]
    problems = [p for o in outcomes for p in _clean_message(o)]
    for outcome in outcomes:
        if "recouvrent" not in outcome.stderr:
            problems.append(f"not refused by the registry: {outcome.describe()}")
    if [p.read_bytes() for p in sorted((hub_home / "inbox" / "caf-msa").iterdir())] != before:
        problems.append("the inbox changed")
    state = store_state(database_url(hub_home))
    if state.runs:
        problems.append(f"runs recorded: {state.runs}")
    assert not problems, "\n".join(problems)


def test_the_registry_refuses_two_flows_taking_the_same_files_of_one_inbox(tmp_path: Path) -> None:
    """Otherwise whichever flow lists first silently takes every file, and the other never sees one."""
    from spie_hub.core.errors import ConfigurationError
    from spie_hub.registry import load_flows

    registry = _two_flows_on_one_inbox(tmp_path)
    with pytest.raises(ConfigurationError, match="recouvrent ceux du flux caf-vers-departement"):
        load_flows(registry)


def _tiny_files(inbox: Path, count: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (inbox / f"petit_{i:05d}.xml").write_bytes(b"<petit>%d</petit>" % i)


def test_a_burst_of_2000_inbox_files_does_not_hand_airflow_more_mapped_tasks_than_it_accepts(hub_home: Path) -> None:
    """The DAG maps one task per pending reference (``executer_flux.expand``); Airflow fails the detection task when
    the list is longer than ``[core] max_map_length`` (1024 by default) — then no file is ever processed, and the
    next runs fail the same way while the inbox stays that full."""
    from airflow.configuration import conf

    from spie_hub.airflow.dags import build_dag
    from spie_hub.registry import get_flow

    _tiny_files(hub_home / INBOX, 2000)
    dag = build_dag(get_flow(CAF))
    detected = dag.get_task("detecter_fichiers").python_callable()
    limit = conf.getint("core", "max_map_length")
    assert len(detected) <= limit, (f"detecter_fichiers returns {len(detected)} references for executer_flux.expand; "
                                    f"Airflow refuses more than {limit} (unmappable_return_value_length)")


def test_sigterm_during_a_long_inbox_pass_of_2000_files_loses_none_and_leaves_nothing_open(hub_home: Path) -> None:
    from spie_hub.core.home import HubHome
    from spie_hub.store import open_store

    open_store(HubHome.from_env().ensure().database_url).dispose()
    inbox = hub_home / INBOX
    _tiny_files(inbox, 2000)
    sent = {p.read_bytes() for p in inbox.iterdir()}
    process = start_cli("run", "--flux", CAF)
    quarantine = hub_home / "quarantine"
    assert wait_for(lambda: len(listing(quarantine)) >= 30, 60, 0.05), "the pass never got going"
    process.send_signal(signal.SIGTERM)
    outcome = finish(process, 60)
    problems = _clean_message(outcome)
    if outcome.returncode != 143 or "Interrompu" not in outcome.stderr:
        problems.append(f"not a clean stop: {outcome.describe()}")
    if open_runs := _open_runs(hub_home):
        problems.append(f"runs left open: {open_runs}")
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty: {left}")
    still = [p.read_bytes() for p in inbox.iterdir()]
    taken = [p.read_bytes() for p in quarantine.glob("*/fichier-recu")]
    if sorted(still + taken) != sorted(sent):
        lost = sent - set(still) - set(taken)
        twice = len(still) + len(taken) - len(sent)
        problems.append(f"{len(lost)} file(s) lost, {max(twice, 0)} counted twice (inbox {len(still)}, quarantine {len(taken)})")
    state = store_state(database_url(hub_home))
    if not state.verify_ok:
        problems.append(f"audit chain: {state.verify_reason}")
    assert not problems, "\n".join(problems)


# -- withdrawals propagated twice ----------------------------------------------------------------------------------
def _delivered_then_oppositions(home: Path, population: Population) -> int:
    """Deliver the population once, then record oppositions of three delivered people to both recipients (imported
    without propagating, as a partner's consent import job would); the number of notice lines expected."""
    from helpers import people_of

    from consent.fhir_import import import_consents
    from spie_hub.core.home import HubHome
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.store import open_store

    _prepare(home, population)
    first = scheduler_pass()
    assert [s["statut"] for s in first.summaries] == ["termine"], first.describe()
    hub = HubHome.from_env()
    pseudonymiser = load_pseudonymiser(hub)

    def delivered_to(recipient: str) -> set[str]:
        drop = home / "outbox" / recipient
        data = next(p for p in drop.iterdir() if p.suffix == ".csv")
        with data.open(encoding="utf-8-sig", newline="") as handle:
            return {r["Pseudonyme"] for r in csv.DictReader(handle, delimiter=";") if r.get("NIR")}

    received = {r: delivered_to(r) for r in RECIPIENTS}
    chosen = [p["NIR"] for p in people_of(population.flux)
              if all(pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), r) in received[r]
                     for r in RECIPIENTS)][:3]
    assert len(chosen) == 3
    oppositions = home.parent / "oppositions.csv"
    oppositions.write_text("identifiant;nir;type;decision;statut;destinataires;categories;debut;fin\n" + "".join(
        f"opp-{i};{nir};opposition;refus;actif;{'|'.join(RECIPIENTS)};toutes;2025-01-01;\n" for i, nir in enumerate(chosen)),
        encoding="utf-8")
    engine = open_store(hub.database_url)
    try:
        report = import_consents(oppositions, engine, pseudonymiser, emetteur="departement-052")
    finally:
        engine.dispose()
    assert report.retraits == 3 and not report.erreurs, report
    return 3 * len(RECIPIENTS)


def _notice_problems(home: Path, expected_lines: int) -> list[str]:
    problems = []
    lines: list[tuple[str, str]] = []
    for recipient in RECIPIENTS:
        notices = [p for p in (home / "outbox" / recipient).iterdir() if p.name.startswith("avis-suppression_")]
        if len(notices) != 1:
            problems.append(f"{recipient} holds {len(notices)} deletion notice files: {sorted(p.name for p in notices)}")
        for notice in notices:
            with notice.open(encoding="utf-8-sig", newline="") as handle:
                lines += [(recipient, r["Pseudonyme"]) for r in csv.DictReader(handle, delimiter=";")]
    if len(lines) != len(set(lines)):
        problems.append(f"notice lines sent twice: {sorted({x for x in lines if lines.count(x) > 1})}")
    if len(set(lines)) != expected_lines:
        problems.append(f"{len(set(lines))} distinct notice lines, {expected_lines} expected")
    state = store_state(database_url(home))
    audited = [(e["recipient"], e["payload"]) for e in state.events_of("avis-suppression")]
    if len(audited) != expected_lines:
        problems.append(f"{len(audited)} 'avis-suppression' entries in the audit for {expected_lines} notices sent")
    if not state.verify_ok:
        problems.append(f"audit chain: {state.verify_reason}")
    return problems


def test_two_withdrawal_propagations_at_once_send_each_notice_once(hub_home: Path, small: Population) -> None:
    expected = _delivered_then_oppositions(hub_home, small)
    processes = [start_cli("consent", "propager") for _ in range(2)]
    outcomes = [finish(p) for p in processes]
    problems = [p for o in outcomes for p in _clean_message(o)]
    problems += [f"exit {o.returncode}: {o.describe()}" for o in outcomes if o.returncode != 0]
    problems += _notice_problems(hub_home, expected)
    assert not problems, "\n".join(problems)


def test_a_propagation_killed_between_two_notices_does_not_send_the_first_one_twice(hub_home: Path,
                                                                                    small: Population) -> None:
    """Killed while storing the second recipient's notice (the first one is in its drop); the next propagation, a
    second later (the DAG's next run), must send the second notice and not a copy of the first."""
    expected = _delivered_then_oppositions(hub_home, small)
    killed = cli("consent", "propager", SPIE_HUB_FAILPOINT="ecriture-depot:2")
    assert killed.returncode == -signal.SIGKILL, killed.describe()
    time.sleep(1.1)
    again = cli("consent", "propager")
    problems = _clean_message(again) + _notice_problems(hub_home, expected)
    assert not problems, "\n".join(problems)


# -- two flows sharing a drop --------------------------------------------------------------------------------------
def test_settling_one_flow_never_removes_the_temporary_of_another_flows_live_store_in_a_shared_drop(
        hub_home: Path, small: Population, tmp_path: Path, mounts: list[Path]) -> None:
    """departement-052's drop is shared by the CAF and France Travail flows and sits on another file system (a
    network share): a store writes a hidden temporary beside its target, then renames it. Meanwhile the France
    Travail flow settles (its DAG's detection does that on every run, ``spie-hub reprise`` too) and removes the
    temporaries of "interrupted" stores in that drop. The CAF run, alive, must still deliver."""
    drop = hub_home / "outbox" / RECIPIENTS[0]
    drop.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(drop)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    mounts.append(drop)
    _prepare(hub_home, small)
    hook = tmp_path / "lent"
    hook.mkdir()
    process = attack.start_pass(CAF, TEST_SLOW_BESIDE=str(hook))
    try:
        assert wait_for((hook / "en-cours").exists, 60), finish(process).describe()
        other = cli("reprise", "--flux", FT)
    finally:
        (hook / "reprendre").touch()
    outcome = finish(process)
    problems = _clean_message(other) + _clean_message(outcome)
    if outcome.returncode != 0 or [s["statut"] for s in outcome.summaries] != ["termine"]:
        problems.append(f"the CAF run failed because the France Travail flow settled: {outcome.stderr.strip()!r} "
                        f"(France Travail's reprise said: {other.stdout.strip()!r})")
    problems += _clean_message(scheduler_pass())  # the next start completes what was left
    problems += final_problems(hub_home, small)
    assert not problems, "\n".join(problems)


def test_sigterm_to_a_run_held_mid_stream_rolls_it_back_without_leaving_clear_data(hub_home: Path, small: Population,
                                                                                   held_processes: list) -> None:
    """SIGTERM (Airflow's task timeout, systemd) reaching a run that was stopped mid-stream, then resumed."""
    _prepare(hub_home, small)
    process = _held(hub_home, "lecture:300")
    held_processes.append(process)
    process.send_signal(signal.SIGTERM)
    attack.resume(process)
    held = finish(process)
    problems = _clean_message(held)
    if clear := files_with_nirs(hub_home, small.nirs, allowed=("outbox", "archive", "quarantine", INBOX)):
        problems.append(f"clear data after a SIGTERM mid-stream: {clear}")
    problems += _clean_message(cli("reprise"))
    problems += _clean_message(scheduler_pass())
    problems += final_problems(hub_home, small)
    assert not problems, "\n".join(problems)

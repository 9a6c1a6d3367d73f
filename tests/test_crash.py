"""Crash harness: a REAL run in a subprocess, killed at each failpoint (spie_hub/core/failpoints.py), then the next
pass of the scheduler on the same input through the inbox; plus two runs at once, a full disk and a read-only drop.

After every case: each recipient holds exactly one complete delivery (file + manifest whose sha256 matches), no
temporary anywhere; nothing in clear outside the drops, the archive and the quarantine (the population's NIRs are
searched in every byte); every run closed, the killed one ``annule`` or ``termine`` and said so by a ``reprise``
entry; the chain verifies; every "livre" decision of the audit is a delivery, or belongs to an annulled run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    nirs_of,
    scheduler_pass,
    sha256,
    staging_leftovers,
    start_cli,
    start_pass,
    store_state,
    temporaries_anywhere,
    untruthful_decisions,
    validators_of,
    wait_for,
)

SMALL, BIG = 150, 1200  # households: ~350 records; ~2,800 records (over 5,000 per-record events: two segment batches)


@dataclass(frozen=True)
class Population:
    flux: Path
    bundle: Path
    nirs: set[bytes]
    sha: str


def _population(folder: Path, households: int, seed: int) -> Population:
    from spie_hub.demo.data import generate

    folder.mkdir(parents=True, exist_ok=True)
    flux, bundle = folder / "flux.xml", folder / "consents.json"
    generate(flux, bundle, households, seed=seed, anomaly_rate=0.02)  # some rejections: a report for the sender
    return Population(flux, bundle, nirs_of(flux), sha256(flux))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Population:
    return _population(tmp_path_factory.mktemp("small"), SMALL, 11)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Population:
    return _population(tmp_path_factory.mktemp("big"), BIG, 12)


def _prepare(home: Path, population: Population, *, in_inbox: bool = True) -> Path:
    """A hub home with the population's consents imported and (by default) its flux in the CAF inbox."""
    from consent.fhir_import import import_consents
    from spie_hub.core.home import HubHome
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.store import open_store

    hub = HubHome.from_env().ensure()
    engine = open_store(hub.database_url)
    try:
        import_consents(population.bundle, engine, load_pseudonymiser(hub), emetteur="departement-052")
    finally:
        engine.dispose()
    inbox = home / INBOX
    inbox.mkdir(parents=True, exist_ok=True)
    if in_inbox:
        shutil.copyfile(population.flux, inbox / INPUT_NAME)
    return inbox / INPUT_NAME


def _redrop(home: Path, population: Population) -> None:
    """The partner sends the same file again (what makes the next pass run: see test_recovery_needs_no_new_input)."""
    target = home / INBOX / INPUT_NAME
    if not target.exists():
        shutil.copyfile(population.flux, target)


def final_problems(home: Path, population: Population, *, killed: dict[str, str] | None = None,
                   expect_rollback_only: bool = False) -> list[str]:
    """Everything that is wrong once the crash and the re-run are over ([] when the hub kept every promise)."""
    problems: list[str] = []
    for recipient in RECIPIENTS:
        problems += drop_problems(home, recipient)
    if temps := temporaries_anywhere(home):
        problems.append(f"temporaries left in the partners' folders: {temps}")
    if left := staging_leftovers(home):
        problems.append(f"staging not empty: {left}")
    if inbox := listing(home / INBOX):
        problems.append(f"inbox not empty: {inbox}")
    if clear := files_with_nirs(home, population.nirs):
        problems.append(f"NIRs in clear outside drops/archive/quarantine: {clear}")
    state = store_state(database_url(home))
    if not state.verify_ok:
        problems.append(f"audit chain does not verify: {state.verify_reason}")
    open_runs = [(r["run_id"], r["status"]) for r in state.runs if r["status"] in ("en-cours", "publication")]
    if open_runs:
        problems.append(f"runs left open: {open_runs}")
    if lies := untruthful_decisions(state):
        problems.append(f"'livre' decisions without delivery nor annulment (run, recipient): {lies}")
    mine = [d for d in state.deliveries if d["input_sha256"] == population.sha]
    per_recipient = {r: [d for d in mine if d["recipient"] == r] for r in RECIPIENTS}
    for recipient, rows in per_recipient.items():
        if len(rows) != 1:
            problems.append(f"{len(rows)} deliveries rows for {recipient}")
            continue
        drop = home / "outbox" / recipient
        if not (drop / rows[0]["file_name"]).exists() or sha256(drop / rows[0]["file_name"]) != rows[0]["file_sha256"]:
            problems.append(f"delivery row of {recipient} does not match the file in the drop")
    delivering = {d["run_id"] for d in mine}
    terminated = [r["run_id"] for r in state.runs if r["status"] == "termine" and r["run_id"] in delivering]
    if len(delivering) != 1 or len(terminated) != 1:
        problems.append(f"deliveries by runs {sorted(delivering)}, of which 'termine': {terminated}")
    archived = [p for p in (home / "archive" / CAF).iterdir()] if (home / "archive" / CAF).is_dir() else []
    if not any(sha256(p) == population.sha for p in archived):
        problems.append(f"no archived copy of the input (archive: {[p.name for p in archived]})")
    for run in state.runs:  # every run that took the input to its end keeps its own copy of it
        if run["status"] in ("termine", "deja-livre") and not any(
                p.name.startswith(run["run_id"] + "_") and sha256(p) == run["input_sha256"] for p in archived):
            problems.append(f"run {run['run_id']} ended {run['status']!r} without its archived input "
                            f"(archive: {[p.name for p in archived]})")
    for run_id, status_after_crash in (killed or {}).items():
        row = state.run(run_id)
        status = row["status"] if row else None
        reprises = state.payloads("reprise")
        said_annulled = any(run_id in p.get("executions_annulees", []) for p in reprises)
        said_completed = any(run_id in p.get("executions_completees", []) for p in reprises)
        if status == "annule":
            if not state.events_of("execution-annulee", run_id):
                problems.append(f"killed run {run_id} annulled without an execution-annulee entry")
            if status_after_crash != "annule" and not said_annulled:
                problems.append(f"killed run {run_id} annulled, no 'reprise' entry says so")
        elif status == "termine":
            if status_after_crash != "termine" and not said_completed:
                problems.append(f"killed run {run_id} completed, no 'reprise' entry says so")
            if expect_rollback_only:
                problems.append(f"killed run {run_id} completed where a rollback was expected")
        else:
            problems.append(f"killed run {run_id} ends {status!r} (annule or termine expected)")
    return problems


def _runs_now(home: Path) -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in store_state(database_url(home)).runs}


# -- the matrix ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crash:
    failpoint: str
    signal: str = "KILL"
    big: bool = False
    before_publication: bool = False  # the run must be rolled back, never completed

    @property
    def id(self) -> str:
        return f"{self.failpoint}-{self.signal}"


STORES = ["manifeste 052", "fichier 052", "manifeste plateforme", "fichier plateforme", "rejets", "accuse", "archive"]
MATRIX = [
    Crash("lecture:1", before_publication=True),
    Crash("lecture:300", before_publication=True),
    # Between the run's segment (durable, in place) and its "lot" row: rolled back, the orphan segment removed.
    Crash("journal-lot", big=True, before_publication=True),
    Crash("avant-journal", before_publication=True),
    Crash("apres-journal", before_publication=True),
    Crash("publication"),
    Crash("entre-manifeste-et-fichier:1"),
    Crash("entre-manifeste-et-fichier:2"),
    Crash("avant-ligne-livraison:1"),
    Crash("avant-ligne-livraison:2"),
    Crash("entre-destinataires:1"),
    Crash("entre-destinataires:2"),
    Crash("avant-fin"),
    *[Crash(f"ecriture-depot:{n}") for n in range(1, len(STORES) + 1)],
    Crash("lecture:300", "TERM", before_publication=True),
    Crash("journal-lot", "TERM", big=True, before_publication=True),
    Crash("apres-journal", "TERM", before_publication=True),
    Crash("publication", "TERM"),
    Crash("entre-manifeste-et-fichier:1", "TERM"),
    Crash("ecriture-depot:7", "TERM"),
    Crash("avant-fin", "TERM"),
    Crash("avant-journal", "INT", before_publication=True),
]


def _crash_then_rerun(home: Path, population: Population, case: Crash) -> tuple[list[str], dict[str, str], Outcome]:
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT=case.failpoint, SPIE_HUB_FAILPOINT_SIGNAL=case.signal)
    problems: list[str] = []
    if case.signal == "KILL":
        assert crashed.returncode == -signal.SIGKILL, f"the failpoint {case.failpoint} was not reached: {crashed.describe()}"
    else:
        assert crashed.returncode != 0 and crashed.summaries == [], f"the run did not stop: {crashed.describe()}"
        if crashed.traceback or "Interrompu" not in crashed.stderr:
            problems.append(f"SIG{case.signal}: not a clean stop: {crashed.describe()}")
    killed = _runs_now(home)
    assert killed, "no run row was written before the crash"
    if case.signal != "KILL":
        for run_id, status in killed.items():
            if status == "en-cours":
                problems.append(f"SIG{case.signal} left run {run_id} 'en-cours' (no rollback)")
            if status == "termine" and (left := staging_leftovers(home)):
                problems.append(f"SIG{case.signal}: run {run_id} 'termine' yet its staging (input in clear) is left "
                                f"until the next start: {left}")
            if status == "annule":
                if not (home / INBOX / INPUT_NAME).exists():
                    problems.append(f"SIG{case.signal}: run {run_id} rolled back but the input is not back in the inbox")
                if left := staging_leftovers(home):
                    problems.append(f"SIG{case.signal}: rolled back, staging still holds {left}")
    if case.before_publication and any(listing(home / "outbox" / r) for r in RECIPIENTS):
        problems.append(f"something visible in a drop before publication: {[listing(home / 'outbox' / r) for r in RECIPIENTS]}")
    _redrop(home, population)
    rerun = scheduler_pass()
    if rerun.returncode != 0 or rerun.traceback:
        problems.append(f"re-run failed: {rerun.describe()}")
    return problems, killed, rerun


@pytest.mark.parametrize("case", MATRIX, ids=[c.id for c in MATRIX])
def test_a_run_killed_at_a_failpoint_ends_delivered_once_and_clean(case: Crash, hub_home: Path, small: Population,
                                                                    big: Population) -> None:
    population = big if case.big else small
    _prepare(hub_home, population)
    problems, killed, _ = _crash_then_rerun(hub_home, population, case)
    problems += final_problems(hub_home, population, killed=killed, expect_rollback_only=case.before_publication)
    assert not problems, f"{case.id}: killed run(s) after the crash {killed}\n" + "\n".join(problems)


@pytest.mark.parametrize("failpoint", ["apres-journal", "publication", "avant-ligne-livraison:1"])
def test_a_run_killed_at_a_failpoint_on_postgresql(failpoint: str, hub_home: Path, small: Population,
                                                   postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine

    from spie_hub.store import metadata

    engine = create_engine(postgres_url)
    metadata.drop_all(engine)
    engine.dispose()
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", postgres_url)
    _prepare(hub_home, small)
    case = Crash(failpoint, before_publication=failpoint == "apres-journal")
    problems, killed, _ = _crash_then_rerun(hub_home, small, case)
    problems += final_problems(hub_home, small, killed=killed, expect_rollback_only=case.before_publication)
    assert not problems, f"{case.id}: killed run(s) after the crash {killed}\n" + "\n".join(problems)


def test_a_crash_during_recovery_is_recovered_by_the_next_start(hub_home: Path, small: Population) -> None:
    """Killed in publication, then killed again while the next start completes it (its first store), then a third
    start."""
    _prepare(hub_home, small)
    first = scheduler_pass(SPIE_HUB_FAILPOINT="publication")
    assert first.returncode == -signal.SIGKILL, first.describe()
    killed = _runs_now(hub_home)
    _redrop(hub_home, small)
    second = scheduler_pass(SPIE_HUB_FAILPOINT="ecriture-depot:2")
    assert second.returncode == -signal.SIGKILL, second.describe()
    third = scheduler_pass()
    problems = [] if third.returncode == 0 and not third.traceback else [f"third start failed: {third.describe()}"]
    problems += final_problems(hub_home, small, killed=killed)
    assert not problems, "\n".join(problems)


def test_the_reprise_command_settles_a_crash_without_a_new_input(hub_home: Path, small: Population) -> None:
    """``spie-hub reprise`` after a crash, nothing new in the inbox: the input returns to the inbox, the next pass
    delivers it once."""
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="lecture:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs_now(hub_home)
    recovered = cli("reprise", "--flux", CAF)
    problems = [] if recovered.returncode == 0 and not recovered.traceback else [f"reprise failed: {recovered.describe()}"]
    if listing(hub_home / INBOX) != [INPUT_NAME]:
        problems.append(f"input not returned to the inbox by 'reprise': {listing(hub_home / INBOX)}")
    after = scheduler_pass()
    if after.returncode != 0:
        problems.append(f"pass failed: {after.describe()}")
    problems += final_problems(hub_home, small, killed=killed, expect_rollback_only=True)
    assert not problems, "\n".join(problems)


def test_the_next_scheduler_pass_settles_a_crash_without_a_new_input(hub_home: Path, small: Population) -> None:
    """After a crash the partner sends nothing new: the next pass of the scheduler (the DAG's detecter_fichiers then
    executer_flux: pending_inputs, process_inbox_file) must still settle the killed run — input back in the inbox
    and processed, or the run completed — not leave it open with the input in clear in staging until another file
    happens to arrive (or an operator runs ``spie-hub reprise``)."""
    _prepare(hub_home, small)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="lecture:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    killed = _runs_now(hub_home)
    nexts = [scheduler_pass() for _ in range(2)]
    problems = [f"pass failed: {o.describe()}" for o in nexts if o.returncode != 0 or o.traceback]
    problems += final_problems(hub_home, small, killed=killed)
    assert not problems, f"killed {killed}; passes printed {[o.summaries for o in nexts]}\n" + "\n".join(problems)


# -- two runs at once ---------------------------------------------------------------------------------------------
def _check_concurrent(home: Path, population: Population, outcomes: list[Outcome]) -> list[str]:
    problems = []
    for outcome in outcomes:
        if outcome.traceback or outcome.returncode < 0:
            problems.append(f"a concurrent run died: {outcome.describe()}")
        elif outcome.returncode != 0 and (len(outcome.stderr.strip().splitlines()) != 1 or "injoignable" in outcome.stderr):
            problems.append(f"a concurrent run failed without a clean, true message: {outcome.describe()}")
    state = store_state(database_url(home))
    delivering = [r for r in state.runs if r["status"] == "termine" and any(d["run_id"] == r["run_id"] for d in state.deliveries)]
    if len(delivering) != 1:
        problems.append(f"{len(delivering)} runs 'termine' with deliveries: {[(r['run_id'], r['status']) for r in state.runs]}")
    problems += final_problems(home, population)
    return problems


@pytest.mark.parametrize("fresh_store", [False, True], ids=["store-ready", "fresh-store"])
def test_two_runs_at_once_on_the_same_input_path(fresh_store: bool, database_url: str, hub_home: Path,
                                                 small: Population, tmp_path: Path) -> None:
    """Two ``spie-hub run --input`` started together on one file: one delivery each, the other run sees it."""
    if not fresh_store:
        _prepare(hub_home, small, in_inbox=False)
    source = tmp_path / INPUT_NAME
    shutil.copyfile(small.flux, source)
    processes = [start_cli("run", CAF, "--input", str(source), "--json") for _ in range(2)]
    outcomes = [finish(p) for p in processes]
    problems = _check_concurrent(hub_home, small, outcomes)
    assert not problems, "\n".join(problems)


def test_two_scheduler_passes_at_once_on_the_same_inbox_file(database_url: str, hub_home: Path, small: Population) -> None:
    _prepare(hub_home, small)
    processes = [start_pass() for _ in range(2)]
    outcomes = [finish(p) for p in processes]
    problems = _check_concurrent(hub_home, small, outcomes)
    assert not problems, "\n".join(problems) + "\n" + "\n".join(str(o.summaries) for o in outcomes)


# -- SIGTERM and the validator child ------------------------------------------------------------------------------
def _slow_validator_env(marker: Path) -> dict[str, str]:
    return {"TEST_PARALLEL_VALIDATION_BYTES": "1", "TEST_SLOW_VALIDATOR": "20", "TEST_MARK_RESULT": str(marker)}


@pytest.mark.parametrize("when", ["streaming", "waiting-for-validator"])
def test_sigterm_rolls_back_and_leaves_no_validator_child(when: str, hub_home: Path, small: Population,
                                                          tmp_path: Path) -> None:
    """SIGTERM while the XSD check runs in its child process (forced on this small file, and slowed so that the
    signal lands while it runs): rollback, exit non-zero without a traceback, and the child gone with its parent."""
    _prepare(hub_home, small)
    marker = tmp_path / "waiting"
    process = start_pass(**_slow_validator_env(marker))
    try:
        assert wait_for(lambda: validators_of(hub_home), 30), "the validator child never started"
        if when == "waiting-for-validator":
            assert wait_for(marker.exists, 30), "the run never waited for its validator"
        process.send_signal(signal.SIGTERM)
        outcome = finish(process, 60)
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.3)
    orphans = validators_of(hub_home)
    for pid, _, _ in orphans:  # the test's own cleanup: only the children of this home
        os.kill(pid, signal.SIGKILL)
    problems = []
    if orphans:
        problems.append(f"validator child survived its parent: {orphans}")
    if outcome.returncode == 0 or outcome.traceback or "Interrompu" not in outcome.stderr:
        problems.append(f"not a clean stop: {outcome.describe()}")
    killed = _runs_now(hub_home)
    if set(killed.values()) != {"annule"}:
        problems.append(f"runs after SIGTERM: {killed} (one 'annule' expected)")
    if not (hub_home / INBOX / INPUT_NAME).exists():
        problems.append("input not returned to the inbox")
    if left := staging_leftovers(hub_home):
        problems.append(f"staging after the rollback: {left}")
    rerun = scheduler_pass()
    if rerun.returncode != 0:
        problems.append(f"re-run failed: {rerun.describe()}")
    problems += final_problems(hub_home, small, killed=killed, expect_rollback_only=True)
    assert not problems, "\n".join(problems)


# -- full disk, read-only drop ------------------------------------------------------------------------------------
def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Folders the test mounts something on (unmounted at the end, lazily, whatever happened)."""
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _tmpfs(path: Path, size: str, mounts: list[Path]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)):
        pytest.skip("cannot mount a tmpfs here (root and CAP_SYS_ADMIN needed)")
    mounts.append(path)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte (a hidden file, as another program's would be)."""
    filler = folder / ".remplissage"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
        try:
            while True:
                out.write(b"\0")
                out.flush()
        except OSError:
            pass
    return filler


def _clean_failure(outcome: Outcome, folder: Path, *words: str) -> list[str]:
    problems = []
    if outcome.returncode == 0 or outcome.traceback:
        problems.append(f"expected a clean failure: {outcome.describe()}")
    elif str(folder) not in outcome.stderr or not all(w in outcome.stderr for w in words):
        problems.append(f"the message does not name {folder} ({', '.join(words)}): {outcome.stderr.strip()!r}")
    return problems


def _published(home: Path) -> dict[str, list[str]]:
    return {r: listing(home / "outbox" / r) for r in RECIPIENTS if listing(home / "outbox" / r)}


def _only_the_others_published(home: Path, broken: str) -> list[str]:
    """A drop that cannot take its delivery affects its recipient only: nothing (no half file, no temporary) in it,
    each other recipient's delivery complete."""
    published = {r: [n for n in names if not n.startswith(".")] for r, names in _published(home).items()}
    problems = [f"something left in the broken drop {broken}: {published[broken]}"] if published.get(broken) else []
    for other in RECIPIENTS:
        if other != broken and len(published.get(other, [])) != 2:
            problems.append(f"{other} held back by {broken}'s drop: {published.get(other)}")
    return problems


@pytest.mark.parametrize("recipient", RECIPIENTS)
def test_a_full_drop_fails_cleanly_and_the_rerun_delivers_once(recipient: str, hub_home: Path, small: Population,
                                                               mounts: list[Path], tmp_path: Path) -> None:
    _prepare(hub_home, small, in_inbox=False)
    drop = hub_home / "outbox" / recipient
    _tmpfs(drop, "64k", mounts)
    filler = _fill(drop)
    source = tmp_path / INPUT_NAME
    shutil.copyfile(small.flux, source)
    failed = cli("run", CAF, "--input", str(source))
    problems = _clean_failure(failed, drop, "disque plein")
    problems += _only_the_others_published(hub_home, recipient)
    filler.unlink()
    rerun = cli("run", CAF, "--input", str(source))
    if rerun.returncode != 0 or rerun.traceback:
        problems.append(f"re-run after freeing space failed: {rerun.describe()}")
    problems += final_problems(hub_home, small)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("room", ["input-does-not-fit", "outputs-do-not-fit"])
def test_a_full_hub_home_fails_cleanly_and_the_rerun_delivers_once(room: str, hub_home: Path, big: Population,
                                                                   mounts: list[Path], tmp_path: Path) -> None:
    """SPIE_HUB_HOME on a small tmpfs: full while the input is copied, or later while the outputs are staged."""
    _tmpfs(hub_home, "512m", mounts)
    _prepare(hub_home, big, in_inbox=False)
    used = sum(p.stat().st_size for p in hub_home.rglob("*") if p.is_file())
    margin = 1 << 20 if room == "input-does-not-fit" else big.flux.stat().st_size + (1 << 20)
    size = ((used + margin) // 4096 + 64) * 4096  # tmpfs counts pages
    assert _mount("-o", f"remount,size={size}", str(hub_home))
    source = tmp_path / INPUT_NAME
    shutil.copyfile(big.flux, source)
    failed = cli("run", CAF, "--input", str(source))
    problems = _clean_failure(failed, hub_home, "disque plein")
    if published := _published(hub_home):
        problems.append(f"published with a full disk: {published}")
    if clear := files_with_nirs(hub_home, big.nirs):
        problems.append(f"failed before publication, yet clear data left until the next start: {clear}")
    if open_runs := {k: v for k, v in _runs_now(hub_home).items() if v != "annule"}:
        problems.append(f"failed before publication, runs not rolled back: {open_runs}")
    assert _mount("-o", "remount,size=512m", str(hub_home))
    rerun = cli("run", CAF, "--input", str(source))
    if rerun.returncode != 0 or rerun.traceback:
        problems.append(f"re-run after freeing space failed: {rerun.describe()}")
    problems += final_problems(hub_home, big)
    assert not problems, "\n".join(problems)


def _read_only_bind(drop: Path, mounts: list[Path]) -> None:
    if not _mount("--bind", str(drop), str(drop)):
        pytest.skip("cannot bind-mount here")
    mounts.append(drop)
    assert _mount("-o", "remount,ro,bind", str(drop))


def _immutable(drop: Path) -> None:
    if subprocess.run(["chattr", "+i", str(drop)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not available on this file system")


@pytest.mark.parametrize("how", ["ro-bind-mount", "chattr-immutable"])
def test_a_read_only_drop_fails_cleanly_and_the_rerun_delivers_once(how: str, hub_home: Path, small: Population,
                                                                    mounts: list[Path], tmp_path: Path) -> None:
    _prepare(hub_home, small, in_inbox=False)
    drop = hub_home / "outbox" / RECIPIENTS[0]
    drop.mkdir(parents=True)
    words = "système de fichiers en lecture seule" if how == "ro-bind-mount" else "opération non permise"
    source = tmp_path / INPUT_NAME
    shutil.copyfile(small.flux, source)
    try:
        if how == "ro-bind-mount":
            _read_only_bind(drop, mounts)
        else:
            _immutable(drop)
        failed = cli("run", CAF, "--input", str(source))
    finally:
        subprocess.run(["chattr", "-i", str(drop)], capture_output=True)
        for path in mounts:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        mounts.clear()
    problems = _clean_failure(failed, drop, words)
    problems += _only_the_others_published(hub_home, RECIPIENTS[0])
    rerun = cli("run", CAF, "--input", str(source))
    if rerun.returncode != 0 or rerun.traceback:
        problems.append(f"re-run after the drop became writable failed: {rerun.describe()}")
    problems += final_problems(hub_home, small)
    assert not problems, "\n".join(problems)


def test_the_harness_sees_what_it_checks(hub_home: Path, small: Population) -> None:
    """The checks above would catch a leak: a NIR planted in staging, a temporary in a drop, a second file."""
    _prepare(hub_home, small)
    ok = scheduler_pass()
    assert ok.returncode == 0 and ok.summaries[0]["statut"] == "termine", ok.describe()
    assert final_problems(hub_home, small) == []
    (hub_home / "staging" / "x").write_bytes(b"<NIR>" + next(iter(small.nirs)) + b"</NIR>")
    (hub_home / "outbox" / RECIPIENTS[0] / ".spie-hub-tmp-1").write_bytes(b"")
    drop = hub_home / "outbox" / RECIPIENTS[1]
    data = next(p for p in drop.iterdir() if not p.name.endswith(".manifest.json"))
    shutil.copyfile(data, drop / ("copie-" + data.name))
    problems = "\n".join(final_problems(hub_home, small))
    assert "staging not empty" in problems and "NIRs in clear" in problems and "temporaries" in problems
    assert "expected one file and one manifest" in problems

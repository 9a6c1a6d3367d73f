"""Second round of attacks on the run life cycle: what "a recipient's drop affects that recipient only", the
recovery of a run whose staging was lost, the withdrawal propagation plan and the exactly-one claim made possible.

A drop broken here is the Département's drop replaced by a regular file (no privilege needed; the hub refuses it
like a read-only or linked drop: ``StorageError``, the run stays in ``publication``). What users expect: the other
recipient gets every input, the broken one gets exactly what it may still receive once repaired, in order and once;
nothing decided before a withdrawal leaves the hub after it unnoticed; the DPO and the operator are told the truth;
clear data does not outlive the flow's retention; every kill of a propagation is finished exactly once.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_support import (
    CAF,
    INBOX,
    PYTHON,
    RECIPIENTS,
    REPO,
    Outcome,
    cli,
    database_url,
    drop_problems,
    files_with_nirs,
    finish,
    listing,
    scheduler_pass,
    sha256,
    staging_leftovers,
    start_cli,
    start_pass,
    store_state,
    subprocess_env,
    untruthful_decisions,
    wait_for,
)
from test_crash import Population, _population, _prepare, _redrop

DEP, PLATFORM = RECIPIENTS  # departement-052 is published first (sorted), plateforme-insertion second
SECOND_INPUT = "NRSACGIM_RSABEM_052_20261130.xml"
SUPPORT = Path(__file__).resolve().parent / "round2_support.py"


@pytest.fixture(scope="module")
def pop(tmp_path_factory: pytest.TempPathFactory) -> Population:
    return _population(tmp_path_factory.mktemp("r2a"), 40, 11)


@pytest.fixture(scope="module")
def pop_b(tmp_path_factory: pytest.TempPathFactory) -> Population:
    return _population(tmp_path_factory.mktemp("r2b"), 40, 12)


# -- helpers ---------------------------------------------------------------------------------------------------------
def _break_drop(home: Path, recipient: str = DEP) -> Path:
    drop = home / "outbox" / recipient
    if drop.is_dir():
        shutil.rmtree(drop)
    drop.parent.mkdir(parents=True, exist_ok=True)
    drop.write_text("un fichier à la place du dépôt")
    return drop


def _repair_drop(home: Path, recipient: str = DEP) -> None:
    drop = home / "outbox" / recipient
    drop.unlink()
    drop.mkdir()


def _clean(outcome: Outcome) -> list[str]:
    if outcome.traceback:
        return [f"traceback: {outcome.describe()}"]
    if outcome.returncode != 0 and not outcome.stderr.strip():
        return [f"failed without a word: {outcome.describe()}"]
    return []


def _runs(home: Path) -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in store_state(database_url(home)).runs}


def _stuck(home: Path) -> list[str]:
    return [k for k, v in _runs(home).items() if v == "publication"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _deliveries(drop: Path) -> list[Path]:
    return sorted(p for p in drop.iterdir() if p.suffix == ".csv" and not p.name.startswith("avis-suppression_")) \
        if drop.is_dir() else []


def _notices(drop: Path) -> list[Path]:
    return sorted(drop.glob("avis-suppression_*.csv")) if drop.is_dir() else []


def _store():  # noqa: ANN202 - (engine, pseudonymiser, home)
    from spie_hub.core.home import HubHome
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.store import open_store

    hub = HubHome.from_env().ensure()
    return open_store(hub.database_url), load_pseudonymiser(hub), hub


def _oppose(home: Path, nirs: list[str], recipients: tuple[str, ...]) -> None:
    """Oppositions of these people to these recipients, imported without propagating (a consent import job)."""
    from consent.fhir_import import import_consents

    path = home.parent / "oppositions.csv"
    path.write_text("identifiant;nir;type;decision;statut;destinataires;categories;debut;fin\n" + "".join(
        f"r2-opp-{i};{nir};opposition;refus;actif;{'|'.join(recipients)};toutes;2025-01-01;\n"
        for i, nir in enumerate(nirs)), encoding="utf-8")
    engine, pseudonymiser, _ = _store()
    try:
        report = import_consents(path, engine, pseudonymiser, emetteur=DEP)
    finally:
        engine.dispose()
    assert report.retraits == len(nirs) and not report.erreurs, report


def _stuck_run(home: Path, population: Population) -> str:
    """The population's input run with the Département's drop broken: delivered to the platform, pending for DEP."""
    _prepare(home, population)
    _break_drop(home)
    failed = scheduler_pass()
    assert failed.returncode != 0 and not failed.traceback and DEP in failed.stderr, failed.describe()
    stuck = _stuck(home)
    assert len(stuck) == 1 and len(_deliveries(home / "outbox" / PLATFORM)) == 1, (stuck, failed.describe())
    return stuck[0]


# ==================================================================================================================
# 1. A broken drop affects its recipient only: new inputs, re-sent inputs, withdrawals, the DPO, retention
# ==================================================================================================================
def test_a_cli_inbox_pass_with_one_broken_drop_still_takes_every_input_for_the_other_recipient(
        hub_home: Path, pop: Population, pop_b: Population) -> None:
    """``spie-hub run --flux`` "traite tous les fichiers en attente": a drop that refuses one recipient's delivery must
    not leave the next inputs in the inbox, undelivered to the other recipient, until as many passes have run."""
    _prepare(hub_home, pop)
    shutil.copyfile(pop_b.flux, hub_home / INBOX / SECOND_INPUT)
    _break_drop(hub_home)
    outcome = cli("run", "--flux", CAF)
    problems = _clean(outcome)
    if outcome.returncode == 0:
        problems.append(f"a pending delivery and exit 0: {outcome.describe()}")
    if left := listing(hub_home / INBOX):
        problems.append(f"inputs left in the inbox by the pass: {left} (stderr: {outcome.stderr.strip()!r})")
    if len(got := _deliveries(hub_home / "outbox" / PLATFORM)) != 2:
        problems.append(f"{PLATFORM}, whose drop is fine, received {len(got)} of the 2 inputs")
    assert not problems, "\n".join(problems)


def test_inputs_arriving_while_a_delivery_waits_are_delivered_to_the_repaired_drop_once_and_in_order(
        hub_home: Path, pop: Population, pop_b: Population) -> None:
    from spie_hub.airflow.dags import verify_audit
    from spie_hub.core.errors import HubError

    first = _stuck_run(hub_home, pop)
    shutil.copyfile(pop_b.flux, hub_home / INBOX / SECOND_INPUT)
    second_pass = scheduler_pass()  # the DAG's next run: settles (cannot), then takes the new input
    problems = _clean(second_pass)
    stuck = _stuck(hub_home)
    if len(stuck) != 2 or len(_deliveries(hub_home / "outbox" / PLATFORM)) != 2:
        problems.append(f"the new input was not processed for {PLATFORM}: stuck {stuck}, {second_pass.describe()}")
    try:
        verify_audit(CAF)
        problems.append("verifier_audit passes while two deliveries wait")
    except HubError:
        pass
    _repair_drop(hub_home)
    settled = scheduler_pass()  # nothing new in the inbox: the listing settles first
    problems += _clean(settled)
    state = store_state(database_url(hub_home))
    mine = sorted((d for d in state.deliveries if d["recipient"] == DEP), key=lambda d: d["delivered_at"])
    if [d["input_sha256"] for d in mine] != [pop.sha, pop_b.sha]:
        problems.append(f"{DEP} deliveries, in order: {[(d['run_id'], d['input_sha256'][:8]) for d in mine]} "
                        f"(expected {first}'s input then the second)")
    drop = hub_home / "outbox" / DEP
    if len(_deliveries(drop)) != 2 or len(list(drop.glob("*.manifest.json"))) != 2:
        problems.append(f"{DEP}'s drop: {listing(drop)}")
    for data in _deliveries(drop):
        manifest = json.loads((drop / (data.stem + ".manifest.json")).read_text(encoding="utf-8"))
        if manifest["sha256"] != sha256(data):
            problems.append(f"manifest of {data.name} does not match it")
    if open_runs := _stuck(hub_home):
        problems.append(f"runs left in publication: {open_runs}")
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty: {left}")
    if lies := untruthful_decisions(state):
        problems.append(f"'livre' decisions without delivery: {lies}")
    try:
        verify_audit(CAF)
    except HubError as error:
        problems.append(f"verifier_audit still fails once everything is delivered: {error}")
    assert not problems, "\n".join(problems)


def test_the_same_file_resent_while_its_delivery_waits_is_delivered_once_and_the_audit_credits_the_right_run(
        hub_home: Path, pop: Population) -> None:
    """The sender gets no acknowledgement while a delivery waits, so it sends the file again. The re-sent file must
    not be delivered twice, and the audit must not say the second run delivered what the first one did."""
    first = _stuck_run(hub_home, pop)
    _redrop(hub_home, pop)
    again = scheduler_pass()
    problems = _clean(again)
    _repair_drop(hub_home)
    problems += _clean(scheduler_pass())
    state = store_state(database_url(hub_home))
    for recipient in RECIPIENTS:
        problems += drop_problems(hub_home, recipient)
        rows = [d for d in state.deliveries if d["recipient"] == recipient]
        if len(rows) != 1:
            problems.append(f"{len(rows)} delivery rows for {recipient}")
    rows = {d["recipient"]: d["run_id"] for d in state.deliveries}
    for event in state.events_of("livraison"):
        if rows.get(event["recipient"]) != event["run_id"]:
            problems.append(f"the audit has run {event['run_id']} deliver to {event['recipient']} ('livraison'), "
                            f"yet the delivery is run {rows.get(event['recipient'])}'s (first run: {first})")
    if lies := untruthful_decisions(state):
        problems.append(f"'livre' decisions of a run that delivered nothing to that recipient (run, recipient): {lies}")
    if open_runs := _stuck(hub_home):
        problems.append(f"runs left in publication: {open_runs}")
    assert not problems, "\n".join(problems)


def test_an_opposition_recorded_while_a_delivery_waits_for_its_drop_keeps_that_persons_identity_in_the_hub(
        hub_home: Path, pop: Population) -> None:
    """The key privacy question. A delivery to the Département waits for its drop (decided, staged, audited). Three
    people it would identify oppose it; the propagation runs; the drop is repaired; the next starts run. Their
    identity must not reach the Département — and were it to, a deletion notice must follow."""
    run_id = _stuck_run(hub_home, pop)
    staged = [r for r in _rows(hub_home / "staging" / run_id / f"{DEP}.livraison") if r.get("NIR")]
    chosen = staged[:3]
    assert len(chosen) == 3, "too few identified people in the staged delivery"
    _oppose(hub_home, [r["NIR"] for r in chosen], (DEP,))
    propagated = cli("consent", "propager")  # the DAG's propager_retraits, upstream of every flow run
    problems = _clean(propagated)
    _repair_drop(hub_home)
    outcomes = [cli("reprise"), scheduler_pass(), scheduler_pass(), cli("consent", "propager")]
    problems += [p for o in outcomes for p in _clean(o)]
    drop = hub_home / "outbox" / DEP
    delivered = {r["Pseudonyme"]: r for path in _deliveries(drop) for r in _rows(path)}
    noticed = {r["Pseudonyme"] for path in _notices(drop) for r in _rows(path)}
    for person in chosen:
        row = delivered.get(person["Pseudonyme"])
        if row and row.get("NIR"):
            problems.append(f"{person['Pseudonyme']} opposed before the delivery left, yet {DEP} received their "
                            f"identity (NIR, name) after the propagation"
                            + ("" if person["Pseudonyme"] in noticed else ", and no deletion notice ever followed"))
    if not _deliveries(drop):
        problems.append(f"{DEP} received nothing at all: {listing(drop)}")
    if open_runs := _stuck(hub_home):
        problems.append(f"runs left in publication: {open_runs}")
    assert not problems, ("propagation said: " + propagated.stdout.strip() + "\n" + "\n".join(problems))


def test_an_opposition_propagated_while_a_live_run_publishes_keeps_that_persons_identity_in_the_hub_or_is_noticed(
        hub_home: Path, pop: Population, held_processes: list) -> None:
    """The same question without a broken drop: a run has audited its decisions and entered publication (large
    deliveries to a network share take minutes); meanwhile another flow's DAG starts with ``propager_retraits`` —
    its own lock, not this flow's. The opposition finds no delivery row yet (no notice) and is marked propagated;
    the run then publishes as staged."""
    import attack_support as attack

    _prepare(hub_home, pop)
    process = attack.start_pass(CAF, SPIE_HUB_FAILPOINT="publication", SPIE_HUB_FAILPOINT_SIGNAL="STOP")
    held_processes.append(process)
    assert attack.wait_stopped(process), finish(process).describe()
    (run_id,) = _stuck(hub_home)
    chosen = [r for r in _rows(hub_home / "staging" / run_id / f"{DEP}.livraison") if r.get("NIR")][:3]
    assert len(chosen) == 3
    _oppose(hub_home, [r["NIR"] for r in chosen], (DEP,))
    propagated = cli("consent", "propager")
    attack.resume(process)
    done = finish(process)
    problems = _clean(propagated) + _clean(done) + _clean(cli("consent", "propager"))
    drop = hub_home / "outbox" / DEP
    delivered = {r["Pseudonyme"]: r for path in _deliveries(drop) for r in _rows(path)}
    noticed = {r["Pseudonyme"] for path in _notices(drop) for r in _rows(path)}
    for person in chosen:
        row = delivered.get(person["Pseudonyme"])
        if row and row.get("NIR") and person["Pseudonyme"] not in noticed:
            problems.append(f"{person['Pseudonyme']} opposed and the opposition was propagated before the file left; "
                            f"{DEP} received their identity and no deletion notice was ever sent")
    assert not problems, ("propagation said: " + propagated.stdout.strip() + "\n" + "\n".join(problems))


def test_a_delivery_waiting_past_the_end_of_the_consents_it_was_decided_on_does_not_go_out_as_staged(
        hub_home: Path, pop: Population, monkeypatch: pytest.MonkeyPatch) -> None:
    """Consents with an end date: the run decided while they were valid (three days ago), its drop was broken; it is
    repaired today, after every consent ended. No withdrawal was recorded (an end date is not one), so the fix for
    withdrawals does not see it — the identities must not leave under consents that are over."""
    import types

    from helpers import people_of

    from consent.fhir_import import import_consents
    from spie_hub.registry import get_flow
    from spie_hub.run import lifecycle

    today = dt.date.today()
    engine, pseudonymiser, hub = _store()
    consents = hub_home.parent / "consentements.csv"
    consents.write_text("identifiant;nir;type;decision;statut;destinataires;categories;debut;fin\n" + "".join(
        f"r2-c-{i};{p['NIR']};consentement;accord;actif;{DEP};identite;2025-01-01;{today - dt.timedelta(days=1)}\n"
        for i, p in enumerate(people_of(pop.flux))), encoding="utf-8")
    try:
        report = import_consents(consents, engine, pseudonymiser, emetteur=DEP)
    finally:
        engine.dispose()
    assert report.importes, report  # the anomalies of the flux (impossible NIRs) are refused
    (hub_home / INBOX).mkdir(parents=True)
    shutil.copyfile(pop.flux, hub_home / INBOX / "NRSACGIM_RSABEM_052_20261031.xml")
    _break_drop(hub_home)

    class ThreeDaysAgo(dt.date):
        @classmethod
        def today(cls) -> dt.date:
            return today - dt.timedelta(days=3)

    monkeypatch.setattr(lifecycle, "dt", types.SimpleNamespace(date=ThreeDaysAgo))
    flow = get_flow(CAF)
    pending = lifecycle.process_inbox_file(flow, lifecycle.pending_inputs(flow, hub)[0], hub)
    assert pending.statut == "livraison-en-attente" and DEP in (pending.message or "")
    monkeypatch.setattr(lifecycle, "dt", dt)  # today again (not undo(): it would drop hub_home's variables too)
    (run_id,) = _stuck(hub_home)
    staged = [r for r in _rows(hub_home / "staging" / run_id / f"{DEP}.livraison") if r.get("NIR")]
    assert staged, "nobody identified in the staged delivery (consents not valid three days ago?)"
    _repair_drop(hub_home)
    passes = [scheduler_pass(), scheduler_pass()]
    problems = [f"pass failed: {o.describe()}" for o in passes if o.returncode != 0 or o.traceback]
    if _stuck(hub_home) or not _deliveries(hub_home / "outbox" / DEP):
        problems.append(f"nothing settled: runs {_runs(hub_home)}, {DEP}: {listing(hub_home / 'outbox' / DEP)}")
    identified = [r["Pseudonyme"] for path in _deliveries(hub_home / "outbox" / DEP) for r in _rows(path) if r.get("NIR")]
    if identified:
        problems.append(f"{len(identified)} people identified to {DEP} today under consents that all ended yesterday "
                        f"(decided three days ago by run {run_id}, sent as staged)")
    assert not problems, "\n".join(problems)




def test_the_dpo_subject_access_tells_a_person_in_a_waiting_delivery_that_it_is_pending_not_cancelled(
        hub_home: Path, pop: Population) -> None:
    from spie_hub.dpo.subject_access import subject_access
    from spie_hub.registry import load_flows

    run_id = _stuck_run(hub_home, pop)
    person = next(r for r in _rows(hub_home / "staging" / run_id / f"{DEP}.livraison") if r.get("NIR"))
    problems = []

    def exchanges() -> list:
        engine, pseudonymiser, _ = _store()
        try:
            report = subject_access(engine, pseudonymiser, person["NIR"], load_flows(), demandeur="dpo", motif="test")
        finally:
            engine.dispose()
        return [e for e in report.echanges if e.evenement == "decision" and e.destinataire == DEP]

    for exchange in exchanges():
        if "annul" in (exchange.motif or "") or "rien n'a été livré" in (exchange.motif or ""):
            problems.append(f"while run {run_id} waits to deliver to {DEP}, the person is told: {exchange.decision!r}, "
                            f"{exchange.motif!r} — the delivery is pending and goes out once the drop is repaired")
    _repair_drop(hub_home)
    problems += _clean(cli("reprise"))
    after = exchanges()
    if not after or any(e.decision != "livre" or not e.fichier for e in after):
        problems.append(f"after the delivery: {[(e.decision, e.fichier, e.motif) for e in after]}")
    assert not problems, "\n".join(problems)


def test_a_retention_purge_past_the_flows_period_leaves_no_clear_data_of_a_waiting_delivery(
        hub_home: Path, pop: Population) -> None:
    """The stuck run's staging holds the input, both staged deliveries (the platform's already delivered) and the
    rejections, in clear, for as long as the drop stays broken. ``conservation_jours`` is the longest the hub may
    hold the flow's data: the purge must not leave it in staging."""
    from spie_hub.registry import load_flows
    from spie_hub.run.retention import purge

    _stuck_run(hub_home, pop)
    engine, _, hub = _store()
    flows = load_flows()
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=flows[CAF].conservation_jours + 1)
    try:
        purge(engine, hub, flows, later)
    finally:
        engine.dispose()
    clear = files_with_nirs(hub_home, pop.nirs)
    assert not clear, (f"{flows[CAF].conservation_jours + 1} days later, after the purge, clear data of the flow "
                       f"is still at rest outside the drops/archive/quarantine: {clear}")


def test_reprise_with_the_drop_still_broken_says_so_and_does_not_exit_0(hub_home: Path, pop: Population) -> None:
    """The CLI's contract: 74 when the hub could not write one of its folders. A reprise that leaves a delivery
    pending must not look like a success to a cron job or a runbook."""
    run_id = _stuck_run(hub_home, pop)
    outcome = cli("reprise")
    problems = _clean(outcome)
    if outcome.returncode == 0:
        problems.append(f"exit 0 although run {run_id} is still pending: {outcome.describe()}")
    if "complétées : 0" in outcome.stdout and "inachev" not in outcome.stdout and DEP not in outcome.stdout:
        problems.append(f"stdout only counts zeros, nothing about the pending delivery: {outcome.stdout.strip()!r}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_drop_with_room_for_the_manifest_only_never_shows_a_manifest_without_its_file(
        hub_home: Path, pop: Population, mounts: list[Path]) -> None:
    """A drop nearly full (a network share, a quota): the manifest fits, the file does not. The delivery waits — for
    days maybe. The recipient must not see, meanwhile, a signed manifest announcing a file that is not there
    (exploitation.md: « manifeste déposé après le fichier »; test_crash's own check: nothing in a broken drop)."""
    _prepare(hub_home, pop)
    drop = hub_home / "outbox" / DEP
    drop.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(drop)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    mounts.append(drop)
    free = os.statvfs(drop).f_bavail * os.statvfs(drop).f_frsize
    (drop / ".remplissage").write_bytes(b"\0" * (free - 8192))  # two pages left: a manifest, not a file
    failed = scheduler_pass()
    problems = _clean(failed)
    visible = [n for n in listing(drop) if not n.startswith(".")]
    lone = [n for n in visible if n.endswith(".manifest.json") and n.removesuffix(".manifest.json") + ".csv" not in visible]
    if lone:
        problems.append(f"while the delivery waits, {DEP} sees manifests without their file: {lone}")
    (drop / ".remplissage").unlink()
    problems += _clean(scheduler_pass())
    problems += drop_problems(hub_home, DEP)
    assert not problems, "\n".join(problems) + f"\n(failed run said: {failed.stderr.strip()!r})"


# ==================================================================================================================
# 2. Staging lost (recovery._staging_lost, status incomplete)
# ==================================================================================================================
def _killed_then_staging_lost(home: Path, population: Population, failpoint: str) -> str:
    _prepare(home, population)
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT=failpoint)
    assert crashed.returncode == -signal.SIGKILL, crashed.describe()
    (run_id,) = _runs(home)
    shutil.rmtree(home / "staging" / run_id)
    return run_id


def test_a_lost_staging_after_a_recipients_file_was_published_is_not_audited_as_delivering_it_nothing(
        hub_home: Path, pop: Population) -> None:
    """Killed after the Département's manifest and file were placed, before its delivery row; the operator removes
    staging/<run>. The recovery sees the complete, signed delivery in the drop (it keeps it: its file is there) —
    the audit must not then say the Département received nothing, nor the run end 'annule'."""
    run_id = _killed_then_staging_lost(hub_home, pop, "avant-ligne-livraison:1")
    problems = _clean(cli("reprise"))
    drop = hub_home / "outbox" / DEP
    complete = [p.name for p in _deliveries(drop) if (drop / (p.stem + ".manifest.json")).exists()]
    state = store_state(database_url(hub_home))
    if complete:
        for payload in state.payloads("execution-incomplete", run_id):
            if DEP in payload.get("non_livres_a", []):
                problems.append(f"the audit says {DEP} received nothing from run {run_id} ({payload}), yet its drop "
                                f"holds that run's complete delivery {complete}")
        if state.run(run_id)["status"] == "annule":
            problems.append(f"run {run_id} ends 'annule' while {DEP} holds its delivery {complete}")
    _redrop(hub_home, pop)
    problems += _clean(scheduler_pass())
    for recipient in RECIPIENTS:
        problems += drop_problems(hub_home, recipient)
    assert not problems, "\n".join(problems)


def test_reprise_of_a_run_whose_staging_was_lost_does_not_call_it_completed_and_says_the_file_must_be_resent(
        hub_home: Path, pop: Population) -> None:
    run_id = _killed_then_staging_lost(hub_home, pop, "entre-destinataires:1")
    outcome = cli("reprise")
    problems = _clean(outcome)
    text = outcome.stdout + outcome.stderr
    if f"complétées : 1 ({run_id})" in outcome.stdout:
        problems.append(f"reprise lists run {run_id} among the completed runs, yet {PLATFORM} never received it")
    if "renvoy" not in text and PLATFORM not in text:
        problems.append(f"reprise does not say the file must be sent again for {PLATFORM}: {text.strip()!r}")
    assert not problems, "\n".join(problems)


def test_the_file_of_a_run_whose_staging_was_lost_resent_twice_reaches_only_the_missing_recipient_once(
        hub_home: Path, pop: Population, tmp_path: Path) -> None:
    """Killed after the Département's delivery was complete (row written), staging removed, the Département took its
    files (SFTP get-then-delete); the partner then sends the file again, twice (two names, one pass)."""
    run_id = _killed_then_staging_lost(hub_home, pop, "entre-destinataires:1")
    problems = _clean(cli("reprise"))
    taken = tmp_path / "pris"
    taken.mkdir()
    for path in (hub_home / "outbox" / DEP).iterdir():
        shutil.move(str(path), taken / path.name)
    _redrop(hub_home, pop)
    shutil.copyfile(pop.flux, hub_home / INBOX / SECOND_INPUT)
    problems += _clean(scheduler_pass())
    if again := listing(hub_home / "outbox" / DEP):
        problems.append(f"{DEP} had its delivery from run {run_id} and took it; the re-sent file put it back: {again}")
    problems += drop_problems(hub_home, PLATFORM)
    state = store_state(database_url(hub_home))
    for recipient in RECIPIENTS:
        if len(rows := [d for d in state.deliveries if d["recipient"] == recipient]) != 1:
            problems.append(f"{len(rows)} delivery rows for {recipient}")
    if left := listing(hub_home / INBOX):
        problems.append(f"inbox not empty: {left}")
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty: {left}")
    assert not problems, "\n".join(problems)


# ==================================================================================================================
# 3. The withdrawal propagation plan, killed at every point
# ==================================================================================================================
def _propagation_killed_at(point: str) -> Outcome:
    process = subprocess.Popen([PYTHON, str(SUPPORT), "propager", point], cwd=str(REPO), env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return finish(process)


@pytest.mark.parametrize("point", ["plan-ecrit", "journal-ecrit", "plan-journalise", "premier-avis", "avis-deposes",
                                   "retraits-marques"])
def test_a_propagation_killed_at_any_point_is_finished_once_by_the_next(point: str, hub_home: Path,
                                                                      pop: Population) -> None:
    from test_attack_operations import _delivered_then_oppositions, _notice_problems

    from spie_hub.store import open_store, revocations

    expected = _delivered_then_oppositions(hub_home, pop)
    killed = _propagation_killed_at(point)
    assert killed.returncode == -signal.SIGKILL, f"{point} not reached: {killed.describe()}"
    outcomes = [cli("consent", "propager"), cli("consent", "propager")]
    problems = [p for o in outcomes for p in _clean(o)]
    problems += [f"exit {o.returncode}: {o.describe()}" for o in outcomes if o.returncode != 0]
    if "Aucun retrait en attente" not in outcomes[1].stdout:
        problems.append(f"the third propagation still finds work: {outcomes[1].stdout.strip()!r}")
    problems += _notice_problems(hub_home, expected)
    state = store_state(database_url(hub_home))
    propagated = [(p["retrait"], p["propagation"]) for p in state.payloads("retrait-propage")]
    tokens = {t for _, t in propagated}
    if len(propagated) != len({r for r, _ in propagated}) or len(tokens) != 1:
        problems.append(f"'retrait-propage' entries: {propagated} (one per withdrawal, one propagation expected)")
    engine = open_store(database_url(hub_home))
    try:
        with engine.connect() as connection:
            pending = connection.execute(revocations.select().where(revocations.c.propagated_at.is_(None))).all()
    finally:
        engine.dispose()
    if pending:
        problems.append(f"{len(pending)} withdrawal(s) never marked propagated")
    if left := staging_leftovers(hub_home):
        problems.append(f"left in staging: {left}")
    assert not problems, f"killed at {point}; then: {[o.stdout.strip() for o in outcomes]}\n" + "\n".join(problems)


# ==================================================================================================================
# 4. Exactly one claim: the CLI's inbox pass and a DAG-like pass of the same flow at once, on many files
# ==================================================================================================================
def test_the_cli_and_a_dag_pass_of_the_same_flow_at_once_on_many_files_deliver_each_exactly_once(
        database_url: str, hub_home: Path) -> None:
    """``spie-hub run --flux`` takes the inbox; a DAG-like pass of the same flow starts while it works (its listing
    sees files the CLI is about to take, its settle finds the flow busy). Every file: one run, one delivery per
    recipient, one archived copy; both processes end cleanly."""
    from spie_hub.demo.data import generate
    from spie_hub.store import open_store

    open_store(database_url).dispose()
    inbox = hub_home / INBOX
    inbox.mkdir(parents=True)
    count = 10
    shas = set()
    for i in range(count):
        path = inbox / f"NRSACGIM_RSABEM_052_{i:03d}.xml"
        generate(path, None, 12, seed=100 + i)
        shas.add(sha256(path))
    assert len(shas) == count
    first = start_cli("run", "--flux", CAF, "--json")
    assert wait_for(lambda: any((hub_home / "staging").glob("2*")) or first.poll() is not None, 60)
    processes = [first, start_pass()]
    outcomes = [finish(p, 120) for p in processes]
    problems = [p for o in outcomes for p in _clean(o)]
    problems += [f"exit {o.returncode}: {o.describe()}" for o in outcomes if o.returncode != 0]
    state = store_state(database_url)
    for recipient in RECIPIENTS:
        got = sorted(d["input_sha256"] for d in state.deliveries if d["recipient"] == recipient)
        if sorted(shas) != got:
            problems.append(f"{recipient}: {len(got)} delivery rows for {count} inputs, {len(set(got))} distinct")
        if len(data := _deliveries(hub_home / "outbox" / recipient)) != count:
            problems.append(f"{recipient}'s drop holds {len(data)} files for {count} inputs")
    if sorted(r["input_sha256"] for r in state.runs) != sorted(shas) or any(r["status"] != "termine" for r in state.runs):
        problems.append(f"runs: {sorted((r['input_sha256'][:8], r['status']) for r in state.runs)}")
    if listing(inbox):
        problems.append(f"inbox not empty: {listing(inbox)}")
    if left := staging_leftovers(hub_home):
        problems.append(f"staging not empty: {left}")
    if len(archived := listing(hub_home / "archive" / CAF)) != count:
        problems.append(f"{len(archived)} archived inputs for {count}")
    if not state.verify_ok:
        problems.append(f"audit chain: {state.verify_reason}")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

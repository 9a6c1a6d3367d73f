"""A curious or malicious partner (who drops files in its inbox and reads its return folder) and recipient (who
controls its drop folder) against the hub's confinement, naming and publication (spie_hub/run/deliver.py,
spie_hub/run/retention.py, spie_hub/run/recovery.py, connectors/transports/local.py).

What users expect: the hub never writes, reads or deletes outside the folder it was given (links never followed,
folders never taken through a link), a partner's file name (or a NIR in it) never reaches the audit, the logs, an
XCom or the CLI's output, a recipient never sees a file without its manifest nor a half delivery, one recipient's
folder cannot hang the hub nor stop another recipient's delivery, and every failure is one clean French sentence.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors.transports.base import TEMPORARY_PREFIX
from spie_hub.core.errors import HubError, StorageError
from spie_hub.core.home import HubHome
from spie_hub.registry import get_flow, load_flows
from spie_hub.run import flow_run
from spie_hub.run.deliver import Names
from spie_hub.run.lifecycle import pending_inputs, process_inbox, process_inbox_file
from spie_hub.run.retention import purge
from spie_hub.store import audit_log, deliveries, open_store, runs

FLOW = "caf-vers-departement"
INBOX = "inbox/caf-msa"
ATTACKER = "departement-052"  # first in publication order (sorted): its folder is published first
OTHER = "plateforme-insertion"
RETURNS = "outbox/caf-msa"
DAY = "2026-10-31"  # the reference date the demo generator writes (DTREF)
NIR_IN_NAME = "1850752052123"  # a well-formed NIR (sex 1, 1985-07, département 52)
ENGLISH = ("File exists", "Is a directory", "Not a directory", "Permission denied", "No such file", "Errno")


# -- set-up --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from spie_hub.demo.data import generate

    folder = tmp_path_factory.mktemp("attack-corpus")
    out = {}
    for key, seed in (("a", 11), ("b", 12)):
        out[key] = folder / f"{key}.xml"
        generate(out[key], None, 20, seed=seed)
    return out


@pytest.fixture
def home(hub_home: Path) -> HubHome:
    h = HubHome.from_env().ensure()
    (h.root / INBOX).mkdir(parents=True, exist_ok=True)
    for rid in (ATTACKER, OTHER):
        (h.outbox / rid).mkdir(parents=True, exist_ok=True)
    (h.root / RETURNS / "rejets").mkdir(parents=True, exist_ok=True)
    (h.root / RETURNS / "accuses").mkdir(parents=True, exist_ok=True)
    return h


def drop(home: HubHome, source: Path, name: str) -> Path:
    path = home.root / INBOX / name
    shutil.copyfile(source, path)
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def next_names(source: Path, recipient: str) -> tuple[str, str]:
    """What a recipient predicts from ``deliver.Names``: the delivery and its manifest for a given input."""
    flow = get_flow(FLOW)
    rec = next(r for r in flow.destinataires if r.id == recipient)
    name = Names(flow, sha(source)).delivery(rec, DAY, ".csv", 1)
    return name, Names.manifest(name)


def audit_text(home: HubHome) -> str:
    engine = open_store(home.database_url)
    try:
        with engine.connect() as c:
            return json.dumps([[str(v) for v in r] for r in c.execute(select(audit_log))], ensure_ascii=False)
    finally:
        engine.dispose()


def delivered(home: HubHome) -> dict[str, list[str]]:
    engine = open_store(home.database_url)
    try:
        with engine.connect() as c:
            rows = c.execute(select(deliveries.c.recipient, deliveries.c.file_name)).all()
    finally:
        engine.dispose()
    out: dict[str, list[str]] = {}
    for rid, name in rows:
        out.setdefault(rid, []).append(name)
    return out


def statuses(home: HubHome) -> list[str]:
    engine = open_store(home.database_url)
    try:
        with engine.connect() as c:
            return [r.status for r in c.execute(select(runs.c.status).order_by(runs.c.started_at))]
    finally:
        engine.dispose()


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links as their target, not followed), to prove nothing changed there."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
            elif path.is_dir():
                out[rel] = "<dir>"
            else:
                out[rel] = "<special>"
    return out


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def run_catching(home: HubHome) -> tuple[list | None, BaseException | None]:
    """One scheduler pass over the inbox; a French ``HubError`` (or, reported as such, any other error) returned —
    a delivery left waiting for a broken drop is such an error, said as the input's outcome."""
    from spie_hub.core.errors import StorageError

    try:
        summaries = process_inbox(FLOW, home)
        pending = [s for s in summaries if s.statut == "livraison-en-attente"]
        return summaries, (StorageError(pending[0].message or "") if pending else None)
    except HubError as error:
        return None, error
    except Exception as error:  # noqa: BLE001 - a raw error is itself a finding: assert_french names it
        return None, error


def assert_french(error: BaseException) -> None:
    assert isinstance(error, HubError), f"not a hub error but a raw {type(error).__name__}: {error}"
    text = str(error)
    assert text and not any(word in text for word in ENGLISH), f"not a clean French message: {text!r}"


def hook_failpoint(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], None]) -> None:
    """Run ``action`` when the run reaches the failpoint ``name`` (a recipient acting while the hub works)."""
    original = flow_run.failpoint

    def hooked(point: str) -> None:
        if point == name:
            action()
        original(point)

    monkeypatch.setattr(flow_run, "failpoint", hooked)


def run_in_thread(home: HubHome) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = process_inbox(FLOW, home)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def reader_present(fifo: Path) -> bool:
    """True when some process holds ``fifo`` open for reading (opening it for writing then succeeds); opening and
    closing it also releases that reader with an end of file, so that a blocked hub thread can finish."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


# ==================================================================================================================
# Recipient: its drop folder
# ==================================================================================================================
def test_a_drop_folder_replaced_by_a_link_outside_the_home_receives_nothing_and_holds_back_no_one(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    """A drop is its recipient's: broken, it affects that recipient only. Nothing goes through the link; the other
    recipient is delivered; this one's delivery waits, staged, with a French error (the next start completes it)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    drop_folder = home.outbox / ATTACKER
    drop_folder.rmdir()
    drop_folder.symlink_to(outside)
    dropped = drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert error is not None, f"the run went on through a link to {outside}: {result}"
    assert_french(error)
    assert visible(outside) == []
    assert not dropped.exists(), "taken once: the input is the run's, its delivery to the broken drop is pending"
    assert OTHER in delivered(home), "the other recipient was held back by a drop it has nothing to do with"
    assert statuses(home) == ["publication"]


@pytest.mark.parametrize("target", ["other-recipient", "keys", "partner-inbox"])
def test_a_drop_folder_replaced_by_a_link_inside_the_home_is_refused_too(
        home: HubHome, flux: dict[str, Path], target: str) -> None:
    """The transport's promise ("refuses symlinked folders"), not only "stays under SPIE_HUB_HOME": a recipient's
    drop turned into a link to another recipient's drop, to the keys or to a partner's inbox receives nothing."""
    where = {"other-recipient": home.outbox / OTHER, "keys": home.keys, "partner-inbox": home.root / "inbox/france-travail"}[target]
    where.mkdir(parents=True, exist_ok=True)
    before = tree(where)
    drop_folder = home.outbox / ATTACKER
    drop_folder.rmdir()
    drop_folder.symlink_to(os.path.relpath(where, drop_folder.parent))
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    attacker_files = [n for n in visible(where) if f"_{ATTACKER}_" in n]
    assert not attacker_files, f"the hub wrote {ATTACKER}'s delivery into {where.relative_to(home.root)} through a link"
    if target != "other-recipient":
        assert tree(where) == before
    if error is not None:
        assert_french(error)


def test_a_drop_folder_that_is_a_file_fails_cleanly_in_french_and_holds_back_no_one(
        home: HubHome, flux: dict[str, Path]) -> None:
    drop_folder = home.outbox / ATTACKER
    drop_folder.rmdir()
    drop_folder.write_text("not a folder")
    dropped = drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert error is not None and isinstance(error, StorageError), result
    assert not dropped.exists() and drop_folder.read_text() == "not a folder"
    assert OTHER in delivered(home)
    assert_french(error)


def test_a_drop_folder_turned_into_a_link_during_the_run_writes_nothing_outside_and_the_other_recipient_still_receives(
        home: HubHome, flux: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()

    def swap() -> None:  # after the writability checks, before publication
        drop_folder = home.outbox / ATTACKER
        shutil.rmtree(drop_folder)
        drop_folder.symlink_to(outside)

    hook_failpoint(monkeypatch, "publication", swap)
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert visible(outside) == []
    if error is not None:
        assert_french(error)
    assert OTHER in delivered(home), (
        f"{ATTACKER} turning its own drop into a link stopped {OTHER}'s delivery "
        f"(error: {error!r}; run statuses: {statuses(home)})")


# -- names the recipient can predict (deliver.Names) ---------------------------------------------------------------
@pytest.mark.parametrize("squat", ["regular-file", "link-to-a-key", "link-outside"])
def test_a_name_squatted_in_a_drop_never_touches_its_target_and_never_stops_the_other_recipient(
        home: HubHome, flux: dict[str, Path], tmp_path: Path, squat: str) -> None:
    _, manifest = next_names(flux["a"], ATTACKER)
    key = home.keys / "pseudonymisation.json"
    key.write_text('{"secret": "cle"}')
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    squatted = home.outbox / ATTACKER / manifest
    if squat == "regular-file":
        squatted.write_text("{}")
    else:
        squatted.symlink_to(key if squat == "link-to-a-key" else outside)
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert key.read_text() == '{"secret": "cle"}' and outside.read_text() == "outside"
    if error is not None:
        assert_french(error)
    data_files = [n for n in visible(home.outbox / ATTACKER) if n.endswith(".csv")]
    for name in data_files:
        assert (home.outbox / ATTACKER / Names.manifest(name)).is_file() and not \
            (home.outbox / ATTACKER / Names.manifest(name)).is_symlink(), "a delivery without its own manifest"
    assert OTHER in delivered(home), (
        f"a name squatted in {ATTACKER}'s drop stopped {OTHER}'s delivery (error: {error!r}; "
        f"runs: {statuses(home)})")


def test_a_link_named_like_the_next_manifest_is_never_followed(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    """A link to a pipe outside the home: the hub must not open it (it would read a secret just the same)."""
    _, manifest = next_names(flux["a"], ATTACKER)
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    (home.outbox / ATTACKER / manifest).symlink_to(fifo)
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    thread, box = run_in_thread(home)
    thread.join(6)
    followed = thread.is_alive() and reader_present(fifo)
    thread.join(20)
    assert not followed, "the hub opened the link named like its manifest and read its target (blocked on a pipe)"
    assert not thread.is_alive()


def test_a_fifo_named_like_the_next_delivery_does_not_hang_the_run(
        home: HubHome, flux: dict[str, Path]) -> None:
    name, _ = next_names(flux["a"], ATTACKER)
    fifo = home.outbox / ATTACKER / name
    os.mkfifo(fifo)
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    thread, box = run_in_thread(home)
    thread.join(6)
    hung = thread.is_alive()
    while thread.is_alive() and reader_present(fifo):  # release it
        thread.join(2)
    thread.join(20)
    assert not hung, "the run blocked forever reading a pipe the recipient named like its next delivery"
    assert OTHER in delivered(home), f"{OTHER} never received its delivery ({box.get('error')!r})"


def test_a_hidden_folder_named_like_a_hub_temporary_does_not_stop_the_flow(
        home: HubHome, flux: dict[str, Path]) -> None:
    """clean_temporaries (recovery, before every inbox listing) removes ``.spie-hub-tmp-*`` from the drops."""
    trap = home.outbox / ATTACKER / f"{TEMPORARY_PREFIX}piege"
    trap.mkdir()
    (trap / "contenu").write_text("recipient's own")
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    if error is not None:
        assert_french(error)
    assert (trap / "contenu").read_text() == "recipient's own"
    assert OTHER in delivered(home) and ATTACKER in delivered(home), (
        f"a folder named {trap.name} in {ATTACKER}'s drop stopped the flow: {error!r}")


def test_a_hidden_link_named_like_a_hub_temporary_is_removed_without_touching_its_target(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("precious")
    (home.outbox / ATTACKER / f"{TEMPORARY_PREFIX}lien").symlink_to(outside)
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert error is None, error
    assert outside.read_text() == "precious"
    assert {ATTACKER, OTHER} <= set(delivered(home))


def test_a_hub_temporary_name_squatted_in_a_drop_stops_nothing(home: HubHome, flux: dict[str, Path]) -> None:
    """A name with the hub's temporary prefix and this process's id, pre-created by a recipient, is neither one the
    hub writes (host, process and a random part) nor one it removes (its writer is alive)."""
    from spie_hub.run.lifecycle import run_flow

    (home.outbox / ATTACKER / f"{TEMPORARY_PREFIX}sonde-{os.getpid()}").write_text("squat")
    try:
        summary = run_flow(FLOW, flux["a"], home)
    except HubError as error:
        assert_french(error)
        pytest.fail(f"a recipient pre-creating the probe's name stopped the run: {error}")
    assert summary.statut == "termine"


# -- retention -----------------------------------------------------------------------------------------------------
def _old_run(home: HubHome, flux: dict[str, Path]) -> None:
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert error is None and result and result[0].statut == "termine", (result, error)


def _purge_later(home: HubHome) -> list:
    engine = open_store(home.database_url)
    try:
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=800)
        return purge(engine, home, load_flows(), now=later)
    finally:
        engine.dispose()


def test_retention_deletes_a_link_named_like_an_old_delivery_never_its_target(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    _old_run(home, flux)
    name = delivered(home)[ATTACKER][0]
    outside = tmp_path / "precious.csv"
    outside.write_text("precious")
    key = home.keys / "pseudonymisation.json"
    key.write_text("secret")
    (home.outbox / ATTACKER / name).unlink()
    (home.outbox / ATTACKER / name).symlink_to(outside)
    (home.outbox / ATTACKER / Names.manifest(name)).unlink()
    (home.outbox / ATTACKER / Names.manifest(name)).symlink_to(key)
    # and a link in the flow's naming scheme, not a delivery of the hub
    (home.outbox / ATTACKER / f"{FLOW}_vieux.csv").symlink_to(outside)
    os.utime(home.outbox / ATTACKER / f"{FLOW}_vieux.csv", (0, 0), follow_symlinks=False)
    _purge_later(home)
    assert outside.read_text() == "precious" and key.read_text() == "secret"


def test_retention_never_deletes_outside_through_a_drop_folder_replaced_by_a_link(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    _old_run(home, flux)
    outside = tmp_path / "outside"
    outside.mkdir()
    bait = outside / f"{FLOW}_{ATTACKER}_20200101_000000000000.csv"
    bait.write_text("not the hub's")
    os.utime(bait, (0, 0))
    shutil.rmtree(home.outbox / ATTACKER)
    (home.outbox / ATTACKER).symlink_to(outside)
    try:
        _purge_later(home)
    except HubError as error:
        assert_french(error)
    assert bait.read_text() == "not the hub's"


def test_one_recipients_linked_drop_folder_does_not_stop_the_retention_of_everything_else(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    _old_run(home, flux)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(home.outbox / ATTACKER)
    (home.outbox / ATTACKER).symlink_to(outside)
    error = None
    try:
        _purge_later(home)
    except HubError as raised:
        error = raised
    archive = visible(home.root / "archive" / FLOW)
    other = visible(home.outbox / OTHER)
    assert not archive and not other, (
        f"past retention, the archive ({len(archive)} file(s), people's data in clear) and {OTHER}'s drop "
        f"({len(other)} file(s)) were kept because {ATTACKER} made its drop a link: {error!r}")


# ==================================================================================================================
# Partner: its return folder (rejets/, accuses/)
# ==================================================================================================================
@pytest.mark.parametrize("folder", ["accuses", "rejets"])
def test_a_return_folder_replaced_by_a_link_outside_fails_before_anything_is_delivered(
        home: HubHome, flux: dict[str, Path], tmp_path: Path, folder: str) -> None:
    from spie_hub.demo.data import generate

    source = flux["a"]
    if folder == "rejets":  # a file with rejected records, so that a rejection report is written
        source = tmp_path / "with-anomalies.xml"
        generate(source, None, 40, seed=5, anomaly_rate=0.3)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = home.root / RETURNS / folder
    link.rmdir()
    link.symlink_to(outside)
    dropped = drop(home, source, "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert visible(outside) == []
    if error is None:
        assert result and result[0].statut == "termine"
        return
    assert_french(error)
    assert not delivered(home), (
        f"the run stopped on the partner's {folder}/ link after delivering to {sorted(delivered(home))}: "
        f"left in {statuses(home)}, input {'in the inbox' if dropped.exists() else 'taken'}; the next run: "
        f"{run_catching(home)[1]!r}")


@pytest.mark.parametrize("folder", ["accuses", "rejets"])
def test_a_return_folder_replaced_by_a_link_to_the_keys_receives_nothing(
        home: HubHome, flux: dict[str, Path], tmp_path: Path, folder: str) -> None:
    from spie_hub.demo.data import generate

    source = tmp_path / "with-anomalies.xml"
    generate(source, None, 40, seed=5, anomaly_rate=0.3)
    link = home.root / RETURNS / folder
    link.rmdir()
    link.symlink_to(os.path.relpath(home.keys, link.parent))
    drop(home, source, "NRSACGIM_RSABEM_052.xml")
    run_catching(home)
    assert visible(home.keys) == [], f"the hub wrote the partner's {folder} into keys/ through a link"


def test_a_link_named_like_the_acknowledgement_is_replaced_never_written_through(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    outside = tmp_path / "precious.json"
    outside.write_text("precious")
    receipt = Names(get_flow(FLOW), sha(flux["a"])).acknowledgement()
    (home.root / RETURNS / "accuses" / receipt).symlink_to(outside)
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert error is None, error
    assert outside.read_text() == "precious"
    assert not (home.root / RETURNS / "accuses" / receipt).is_symlink()


def test_a_folder_named_like_the_acknowledgement_does_not_block_the_flow(
        home: HubHome, flux: dict[str, Path]) -> None:
    """The partner knows its own file's hash, so the name of its receipt: a folder there must not leave the run
    half-finished and every later run of the flow failing."""
    receipt = Names(get_flow(FLOW), sha(flux["a"])).acknowledgement()
    (home.root / RETURNS / "accuses" / receipt).mkdir()
    drop(home, flux["a"], "NRSACGIM_RSABEM_052.xml")
    first, error = run_catching(home)
    if error is not None:
        assert_french(error)
    drop(home, flux["b"], "NRSACGIM_RSABEM_052_suivant.xml")
    second, next_error = run_catching(home)
    assert next_error is None and second and all(s.statut == "termine" for s in second), (
        f"first run: {error!r}, runs {statuses(home)}; the next partner file: {next_error!r}")


# ==================================================================================================================
# Partner: file names
# ==================================================================================================================
NIR_NAME = f"RSA_{NIR_IN_NAME}_DUPONT.xml"


def test_a_nir_in_a_partner_file_name_reaches_no_log_xcom_audit_or_cli_output(
        home: HubHome, flux: dict[str, Path], caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from spie_hub.cli import main

    caplog.set_level(logging.DEBUG)
    path = drop(home, flux["a"], NIR_NAME)
    refs = pending_inputs(get_flow(FLOW), home)
    xcom = process_inbox_file(FLOW, refs[0], home).for_xcom()
    drop(home, flux["b"], "AUTRE_" + NIR_NAME)
    assert main(["run", "--flux", FLOW]) == 0
    assert main(["executions"]) == 0
    assert main(["reprise"]) == 0
    report = tmp_path / "rapport.html"
    assert main(["dpo", "rapport", "--du", "2000-01-01", "--au", "2100-01-01", "--sortie", str(report)]) == 0
    out = capsys.readouterr()
    places = {"refs": json.dumps(refs), "xcom": json.dumps(xcom, ensure_ascii=False), "logs": caplog.text,
              "stdout": out.out, "stderr": out.err, "audit": audit_text(home),
              "dpo report": report.read_text(encoding="utf-8")}
    leaks = [where for where, text in places.items() if NIR_IN_NAME in text or "DUPONT" in text]
    assert not leaks, f"the NIR in the partner's file name reached: {leaks}"
    secrets = [os.environ[k].split(":", 1)[1] for k in ("SPIE_HUB_PSEUDO_KEY", "SPIE_HUB_SIGNING_KEY")]
    assert not [where for where, text in places.items() if any(secret in text for secret in secrets)]
    assert not path.exists()


def test_a_nir_in_a_partner_file_name_is_not_kept_in_the_archive_listing(
        home: HubHome, flux: dict[str, Path]) -> None:
    drop(home, flux["a"], NIR_NAME)
    result, error = run_catching(home)
    assert error is None, error
    listing = visible(home.root / "archive" / FLOW)
    assert listing and not any(NIR_IN_NAME in name for name in listing), (
        f"the archive is listed by the partner's name, NIR included: {listing}")


def test_the_purge_audit_entry_names_no_partner_file(home: HubHome, flux: dict[str, Path]) -> None:
    drop(home, flux["a"], NIR_NAME)
    assert run_catching(home)[1] is None
    _purge_later(home)
    audit = audit_text(home)
    assert NIR_IN_NAME not in audit and "DUPONT" not in audit, (
        "the purge entry of the audit lists the archived file under the partner's name, NIR included")


@pytest.mark.parametrize("name", [
    "x\\..\\..\\..\\evil.xml", "-rf --no-preserve-root.xml", "a\nforged log line.xml", "x\x1b[31mred.xml",
    "entree.xml", "prise.json.xml", "publication.json.xml", " .xml", "~.xml", "$(id).xml", "*.xml",
])
def test_a_partner_file_name_with_tricks_is_processed_and_archived_inside_the_home(
        home: HubHome, flux: dict[str, Path], name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    before = set(os.listdir(home.root.parent))
    drop(home, flux["a"], name)
    result, error = run_catching(home)
    assert error is None and result and result[0].statut == "termine", (
        f"{error!r}; runs {statuses(home)}; delivered to {sorted(delivered(home))}; "
        f"the next partner file: {(drop(home, flux['b'], 'suivant.xml'), run_catching(home))[1][1]!r}")
    assert set(os.listdir(home.root.parent)) == before, "the hub wrote beside its home"
    archived = visible(home.root / "archive" / FLOW)
    assert len(archived) == 1 and not any(ord(ch) < 32 for ch in archived[0])
    assert name not in caplog.text and name not in audit_text(home)


@pytest.mark.parametrize("name", ["x\\..\\evil.xml", "a\nb.xml"])
def test_a_run_rolled_back_gives_back_a_file_whose_name_has_a_backslash_or_a_newline(
        home: HubHome, flux: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """An interruption before publication returns the input to the inbox (recovery._restore_input), never loses it,
    and the flow goes on at the next pass."""
    armed = [True]

    def fail() -> None:
        if armed.pop() if armed else False:
            raise StorageError("Écriture impossible (panne simulée)")

    hook_failpoint(monkeypatch, "avant-journal", fail)
    drop(home, flux["a"], name)
    result, error = run_catching(home)
    assert isinstance(error, StorageError), (result, error)
    back = [n for n in visible(home.root / INBOX) if n.endswith(".xml")]
    assert len(back) == 1 and sha(home.root / INBOX / back[0]) == sha(flux["a"]), (
        f"the input was not given back to the inbox: {visible(home.root / INBOX)}; runs {statuses(home)}")
    again, next_error = run_catching(home)
    assert next_error is None and again and again[0].statut == "termine", (again, next_error)


def test_a_bidi_override_in_a_partner_name_is_not_shown_as_is_in_the_archive(
        home: HubHome, flux: dict[str, Path]) -> None:
    """U+202E makes ``…\u202elmx.exe`` read ``…exe.xml``: an operator browsing the archive is misled."""
    drop(home, flux["a"], "facture\u202elmx.exe.xml")
    assert run_catching(home)[1] is None
    archived = visible(home.root / "archive" / FLOW)
    assert archived and not any(unicodedata.category(ch) == "Cf" for ch in archived[0]), archived


def test_nfc_and_nfd_twins_are_two_inputs_each_processed_once(home: HubHome, flux: dict[str, Path]) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "été.xml"), unicodedata.normalize("NFD", "été.xml")
    assert nfc != nfd
    drop(home, flux["a"], nfc)
    drop(home, flux["b"], nfd)
    refs = pending_inputs(get_flow(FLOW), home)
    assert len(refs) == 2 and len(set(refs)) == 2
    result, error = run_catching(home)
    assert error is None and [s.statut for s in result] == ["termine", "termine"], (result, error)
    assert len(visible(home.root / "archive" / FLOW)) == 2
    assert sorted(delivered(home)[ATTACKER]) == sorted({n for n in delivered(home)[ATTACKER]})
    assert len(delivered(home)[ATTACKER]) == 2


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_a_very_long_unicode_partner_name_is_processed_and_archived(
        home: HubHome, flux: dict[str, Path], char: str) -> None:
    """A name the file system accepts (≤ 255 bytes) must stay a name the hub can archive under."""
    stem = char * ((250 - 4) // len(char.encode("utf-8")))
    name = stem + ".xml"
    assert len(name.encode("utf-8")) <= 255
    drop(home, flux["a"], name)
    result, error = run_catching(home)
    assert error is None and result and result[0].statut == "termine", (
        f"{error!r}; runs {statuses(home)}; delivered to {sorted(delivered(home))}")
    assert len(visible(home.root / "archive" / FLOW)) == 1


def test_a_very_long_partner_name_does_not_block_the_next_files_of_the_flow(
        home: HubHome, flux: dict[str, Path]) -> None:
    drop(home, flux["a"], "é" * 120 + ".xml")
    run_catching(home)
    for leftover in visible(home.root / INBOX):
        (home.root / INBOX / leftover).unlink()
    drop(home, flux["b"], "NRSACGIM_RSABEM_052_normal.xml")
    result, error = run_catching(home)
    assert error is None and result and result[0].statut == "termine", (
        f"a well-named file can no longer be processed after a long-named one: {error!r}; runs {statuses(home)}")


def test_a_hub_temporary_name_in_the_inbox_is_neither_taken_nor_removed(
        home: HubHome, flux: dict[str, Path]) -> None:
    hidden = drop(home, flux["a"], f"{TEMPORARY_PREFIX}0123.xml")
    normal = drop(home, flux["b"], "NRSACGIM_RSABEM_052.xml")
    result, error = run_catching(home)
    assert error is None and [s.statut for s in result] == ["termine"], (result, error)
    assert hidden.exists() and not normal.exists()


def test_a_folder_named_like_the_refusal_notice_leaves_no_unpurgeable_copy_of_a_quarantined_file(
        home: HubHome, flux: dict[str, Path], tmp_path: Path) -> None:
    """A malformed file is quarantined and the sender told (rejets/<flux>_<sha>_fichier-rejete.txt, a name the
    partner knows). A folder there must not make the hub keep copies of the file that no purge will ever remove."""
    bad = tmp_path / "malformed.xml"
    bad.write_bytes(flux["a"].read_bytes()[:-200])  # truncated: not well-formed
    notice = Names(get_flow(FLOW), sha(bad)).refusal_notice()
    (home.root / RETURNS / "rejets" / notice).mkdir()
    drop(home, bad, "NRSACGIM_RSABEM_052.xml")
    for _ in range(3):  # three scheduler passes
        result, error = run_catching(home)
        if error is not None:
            assert_french(error)
    _purge_later(home)
    left = [p for p in (home.quarantine).rglob("*") if p.is_file()]
    assert not left, (f"{len(left)} copies of the partner's file stay in quarantine past retention "
                      f"(runs {statuses(home)}): the purge only looks at runs whose status is 'quarantaine'")

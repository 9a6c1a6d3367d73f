"""Hostile inbox entries against the claim (spie_hub/run/claim.py, connectors/transports/local.py), through real
scheduler passes in subprocesses (tests/crash_support.py): links, pipes and folders are refused or ignored, never
read, never copied; a file written while it is claimed is taken as one consistent content or left for later; a
relative ``--input`` reaches the validator child as an absolute path; ``stabilite_secondes`` holds fresh files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from crash_support import (
    CAF,
    INBOX,
    Outcome,
    cli,
    database_url,
    finish,
    listing,
    nirs_of,
    scheduler_pass,
    sha256,
    staging_leftovers,
    start_cli,
    store_state,
    validators_of,
)

from spie_hub.run.claim import input_ref

MIB = 1 << 20


@dataclass(frozen=True)
class Flux:
    path: Path
    sha: str
    nirs: set[bytes]


def _flux(path: Path, households: int, seed: int) -> Flux:
    from spie_hub.demo.data import generate

    generate(path, None, households, seed=seed)
    return Flux(path, sha256(path), nirs_of(path))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Flux]:
    folder = tmp_path_factory.mktemp("claim-corpus")
    return {"a": _flux(folder / "a.xml", 420, 21), "b": _flux(folder / "b.xml", 300, 22),
            "small": _flux(folder / "small.xml", 40, 23)}


@pytest.fixture
def home(hub_home: Path) -> Path:
    from spie_hub.core.home import HubHome

    HubHome.from_env().ensure()
    (hub_home / INBOX).mkdir(parents=True, exist_ok=True)
    return hub_home


def _key_file(home: Path) -> Path:
    from spie_hub.privacy.keys import generate_key_file

    path = home / "keys" / "pseudonymisation.json"
    generate_key_file(path, "cle-cible")
    return path


def _holders(home: Path, content: bytes, *, skip: tuple[Path, ...] = ()) -> list[str]:
    """Files under the home (and nowhere else the hub writes) holding ``content`` whole, or being it."""
    digest = hashlib.sha256(content).hexdigest()
    found = []
    for path in home.rglob("*"):
        if path in skip or path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == digest or (len(content) >= 32 and content in data):
            found.append(str(path.relative_to(home)))
    return found


def _nir_holders(home: Path, nirs: set[bytes]) -> list[str]:
    from crash_support import files_with_nirs

    return sorted(files_with_nirs(home, nirs, allowed=()))


def _only_summary(outcome: Outcome) -> dict:
    assert outcome.returncode == 0 and not outcome.traceback, outcome.describe()
    assert len(outcome.summaries) == 1, outcome.describe()
    return outcome.summaries[0]


def _atime_is_observable(folder: Path) -> bool:
    """Whether reading a file whose atime is older than its mtime updates its atime here (relatime)."""
    probe = folder / "sonde-atime"
    probe.write_bytes(b"x" * 10)
    info = probe.stat()
    os.utime(probe, ns=(info.st_mtime_ns - 10**12, info.st_mtime_ns))
    before = probe.stat().st_atime_ns
    probe.read_bytes()
    observable = probe.stat().st_atime_ns != before
    probe.unlink()
    return observable


def _age(path: Path) -> int:
    """Make the atime of ``path`` older than its mtime, so that any read of it moves the atime; return it."""
    info = os.stat(path, follow_symlinks=False)
    os.utime(path, ns=(info.st_mtime_ns - 10**12, info.st_mtime_ns))
    return os.stat(path).st_atime_ns


# -- symbolic links ----------------------------------------------------------------------------------------------
TARGETS = ["key-absolute", "key-relative", "flux-outside-home", "flux-in-inbox", "dangling", "fifo", "inbox-folder"]


@pytest.mark.parametrize("target", TARGETS)
def test_a_symlink_in_the_inbox_is_refused_never_read_never_copied(target: str, home: Path, corpus: dict[str, Flux],
                                                                   tmp_path: Path) -> None:
    inbox = home / INBOX
    link = inbox / "NRSACGIM_lien.xml"
    key = _key_file(home)
    destination: Path | None
    if target == "key-absolute":
        destination = key
        link.symlink_to(key)
    elif target == "key-relative":
        destination = key
        link.symlink_to(os.path.relpath(key, inbox))
    elif target == "flux-outside-home":
        destination = tmp_path / "ailleurs.xml"
        shutil.copyfile(corpus["small"].path, destination)
        link.symlink_to(destination)
    elif target == "flux-in-inbox":
        destination = inbox / "flux-complet.bak"  # a valid flux the pattern does not take
        shutil.copyfile(corpus["small"].path, destination)
        link.symlink_to(destination.name)
    elif target == "fifo":
        destination = tmp_path / "tube"
        os.mkfifo(destination)
        link.symlink_to(destination)
    elif target == "inbox-folder":
        destination = tmp_path / "dossier-ailleurs"
        destination.mkdir()
        link.symlink_to(destination, target_is_directory=True)
    else:
        destination = None
        link.symlink_to(tmp_path / "nulle-part.xml")
    content = destination.read_bytes() if destination is not None and destination.is_file() else b""
    watch_atime = destination is not None and destination.is_file() and _atime_is_observable(destination.parent)
    atime = _age(destination) if watch_atime else None

    summary = _only_summary(scheduler_pass(timeout=60))

    problems = []
    if summary["statut"] != "refuse":
        problems.append(f"statut {summary['statut']!r}, 'refuse' expected ({summary.get('message')})")
    if os.path.lexists(link):
        problems.append("the link is still in the inbox")
    if destination is not None and not os.path.lexists(destination):
        problems.append("the link's target was removed")
    if atime is not None and os.stat(destination).st_atime_ns != atime:  # before this test reads it itself
        problems.append("the link's target was read (its access time moved)")
    if content and sha256(destination) != hashlib.sha256(content).hexdigest():
        problems.append("the link's target was changed")
    if content and (holders := _holders(home, content, skip=(destination,))):
        problems.append(f"the target's bytes were copied: {holders}")
    if target.startswith("flux"):
        leaks = [p for p in _nir_holders(home, corpus["small"].nirs) if home / p != destination]
        if leaks:
            problems.append(f"the target's people are in {leaks}")
    state = store_state(database_url(home))
    refused = [p for p in state.payloads("fichier-refuse") if p.get("reference") == input_ref(link.name)]
    if len(refused) != 1:
        problems.append(f"{len(refused)} 'fichier-refuse' entries for the link")
    if state.runs or state.events_of("execution-debut"):
        problems.append(f"a run started on the link: {[(r['run_id'], r['status']) for r in state.runs]}")
    if left := staging_leftovers(home):
        problems.append(f"staging left: {left}")
    if not state.verify_ok:
        problems.append(f"audit: {state.verify_reason}")
    assert not problems, "\n".join(problems)


def test_a_symlink_given_as_input_on_the_command_line_is_refused(home: Path, tmp_path: Path) -> None:
    key = _key_file(home)
    link = tmp_path / "entree.xml"
    link.symlink_to(key)
    outcome = cli("run", CAF, "--input", str(link), timeout=60)
    content = key.read_bytes()
    problems = []
    if outcome.returncode == 0 or outcome.traceback:
        problems.append(f"a link to a key accepted, or not a clean refusal: {outcome.describe()}")
    if holders := _holders(home, content, skip=(key,)):
        problems.append(f"the key was copied: {holders}")
    state = store_state(database_url(home))
    if state.runs:
        problems.append(f"a run started: {state.runs}")
    assert not problems, "\n".join(problems)


def test_a_symlinked_inbox_folder_pointing_outside_the_home_is_refused(home: Path, corpus: dict[str, Flux],
                                                                         tmp_path: Path) -> None:
    elsewhere = tmp_path / "ailleurs"
    elsewhere.mkdir()
    shutil.copyfile(corpus["small"].path, elsewhere / "NRSACGIM_x.xml")
    inbox = home / INBOX
    inbox.rmdir()
    inbox.symlink_to(elsewhere, target_is_directory=True)
    outcome = scheduler_pass(timeout=60)
    assert outcome.returncode == 2 and not outcome.traceback and "lien symbolique" in outcome.stderr, outcome.describe()
    assert listing(elsewhere) == ["NRSACGIM_x.xml"] and sha256(elsewhere / "NRSACGIM_x.xml") == corpus["small"].sha
    assert not _nir_holders(home, corpus["small"].nirs)


def test_a_hard_link_to_a_key_in_the_inbox_is_not_copied_anywhere(home: Path) -> None:
    """Beyond links: a hard link is a regular file, yet its other name may be a key of the hub (same file system)."""
    key = _key_file(home)
    (home / INBOX / "NRSACGIM_dur.xml").hardlink_to(key)
    outcome = scheduler_pass(timeout=60)
    assert not outcome.traceback, outcome.describe()
    holders = _holders(home, key.read_bytes(), skip=(key, home / INBOX / "NRSACGIM_dur.xml"))
    assert not holders, f"the key's bytes were copied by the run ({outcome.summaries}): {holders}"


# -- special files ------------------------------------------------------------------------------------------------
def test_a_fifo_matching_the_pattern_is_refused_without_blocking(home: Path, corpus: dict[str, Flux]) -> None:
    fifo = home / INBOX / "NRSACGIM_tube.xml"
    os.mkfifo(fifo)
    shutil.copyfile(corpus["small"].path, home / INBOX / "NRSACGIM_vrai.xml")
    outcome = scheduler_pass(timeout=60)
    assert outcome.returncode == 0 and not outcome.traceback, outcome.describe()
    statuses = sorted(s["statut"] for s in outcome.summaries)
    assert statuses == ["refuse", "termine"], outcome.summaries
    assert not os.path.lexists(fifo)
    state = store_state(database_url(home))
    assert [p["reference"] for p in state.payloads("fichier-refuse")] == [input_ref(fifo.name)]


def test_a_fifo_given_as_input_on_the_command_line_does_not_block(home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "tube.xml"
    os.mkfifo(fifo)
    outcome = cli("run", CAF, "--input", str(fifo), timeout=60)
    assert outcome.returncode != 0 and not outcome.traceback and outcome.stderr.strip(), outcome.describe()
    assert not store_state(database_url(home)).runs


def test_a_folder_matching_the_pattern_is_not_taken_and_blocks_nothing(home: Path, corpus: dict[str, Flux]) -> None:
    folder = home / INBOX / "NRSACGIM_dossier.xml"
    folder.mkdir()
    shutil.copyfile(corpus["small"].path, folder / "dedans.xml")
    shutil.copyfile(corpus["small"].path, home / INBOX / "NRSACGIM_vrai.xml")
    outcome = scheduler_pass(timeout=60)
    assert outcome.returncode == 0 and not outcome.traceback, outcome.describe()
    assert [s["statut"] for s in outcome.summaries if s["statut"] != "refuse"] == ["termine"], outcome.summaries
    assert listing(folder) == ["dedans.xml"], "the folder's content was touched"
    state = store_state(database_url(home))
    assert [r["input_sha256"] for r in state.runs] == [corpus["small"].sha], "something else than the real file ran"
    second = scheduler_pass(timeout=60)
    assert second.returncode == 0 and all(s["statut"] == "refuse" for s in second.summaries), second.describe()


# -- a file written while it is claimed ---------------------------------------------------------------------------
def _consistent(home: Path, contents: dict[str, bytes]) -> list[str]:
    """Every run read one whole content dropped by the partner: its audited hash is its archived copy's, and that
    copy is one of ``contents`` (complete, valid). Returns the problems."""
    state = store_state(database_url(home))
    archive = home / "archive" / CAF
    problems = []
    hashes = {hashlib.sha256(c).hexdigest(): name for name, c in contents.items()}
    for run in state.runs:
        starts = state.payloads("execution-debut", run["run_id"])
        if len(starts) != 1:
            problems.append(f"run {run['run_id']}: {len(starts)} execution-debut entries")
            continue
        audited = starts[0]["fichier_sha256"]
        copies = [p for p in archive.glob(f"{run['run_id']}_*")] if archive.is_dir() else []
        if run["status"] not in ("termine", "deja-livre"):
            problems.append(f"run {run['run_id']} ended {run['status']!r} (a mix or a partial read quarantined?)")
        if len(copies) != 1 or sha256(copies[0]) != audited:
            problems.append(f"run {run['run_id']}: audited hash {audited[:12]} vs archived copies {[sha256(c)[:12] for c in copies]}")
        if audited not in hashes:
            problems.append(f"run {run['run_id']} read a content the partner never wrote whole ({audited[:12]})")
    return problems


def _padded(source: Path, size: int) -> bytes:
    data = source.read_bytes()
    assert len(data) <= size
    return data + b"\n" * (size - len(data))  # whitespace after the root element: still the same valid flux


def test_a_file_growing_while_it_is_claimed_is_taken_whole_or_later(home: Path, corpus: dict[str, Flux],
                                                                    tmp_path: Path) -> None:
    full = corpus["a"].path.read_bytes()
    assert len(full) > 2 * MIB
    cut = int(1.5 * MIB)
    name = home / INBOX / "NRSACGIM_croissant.xml"
    name.write_bytes(full[:cut])
    rest = tmp_path / "suite"
    rest.write_bytes(full[cut:])
    first = scheduler_pass(TEST_CLAIM_HOOK=f"grow:{rest}", timeout=60)
    assert first.returncode == 0 and not first.traceback, first.describe()
    assert [s["statut"] for s in first.summaries] in (["en-attente"], ["termine"]), first.summaries
    assert not rest.exists(), "the partner's write did not happen during the claim"
    assert name.read_bytes() == full
    second = scheduler_pass(timeout=60)
    assert second.returncode == 0, second.describe()
    problems = _consistent(home, {"complet": full})
    statuses = [s["statut"] for s in first.summaries + second.summaries]
    if statuses.count("termine") != 1:
        problems.append(f"statuses over two passes: {statuses}")
    if listing(home / INBOX):
        problems.append(f"inbox: {listing(home / INBOX)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("how", ["renamed-other-size", "renamed-same-size-same-mtime", "rewritten-in-place-same-mtime"])
def test_a_file_replaced_while_it_is_claimed_is_never_mixed_nor_lost(how: str, home: Path, corpus: dict[str, Flux],
                                                                     tmp_path: Path) -> None:
    """The partner puts a new file under the name being copied: renamed over it (an upload tool's atomic replace),
    or rewritten in place (``rsync --inplace``). The new file keeps the old one's modification time (``rsync -t``,
    ``cp -p``) and, but in the first case, its size as well."""
    first_content = corpus["a"].path.read_bytes()
    same_size = how != "renamed-other-size"
    second_content = _padded(corpus["b"].path, len(first_content)) if same_size else corpus["b"].path.read_bytes()
    name = home / INBOX / "NRSACGIM_remplace.xml"
    name.write_bytes(first_content)
    replacement = home / INBOX / ".upload-en-cours"  # hidden: the hub never lists it
    replacement.write_bytes(second_content)
    action = "inplace" if how.startswith("rewritten") else "replace"
    first = scheduler_pass(TEST_CLAIM_HOOK=f"{action}:{replacement}", timeout=60)
    assert first.returncode == 0 and not first.traceback, first.describe()
    assert not replacement.exists(), "the replacement did not happen during the claim"
    second = scheduler_pass(timeout=60)
    assert second.returncode == 0, second.describe()
    problems = _consistent(home, {"premier": first_content, "second": second_content})
    state = store_state(database_url(home))
    processed = {p["fichier_sha256"] for p in state.payloads("execution-debut")}
    waiting = {sha256(p) for p in (home / INBOX).iterdir()} if (home / INBOX).is_dir() else set()
    if hashlib.sha256(second_content).hexdigest() not in processed | waiting:
        problems.append("the replacement file was removed from the inbox without ever being processed (lost); "
                        f"statuses {[s['statut'] for s in first.summaries + second.summaries]}, processed "
                        f"{sorted(h[:12] for h in processed)}")
    assert not problems, "\n".join(problems)


# -- a relative --input of 8 MiB or more: the validator child --------------------------------------------------
def test_a_relative_input_of_8_mib_is_processed_and_the_validator_gets_an_absolute_path(hub_home: Path,
                                                                                        tmp_path: Path) -> None:
    from spie_hub.run.flow_run import PARALLEL_VALIDATION_BYTES

    work = tmp_path / "travail"
    (work / "sous").mkdir(parents=True)
    big = _flux(work / "sous" / "gros.xml", 1600, 24)
    assert big.path.stat().st_size >= PARALLEL_VALIDATION_BYTES
    seen: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for _, _, argv in validators_of(hub_home):
                if argv not in seen:
                    seen.append(argv)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:  # relative input, relative SPIE_HUB_HOME, from a working directory that is neither the repo nor the home
        outcome = finish(start_cli("run", CAF, "--input", "sous/gros.xml", "--json", cwd=work,
                                   SPIE_HUB_HOME=os.path.relpath(hub_home, work)), 180)
    finally:
        stop.set()
        watcher.join()
    assert outcome.returncode == 0 and not outcome.traceback, outcome.describe()
    summary = json.loads(outcome.stdout[outcome.stdout.index("{"):])
    assert summary["statut"] == "termine", summary
    assert seen, "no validator child was seen for an input of 8 MiB or more"
    for argv in seen:
        path = argv[-1]
        assert os.path.isabs(path) and path.startswith(str(hub_home)), argv
    assert big.path.exists() and sha256(big.path) == big.sha, "the operator's file was changed"


# -- stability ----------------------------------------------------------------------------------------------------
def test_a_fresh_file_waits_for_stability_an_old_one_is_taken(home: Path, corpus: dict[str, Flux], tmp_path: Path) -> None:
    from spie_hub.core.home import REGISTRY_PATH

    registry = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8"))
    registry["flux"][CAF]["source"]["transport"]["stabilite_secondes"] = 30
    flows = tmp_path / "flows.yaml"
    flows.write_text(yaml.safe_dump(registry, allow_unicode=True, sort_keys=False), encoding="utf-8")
    fresh, old = home / INBOX / "NRSACGIM_frais.xml", home / INBOX / "NRSACGIM_ancien.xml"
    shutil.copyfile(corpus["small"].path, fresh)
    shutil.copyfile(corpus["small"].path, old)
    with old.open("ab") as handle:
        handle.write(b"\n")  # another content (another hash), same people
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    outcome = scheduler_pass(SPIE_HUB_FLOWS=str(flows), timeout=60)
    assert outcome.returncode == 0 and not outcome.traceback, outcome.describe()
    by_ref = {s["fichier"]: s["statut"] for s in outcome.summaries}
    assert by_ref == {input_ref(fresh.name): "en-attente", input_ref(old.name): "termine"}, outcome.summaries
    assert listing(home / INBOX) == [fresh.name] and sha256(fresh) == corpus["small"].sha
    state = store_state(database_url(home))
    assert [r["input_name"] for r in state.runs] == [old.name]
    assert not staging_leftovers(home)
    # Once old enough, the waiting file is taken.
    os.utime(fresh, (hour_ago, hour_ago))
    later = scheduler_pass(SPIE_HUB_FLOWS=str(flows), timeout=60)
    assert [s["statut"] for s in later.summaries] == ["termine"], later.describe()


def test_of_two_claims_racing_for_one_inbox_file_only_the_one_that_removes_it_keeps_its_copy(tmp_path: Path) -> None:
    from connectors.transports.local import LocalFolder
    from spie_hub.run.claim import Gone, claim_from

    inbox = LocalFolder(tmp_path, "inbox")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "flux.xml").write_bytes(b"<Racine/>")
    first = claim_from(inbox, "flux.xml", tmp_path / "a")

    class Late(LocalFolder):  # listed and read the same file, but another claim removed it first
        def delete(self, name, *, expected=None):  # noqa: ANN001, ANN202
            return False

    (tmp_path / "inbox" / "flux.xml").write_bytes(b"<Racine/>")
    late = Late(tmp_path, "inbox")
    with pytest.raises(Gone):
        claim_from(late, "flux.xml", tmp_path / "b")
    assert first.path.read_bytes() == b"<Racine/>" and not (tmp_path / "b" / "entree").exists()

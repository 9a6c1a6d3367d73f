"""Files private by default: nothing under SPIE_HUB_HOME that holds an identity is readable by another user.

Proved with real second users (``useradd``; the tests run as root here and in CI): an unrelated account reads
nothing, a recipient's account in the group its drop declares reads that drop and nothing else. The CLI is run with
the operator's usual umask (022): the hub must set its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CAF_FIXTURES, REPO
from helpers import consent_resource, write_bundle

OTHER_USER = "spie_autre"
RECIPIENT_USER = "spie_dest052"
RECIPIENT_GROUP = "spie_dep052"
NIRS = re.findall(rb"<NIR>(\d{13})", (CAF_FIXTURES / "RSABEM.xml").read_bytes())


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("Ces tests créent des utilisateurs (useradd) : ils doivent tourner en root quand CI=true")
        pytest.skip("Tests de droits d'accès : root requis pour créer un second utilisateur (CI=true : échec)")


def _ensure_user(name: str, group: str | None = None) -> None:
    if group is not None:
        subprocess.run(["groupadd", "-f", group], check=True, capture_output=True)
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        command = ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name]
        if group is not None:
            command[1:1] = ["-G", group]
        created = subprocess.run(command, capture_output=True, text=True)
        if created.returncode != 0 and subprocess.run(["id", name], capture_output=True).returncode != 0:
            raise AssertionError(f"useradd {name} : {created.stderr}")
    if group is not None and group not in subprocess.run(["id", "-nG", name], capture_output=True,
                                                           text=True).stdout.split():
        subprocess.run(["usermod", "-a", "-G", group, name], check=True, capture_output=True)


@pytest.fixture
def users() -> None:
    _need_root()
    _ensure_user(OTHER_USER)
    _ensure_user(RECIPIENT_USER, RECIPIENT_GROUP)


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A folder every user may traverse (pytest's own tmp folders are 0700): the home's parent, as /srv would be."""
    base = Path(tempfile.mkdtemp(prefix="spie-modes-"))
    base.chmod(0o711)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)  # rm, not rmtree: some tests nest folders very deep


@pytest.fixture
def home(open_base: Path, hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = open_base / "hub"
    monkeypatch.setenv("SPIE_HUB_HOME", str(root))
    return root


def spie_hub(*args: str, env: dict[str, str] | None = None, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, with the usual umask 022 (the hub must set its own)."""
    return subprocess.run([sys.executable, "-m", "spie_hub.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=180, preexec_fn=lambda: os.umask(umask))


def every_entry(root: Path) -> list[Path]:
    entries = [root]
    for folder, dirs, files in os.walk(root):
        entries += [Path(folder) / n for n in dirs + files]
    return entries


def readable_by(user: str, paths: list[Path]) -> list[str]:
    """The paths ``user`` may read (a folder: list), asked of the kernel from that user's own process."""
    script = 'for f; do if [ -r "$f" ]; then echo "$f"; fi; done'
    result = subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script, "sh", *map(str, paths)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def read_as(user: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "cat", str(path)], capture_output=True, text=True, timeout=60)


def drop(home: Path, *names: str) -> None:
    inbox = home / "inbox" / "caf-msa"
    inbox.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(CAF_FIXTURES / name, inbox / name)


def group_registry(base: Path, *, group: str | None = RECIPIENT_GROUP) -> Path:
    """flows.yaml with the Département's drop opened to its group (both flows deliver there)."""
    text = (REPO / "flows.yaml").read_text(encoding="utf-8")
    if group is not None:
        text = text.replace("{type: dossier-local, dossier: outbox/departement-052}",
                            f"{{type: dossier-local, dossier: outbox/departement-052, groupe: {group}}}")
    path = base / "flows.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def work_the_hub(home: Path, env: dict[str, str] | None = None) -> None:
    """Everything that leaves identities on disk: inbox, archive, quarantine, store, deliveries, returns to the
    sender, withdrawal notices, audit export, DPO report."""
    bundle = write_bundle(home.parent / "consents.json", consent_resource("c1", NIRS[2].decode()))
    assert spie_hub("consent", "import", str(bundle), env=env).returncode == 0
    drop(home, "RSABEM.xml", "RSABEI_invalid.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement", env=env)
    assert run.returncode == 1 and ": quarantaine" in run.stdout and ": termine" in run.stdout, run.stderr
    withdrawal = write_bundle(home.parent / "retrait.json", consent_resource("c1", NIRS[2].decode(), status="inactive"))
    assert spie_hub("consent", "import", str(withdrawal), env=env).returncode == 0
    assert spie_hub("consent", "propager", env=env).returncode == 0
    assert spie_hub("audit", "exporter", "--sortie", str(home / "exports" / "journal"), env=env).returncode == 0
    report = spie_hub("dpo", "rapport", "--du", "2020-01-01", "--au", "2030-12-31", "--sortie",
                      str(home / "rapports" / "dpo.html"), env=env)
    assert report.returncode == 0, report.stderr


def test_an_unrelated_user_can_read_nothing_under_the_home_after_a_full_working_day(users: None, home: Path) -> None:
    work_the_hub(home)
    # A run killed with NIRs in staging (before its audit commit), left as the crash left it.
    drop(home, "RSABEM-ouvert.xml")
    killed = spie_hub("run", "--flux", "caf-vers-departement", env={"SPIE_HUB_FAILPOINT": "avant-journal"})
    assert killed.returncode == -signal.SIGKILL
    entries = every_entry(home)
    assert any(p.suffix == ".sqlite3" for p in entries) and any("outbox" in p.parts for p in entries)
    assert any("archive" in p.parts for p in entries) and any("quarantine" in p.parts for p in entries)
    assert any("staging" in p.parts and p.is_file() for p in entries)
    assert readable_by(OTHER_USER, entries) == []
    assert read_as(OTHER_USER, next((home / "outbox" / "departement-052").glob("*.csv"))).returncode != 0
    for path in entries:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        assert mode & 0o077 == 0, f"{path.relative_to(home.parent)} : {oct(mode)}"


def test_a_home_left_readable_by_an_older_version_is_made_private_when_the_hub_opens_it_and_said_once(
        users: None, home: Path) -> None:
    drop(home, "RSABEM.xml")
    assert spie_hub("run", "--flux", "caf-vers-departement").returncode == 0
    for path in every_entry(home):  # what the hub used to leave: 0644 files in 0755 folders
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert readable_by(OTHER_USER, every_entry(home)) != []

    opened = spie_hub("reprise")
    assert opened.returncode == 0, opened.stderr
    assert opened.stderr.count("Droits d'accès resserrés") == 1 and "Traceback" not in opened.stderr
    assert readable_by(OTHER_USER, every_entry(home)) == []
    again = spie_hub("reprise")
    assert "Droits d'accès resserrés" not in again.stderr


def test_a_recipient_in_the_declared_group_reads_its_own_drop_and_nothing_else(users: None, home: Path) -> None:
    env = {"SPIE_HUB_FLOWS": str(group_registry(home.parent))}
    work_the_hub(home, env)
    own = home / "outbox" / "departement-052"
    info = os.stat(own)
    assert stat.S_IMODE(info.st_mode) == 0o2750 and info.st_gid == _gid(RECIPIENT_GROUP)
    delivered = sorted(own.iterdir())
    assert any(p.suffix == ".csv" for p in delivered) and any(p.name.endswith(".manifest.json") for p in delivered)
    assert any("avis" in p.name or "suppression" in p.name for p in delivered), [p.name for p in delivered]
    for path in delivered:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and os.stat(path).st_gid == _gid(RECIPIENT_GROUP)

    entries = every_entry(home)
    readable = {Path(p) for p in readable_by(RECIPIENT_USER, entries)}
    assert readable == {own, *delivered}
    assert read_as(RECIPIENT_USER, next(own.glob("*.csv"))).returncode == 0
    other_drop = next((home / "outbox" / "plateforme-insertion").glob("*.csv"))
    assert read_as(RECIPIENT_USER, other_drop).returncode != 0
    # Others may only traverse towards the drop: the home and outbox/ are 0711, never listable.
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o711 and stat.S_IMODE(os.stat(home / "outbox").st_mode) == 0o711
    assert readable_by(OTHER_USER, entries) == []


def test_a_sender_in_the_group_of_its_return_folder_reads_its_acknowledgements_and_rejections_only(
        users: None, home: Path) -> None:
    text = (REPO / "flows.yaml").read_text(encoding="utf-8").replace(
        'transport: {type: dossier-local, dossier: inbox/caf-msa, motif: "*.xml"}',
        'transport: {type: dossier-local, dossier: inbox/caf-msa, motif: "*.xml"}\n'
        f'      retour: {{type: dossier-local, dossier: outbox/caf-msa, groupe: {RECIPIENT_GROUP}}}').replace(
        # The CAF's other flow returns to the same folder: declared alike (the registry refuses otherwise).
        'transport: {type: dossier-local, dossier: inbox/caf-msa, motif: "contacts-*.csv"}',
        'transport: {type: dossier-local, dossier: inbox/caf-msa, motif: "contacts-*.csv"}\n'
        f'      retour: {{type: dossier-local, dossier: outbox/caf-msa, groupe: {RECIPIENT_GROUP}}}')
    (home.parent / "flows.yaml").write_text(text, encoding="utf-8")
    drop(home, "RSABEM.xml", "RSABEI_invalid.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement", env={"SPIE_HUB_FLOWS": str(home.parent / "flows.yaml")})
    assert run.returncode == 1, run.stderr
    returns = home / "outbox" / "caf-msa"
    sent = [p for p in every_entry(returns) if p.is_file()]
    assert {p.parent.name for p in sent} == {"accuses", "rejets"}
    for folder in (returns, returns / "accuses", returns / "rejets"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o2750 and os.stat(folder).st_gid == _gid(RECIPIENT_GROUP)
    assert {Path(p) for p in readable_by(RECIPIENT_USER, every_entry(home))} == set(every_entry(returns))


def test_a_group_removed_from_the_registry_makes_its_drop_private_again_at_the_next_delivery(
        users: None, home: Path) -> None:
    drop(home, "RSABEM.xml")
    assert spie_hub("run", "--flux", "caf-vers-departement",
                    env={"SPIE_HUB_FLOWS": str(group_registry(home.parent))}).returncode == 0
    own = home / "outbox" / "departement-052"
    assert read_as(RECIPIENT_USER, next(own.glob("*.csv"))).returncode == 0
    drop(home, "RSABEM-ouvert.xml")
    assert spie_hub("run", "--flux", "caf-vers-departement",
                    env={"SPIE_HUB_FLOWS": str(group_registry(home.parent, group=None))}).returncode == 0
    assert stat.S_IMODE(os.stat(own).st_mode) == 0o700
    assert readable_by(RECIPIENT_USER, every_entry(home)) == []


def test_an_unknown_group_is_a_configuration_error_naming_it_and_nothing_is_delivered(home: Path) -> None:
    drop(home, "RSABEM.xml")
    run = spie_hub("run", "--flux", "caf-vers-departement",
                   env={"SPIE_HUB_FLOWS": str(group_registry(home.parent, group="groupe_absent_xyz"))})
    assert run.returncode in (2, 74) and "groupe_absent_xyz" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr
    assert not list((home / "outbox" / "departement-052").glob("*.csv"))


def test_a_drop_declared_with_a_group_by_one_flow_only_is_refused_when_the_registry_loads(home: Path) -> None:
    text = (REPO / "flows.yaml").read_text(encoding="utf-8").replace(
        "{type: dossier-local, dossier: outbox/departement-052}",
        f"{{type: dossier-local, dossier: outbox/departement-052, groupe: {RECIPIENT_GROUP}}}", 1)
    (home.parent / "flows.yaml").write_text(text, encoding="utf-8")
    listed = spie_hub("flux", env={"SPIE_HUB_FLOWS": str(home.parent / "flows.yaml")})
    assert listed.returncode == 2 and "outbox/departement-052" in listed.stderr and "à l'identique" in listed.stderr


def test_a_partner_nesting_folders_deeper_than_the_recursion_limit_does_not_stop_the_hub(home: Path) -> None:
    folder = home / "inbox" / "caf-msa"
    folder.mkdir(parents=True)
    for _ in range(1200):
        folder = folder / "x"
        folder.mkdir()
    (folder / "f").write_bytes(b"x")
    (folder / "f").chmod(0o644)
    opened = spie_hub("reprise")
    assert opened.returncode == 0 and "Traceback" not in opened.stderr, opened.stderr[-2000:]
    assert stat.S_IMODE(os.stat(folder / "f").st_mode) == 0o600


def test_a_run_killed_with_nirs_in_staging_leaves_no_nir_on_disk_outside_deliveries_and_archive(home: Path) -> None:
    drop(home, "RSABEM.xml")
    killed = spie_hub("run", "--flux", "caf-vers-departement", env={"SPIE_HUB_FAILPOINT": "avant-journal"})
    assert killed.returncode == -signal.SIGKILL
    assert any(nir in p.read_bytes() for p in (home / "staging").rglob("*") if p.is_file() for nir in NIRS)

    restarted = spie_hub("run", "--flux", "caf-vers-departement")
    assert restarted.returncode == 0 and ": termine" in restarted.stdout, restarted.stderr
    kept = [p for p in every_entry(home) if p.is_file()
            and p.relative_to(home).parts[0] not in ("outbox", "archive")
            and any(nir in p.read_bytes() for nir in NIRS)]
    assert kept == []
    assert [p for p in (home / "staging").iterdir() if p.name != ".stores"] == []


def test_the_library_entry_point_keeps_its_files_private_whatever_the_callers_umask(home: Path) -> None:
    from spie_hub.run.lifecycle import run_flow

    previous = os.umask(0o022)
    try:
        summary = run_flow("caf-vers-departement", CAF_FIXTURES / "RSABEM.xml")
    finally:
        os.umask(previous)
    assert summary.statut == "termine"
    loose = [f"{p.relative_to(home)} {oct(stat.S_IMODE(os.lstat(p).st_mode))}" for p in every_entry(home)
             if stat.S_IMODE(os.lstat(p).st_mode) & 0o077]
    assert loose == []


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid

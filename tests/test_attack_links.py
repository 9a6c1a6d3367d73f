"""Attacks on the hard-link placement of the hub's own files (LocalFolder.store_file by os.link)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from crash_support import INBOX, INPUT_NAME, scheduler_pass


def _run(tmp_path: Path, seed: int = 7):
    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate
    from spie_hub.run.lifecycle import run_flow

    home = HubHome.from_env().ensure()
    flux = tmp_path / "flux.xml"
    generate(flux, None, 20, seed=seed)
    summary = run_flow("caf-vers-departement", flux, home)
    return home, summary


def _archives(root: Path) -> list[Path]:
    return [p for p in (root / "archive").rglob("*") if p.is_file()]


def test_a_delivered_file_shares_its_inode_with_nothing_else_of_the_hub(hub_home, tmp_path) -> None:
    home, summary = _run(tmp_path)
    delivered = {rid: Path(c.fichier) for rid, c in summary.destinataires.items() if c.fichier}
    assert delivered, summary
    archive = _archives(home.root)
    assert len(archive) == 1
    inodes = {os.stat(p).st_ino for p in delivered.values()}
    assert len(inodes) == len(delivered)
    for path in delivered.values():
        assert os.stat(path).st_nlink == 1, path
        assert os.stat(path).st_ino != os.stat(archive[0]).st_ino
    assert os.stat(archive[0]).st_nlink == 1


def test_a_recipient_writing_into_its_delivered_file_changes_neither_archive_nor_other_recipient(hub_home, tmp_path) -> None:
    home, summary = _run(tmp_path)
    paths = [Path(c.fichier) for c in summary.destinataires.values() if c.fichier]
    archive = _archives(home.root)[0]
    before_archive = archive.read_bytes()
    others = {p: p.read_bytes() for p in paths[1:]}
    with open(paths[0], "r+b") as handle:  # same inode, written in place
        handle.write(b"X" * 10)
    assert archive.read_bytes() == before_archive
    for p, data in others.items():
        assert p.read_bytes() == data


def test_a_delivery_keeps_the_readable_mode_it_had_when_copied_and_the_archive_stays_private(hub_home, tmp_path) -> None:
    home, summary = _run(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for c in summary.destinataires.values():
        if c.fichier:
            mode = stat.S_IMODE(os.stat(c.fichier).st_mode)
            assert mode == 0o666 & ~umask, oct(mode)  # what the old open()-based store gave
            assert os.stat(c.fichier).st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(_archives(home.root)[0]).st_mode) & 0o077 == 0


def test_the_manifest_sha256_matches_each_delivered_file_after_the_run(hub_home, tmp_path) -> None:
    _, summary = _run(tmp_path)
    for c in summary.destinataires.values():
        if c.fichier:
            path = Path(c.fichier)
            manifest = json.loads(path.with_name(path.name.rsplit(".", 1)[0] + ".manifest.json").read_text("utf-8"))
            assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_purging_a_delivery_leaves_the_archive_whole(hub_home, tmp_path) -> None:
    home, summary = _run(tmp_path)
    archive = _archives(home.root)[0]
    data = archive.read_bytes()
    for c in summary.destinataires.values():
        if c.fichier:
            Path(c.fichier).unlink()
    assert archive.read_bytes() == data and os.stat(archive).st_nlink == 1


def test_no_store_temporary_is_left_in_scratch_after_a_run(hub_home, tmp_path) -> None:
    home, _ = _run(tmp_path)
    scratch = home.root / "staging" / ".stores"
    assert not list(scratch.glob("*.tmp")) if scratch.is_dir() else True


def test_a_dead_process_temporary_hard_link_is_removed_by_clean_scratch(hub_home, tmp_path) -> None:
    from connectors.transports.local import clean_scratch

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    source = tmp_path / "entree"
    source.write_bytes(b"secret")
    os.link(source, scratch / "999999999-abc.tmp")  # a crash between link and rename
    assert clean_scratch(scratch) == ["999999999-abc.tmp"]
    assert os.stat(source).st_nlink == 1


def test_an_input_requeued_after_archiving_is_not_a_second_name_of_the_archive(hub_home, tmp_path) -> None:
    """Killed at "avant-fin" (input already archived by link), recovered on a later day: the input goes back to the
    inbox. It must be a file of its own: the sender can write into its inbox, and the claim refuses a file with two
    links."""
    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate

    home = HubHome.from_env().ensure()
    inbox = home.root / INBOX
    inbox.mkdir(parents=True, exist_ok=True)
    generate(inbox / INPUT_NAME, None, 20, seed=11)
    os.utime(inbox / INPUT_NAME, (1, 1))
    crashed = scheduler_pass(SPIE_HUB_FAILPOINT="avant-fin")
    assert crashed.returncode < 0, crashed.describe()
    states = list((home.root / "staging").glob("*/publication.json")) or list((home.root / "staging").rglob("*.json"))
    state_files = [p for p in (home.root / "staging").rglob("*") if p.is_file() and "date_decision" in p.read_text("utf-8", "ignore")]
    assert state_files, states
    for p in state_files:  # the decision was made on an earlier day
        data = json.loads(p.read_text("utf-8"))
        data["date_decision"] = "2000-01-01"
        p.write_text(json.dumps(data), "utf-8")
    archive = _archives(home.root)
    assert archive, "the input was archived before the crash"
    second = scheduler_pass()
    assert "plusieurs liens physiques" not in second.stdout, (
        "the hub refused its own requeued input: it is a hard link of the archive\n" + second.describe())
    # Every recipient had its file before the crash: nothing to decide again, the run is completed, not requeued;
    # whatever is in the inbox is never a second name of the archive.
    assert second.returncode == 0 and not second.traceback, second.describe()
    for p in [p for p in inbox.iterdir() if p.is_file()]:
        assert os.stat(p).st_ino != os.stat(archive[0]).st_ino, "the inbox file IS the archive (same inode)"
        assert os.stat(p).st_nlink == 1, "a requeued input the next claim refuses (two hard links)"

"""The SFTP transport against a real OpenSSH sshd (tests/support/sshd.py): the hub's SFTP server, one chrooted
SFTP-only account per partner, key authentication, the server's host key pinned in the hub's connection.

Dropped connections are real: a TCP proxy between the hub and sshd cuts them (mid-upload, or after the server has
performed a publication whose answer never comes back).
"""

# ruff: noqa: F401, F811 - the harness's fixtures are imported by name, then requested as arguments
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
import yaml
from paramiko.sftp import CMD_RENAME
from support.sshd import Account, Accounts, SshdServer, TcpProxy, generate_key, sftp_accounts, sshd_server, tcp_proxy

from connectors.transports.base import TEMPORARY_PREFIX, FileExists
from connectors.transports.registry import parse_transport
from connectors.transports.sftp import HostKeyRefused, SftpFolder, SftpOptions, SftpUnavailable
from spie_hub.core.errors import ConfigurationError, FatalInputError, HubError
from spie_hub.core.home import HubHome
from spie_hub.registry import clear_cache, get_flow
from spie_hub.run.claim import NotReady, Refused, claim_from
from spie_hub.run.lifecycle import process_inbox

REPO = Path(__file__).resolve().parent.parent
RSABEM = REPO / "tests" / "partners" / "caf-msa" / "fixtures" / "RSABEM.xml"
CONN = "sftp-caf"


@pytest.fixture
def home(hub_home: Path) -> HubHome:
    return HubHome.from_env().ensure()


@pytest.fixture
def caf(sftp_accounts: Accounts, monkeypatch: pytest.MonkeyPatch) -> Account:
    account = sftp_accounts("caf")
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", account.connection_json())
    return account


@pytest.fixture
def folder(caf: Account, home: HubHome) -> Iterator[SftpFolder]:
    transport = SftpFolder(CONN, "depot", home=home, timeout=20)
    try:
        yield transport
    finally:
        transport.close()


def _wait_for(condition: Callable[[], bool]) -> None:
    """Wait for something the server does on its own (not a timing: the test fails only if it never happens)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "condition jamais atteinte"
        time.sleep(0.01)


def _no_temporaries(account: Account, folder: str) -> bool:
    return not any(name.startswith(TEMPORARY_PREFIX) for name in account.files(folder))


# -- round trip ------------------------------------------------------------------------------------------------------

def test_a_file_is_listed_opened_stored_and_deleted_over_a_real_sftp_server(caf: Account, folder: SftpFolder) -> None:
    caf.put("depot/b.xml", b"<b/>")
    caf.put("depot/a.xml", b"<a>premier</a>")
    caf.put("depot/.cache", b"hidden")
    caf.put("depot/notes.txt", b"text")
    with caf.partner() as sftp:
        sftp.mkdir("depot/sous-dossier")

    listed = folder.list("*.xml")
    assert [entry.name for entry in listed] == ["a.xml", "b.xml"]
    assert (listed[0].size, listed[0].regular, listed[0].identity) == (len(b"<a>premier</a>"), True, "")
    assert listed[0].mtime == int(os.lstat(caf.folder("depot") / "a.xml").st_mtime)  # one-second resolution
    assert [entry.name for entry in folder.list()] == ["a.xml", "b.xml", "notes.txt"]  # no hidden name, no folder
    with folder.open("a.xml") as stream:
        assert stream.read() == b"<a>premier</a>"
        assert folder.opened("a.xml", stream) == listed[0]

    payload = os.urandom(300_000)
    with folder.store("livraison.csv") as target:
        target.write(payload)
    assert (caf.folder("depot") / "livraison.csv").read_bytes() == payload
    assert folder.exists("livraison.csv") and _no_temporaries(caf, "depot")

    assert folder.delete("a.xml", expected=listed[0]) is True
    assert folder.stat("a.xml") is None and not folder.exists("a.xml")
    assert folder.delete("a.xml") is False
    assert caf.files("depot") == [".cache", "b.xml", "livraison.csv", "notes.txt", "sous-dossier"]


def test_a_child_folder_shares_the_connection_and_is_created_for_a_store_only(caf: Account, folder: SftpFolder) -> None:
    returns = folder.child("accuses")
    assert returns.list() == [] and not (caf.folder("depot") / "accuses").exists()  # listing creates nothing
    with returns.store("accuse.json") as target:
        target.write(b"{}")
    assert (caf.folder("depot") / "accuses" / "accuse.json").read_bytes() == b"{}"
    assert returns.session is folder.session
    assert returns.uri("accuse.json") == f"sftp://{CONN}/depot/accuses/accuse.json" == returns.location("accuse.json")


def test_a_move_on_the_same_account_is_one_rename_that_never_replaces(caf: Account, folder: SftpFolder) -> None:
    caf.put("depot/x.xml", b"x")
    caf.put("livraisons/x.xml", b"autre")
    deliveries = SftpFolder(CONN, "livraisons", session=folder.session)
    with pytest.raises(FileExists):
        folder.move("x.xml", deliveries)
    folder.move("x.xml", folder.child("archive"), "x-archive.xml")
    assert caf.files("depot") == ["archive"] and caf.files("depot/archive") == ["x-archive.xml"]


def test_the_options_default_to_a_minute_of_stability_and_refuse_unknown_keys() -> None:
    options = parse_transport({"type": "sftp", "connexion": CONN, "dossier": "depot", "motif": "*.xml"}, "flux f")
    assert isinstance(options, SftpOptions)
    assert (options.stabilite_secondes, options.delai_secondes, options.tentatives) == (60, 30, 3)
    with pytest.raises(ConfigurationError, match="clé inconnue « mot_de_passe »"):
        parse_transport({"type": "sftp", "connexion": CONN, "dossier": "depot", "mot_de_passe": "x"}, "flux f")
    with pytest.raises(ConfigurationError, match="dossier"):
        parse_transport({"type": "sftp", "connexion": CONN, "dossier": "../autre"}, "flux f")


# -- stores: atomic, never replacing ----------------------------------------------------------------------------------

def test_a_store_over_an_existing_different_file_raises_file_exists_and_leaves_it(caf: Account, folder: SftpFolder) -> None:
    caf.put("depot/livraison.csv", b"ancien contenu")
    with pytest.raises(FileExists, match="jamais remplacé"), folder.store("livraison.csv") as target:
        target.write(b"nouveau contenu")
    assert (caf.folder("depot") / "livraison.csv").read_bytes() == b"ancien contenu"
    assert _no_temporaries(caf, "depot")


def test_an_identical_store_is_a_no_op(caf: Account, folder: SftpFolder) -> None:
    caf.put("depot/livraison.csv", b"meme contenu")
    before = os.lstat(caf.folder("depot") / "livraison.csv")
    with folder.store("livraison.csv") as target:
        target.write(b"meme contenu")
    after = os.lstat(caf.folder("depot") / "livraison.csv")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert caf.files("depot") == ["livraison.csv"]


def test_a_store_with_replace_swaps_the_file_in_one_step(caf: Account, folder: SftpFolder) -> None:
    caf.put("depot/etat.json", b"1")
    with folder.store("etat.json", replace=True) as target:
        target.write(b"2")
    assert (caf.folder("depot") / "etat.json").read_bytes() == b"2" and caf.files("depot") == ["etat.json"]


def test_a_store_that_fails_in_its_block_publishes_nothing(caf: Account, folder: SftpFolder) -> None:
    with pytest.raises(RuntimeError), folder.store("livraison.csv") as target:
        target.write(b"debut")
        raise RuntimeError("arrêt")
    assert caf.files("depot") == []


# -- host keys -----------------------------------------------------------------------------------------------------

def test_a_changed_host_key_is_refused_in_french_with_the_offered_fingerprint(
        caf: Account, home: HubHome, sshd_server: SshdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", caf.connection_json(host_key=generate_key().public_line))
    transport = SftpFolder(CONN, "depot", home=home)
    for _ in range(2):  # never added: refused again
        with pytest.raises(HostKeyRefused) as refused, transport.store("livraison.csv") as target:
            target.write(b"donnees")
        message = str(refused.value)
        assert "clé d'hôte CHANGÉE refusée" in message and CONN in message
        assert sshd_server.host_key.pkey.fingerprint in message and "SHA256:" in message
    assert caf.files("depot") == []


def test_an_unknown_host_key_is_refused_with_its_fingerprint_and_nothing_is_read(
        caf: Account, home: HubHome, sshd_server: SshdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:1 {sshd_server.host_key_line}\n")  # the key, for another server
    connection = caf.connection()
    connection["extra"] = {"known_hosts": str(known_hosts), "private_key": caf.hub_key.text()}
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", json.dumps(connection))
    caf.put("depot/a.xml", b"<a/>")
    with pytest.raises(HostKeyRefused, match="clé d'hôte inconnue refusée") as refused:
        SftpFolder(CONN, "depot", home=home).list()
    assert sshd_server.host_key.pkey.fingerprint in str(refused.value)
    assert known_hosts.read_text() == f"[127.0.0.1]:1 {sshd_server.host_key_line}\n"  # nothing added

    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {sshd_server.host_key_line}\n")
    assert [e.name for e in SftpFolder(CONN, "depot", home=home).list()] == ["a.xml"]


def test_a_connection_without_a_pinned_host_key_is_a_configuration_error(
        caf: Account, home: HubHome, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = caf.connection()
    connection["extra"] = {"private_key": caf.hub_key.text()}
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", json.dumps(connection))
    with pytest.raises(ConfigurationError, match="clé d'hôte du serveur non épinglée"):
        SftpFolder(CONN, "depot", home=home).list()


# -- inbound stability ---------------------------------------------------------------------------------------------

def test_a_file_still_being_written_is_not_taken_until_it_is_stable(caf: Account, folder: SftpFolder, tmp_path: Path) -> None:
    whole = RSABEM.read_bytes()
    with caf.writing("depot/RSABEM.xml") as partner:
        partner.write(whole[: len(whole) // 2])
        partner.flush()
        assert [e.name for e in folder.list("*.xml")] == ["RSABEM.xml"]  # a listing cannot tell
        with pytest.raises(NotReady, match="trop récent"):
            claim_from(folder, "RSABEM.xml", tmp_path / "run1", stability=60)
        partner.write(whole[len(whole) // 2:])
    assert (caf.folder("depot") / "RSABEM.xml").read_bytes() == whole
    # Still too recent right after the last write; once a minute has passed (the clock of the claim), taken whole.
    with pytest.raises(NotReady):
        claim_from(folder, "RSABEM.xml", tmp_path / "run2", stability=60)
    last_write = folder.stat("RSABEM.xml").mtime
    claimed = claim_from(folder, "RSABEM.xml", tmp_path / "run3", stability=60, now=last_write + 61)
    assert claimed.sha256 == hashlib.sha256(whole).hexdigest() and claimed.path.read_bytes() == whole
    assert caf.files("depot") == []


def test_a_file_growing_while_it_is_read_is_left_for_the_next_pass(caf: Account, folder: SftpFolder, tmp_path: Path) -> None:
    caf.put("depot/gros.xml", b"a" * 3_000_000)

    class Growing(SftpFolder):
        def opened(self, name, stream):  # type: ignore[no-untyped-def]
            info = super().opened(name, stream)
            caf.put("depot/gros.xml", b"a" * 3_000_001)  # the partner rewrites it while the hub reads
            return info

    growing = Growing(CONN, "depot", session=folder.session)
    with pytest.raises(NotReady, match="modifié pendant sa lecture"):
        claim_from(growing, "gros.xml", tmp_path / "run", stability=0, now=time.time() + 3600)
    assert caf.files("depot") == ["gros.xml"]


def test_a_symbolic_link_on_the_server_is_listed_as_not_regular_and_never_opened(
        caf: Account, folder: SftpFolder, tmp_path: Path) -> None:
    caf.put("depot/vrai.xml", b"<secret/>")
    with caf.partner() as sftp:
        sftp.symlink("vrai.xml", "depot/lien.xml")
    assert {e.name: e.regular for e in folder.list()} == {"lien.xml": False, "vrai.xml": True}
    with pytest.raises(FatalInputError, match="Lien symbolique refusé"), folder.open("lien.xml"):
        pass
    with pytest.raises(Refused):
        claim_from(folder, "lien.xml", tmp_path / "run", stability=0)


# -- dropped connections --------------------------------------------------------------------------------------------

def test_a_connection_dropped_mid_upload_never_shows_a_partial_file_and_the_retry_delivers_exactly_once(
        caf: Account, home: HubHome, tcp_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", caf.connection_json(port=tcp_proxy.port))
    transport = SftpFolder(CONN, "livraisons", home=home, timeout=20, attempts=3)
    seen_at_cut: list[list[str]] = []
    tcp_proxy.on_cut = lambda: seen_at_cut.append(caf.files("livraisons"))
    payload = os.urandom(8_000_000)
    transport.list()  # connected
    tcp_proxy.cut_after_upload(3_000_000)
    try:
        with transport.store("livraison.csv") as target:
            target.write(payload)
    finally:
        transport.close()
    assert tcp_proxy.cuts == 1
    # At the cut, only the hub's hidden temporary existed: never the final name.
    [at_cut] = seen_at_cut
    assert "livraison.csv" not in at_cut and all(name.startswith(TEMPORARY_PREFIX) for name in at_cut)
    assert caf.files("livraisons") == ["livraison.csv"]
    assert (caf.folder("livraisons") / "livraison.csv").read_bytes() == payload


def test_a_publication_whose_answer_is_lost_is_not_published_twice(
        caf: Account, home: HubHome, tcp_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", caf.connection_json(port=tcp_proxy.port))
    transport = SftpFolder(CONN, "livraisons", home=home, timeout=20)
    sftp = transport.session.open()
    final = caf.folder("livraisons") / "livraison.csv"
    published: list[os.stat_result] = []
    real = sftp._request

    def publish_then_lose_the_answer(kind: int, *args: object):  # type: ignore[no-untyped-def]
        if kind != CMD_RENAME or not os.fsdecode(args[0]).rsplit("/", 1)[-1].startswith(TEMPORARY_PREFIX):
            return real(kind, *args)
        tcp_proxy.hold_replies()  # the publishing rename reaches the server; its answer will not come back
        number = sftp._async_request(type(None), kind, *args)
        _wait_for(final.exists)
        published.append(os.lstat(final))
        tcp_proxy.cut()
        sftp._read_response(number)  # raises: the connection is gone

    monkeypatch.setattr(sftp, "_request", publish_then_lose_the_answer)
    payload = os.urandom(500_000)
    try:
        with transport.store("livraison.csv") as target:
            target.write(payload)
    finally:
        transport.close()
    assert tcp_proxy.cuts == 1 and len(published) == 1
    assert caf.files("livraisons") == ["livraison.csv"]  # one file, no temporary
    now = os.lstat(final)
    assert (now.st_ino, now.st_mtime_ns) == (published[0].st_ino, published[0].st_mtime_ns)  # published once
    assert final.read_bytes() == payload


def test_a_killed_session_is_reopened_and_a_dead_attempts_temporaries_are_cleaned(
        caf: Account, folder: SftpFolder, sshd_server: SshdServer) -> None:
    assert folder.list() == []
    assert sshd_server.kill_sessions(caf.name) >= 1
    caf.put("depot/a.xml", b"<a/>")  # the partner reconnects on its own
    assert [e.name for e in folder.list()] == ["a.xml"]  # the hub too
    # A dead writer's temporary (this host, a finished process), one of this process no longer written, another
    # hub host's (left alone: only that host knows whether its writer lives).
    finished = _dead_pid()
    from connectors.transports import sftp as module

    dead = f"{TEMPORARY_PREFIX}{module._HOST}-{finished}-{'0' * 32}"
    stale = f"{TEMPORARY_PREFIX}{module._HOST}-{os.getpid()}-{'1' * 32}"
    other = f"{TEMPORARY_PREFIX}autrehote-{finished}-{'2' * 32}"
    for name in (dead, stale, other):
        caf.put(f"depot/{name}", b"partiel")
    assert sorted(folder.clean_temporaries()) == sorted([dead, stale])
    assert caf.files("depot") == sorted([other, "a.xml"])


def _dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_server_that_stays_down_is_a_french_storage_error_and_nothing_is_published(
        caf: Account, folder: SftpFolder, sshd_server: SshdServer, home: HubHome) -> None:
    assert folder.list() == []
    sshd_server.stop()
    try:
        transport = SftpFolder(CONN, "depot", home=home, timeout=5, attempts=2)
        with pytest.raises(SftpUnavailable, match="après 2 tentative"), transport.store("livraison.csv") as target:
            target.write(b"donnees")
    finally:
        sshd_server.start()
    assert caf.files("depot") == []
    assert folder.list() == []  # reconnects once the server is back


# -- isolation and secrets ------------------------------------------------------------------------------------------

def test_one_partners_account_cannot_see_another_partners_folders(
        sftp_accounts: Accounts, home: HubHome, sshd_server: SshdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    caf, mission = sftp_accounts("caf"), sftp_accounts("ml")
    mission.put("depot/jeunes.xml", b"<confidentiel/>")
    with caf.partner() as sftp:
        assert sorted(sftp.listdir("/")) == ["depot", "livraisons", "retours"]
        assert sorted(sftp.listdir("..")) == ["depot", "livraisons", "retours"]
        for path in (f"/{mission.name}/depot/jeunes.xml", f"../{mission.name}/depot/jeunes.xml",
                     str(mission.folder("depot") / "jeunes.xml")):
            with pytest.raises(OSError):
                sftp.stat(path)
    # The hub's key for one account does not open the other.
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_ML", json.dumps({**caf.connection(), "login": mission.name}))
    with pytest.raises(ConfigurationError, match="authentification par clé refusée"):
        SftpFolder("sftp-ml", "depot", home=home).list()
    # No shell either: the account is SFTP-only.
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # test client only, to try a command
    client.connect("127.0.0.1", port=sshd_server.port, username=caf.name, pkey=caf.partner_key.pkey,
                   allow_agent=False, look_for_keys=False)
    try:
        _, stdout, _ = client.exec_command("cat /etc/passwd")
        assert b"root:" not in stdout.read()
    finally:
        client.close()


def test_uris_logs_and_errors_never_hold_the_login_the_key_or_its_passphrase(
        caf: Account, home: HubHome, sshd_server: SshdServer, tcp_proxy: TcpProxy, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    passphrase = "phrase-de-passe-tres-secrete"
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", caf.connection_json(port=tcp_proxy.port, passphrase=passphrase))
    key_text = caf.hub_key.text(passphrase)
    secrets = [caf.name, passphrase, *(line for line in key_text.splitlines()[1:-1] if len(line) > 20)]
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)
    transport = SftpFolder(CONN, "livraisons", home=home, timeout=10, attempts=2)
    texts += [transport.uri(), transport.uri("f.csv"), transport.location("f.csv"), repr(transport)]
    tcp_proxy.cut_after_upload(400_000)
    with transport.store("f.csv") as target:  # a drop, logged, then retried
        target.write(os.urandom(1_000_000))
    transport.close()
    failures: list[tuple[dict[str, object], type[HubError]]] = [
        ({"password": "mauvaise"}, ConfigurationError),
        ({"extra": {"host_key": sshd_server.host_key_line, "private_key": generate_key().text()}}, ConfigurationError),
        ({"extra": {"host_key": generate_key().public_line, "private_key": key_text}}, HostKeyRefused),
        ({"port": 1}, SftpUnavailable),
    ]
    for change, kind in failures:
        monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", json.dumps({**caf.connection(passphrase=passphrase), **change}))
        with pytest.raises(kind) as caught:
            SftpFolder(CONN, "livraisons", home=home, timeout=5, attempts=1).list()
        texts.append(str(caught.value))
        # No chained paramiko error (its text could carry a path or a key): said in French alone.
        assert caught.value.__cause__ is None and (caught.value.__context__ is None or caught.value.__suppress_context__)
    # What reaches a log at INFO and above, the hub's and paramiko's (paramiko's DEBUG echoes the server's own
    # debug lines, account name included: never enabled in production).
    texts += [record.getMessage() for record in caplog.records if record.levelno >= logging.INFO]
    assert any("connexion perdue" in text for text in texts)
    for text in texts:
        for secret in secrets:
            assert secret not in text, text


# -- end to end ----------------------------------------------------------------------------------------------------

def _registry(tmp_path: Path) -> Path:
    flow = yaml.safe_load((REPO / "flows.yaml").read_text(encoding="utf-8"))["flux"]["caf-vers-departement"]
    flow["source"]["transport"] = {"type": "sftp", "connexion": "sftp-caf", "dossier": "depot", "motif": "*.xml"}
    flow["source"]["retour"] = {"type": "sftp", "connexion": "sftp-caf", "dossier": "retours"}
    recipient = flow["destinataires"]["departement-052"]
    recipient["transport"] = {"type": "sftp", "connexion": "sftp-departement", "dossier": "livraisons"}
    flow["destinataires"] = {"departement-052": recipient}
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump({"flux": {"caf-vers-departement": flow}}, allow_unicode=True), encoding="utf-8")
    return path


def test_a_flow_from_sftp_to_sftp_delivers_exactly_once_with_its_manifest_and_acknowledges_the_sender(
        sftp_accounts: Accounts, home: HubHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    caf, departement = sftp_accounts("caf"), sftp_accounts("dep")
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", caf.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_DEPARTEMENT", departement.connection_json())
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(_registry(tmp_path)))
    clear_cache()
    try:
        flow = get_flow("caf-vers-departement")
        assert flow.transport.stabilite_secondes == 60
        caf.put("depot/RSABEM.xml", RSABEM.read_bytes())
        # Just written: left in the drop (a minute of stability by default).
        [waiting] = process_inbox(flow, home)
        assert waiting.statut == "en-attente" and caf.files("depot") == ["RSABEM.xml"]
        # Written two minutes ago (the partner's tool kept the time): taken.
        old = time.time() - 120
        os.utime(caf.folder("depot") / "RSABEM.xml", (old, old))
        [summary] = process_inbox(flow, home)
        assert summary.statut == "termine", summary.message
        assert caf.files("depot") == []
        delivered = departement.files("livraisons")
        [data] = [n for n in delivered if n.endswith(".csv")]
        assert delivered == sorted([data, data.removesuffix(".csv") + ".manifest.json"])
        body = (departement.folder("livraisons") / data).read_bytes()
        manifest = json.loads((departement.folder("livraisons") / (data.removesuffix(".csv") + ".manifest.json")).read_text())
        assert manifest["sha256"] == hashlib.sha256(body).hexdigest() and manifest["fichier"] == data
        assert summary.destinataires["departement-052"].fichier == f"sftp://sftp-departement/livraisons/{data}"
        # The input archived by the hub, the acknowledgement in the sender's returns.
        archived = list((home.root / "archive" / "caf-vers-departement").rglob("*"))
        assert any(p.is_file() and p.read_bytes() == RSABEM.read_bytes() for p in archived)
        [ack] = caf.files("retours/accuses")
        assert json.loads((caf.folder("retours/accuses") / ack).read_text())["fichier_recu"] == "RSABEM.xml"
        # The same file again: nothing delivered twice.
        caf.put("depot/RSABEM-bis.xml", RSABEM.read_bytes())
        os.utime(caf.folder("depot") / "RSABEM-bis.xml", (old, old))
        [again] = process_inbox(flow, home)
        assert again.statut == "deja-livre"
        assert departement.files("livraisons") == delivered
        assert all(_no_temporaries(account, folder) for account in (caf, departement)
                   for folder in ("depot", "livraisons", "retours"))
    finally:
        clear_cache()
        shutil.rmtree(home.staging / ".sftp", ignore_errors=True)

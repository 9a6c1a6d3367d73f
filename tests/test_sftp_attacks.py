"""The attacker's findings on the SFTP transport (brief 11), kept as tests against a real chrooted OpenSSH.

Each test failed before its fix: a lost answer to the publication followed by the recipient taking the file
published the same delivery twice; a partner's non-UTF-8 name blocked the whole inbox with a traceback; a failed
put-back during ``delete(expected=…)`` left the partner's file under the hub's temporary name (then removed); a lost
answer with no reconnection was reported as "rien n'a été publié"."""

# ruff: noqa: F401, F811
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from paramiko.sftp import CMD_EXTENDED, CMD_RENAME
from support.sshd import Account, Accounts, TcpProxy, sftp_accounts, sshd_server, tcp_proxy

from connectors.transports.base import TEMPORARY_PREFIX
from connectors.transports.sftp import SftpFolder, SftpUnavailable
from spie_hub.core.home import HubHome

CONN = "sftp-caf"


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _is_temporary(path: object) -> bool:
    """The publishing rename: the hub's temporary is its source."""
    return isinstance(path, (str, bytes)) and os.fsdecode(path).rsplit("/", 1)[-1].startswith(TEMPORARY_PREFIX)


@pytest.fixture
def caf(sftp_accounts: Accounts, monkeypatch: pytest.MonkeyPatch) -> Account:
    account = sftp_accounts("caf")
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", account.connection_json())
    return account


@pytest.fixture
def folder(caf: Account, hub_home: object) -> Iterator[SftpFolder]:
    transport = SftpFolder(CONN, "depot", home=HubHome.from_env().ensure(), timeout=20)
    try:
        yield transport
    finally:
        transport.close()


# -- finding 2 (HIGH): lost answer to the publication, then the recipient takes the file ----------------------------

def test_a_published_file_taken_by_the_recipient_before_the_retry_is_not_published_again(
        sftp_accounts: Accounts, hub_home: object, tcp_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    caf = sftp_accounts("caf")
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", caf.connection_json(port=tcp_proxy.port))
    transport = SftpFolder(CONN, "livraisons", home=HubHome.from_env().ensure(), timeout=20)
    sftp = transport.session.open()
    final = caf.folder("livraisons") / "livraison.csv"
    taken: list[bytes] = []
    real_request = sftp._request

    def publish_then_lose_the_answer(number: int) -> None:
        _wait_for(final.exists)
        with caf.partner() as partner:  # the recipient's poller: get, then delete
            with partner.open("livraisons/livraison.csv", "rb") as handle:
                taken.append(handle.read())
            partner.remove("livraisons/livraison.csv")
        tcp_proxy.cut()
        sftp._read_response(number)

    def request(kind: int, *args: object):  # type: ignore[no-untyped-def]
        if kind != CMD_RENAME or not _is_temporary(args[0]):
            return real_request(kind, *args)
        tcp_proxy.hold_replies()  # the publishing rename reaches the server; its answer is lost
        publish_then_lose_the_answer(sftp._async_request(type(None), kind, *args))

    monkeypatch.setattr(sftp, "_request", request)
    payload = os.urandom(200_000)
    try:
        with transport.store("livraison.csv") as target:
            target.write(payload)
    finally:
        transport.close()
    assert taken == [payload]  # delivered once, and taken by the recipient
    assert not final.exists(), "the same delivery was published a second time after the recipient had taken it"
    assert not [n for n in caf.files("livraisons") if n.startswith(TEMPORARY_PREFIX)]


# -- finding 1 (HIGH): a partner's name that is not UTF-8 --------------------------------------------------------

def _partner_drops_latin1_name(caf: Account) -> None:
    caf.put("depot/bon.xml", b"<a/>")
    # "évaluation.xml" in ISO-8859-1, as a partner tool on a Latin-1 system writes it
    with caf.partner() as sftp, sftp.open(b"depot/\xe9valuation.xml", "wb") as handle:  # type: ignore[arg-type]
        handle.write(b"<b/>")
    assert len(caf.files("depot")) == 2


def test_a_latin1_file_name_does_not_break_the_listing_of_the_inbox(caf: Account, folder: SftpFolder) -> None:
    _partner_drops_latin1_name(caf)
    names = [entry.name for entry in folder.list()]
    assert "bon.xml" in names


def test_a_latin1_file_name_is_listed_read_and_removed_under_the_same_name(caf: Account, folder: SftpFolder) -> None:
    _partner_drops_latin1_name(caf)
    [odd] = [entry for entry in folder.list() if entry.name != "bon.xml"]
    assert odd.name == b"\xe9valuation.xml".decode("utf-8", "surrogateescape")
    assert folder.stat(odd.name) is not None
    with folder.open(odd.name) as stream:
        assert stream.read() == b"<b/>"
    assert folder.delete(odd.name, expected=odd) is True
    assert [n for n in caf.files("depot")] == ["bon.xml"]


def test_a_latin1_file_name_does_not_break_clean_temporaries(caf: Account, folder: SftpFolder) -> None:
    _partner_drops_latin1_name(caf)
    folder.clean_temporaries()
    assert len(caf.files("depot")) == 2


# -- finding 3 (MEDIUM): the put-back of a replaced file fails ------------------------------------------------------

def test_a_file_replaced_twice_during_a_delete_is_never_lost(
        caf: Account, folder: SftpFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    caf.put("depot/a.xml", b"<v1/>")
    [listed] = folder.list()  # what the claim read and expects to remove
    caf.put("depot/a.xml", b"<version-2-corrigee/>")  # the partner replaces it (different size)
    sftp = folder.session.open()
    real = sftp.rename
    calls: list[tuple[str, str]] = []

    def rename(old: str, new: str) -> None:
        real(old, new)
        calls.append((old, new))
        if len(calls) == 1:  # right after the hub moved v2 aside: the partner writes the name again
            caf.put("depot/a.xml", b"<version-3/>")

    monkeypatch.setattr(sftp, "rename", rename)
    assert folder.delete("a.xml", expected=listed) is False  # replaced meanwhile: kept for the next pass
    monkeypatch.setattr(sftp, "rename", real)
    folder.clean_temporaries()  # what the hub does at its next start
    names = caf.files("depot")
    contents = [(caf.folder("depot") / n).read_bytes() for n in names]
    assert b"<version-2-corrigee/>" in contents and b"<version-3/>" in contents
    assert all(not n.startswith(".") for n in names), f"partner file hidden: {names}"
    assert {entry.name for entry in folder.list("*.xml")} == set(names)  # both taken by the next pass


# -- finding 7 (LOW): a lost answer with no reconnection --------------------------------------------------------

def test_a_lost_answer_is_reported_as_an_uncertain_publication_not_as_nothing_published(
        sftp_accounts: Accounts, hub_home: object, tcp_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    caf = sftp_accounts("caf")
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", caf.connection_json(port=tcp_proxy.port))
    transport = SftpFolder(CONN, "livraisons", home=HubHome.from_env().ensure(), timeout=5, attempts=1)
    sftp = transport.session.open()
    final = caf.folder("livraisons") / "livraison.csv"
    real_request = sftp._request

    def lose(number: int) -> None:
        _wait_for(final.exists)
        tcp_proxy.cut()
        sftp._read_response(number)

    def request(kind: int, *args: object):  # type: ignore[no-untyped-def]
        if kind != CMD_RENAME or not _is_temporary(args[0]):
            return real_request(kind, *args)
        tcp_proxy.hold_replies()
        lose(sftp._async_request(type(None), kind, *args))

    monkeypatch.setattr(sftp, "_request", request)
    with pytest.raises(SftpUnavailable) as caught, transport.store("livraison.csv") as target:
        target.write(os.urandom(10_000))
    transport.close()
    assert final.exists()  # published
    assert "rien n'a été publié" not in str(caught.value)
    assert "publication incertaine" in str(caught.value)


# -- finding 5b (LOW): hard links over SFTP ------------------------------------------------------------------------

def test_a_hard_linked_file_is_listed_with_its_link_count(caf: Account, folder: SftpFolder) -> None:
    caf.put("livraisons/autre.csv", b"x" * 10)
    caf.put("depot/seul.xml", b"<a/>")
    with caf.partner() as partner:
        partner._request(CMD_EXTENDED, "hardlink@openssh.com", "/livraisons/autre.csv", "/depot/lien.xml")
    assert os.lstat(caf.folder("depot") / "lien.xml").st_nlink == 2
    links = {entry.name: entry.links for entry in folder.list()}
    assert links == {"lien.xml": 2, "seul.xml": 1}

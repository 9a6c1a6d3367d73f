"""The in-memory transport keeps the local folder's contract: each check runs on both, side by side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connectors.transports.base import FileExists, Transport
from connectors.transports.local import LocalFolder
from connectors.transports.registry import open_transport, parse_transport, register_transport, unregister_transport
from spie_hub.core.errors import FatalInputError
from spie_hub.core.home import HubHome
from spie_hub.run.claim import claim_from
from support.memory_transport import MemoryTransport


def _local(tmp_path: Path) -> Transport:
    (tmp_path / "home").mkdir(exist_ok=True)
    return LocalFolder(tmp_path / "home", "boite")


def _memory(tmp_path: Path) -> Transport:
    return MemoryTransport(folder="boite")


@pytest.fixture(params=[_local, _memory], ids=["dossier-local", "memoire"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Transport:
    return request.param(tmp_path)


def _write(transport: Transport, name: str, data: bytes, *, replace: bool = False) -> None:
    with transport.store(name, replace=replace) as handle:
        handle.write(data)


def _read(transport: Transport, name: str) -> bytes:
    with transport.open(name) as handle:
        return handle.read()


def test_a_stored_file_is_listed_read_and_stated(transport: Transport) -> None:
    _write(transport, "b.csv", b"deux")
    _write(transport, "a.csv", b"un")
    assert [e.name for e in transport.list()] == ["a.csv", "b.csv"]
    assert [e.name for e in transport.list("b*")] == ["b.csv"]
    assert _read(transport, "a.csv") == b"un" and transport.exists("a.csv") and not transport.exists("c.csv")
    info = transport.stat("b.csv")
    assert info is not None and (info.name, info.size, info.regular) == ("b.csv", 4, True)
    assert transport.stat("c.csv") is None


def test_a_store_that_raises_leaves_nothing(transport: Transport) -> None:
    with pytest.raises(RuntimeError), transport.store("livraison.csv") as handle:
        handle.write(b"moitie")
        raise RuntimeError("coupure")
    assert transport.list() == [] and not transport.exists("livraison.csv")


def test_an_identical_file_under_the_same_name_is_left_as_it_is(transport: Transport) -> None:
    _write(transport, "f.csv", b"contenu")
    before = transport.stat("f.csv")
    _write(transport, "f.csv", b"contenu")
    assert transport.stat("f.csv") == before and _read(transport, "f.csv") == b"contenu"


def test_a_different_file_under_the_same_name_is_refused_and_the_first_kept(transport: Transport) -> None:
    _write(transport, "f.csv", b"premier")
    with pytest.raises(FileExists):
        _write(transport, "f.csv", b"second")
    assert _read(transport, "f.csv") == b"premier"
    _write(transport, "f.csv", b"second", replace=True)
    assert _read(transport, "f.csv") == b"second"


def test_names_that_would_leave_the_folder_are_refused(transport: Transport) -> None:
    for name in ("../x.csv", "a/b.csv", "..", "x\n.csv"):
        with pytest.raises(FatalInputError):
            _write(transport, name, b"x")
    assert transport.list() == []


def test_a_sub_folder_is_not_listed_and_a_child_is_its_own_folder(transport: Transport) -> None:
    _write(transport, "visible.csv", b"v")
    _write(transport.child("rejets"), "r.csv", b"r")
    assert [(e.name, e.regular) for e in transport.list()] == [("visible.csv", True)]
    assert transport.exists("rejets") and transport.stat("rejets").regular is False  # type: ignore[union-attr]
    with pytest.raises(FatalInputError), transport.open("rejets"):
        pass
    assert [e.name for e in transport.child("rejets").list()] == ["r.csv"]
    assert transport.child("rejets").uri("r.csv").endswith("boite/rejets/r.csv")
    with pytest.raises(ValueError):
        transport.child("../ailleurs")


def test_delete_with_an_expected_version_keeps_a_file_replaced_meanwhile(transport: Transport) -> None:
    _write(transport, "f.csv", b"v1")
    seen = transport.stat("f.csv")
    _write(transport, "f.csv", b"v2-plus-long", replace=True)
    assert transport.delete("f.csv", expected=seen) is False and transport.exists("f.csv")
    assert transport.delete("f.csv", expected=transport.stat("f.csv")) is True
    assert transport.delete("f.csv") is False


def test_a_link_or_special_file_is_listed_as_not_regular_and_never_opened(transport: Transport, tmp_path: Path) -> None:
    if isinstance(transport, LocalFolder):
        transport.root.mkdir(parents=True, exist_ok=True)
        (tmp_path / "secret").write_bytes(b"secret")
        os.symlink(tmp_path / "secret", transport.root / "lien.xml")
    else:
        assert isinstance(transport, MemoryTransport)
        transport.put("lien.xml", b"secret", regular=False)
    [entry] = transport.list()
    assert (entry.name, entry.regular) == ("lien.xml", False)
    with pytest.raises(FatalInputError), transport.open("lien.xml"):
        pass


def test_hidden_entries_a_partner_drops_are_not_listed() -> None:
    memory = MemoryTransport()
    memory.put(".en-cours.xml", b"x")
    memory.put("pret.xml", b"x")
    assert [e.name for e in memory.list()] == ["pret.xml"]
    assert memory.names() == [".en-cours.xml", "pret.xml"]


def test_the_run_claims_an_input_from_memory_as_from_a_folder(tmp_path: Path) -> None:
    inbox = MemoryTransport(folder="inbox")
    inbox.put("flux.xml", b"<Racine/>")
    claimed = claim_from(inbox, "flux.xml", tmp_path / "prive")
    assert claimed.path.read_bytes() == b"<Racine/>" and claimed.size == 9
    assert inbox.list() == []


def test_from_options_opens_one_shared_space_per_name(tmp_path: Path) -> None:
    register_transport(MemoryTransport)
    try:
        home = HubHome(tmp_path)
        options = parse_transport({"type": "memoire", "espace": "essai", "dossier": "outbox/dest"}, "test")
        first, second = open_transport(options, home), open_transport(options, home)
        _write(first, "f.csv", b"x")
        assert _read(second, "f.csv") == b"x"
        assert MemoryTransport.shared("essai").all_files() == {"outbox/dest/f.csv": b"x"}
        with pytest.raises(Exception, match="dossier"):
            parse_transport({"type": "memoire", "dossier": "/etc"}, "test")
    finally:
        unregister_transport("memoire")
        MemoryTransport.reset_shared()

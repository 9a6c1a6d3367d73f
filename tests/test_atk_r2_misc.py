"""atk-r2 F4/F5 (LOW). Each test asserts the SECURE outcome (fails while the attack works).
F4: an entry whose `ts` is not an ISO date (the operator makes the hub sign it; SQLite's trigger compares text, so
'x...' > '2026...' passes) makes `audit verify` end in a Python traceback instead of a French verdict, and the hub
then dates every later entry with that same string (max(now, last) on text).
F5: a bundle may hold two validly signed heads of the same size with different roots (an equivocation: one of them
was given to someone else); the verifier keeps one in a dict and silently ignores the other."""
from __future__ import annotations

import json

import pytest
from test_audit_witness import _deliver, published  # noqa: F401 - a fixture

from spie_hub.audit import merkle  # noqa: F401
from spie_hub.audit.heads import sign_head
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.audit.signing import load_hub_signer
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.store import open_store


def test_an_unreadable_timestamp_is_refused_by_the_database_and_said_in_french_by_the_verifier(
        hub_home, tmp_path, monkeypatch, capsys) -> None:
    from audit_attacks import drop_all_guards, entries, rebuild
    from sqlalchemy.exc import DBAPIError

    from spie_hub.audit import log as mod

    home = HubHome.from_env()
    _deliver(home, tmp_path, 1, tmp_path / "dep")
    engine = open_store(home.database_url)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(DBAPIError, match="datée avant la précédente"):
        patch.setattr(mod, "now", lambda: "x-not-a-date")
        AuditLog(engine, load_hub_signer(home)).append([AuditEvent("note", {"n": 1})])
    rows = entries(engine)  # the operator writes it anyway, guards off, everything re-signed
    rows[-1]["ts"] = "x-not-a-date"
    drop_all_guards(engine)
    rebuild(engine, rows, load_hub_signer(home))
    engine.dispose()
    try:
        code = main(["audit", "verify", "--complet"])
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"traceback instead of a French verdict: {type(error).__name__}: {error}") from None
    assert code == 1


def test_two_signed_heads_of_one_size_with_different_roots_are_a_fork(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home = HubHome.from_env()
    _deliver(home, tmp_path, 1, tmp_path / "dep")
    export = tmp_path / "export"
    assert main(["audit", "exporter", "--sortie", str(export)]) == 0
    lines = (export / "tetes.jsonl").read_text().splitlines()
    real = json.loads(lines[-2])
    fork = sign_head(load_hub_signer(home), real["taille"], b"\x42" * 32, real["horodatage"])
    lines.insert(len(lines) - 2, json.dumps(fork.as_json()))  # before the real one: the dict keeps the real one
    (export / "tetes.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    code = main(["audit", "verifier", str(export), "--cle-publique", str(published)])
    print(capsys.readouterr().out)
    assert code != 0, "two different signed roots for one size (equivocation) accepted silently"

"""Any single-byte change, deleted row or reordering of the audit makes `audit verify` fail at that entry."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select, text, update

from spie_hub.audit import AuditEvent, AuditLog, verify
from spie_hub.store import audit_log, open_store

COLUMNS = ["ts", "run_id", "event", "flow", "recipient", "subject", "payload", "prev_hash", "hash"]


@pytest.fixture
def engine(database_url: str):
    engine = open_store(database_url)
    log = AuditLog(engine)
    log.append([AuditEvent("decision", {"n": i, "texte": "é"}, "run-1", "flux", "dep", f"k1.{i:026d}") for i in range(1, 6)])
    log.append([AuditEvent("execution-fin", {"lus": 5}, "run-1", "flux")])
    yield engine
    engine.dispose()


def _flip_one_byte(value: str) -> str:
    middle = len(value) // 2
    return value[:middle] + chr(ord(value[middle]) ^ 1) + value[middle + 1:]


def test_an_untouched_chain_verifies(engine) -> None:
    assert verify(engine).ok and verify(engine).entries == 6


@pytest.mark.parametrize("column", COLUMNS)
def test_a_single_byte_change_in_any_column_fails_at_that_entry(engine, column: str) -> None:
    with engine.begin() as c:
        value = c.execute(select(audit_log.c[column]).where(audit_log.c.seq == 3)).scalar_one()
        c.execute(update(audit_log).where(audit_log.c.seq == 3).values({column: _flip_one_byte(value)}))
    result = verify(engine)
    assert not result.ok and result.first_bad_seq == 3


@pytest.mark.parametrize("seq", [1, 3, 6])
def test_a_deleted_row_fails_at_that_entry(engine, seq: int) -> None:
    with engine.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq == seq))
    result = verify(engine)
    assert not result.ok and result.first_bad_seq == seq


def test_swapping_two_entries_fails_at_the_first_of_them(engine) -> None:
    with engine.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 2).values(seq=-2))
        c.execute(update(audit_log).where(audit_log.c.seq == 4).values(seq=2))
        c.execute(update(audit_log).where(audit_log.c.seq == -2).values(seq=4))
    result = verify(engine)
    assert not result.ok and result.first_bad_seq == 2


def test_the_cli_exits_non_zero_and_names_the_first_bad_entry(engine, database_url, capsys) -> None:
    from spie_hub.cli import main

    assert main(["audit", "verify"]) == 0
    with engine.begin() as c:
        c.execute(text("UPDATE audit_log SET payload = '{}' WHERE seq = 5"))
    assert main(["audit", "verify"]) == 1
    assert "n° 5" in capsys.readouterr().out

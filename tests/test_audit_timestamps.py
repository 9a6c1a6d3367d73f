"""Signed tree heads get an RFC 3161 timestamp from a real local TSA: a head's date does not rest on the hub's clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from spie_hub.audit import log as audit_log_module
from spie_hub.audit.chain import verify
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.audit.signing import SigningKey
from spie_hub.core.home import HubHome
from spie_hub.store import audit_head_stamps, open_store
from tests.support.tsa import LocalTsa

SIGNER = SigningKey("s1", b"s" * 32)


@pytest.fixture
def tsa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalTsa]:
    authority = LocalTsa.create(tmp_path / "tsa").start()
    monkeypatch.setenv("SPIE_HUB_TSA_URL", authority.url)
    monkeypatch.setenv("SPIE_HUB_TSA_CERT", authority.ca_pem)
    yield authority
    authority.stop()


def _stamps(engine) -> list[int]:
    with engine.connect() as c:
        return c.execute(select(audit_head_stamps.c.size).order_by(audit_head_stamps.c.size)).scalars().all()


def test_every_head_signed_by_an_append_gets_a_timestamp_that_verifies(tsa, tmp_path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    AuditLog(engine, SIGNER).append([AuditEvent("acces-personne", {"motif": "art. 15"})])
    AuditLog(engine, SIGNER).append([AuditEvent("purge", {"limite": "2020-01-01"})])
    assert _stamps(engine) == [1, 2]
    result = verify(engine, home=HubHome(tmp_path / "h").ensure(), trusted={"s1": SIGNER.public_b64})
    assert result.ok, result.reason


def test_a_hub_whose_clock_lies_is_caught_by_the_authoritys_date(tsa, tmp_path, monkeypatch) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)).isoformat(timespec="microseconds")
    monkeypatch.setattr(audit_log_module, "now", lambda: past)  # the operator set the clock back
    AuditLog(engine, SIGNER).append([AuditEvent("acces-personne", {"motif": "art. 15"})])
    result = verify(engine, home=HubHome(tmp_path / "h").ensure(), trusted={"s1": SIGNER.public_b64})
    assert not result.ok and "horloge du hub faussée" in result.reason


def test_a_tsa_that_is_down_leaves_the_head_signed_and_says_so(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("SPIE_HUB_TSA_URL", "http://127.0.0.1:9/tsa")
    authority = LocalTsa.create(tmp_path / "tsa")
    monkeypatch.setenv("SPIE_HUB_TSA_CERT", authority.ca_pem)
    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    AuditLog(engine, SIGNER).append([AuditEvent("acces-personne", {"motif": "art. 15"})])
    assert _stamps(engine) == []
    assert "sans horodatage RFC 3161" in caplog.text
    assert verify(engine, home=HubHome(tmp_path / "h").ensure(), trusted={"s1": SIGNER.public_b64}).ok

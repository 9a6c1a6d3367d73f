"""A store written before the Merkle tree: checked against its own signed checkpoints before it is ever sealed,
never sealed when it was rewritten, and refused with the way out when its beginning was already purged."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import insert

from spie_hub.audit.chain import seal, verify
from spie_hub.audit.log import AuditEvent, AuditLog, _hash, canonical
from spie_hub.audit.signing import SigningKey
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome
from spie_hub.store import GENESIS_HASH, audit_anchor, audit_checkpoints, audit_head, audit_log, open_store

SIGNER = SigningKey("s1", b"s" * 32)
TRUSTED = {"s1": SIGNER.public_b64}


def _legacy_store(url: str, n: int = 9, rewrite_at: int | None = None, purged_upto: int = 0):
    """Entries and a signed checkpoint as the previous version wrote them (no tree, no head); optionally rewritten
    after the checkpoint was signed, or purged up to an anchor."""
    engine = open_store(url)
    rows, prev = [], GENESIS_HASH
    ts = "2026-11-01T00:00:00.000000+00:00"
    for seq in range(1, n + 1):
        payload = canonical({"n": seq})
        digest = _hash(prev, seq, ts, "run-1", "decision", "flux", "dep", f"k1.{seq:032x}", payload)
        rows.append({"seq": seq, "ts": ts, "run_id": "run-1", "event": "decision", "flow": "flux", "recipient": "dep",
                     "subject": f"k1.{seq:032x}", "payload": payload, "prev_hash": prev, "hash": digest})
        prev = digest
    statement = canonical({"type": "spie-hub/point-de-controle/v1", "seq": n, "empreinte": prev, "horodatage": ts,
                           "cle": "s1"}).encode()
    checkpoint = {"seq": n, "hash": prev, "ts": ts, "kid": "s1", "signature": SIGNER.sign(statement)}
    if rewrite_at is not None:  # the operator's rewrite, every later hash recomputed, the checkpoint left
        rows[rewrite_at - 1]["payload"] = canonical({"n": "réécrit"})
        prev = rows[rewrite_at - 2]["hash"] if rewrite_at > 1 else GENESIS_HASH
        for row in rows[rewrite_at - 1:]:
            row["prev_hash"] = prev
            row["hash"] = prev = _hash(prev, row["seq"], row["ts"], row["run_id"], row["event"], row["flow"],
                                       row["recipient"], row["subject"], row["payload"])
    with engine.begin() as c:
        for table in ("audit_head", "audit_anchor"):
            c.exec_driver_sql(f"DROP TRIGGER IF EXISTS spie_{table}_no_delete")
        c.exec_driver_sql("DROP TRIGGER IF EXISTS spie_head_forward")
        c.exec_driver_sql("DROP TRIGGER IF EXISTS spie_anchor_forward")
        c.execute(insert(audit_log), [r for r in rows if r["seq"] > purged_upto])
        c.execute(insert(audit_checkpoints).values(**checkpoint))
        c.execute(audit_head.update().values(seq=n, hash=prev))
        if purged_upto:
            c.execute(audit_anchor.update().values(seq=purged_upto, hash=rows[purged_upto - 1]["hash"]))
    return engine


def test_a_legacy_log_is_said_unsealed_then_sealed_once_its_checkpoints_hold(tmp_path: Path) -> None:
    engine = _legacy_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    home = HubHome(tmp_path / "hub").ensure()
    before = verify(engine, home=home, trusted=TRUSTED)
    assert not before.ok and "spie-hub audit sceller" in before.reason
    head = seal(engine, SIGNER)
    assert head is not None and head.size == 9
    assert verify(engine, home=home, trusted=TRUSTED, incremental=False).ok
    AuditLog(engine, SIGNER).append([AuditEvent("acces-personne", {"motif": "art. 15"})])
    assert verify(engine, home=home, trusted=TRUSTED, incremental=False).entries == 10


def test_a_legacy_log_rewritten_before_the_upgrade_is_never_sealed(tmp_path: Path) -> None:
    engine = _legacy_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}", rewrite_at=4)
    with pytest.raises(ConfigurationError, match="ne correspond plus à son point de contrôle signé"):
        seal(engine, SIGNER)
    with pytest.raises(ConfigurationError, match="point de contrôle signé"):
        AuditLog(engine, SIGNER).append([AuditEvent("acces-personne", {"motif": "art. 15"})])


def test_a_legacy_log_already_purged_is_refused_with_the_way_out(tmp_path: Path) -> None:
    engine = _legacy_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}", purged_upto=3)
    with pytest.raises(ConfigurationError, match="déjà purgé.*recréez la base"):
        AuditLog(engine, SIGNER).append([AuditEvent("acces-personne", {"motif": "art. 15"})])


def test_the_cli_seals_a_legacy_log(tmp_path: Path, monkeypatch, capsys) -> None:
    from spie_hub.cli import main

    _legacy_store(f"sqlite:///{tmp_path / 'hub' / 'hub.sqlite3'}").dispose()
    monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(b"s" * 32).decode())
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", "t1:" + base64.b64encode(b"k" * 32).decode())
    assert main(["audit", "sceller"]) == 0
    assert "Journal scellé : tête signée de taille 9" in capsys.readouterr().out
    assert main(["audit", "verify", "--complet"]) == 0

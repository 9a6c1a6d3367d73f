# ruff: noqa: E501 - the attack narratives are quoted as the attacker wrote them
"""Round-2 attacks on the audit (F1/F2), now caught: early purges that pass every verification (each test asserts the SECURE outcome: it FAILS while the
attack works).

F1: the journal is purged minutes after the fact. Nothing is dropped, no trigger is touched (SQLite store; on PG the
owner role does the same): the operator appends a `purge-journal` entry through the hub (it signs), moves
`audit_anchor` forward (the trigger only asks that it lands on an existing entry with its hash) and deletes the
entries below it (the trigger allows any delete below the anchor). The age floor lives only in `spie_audit_purge` /
`_sqlite_purge`, which are simply not called; LogChecker never checks the age of a journal purge at all.

F2: a batch (lot) purged minutes after its run, `audit_policy.min_age_days` = 365 untouched: the `purge-lots` entry is
FORWARD-dated (hub clock/`now` set 1100 days (the retention purge keeps lots max(flow's 730, audit 1095) days) ahead for that one append). The verifier compares ts(purge-lots) - ts(lot)
only; it never compares an entry's date with the present (nor with the previous head's), and the hub's max(now, last)
then dates every later entry 1100 days (the retention purge keeps lots max(flow's 730, audit 1095) days) ahead without any complaint.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import select, text
from test_audit_witness import DEP, FLOW, _deliver, published  # noqa: F401 - a fixture

from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.audit.signing import load_hub_signer
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.store import audit_heads, audit_log, open_store


def _verdicts(tmp_path: Path, published: Path, kept: Path, capsys, last: Path) -> dict[str, int]:  # noqa: F811
    v = {"audit verify --complet": main(["audit", "verify", "--complet"])}
    export = tmp_path / "export"
    assert main(["audit", "exporter", "--sortie", str(export)]) == 0
    v["audit verifier + tete gardee + recu"] = main(
        ["audit", "verifier", str(export), "--cle-publique", str(published),
         "--tete-gardee", str(kept / "recu-1.json"), "--recu", str(kept / "recu-1.json")])
    held = json.loads((kept / "recu-1.json").read_text())["journal"]["tete"]["taille"]
    to = json.loads(last.read_text())["journal"]["tete"]["taille"]
    proof = tmp_path / "coherence.json"
    assert main(["audit", "coherence", "--depuis", str(held), "--vers", str(to), "--sortie", str(proof)]) == 0
    v["recu verifier (latest receipt) --tete-gardee recu-1 --coherence"] = main(
        ["recu", "verifier", str(last), "--cle-publique", str(published),
         "--tete-gardee", str(kept / "recu-1.json"), "--coherence", str(proof)])
    print(capsys.readouterr().out)
    return v


def test_a_journal_purged_minutes_old_is_caught_from_signed_data(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    for seed in (1, 2, 3):
        last = _deliver(home, tmp_path, seed, kept)
    assert main(["audit", "verify", "--complet"]) == 0  # the hub's own witness, at the full size
    engine = open_store(home.database_url)
    with engine.connect() as c:
        held3 = json.loads((kept / "recu-3.json").read_text())["journal"]["tete"]["taille"]
        upto = c.execute(select(audit_heads.c.size).where(audit_heads.c.size < held3)
                         .order_by(audit_heads.c.size.desc())).scalars().first()
        digest = c.execute(select(audit_log.c.hash).where(audit_log.c.seq == upto)).scalar_one()
        young = c.execute(select(audit_log.c.ts).where(audit_log.c.seq == upto)).scalar_one()
        policy = c.execute(text("SELECT min_age_days FROM audit_policy")).scalar_one()
    assert policy == 365
    # the hub signs the announcement (operator can make it sign)
    AuditLog(engine, load_hub_signer(home)).append([AuditEvent("purge-journal", {"jusqua": upto, "ancre": digest,
                                                                                  "avant": young})])
    with engine.begin() as c:  # no trigger dropped
        c.execute(text("UPDATE audit_anchor SET seq = :s, hash = :h WHERE id = 1"), {"s": upto, "h": digest})
        gone = c.execute(text("DELETE FROM audit_log WHERE seq <= :s"), {"s": upto}).rowcount
    engine.dispose()
    print(f"purged {gone} entries, the youngest dated {young} (now {dt.datetime.now(dt.timezone.utc)})")
    capsys.readouterr()
    v = _verdicts(tmp_path, published, kept, capsys, last)
    # The store's and the export's verifications refuse the early purge. A partner's receipt check legitimately
    # holds: the tree (kept nodes) still commits to what was purged, its own delivery included.
    assert all(code != 0 for name, code in v.items() if not name.startswith("recu verifier")), v


def test_batches_purged_early_by_forward_dating_are_caught(hub_home, tmp_path, published, capsys, monkeypatch) -> None:  # noqa: F811
    from spie_hub.audit import log as audit_log_module
    from spie_hub.audit import segments
    from spie_hub.registry.flows import load_flows
    from spie_hub.run.retention import purge_segments

    home = HubHome.from_env()
    kept = tmp_path / "departement"
    for seed in (1, 2, 3):
        _deliver(home, tmp_path, seed, kept)
    assert main(["audit", "verify", "--complet"]) == 0
    lots = list(segments.segment_files(home))
    assert lots
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1100)
    real_now = audit_log_module.now
    monkeypatch.setattr(audit_log_module, "now", lambda: future.isoformat(timespec="microseconds"))
    engine = open_store(home.database_url)
    removed = purge_segments(engine, home, load_flows(), future)
    monkeypatch.setattr(audit_log_module, "now", real_now)
    engine.dispose()
    print("purged lots:", removed)
    assert removed and not any(p.exists() for p in lots)
    last = _deliver(home, tmp_path, 4, kept)  # the hub goes on: dated 1100 days (the retention purge keeps lots max(flow's 730, audit 1095) days) ahead, nobody complains
    capsys.readouterr()
    v = _verdicts(tmp_path, published, kept, capsys, last)
    # The store's and the export's verifications refuse the early purge. A partner's receipt check legitimately
    # holds: the tree (kept nodes) still commits to what was purged, its own delivery included.
    assert all(code != 0 for name, code in v.items() if not name.startswith("recu verifier")), v

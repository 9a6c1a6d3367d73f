"""A moved purge anchor is caught (atk-operator finding 3): it was trusted. Moving `audit_anchor` forward (guards off) makes every entry at
or below it unverified, whether it was deleted (an unannounced purge of young entries) or is still in the table
with edited content; the hub's witness (derniere-verification.json) and a DPO's kept head below the anchor are
skipped (store) or reduced to a note (offline bundle), and partners' consistency proofs still hold (tree untouched)."""
from __future__ import annotations

import json
from pathlib import Path

from audit_attacks import drop_all_guards
from sqlalchemy import select, text
from test_audit_witness import _deliver, published  # noqa: F401, F811 - a fixture

from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.store import audit_heads, audit_log, open_store


def _move_anchor(engine, above: int, delete: bool) -> int:
    drop_all_guards(engine)
    with engine.begin() as c:
        size = c.execute(select(audit_heads.c.size).where(audit_heads.c.size > above).order_by(audit_heads.c.size)).scalars().first()
        digest = c.execute(select(audit_log.c.hash).where(audit_log.c.seq == size)).scalar_one()
        c.execute(text("UPDATE audit_anchor SET seq = :s, hash = :h WHERE id = 1"), {"s": size, "h": digest})
        if delete:
            c.execute(text("DELETE FROM audit_log WHERE seq <= :s"), {"s": size})
        else:  # rewrite the content of an entry the kept head covers, in place, no re-hash, no re-sign
            c.execute(text("UPDATE audit_log SET payload = :p WHERE seq = 2"), {"p": '{"note":"réécrit"}'})
    return size


def _scenario(tmp_path: Path, delete: bool, capsys):
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    _deliver(home, tmp_path, 1, kept)
    assert main(["audit", "verify", "--complet"]) == 0  # the hub's own witness
    held = json.loads((kept / "recu-1.json").read_text(encoding="utf-8"))["journal"]["tete"]["taille"]
    _deliver(home, tmp_path, 2, kept)
    _deliver(home, tmp_path, 3, kept)
    engine = open_store(home.database_url)
    anchor = _move_anchor(engine, held, delete)
    engine.dispose()
    capsys.readouterr()
    return home, kept, anchor


def _check(tmp_path, published, kept, capsys):  # noqa: ANN001, ANN202, F811
    verdicts = {}
    verdicts["audit verify --complet"] = main(["audit", "verify", "--complet"])
    export = tmp_path / "export"
    assert main(["audit", "exporter", "--sortie", str(export)]) == 0
    verdicts["audit verifier (DPO, tete gardee + recu)"] = main(
        ["audit", "verifier", str(export), "--cle-publique", str(published), "--tete-gardee", str(kept / "recu-1.json"),
         "--recu", str(kept / "recu-1.json")])
    out = capsys.readouterr().out
    print(out)
    return verdicts, out


def test_an_entry_edited_below_a_forged_anchor_is_caught(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home, kept, anchor = _scenario(tmp_path, delete=False, capsys=capsys)
    engine = open_store(home.database_url)
    with engine.connect() as c:
        assert c.execute(select(audit_log.c.payload).where(audit_log.c.seq == 2)).scalar() == '{"note":"réécrit"}'
    engine.dispose()
    verdicts, out = _check(tmp_path, published, kept, capsys)
    assert all(v == 1 for v in verdicts.values()), (verdicts, out)


def test_an_unannounced_early_purge_is_caught(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home, kept, anchor = _scenario(tmp_path, delete=True, capsys=capsys)
    verdicts, out = _check(tmp_path, published, kept, capsys)
    assert all(v == 1 for v in verdicts.values()), (verdicts, out)

"""A purge-lots entry does not excuse a batch file still there (atk-operator finding 4).

Before: a `purge-lots` entry excused a batch from every check, even when its file was still there
(and edited). The operator makes the hub append a purge-lots entry naming a one-minute-old batch (no age check,
no check that the file is gone), then edits one person's decision inside the batch file. `audit verify --complet`
and the DPO's offline export verification say intact; subject access reads the edited decision."""
from __future__ import annotations

import json
import sqlite3

from test_audit_witness import _deliver, published  # noqa: F401, F811 - a fixture

from spie_hub.audit import segments
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.store import open_store


def test_a_claimed_purge_does_not_hide_an_edited_batch(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    _deliver(home, tmp_path, 1, kept)
    engine = open_store(home.database_url)
    (rel, ref), = segments.committed_lots(engine).items()
    # 1. the hub signs whatever its operator asks: a purge-lots entry naming a batch written a minute ago
    AuditLog(engine).append([AuditEvent(segments.PURGE_EVENT, {"lots": [{"lot": rel, "racine": ref.root_hex,
                                                                          "feuilles": ref.leaves}], "nombre": 1})])
    # 2. the batch file stays, one decision edited
    path = segments.resolve(home, rel)
    db = sqlite3.connect(path)
    idx, subject, payload = db.execute("SELECT idx, subject, payload FROM leaves WHERE event='decision' ORDER BY idx LIMIT 1").fetchone()
    forged = json.dumps({"falsifie": True})
    db.execute("UPDATE leaves SET payload=? WHERE idx=?", (forged, idx))
    db.commit()
    db.close()
    assert segments.verify_segment(home, ref) is not None  # the batch no longer matches its lot entry
    assert [e.payload for e in segments.find(home, [subject])][0] == forged  # what subject access now reads
    capsys.readouterr()
    verdicts = {"audit verify --complet": main(["audit", "verify", "--complet"])}
    export = tmp_path / "export"
    assert main(["audit", "exporter", "--sortie", str(export)]) == 0
    verdicts["audit verifier"] = main(["audit", "verifier", str(export), "--cle-publique", str(published),
                                       "--tete-gardee", str(kept / "recu-1.json")])
    out = capsys.readouterr().out
    print(out)
    engine.dispose()
    assert all(v == 1 for v in verdicts.values()), (verdicts, out)

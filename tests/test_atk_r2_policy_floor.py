# ruff: noqa: E501 - the attack narratives are quoted as the attacker wrote them
"""Round-2 attacks on the audit (F3), now caught: the purge floor (`audit_policy.min_age_days`) is read by the verifiers from the very thing they verify,
and its changes are recorded nowhere.

Store: the owner sets audit_policy.min_age_days = 0 (SQLite: no trigger at all on audit_policy; PG: the owner role),
runs the hub's own retention purge (purge_all, the code `spie-hub purger` calls) with its clock: the journal AND the
batches of minutes-old runs go, announced by hub-signed `purge-journal`/`purge-lots` entries; `audit verify --complet`
then reads the floor (0) from the same database and says intact. Setting it back to 365 afterwards changes nothing
for the journal purge (the verifier never checks a journal purge's age) and only the lot check notices.
Bundle: `ancre.json` carries `age_minimal_lots_jours`, written by the exporter (operator): set to 0 there, the
offline verifier accepts batches purged at any age (F3b), even when the store's policy was never lowered.
Each test asserts the SECURE outcome (fails while the attack works)."""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import text
from test_audit_witness import _deliver, published  # noqa: F401 - a fixture

from spie_hub.audit import segments
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.audit.signing import load_hub_signer
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.registry.flows import load_flows
from spie_hub.run.retention import purge_all
from spie_hub.store import open_store


def test_a_lowered_floor_does_not_make_young_purges_pass_owner_lowers_floor_then_hub_purges_everything_young(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    for seed in (1, 2, 3):
        _deliver(home, tmp_path, seed, kept)
    assert main(["audit", "verify", "--complet"]) == 0
    lots = list(segments.segment_files(home))
    engine = open_store(home.database_url)
    with engine.begin() as c:
        c.execute(text("UPDATE audit_policy SET min_age_days = 0"))
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=731)  # past the flows' 730 days: the lots' cut
    _, _, dropped = purge_all(engine, home, load_flows(), later, signer=load_hub_signer(home), audit_days=0)
    engine.dispose()
    print("journal entries dropped:", dropped, "lots left:", [p for p in lots if p.exists()])
    assert dropped > 0 and not any(p.exists() for p in lots)
    capsys.readouterr()
    code = main(["audit", "verify", "--complet"])
    print(capsys.readouterr().out)
    assert code != 0, "young journal and batches purged under a floor the owner lowered: verify says intact"


def test_the_offline_floor_is_the_verifiers_never_the_exports(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    for seed in (1, 2):
        _deliver(home, tmp_path, seed, kept)
    engine = open_store(home.database_url)
    lots = list(segments.segment_files(home))
    removed = [{"lot": p.relative_to(home.root).as_posix(), "racine": segments.segment_info(home, p).get("racine"),
                "feuilles": int(segments.segment_info(home, p).get("feuilles") or 0)} for p in lots]
    AuditLog(engine, load_hub_signer(home)).append([AuditEvent(segments.PURGE_EVENT, {"lots": removed,
                                                                                       "nombre": len(removed)})])
    for lot in removed:
        segments.remove_segment(home, lot["lot"])
    engine.dispose()
    capsys.readouterr()
    assert main(["audit", "verify", "--complet"]) == 1  # the store's floor (365) holds
    export = tmp_path / "export"
    assert main(["audit", "exporter", "--sortie", str(export)]) == 0
    anchor = json.loads((export / "ancre.json").read_text())
    anchor["age_minimal_lots_jours"] = 0
    (export / "ancre.json").write_text(json.dumps(anchor))
    code = main(["audit", "verifier", str(export), "--cle-publique", str(published),
                 "--tete-gardee", str(kept / "recu-2.json")])
    print(capsys.readouterr().out)
    assert code != 0, "offline verifier takes the lot floor from the bundle it verifies"

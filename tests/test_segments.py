"""A run's per-record events (decisions, rejections) are one segment file under its own Merkle tree, committed to the
log by one ``lot`` row (spie_hub/audit/segments.py, design10.md): found again by pseudonym, proven by an inclusion
proof up to the row's root, any change or deletion reported, memory flat, orphans removed, purges said."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from helpers import first_delivery
from sqlalchemy import select

from spie_hub.audit import merkle, segments
from spie_hub.audit.log import AuditLog
from spie_hub.audit.spool import AuditSpool
from spie_hub.core.home import HubHome
from spie_hub.privacy.keys import lot_subjects
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import audit_log, open_store

CAF = "caf-vers-departement"
DEPT = "departement-052"
REPO = Path(__file__).resolve().parents[1]


def _events(engine) -> list[tuple[str, str | None, str]]:  # noqa: ANN001 - an SQLAlchemy engine
    with engine.connect() as connection:
        return [(r.event, r.run_id, r.payload) for r in connection.execute(
            select(audit_log.c.event, audit_log.c.run_id, audit_log.c.payload).order_by(audit_log.c.seq))]


def _lot_rows(engine) -> list[segments.SegmentRef]:  # noqa: ANN001
    """The runs' lots (a consent import's lot is an action's, spie_hub/audit/actions.py)."""
    return [segments.SegmentRef.from_payload(p) for e, run, p in _events(engine)
            if e == "lot" and not str(run).startswith(("import-", "propagation-"))]


def _synthetic(n: int, people: int = 50) -> list[tuple[str, str | None, str | None, str]]:
    out: list[tuple[str, str | None, str | None, str]] = []
    for i in range(n):
        if i % 7 == 3:
            out.append(("rejet", None, None, json.dumps({"position": f"r{i}", "ligne": i, "motif": "é"})))
        else:
            out.append(("decision", DEPT, f"t1.{i % people:040x}", json.dumps({"decision": "livre", "ligne": i})))
    return out


def test_a_real_run_writes_one_lot_row_and_no_decision_row(hub_home: Path, tmp_path: Path) -> None:
    home, engine, _ps, _flux, _bundle, summary = first_delivery(tmp_path, 30, seed=3, anomaly_rate=0.1)
    events = _events(engine)
    names = [e for e, run, _ in events if run == summary.run_id]
    assert "decision" not in [e for e, _, _ in events] and "rejet" not in [e for e, _, _ in events]
    assert names.count("lot") == 1
    ref = _lot_rows(engine)[0]
    counts = summary.destinataires[DEPT]
    decisions = sum(c.livres + c.retenus for c in summary.destinataires.values())
    assert ref.counts == {"decision": decisions, "rejet": summary.rejetes}
    assert ref.leaves == decisions + summary.rejetes and counts.livres > 0 and summary.rejetes > 0
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y/%m/%d")
    assert ref.path_rel == f"audit/lots/{day}/{summary.run_id}.sqlite3"
    path = home.root / ref.path_rel
    assert path.stat().st_mode & 0o777 == 0o400
    # The lot row comes before the deliveries it backs, within the run's entries.
    assert names.index("lot") < names.index("livraison")
    # The root recomputes, streaming, from the file's leaves.
    assert segments.verify_segment(home, ref) is None
    leaves = [e.leaf() for e in segments.iter_events(home, runs=[summary.run_id])]
    assert merkle.root_from_leaf_hashes([merkle.leaf_hash(b) for b in leaves]).hex() == ref.root_hex
    # Each leaf is the canonical JSON array of design10.md, the payload as the spool held it.
    first = json.loads(leaves[0])
    assert first[:3] == [summary.run_id, first[1], CAF] and isinstance(first[5], str)


def test_one_persons_decision_is_found_by_pseudonym_across_runs_and_days_and_proven_up_to_the_lot_row(
        tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    person = f"t1.{7:040x}"
    refs = {}
    for n, day in enumerate([dt.datetime(2026, 1, 30, 23, 59, tzinfo=dt.timezone.utc),
                             dt.datetime(2026, 2, 1, 8, tzinfo=dt.timezone.utc),
                             dt.datetime(2026, 3, 5, 8, tzinfo=dt.timezone.utc)]):
        ref = segments.write_segment(home, f"20260101T00000{n}-abcdef0{n}", CAF, _synthetic(9000 + n * 10), day)
        refs[ref.path_rel] = ref
    assert sorted(refs) == ["audit/lots/2026/01/30/20260101T000000-abcdef00.sqlite3",
                            "audit/lots/2026/02/01/20260101T000001-abcdef01.sqlite3",
                            "audit/lots/2026/03/05/20260101T000002-abcdef02.sqlite3"]
    found = list(segments.find(home, [person]))
    assert {e.path_rel for e in found} == set(refs) and all(e.subject == person for e in found)
    assert len(found) == sum(1 for r in range(3) for e in _synthetic(9000 + r * 10) if e[2] == person)
    # The days bound what is opened.
    february = list(segments.find(home, [person], since=dt.date(2026, 2, 1), until=dt.date(2026, 2, 28)))
    assert {e.path_rel for e in february} == {"audit/lots/2026/02/01/20260101T000001-abcdef01.sqlite3"}
    assert all(e.ts.startswith("2026-02-01") for e in february)
    # Every leaf found proves up to its lot's root, also in the last, partial chunk of leaves.
    for event in [found[0], found[len(found) // 2], found[-1]]:
        ref = refs[event.path_rel]
        path = segments.inclusion_proof(home, ref, event.index)
        assert merkle.verify_inclusion(segments.leaf_digest(event), event.index, ref.leaves, path,
                                       bytes.fromhex(ref.root_hex))
        assert not merkle.verify_inclusion(merkle.leaf_hash(event.leaf() + b" "), event.index, ref.leaves, path,
                                           bytes.fromhex(ref.root_hex))
    # No one else's event is returned, and an unknown pseudonym finds nothing.
    assert list(segments.find(home, ["t1." + "f" * 40])) == []


def test_an_inclusion_proof_in_a_large_segment_reads_one_chunk_and_verifies(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    n = 3 * segments.CHUNK + 123
    ref = segments.write_segment(home, "20260101T000000-0000abcd", CAF, _synthetic(n))
    events = list(segments.iter_events(home))
    for index in (0, segments.CHUNK - 1, segments.CHUNK, 2 * segments.CHUNK + 5, n - 1):
        path = segments.inclusion_proof(home, ref, index)
        assert merkle.verify_inclusion(segments.leaf_digest(events[index]), index, n, path, bytes.fromhex(ref.root_hex))
    with sqlite3.connect(home.root / ref.path_rel) as db:
        assert db.execute("SELECT min(level) FROM nodes").fetchone()[0] == segments.CHUNK_LEVEL


def _writable(path: Path) -> None:
    path.chmod(0o600)


def test_a_changed_byte_a_deleted_leaf_a_truncation_or_a_deleted_file_is_reported(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    ref = segments.write_segment(home, "20260101T000000-0000abcd", CAF, _synthetic(10000))
    path = home.root / ref.path_rel
    original = path.read_bytes()
    assert segments.verify_segment(home, ref) is None

    # One byte of one payload, in the file's bytes (not through SQLite): the root no longer matches, the chunk says where.
    marker = original.find(b'"ligne": 5000}')
    assert marker > 0
    _writable(path)
    path.write_bytes(original[:marker + 10] + b"6" + original[marker + 11:])
    problem = segments.verify_segment(home, ref)
    assert problem is not None and "feuille modifiée" in problem and "4096 à 8191" in problem

    path.write_bytes(original)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM leaves WHERE idx = 17")
    problem = segments.verify_segment(home, ref)
    assert problem is not None and "feuille 17 manquante" in problem

    path.write_bytes(original)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM leaves WHERE idx >= 9000")
    problem = segments.verify_segment(home, ref)
    assert problem is not None and "tronqué" in problem and "9000 feuille(s) au lieu de 10000" in problem

    path.write_bytes(original[:len(original) // 2])
    problem = segments.verify_segment(home, ref)
    assert problem is not None and ref.path_rel in problem

    path.unlink()
    assert segments.verify_segment(home, ref) == f"lot {ref.path_rel} absent (fichier supprimé ou déplacé)"
    # A lot row naming anything but a segment is refused, never opened.
    assert "invalide" in (segments.verify_segment(home, segments.SegmentRef("../hub.sqlite3", 1, "00", {})) or "")


def _peak_writing(home: HubHome, n: int, run_id: str) -> int:
    tracemalloc.start()
    try:
        writer = segments.SegmentWriter(home, run_id, CAF)
        payload = json.dumps({"decision": "retenu", "motif": "aucun consentement"})
        for i in range(n):
            writer.add("decision", DEPT, f"t1.{i:040x}", payload)
        writer.seal()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writing_a_segment_keeps_memory_flat_in_the_number_of_leaves(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    small = _peak_writing(home, 20_000, "20260101T000000-00000001")
    large = _peak_writing(home, 200_000, "20260101T000000-00000002")
    assert large < small * 1.5 + 256 * 1024, (small, large)


def test_the_spool_commits_one_lot_row_in_the_transaction_of_the_runs_other_entries(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    spool = AuditSpool(tmp_path / "s.spool", "20260101T000000-0000abcd", CAF, home)
    spool.add("decision", '{"decision":"livre"}', DEPT, "t1.aa")
    spool.add("rejet", {"motif": "x"})
    spool.add("livraison", {"fichier": "f.csv"}, DEPT)
    spool.commit(AuditLog(engine))
    names = [e for e, _, _ in _events(engine)]
    assert names == ["lot", "livraison"]
    ref = _lot_rows(engine)[0]
    assert ref.leaves == 2 and ref.counts == {"decision": 1, "rejet": 1}
    # Nothing per-record staged: no segment, no lot row.
    spool.add("execution-fin", {"statut": "termine"})
    spool.commit(AuditLog(engine))
    spool.close()
    assert [e for e, _, _ in _events(engine)] == ["lot", "livraison", "execution-fin"]
    assert len(list(segments.segment_files(home))) == 1


def test_a_crash_between_the_segment_and_its_row_leaves_an_orphan_the_next_recovery_removes(
        hub_home: Path, tmp_path: Path) -> None:
    home, engine, _ps, flux, _bundle, first = first_delivery(tmp_path, 20, seed=5)
    engine.dispose()
    from spie_hub.demo.data import generate

    second = tmp_path / "flux2.xml"
    generate(second, tmp_path / "consents2.json", 20, seed=55)  # another input: a new delivery
    code = ("import sys; from pathlib import Path; from spie_hub.core.home import HubHome; "
            "from spie_hub.run.lifecycle import run_flow; "
            f"print(run_flow({CAF!r}, Path(sys.argv[1]), HubHome.from_env().ensure()).statut)")
    killed = subprocess.run([sys.executable, "-c", code, str(second)], cwd=REPO, capture_output=True, text=True,
                            env=os.environ | {"SPIE_HUB_FAILPOINT": "journal-lot"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    engine = open_store(home.database_url)
    # A segment older than the log's oldest row lost its lot row to the audit's retention: never an orphan.
    aged = segments.write_segment(home, first.run_id, CAF, _synthetic(10), dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc))
    committed = segments.committed_lots(engine)
    files = [segments._rel_of(home, p) for p in segments.segment_files(home)
             if p != home.root / aged.path_rel and not p.name.startswith("import-")]
    orphans = [f for f in files if f not in committed]
    assert len(files) == 2 and len(orphans) == 1
    # The next start settles the killed run and removes its segment, saying so.
    from spie_hub.run.lifecycle import settle

    report = settle(CAF, home)
    assert report is not None and report.lots_orphelins == orphans
    assert any("lots orphelins supprimés" in line and orphans[0] in line for line in report.lignes_lots())
    assert [segments._rel_of(home, p) for p in segments.segment_files(home) if not p.name.startswith("import-")] == [
        aged.path_rel, *[f for f in files if f in committed]]
    reprise = [json.loads(p) for e, _, p in _events(engine) if e == "reprise"]
    assert reprise and reprise[-1]["lots_orphelins_supprimes"] == orphans
    assert first.statut == "termine"
    run_flow(CAF, second, home)  # and the input is delivered by a new run, with a segment of its own
    assert len([r for r in segments.committed_lots(engine) if "import-" not in r]) == 2


def test_a_segment_past_retention_is_purged_with_an_entry_and_reported_as_purged_not_missing(
        hub_home: Path, tmp_path: Path) -> None:
    from spie_hub.registry import load_flows
    from spie_hub.run.retention import purge_segments

    home, engine, _ps, _flux, _bundle, _summary = first_delivery(tmp_path, 20, seed=6)
    old = segments.write_segment(home, "20200101T000000-0000abcd", CAF, _synthetic(100),
                                 dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc))
    recent = _lot_rows(engine)[0]
    purged = purge_segments(engine, home, load_flows(), dt.datetime.now(dt.timezone.utc), audit_days=1095)
    assert purged == [old.path_rel]
    assert not (home.root / "audit/lots/2020").exists()  # the day folder (and its month, year) went with it
    entry = [json.loads(p) for e, _, p in _events(engine) if e == "purge-lots"][-1]
    assert entry["lots"] == [{"lot": old.path_rel, "racine": old.root_hex, "feuilles": 100}]
    assert segments.segment_purged(home, engine, old.path_rel)
    assert segments.verify_segment(home, recent) is None and not segments.segment_purged(home, engine, recent.path_rel)
    # A segment deleted by hand is missing, not purged.
    path = home.root / recent.path_rel
    path.unlink()
    assert not segments.segment_purged(home, engine, recent.path_rel)
    assert "absent" in (segments.verify_segment(home, recent) or "")


@pytest.mark.parametrize("runs", [None, {"20260101T000000-0000abcd"}])
def test_distinct_people_and_key_prefixes_are_counted_inside_the_segments(tmp_path: Path, runs: set[str] | None) -> None:
    home = HubHome(tmp_path / "hub")
    segments.write_segment(home, "20260101T000000-0000abcd", CAF, _synthetic(700, people=40))
    segments.write_segment(home, "20260101T000000-0000abce", CAF, _synthetic(700, people=60))
    assert segments.distinct_subjects(home, None, None) == {DEPT: 60}
    assert segments.distinct_subjects(home, None, None, flow="autre") == {}
    assert segments.count_subject_prefix(home, "t1.") == 2 * sum(1 for e in _synthetic(700) if e[0] == "decision")
    assert segments.count_subject_prefix(home, "t0.") == 0
    assert lot_subjects(home, "t1.") == segments.count_subject_prefix(home, "t1.")  # what retiring a key counts
    found = list(segments.find(home, [f"t1.{45:040x}"], runs=runs))
    assert {e.run_id for e in found} == {"20260101T000000-0000abce"} if runs is None else found == []

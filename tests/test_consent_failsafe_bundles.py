"""Issue 9: hostile consent bundles get clear errors in bounded memory, one bad entry is refused alone, and a consent
import killed mid-way leaves no consent without its audit entry."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import func, select

from consent.decision import ConsentIndex, permitted_pairs
from consent.fhir_build import bundle, consent
from consent.fhir_import import import_consents
from consent.json_stream import MAX_ENTRY_CHARS
from spie_hub.core.nir import NirInvalide, normaliser_nir
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.store import consents, open_store

NIR = "2820251108030"
P = Pseudonymiser(PseudonymisationKey("t1", b"k" * 32))
TODAY = dt.date(2026, 11, 21)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(tmp_path: Path):
    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    yield engine
    engine.dispose()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _entry(cid: str = "c1", nir: str = NIR, **kw) -> str:
    return json.dumps({"resource": consent(cid, nir, **kw)})


def _pairs(engine, nir: str = NIR) -> set[tuple[str, str]]:
    pivot = P.pivot_from_nir(nir).pseudonyme
    return permitted_pairs(ConsentIndex(engine).lookup([pivot]).get(pivot, []), TODAY)


def test_deep_nesting_is_a_clear_error_not_a_recursion_error(engine, tmp_path) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    for name, text in {"in-entry": '{"resourceType": "Bundle", "entry": [{"resource": ' + deep + "}]}",
                       "top-level": '{"meta": ' + deep + ', "resourceType": "Bundle", "entry": []}'}.items():
        report = import_consents(_write(tmp_path / f"{name}.json", text), engine, P, today=TODAY)
        assert report.importes == 0
        assert "imbriqué" in report.erreurs[0], report.erreurs


@pytest.mark.parametrize("entry", ["null", "{}", '{"resource": {}}', '"texte"', "12"])
def test_an_entry_member_that_is_not_an_array_is_an_error(engine, tmp_path, entry: str) -> None:
    text = '{"resourceType": "Bundle", "type": "collection", "entry": ' + entry + "}"
    report = import_consents(_write(tmp_path / "b.json", text), engine, P, today=TODAY)
    assert report.importes == 0 and "entry" in report.erreurs[0]


@pytest.mark.parametrize("tail", ["xyz", "{}", ', {"resourceType": "Bundle"}', "]"])
def test_trailing_garbage_after_the_bundle_is_an_error(engine, tmp_path, tail: str) -> None:
    text = '{"resourceType": "Bundle", "entry": [' + _entry() + "]}" + tail
    report = import_consents(_write(tmp_path / "b.json", text), engine, P, today=TODAY)
    assert report.erreurs and "après la fin" in report.erreurs[0] or "invalide" in report.erreurs[0]


def test_a_key_given_twice_is_an_error(engine, tmp_path) -> None:
    text = '{"resourceType": "Bundle", "entry": [' + _entry() + '], "entry": []}'
    assert "double" in import_consents(_write(tmp_path / "b.json", text), engine, P, today=TODAY).erreurs[0]


def _peak(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_string_is_refused_with_its_entry_in_bounded_memory_and_the_others_are_kept(engine, tmp_path) -> None:
    """Memory, not time, is asserted: the old reader concatenated its buffer for each chunk of the string (62 s for
    80 MB) and kept it whole; the new one never keeps more than an entry's bound."""
    huge = consent("gros", NIR)
    huge["id"] = "X" * (20 * MAX_ENTRY_CHARS)
    text = ('{"resourceType": "Bundle", "entry": [' + _entry("c1") + ", " + json.dumps({"resource": huge}) + ", "
            + _entry("c2", "1770393050005") + "]}")
    path = _write(tmp_path / "b.json", text)
    del text, huge
    report = None

    def run() -> None:
        nonlocal report
        report = import_consents(path, engine, P, today=TODAY)

    peak = _peak(run)
    assert report.importes == 2 and len(report.erreurs) == 1
    assert report.erreurs[0].startswith("entrée 2 : entrée trop volumineuse")
    assert peak < 8 * MAX_ENTRY_CHARS, f"pic {peak / 1e6:.1f} Mo"


def test_a_huge_top_level_member_makes_the_file_unreadable_without_being_kept(engine, tmp_path) -> None:
    text = '{"resourceType": "Bundle", "id": "' + "Y" * (20 * MAX_ENTRY_CHARS) + '", "entry": [' + _entry() + "]}"
    path = _write(tmp_path / "b.json", text)
    del text
    report = None

    def run() -> None:
        nonlocal report
        report = import_consents(path, engine, P, today=TODAY)

    assert _peak(run) < 8 * MAX_ENTRY_CHARS
    assert "trop volumineux" in report.erreurs[0]


def _late_type_bundle(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as out:
        out.write('{"entry": [')
        for i in range(count):
            out.write(("," if i else "") + _entry(f"m{i}", f"2820251{i + 1001:06d}"))
        out.write('], "type": "collection", "resourceType": "Bundle"}')
    return path


def test_resource_type_after_the_entries_is_read_in_bounded_memory(engine, tmp_path) -> None:
    from consent.fhir_import import import_resources
    from consent.json_stream import bundle_entries

    def load(path: Path, emetteur: str) -> None:
        with path.open(encoding="utf-8") as handle:
            reports.append(import_resources(bundle_entries(handle), engine, P, emetteur=emetteur, today=TODAY,
                                            batch=50))

    small, large = _late_type_bundle(tmp_path / "s.json", 200), _late_type_bundle(tmp_path / "l.json", 1200)
    reports: list = []
    load(_late_type_bundle(tmp_path / "w.json", 120), "echauffement")
    reports.clear()
    peaks = [_peak(lambda p=p, e=e: load(p, e)) for p, e in ((small, "petit"), (large, "grand"))]
    assert [r.importes for r in reports] == [200, 1200]
    # Six times the entries, about the same peak: the entries are never held waiting for the resource type (the
    # old reader kept them all: 1.5 GB for a large migration).
    assert peaks[1] < peaks[0] * 1.5 + 2_000_000, f"{peaks[0] / 1e6:.1f} Mo → {peaks[1] / 1e6:.1f} Mo"


@pytest.mark.parametrize("digits", ["2８２０２５１１０８０３０", "2٨٢٠٢٥١١٠٨٠٣٠", "2820251108０30"])
def test_a_nir_written_with_unicode_digits_is_invalid(digits: str) -> None:
    with pytest.raises(NirInvalide, match="ASCII"):
        normaliser_nir(digits)


def test_an_entry_with_unicode_digits_is_refused_alone_and_the_batch_keeps_its_oppositions(engine, tmp_path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle([
        consent("c1", NIR, recipients=["departement-052", "plateforme-insertion"]),
        consent("bad", "2٨٢٠٢٥١١٠٨٠٣٠"),  # an ASCII first digit: the shape check passed it
        consent("o1", NIR, grant=False, kind="opposition", blanket=True, recipients=["plateforme-insertion"]),
    ])), encoding="utf-8")
    report = import_consents(path, engine, P, today=TODAY)
    assert report.importes == 2 and [e.split(" :")[0] for e in report.erreurs] == ["entrée 2"]
    assert _pairs(engine) == {("departement-052", "identite")}


def test_an_entry_too_deep_for_fhir_validation_or_of_an_odd_type_is_refused_alone(engine, tmp_path) -> None:
    odd = consent("c2", NIR)
    odd["provision"] = {"pas": "une liste"}
    odd2 = consent("c3", NIR)
    odd2["subject"] = ["liste"]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle([odd, consent("c1", NIR), odd2])), encoding="utf-8")
    report = import_consents(path, engine, P, today=TODAY)
    assert report.importes == 1 and [e.split(" :")[0] for e in report.erreurs] == ["entrée 1", "entrée 3"]


# -- 6. store and audit commit together ----------------------------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
from consent.fhir_import import import_resources
from consent.json_stream import bundle_entries
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.store import open_store
engine = open_store(sys.argv[1])
with Path(sys.argv[2]).open(encoding="utf-8") as handle:
    report = import_resources(bundle_entries(handle), engine, Pseudonymiser(PseudonymisationKey("t1", b"k" * 32)),
                              emetteur="departement-052", batch=100)
print(report.importes, len(report.erreurs))
"""


def _audited_imports(engine) -> int:
    """Consent versions the audit records: each in its import batch's file, named by one committed log entry."""
    from spie_hub.audit import segments
    from spie_hub.core.home import HubHome

    committed = segments.committed_lots(engine)
    return sum(1 for e in segments.iter_events(HubHome.from_env(), event="consentement-importe")
               if e.path_rel in committed)


def test_a_consent_import_killed_after_writing_its_batch_file_leaves_an_orphan_the_next_import_removes(
        database_url, tmp_path) -> None:
    from spie_hub.audit import segments
    from spie_hub.core.home import HubHome

    path = _late_type_bundle(tmp_path / "b.json", 150)
    env = dict(os.environ, SPIE_HUB_FAILPOINT="consentements-journal:2", PYTHONPATH=str(REPO))
    killed = subprocess.run([sys.executable, "-c", _CHILD, database_url, str(path)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    engine = open_store(database_url)
    files = list(segments.segment_files(HubHome.from_env()))
    assert len(files) == 2 and len(segments.committed_lots(engine)) == 1  # the second batch's file has no entry
    env.pop("SPIE_HUB_FAILPOINT")
    again = subprocess.run([sys.executable, "-c", _CHILD, database_url, str(path)], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Lot orphelin supprimé" in again.stderr
    committed = segments.committed_lots(engine)
    assert {segments._rel_of(HubHome.from_env(), f) for f in segments.segment_files(HubHome.from_env())} == set(committed)
    assert _audited_imports(engine) == 150
    engine.dispose()


def test_a_consent_import_killed_between_storing_and_auditing_leaves_neither(database_url, tmp_path) -> None:
    path = _late_type_bundle(tmp_path / "b.json", 250)
    env = dict(os.environ, SPIE_HUB_FAILPOINT="consentements-lot:2", PYTHONPATH=str(REPO))
    killed = subprocess.run([sys.executable, "-c", _CHILD, database_url, str(path)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    engine = open_store(database_url)

    def counts() -> tuple[int, int]:
        with engine.connect() as c:
            stored = c.execute(select(func.count()).select_from(consents)).scalar_one()
        return stored, _audited_imports(engine)

    assert counts() == (100, 100)  # the first batch, with its audit; the second left nothing
    env.pop("SPIE_HUB_FAILPOINT")
    again = subprocess.run([sys.executable, "-c", _CHILD, database_url, str(path)], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.split() == ["150", "0"], again.stderr[-2000:]
    assert counts() == (250, 250)
    engine.dispose()


def test_two_imports_of_the_same_bundle_at_once_store_each_version_once_and_both_finish(database_url, tmp_path) -> None:
    path = _late_type_bundle(tmp_path / "b.json", 300)
    open_store(database_url).dispose()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, database_url, str(path)], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=600) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(int(out.split()[0]) for out, _ in outputs) == [0, 300] or \
        sum(int(out.split()[0]) for out, _ in outputs) == 300  # batches may interleave: each stored once
    engine = open_store(database_url)
    with engine.connect() as c:
        versions = c.execute(select(consents.c.consent_id, func.count()).group_by(consents.c.consent_id)).all()
    audited = _audited_imports(engine)
    assert len(versions) == 300 and {n for _, n in versions} == {1} and audited == 300
    engine.dispose()


def test_a_bundle_with_a_byte_order_mark_is_read(engine, tmp_path) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(bundle([consent("c1", NIR)])).encode())
    assert import_consents(path, engine, P, today=TODAY).importes == 1

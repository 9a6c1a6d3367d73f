"""The audit: append-only in the database, signed checkpoints, and an offline verifier that catches any edit,
deletion, insertion, reordering or truncation of an exported bundle and says where."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from helpers import drop_audit_guards
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from spie_hub.audit.bundle import CHECKPOINTS, ENTRIES, KEYS, export_bundle, verify_bundle
from spie_hub.audit.chain import checkpoint_statement, seal, verify
from spie_hub.audit.log import AuditEvent, AuditLog, entry_hash
from spie_hub.audit.signing import SigningKey
from spie_hub.run.retention import purge_audit
from spie_hub.store import audit_checkpoints, audit_log, open_store

COLUMNS = ["ts", "run_id", "event", "flow", "recipient", "subject", "payload", "prev_hash", "hash"]
SIGNER = SigningKey("s1", b"s" * 32)
OTHER = SigningKey("s1", b"x" * 32)  # same kid, another key: what a forger would use


def _append(engine, n: int, start: int = 1) -> None:
    AuditLog(engine).append([AuditEvent("decision", {"n": i, "texte": "é"}, "run-1", "flux", "dep", f"k1.{i:032x}")
                             for i in range(start, start + n)])


@pytest.fixture
def engine(database_url: str):
    engine = open_store(database_url)
    _append(engine, 5)
    AuditLog(engine).append([AuditEvent("execution-fin", {"lus": 5}, "run-1", "flux")])
    yield engine
    engine.dispose()


@pytest.fixture
def tampered(engine):
    """The same store, after an attacker with the owner's rights switched the database guards off."""
    drop_audit_guards(engine)
    return engine


def _flip_one_byte(value: str) -> str:
    middle = len(value) // 2
    return value[:middle] + chr(ord(value[middle]) ^ 1) + value[middle + 1:]


# -- in the database --------------------------------------------------------------------------------------------

def test_an_untouched_chain_verifies(engine) -> None:
    assert verify(engine).ok and verify(engine).entries == 6


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET payload = '{}' WHERE seq = 3",
    "DELETE FROM audit_log WHERE seq = 6",
    "UPDATE audit_checkpoints SET hash = 'x'",
])
def test_the_database_itself_refuses_to_change_or_delete_audit_entries(engine, statement: str) -> None:
    seal(engine, SIGNER)
    with pytest.raises(DBAPIError, match="ajout seul"), engine.begin() as c:
        c.exec_driver_sql(statement)
    assert verify(engine).ok


@pytest.fixture
def pg_engine(postgres_url: str):
    from sqlalchemy import create_engine

    from spie_hub.store import metadata

    reset = create_engine(postgres_url)
    metadata.drop_all(reset)
    reset.dispose()
    engine = open_store(postgres_url)
    _append(engine, 6)
    yield engine
    engine.dispose()


def test_postgresql_refuses_truncating_the_audit(pg_engine) -> None:
    engine = pg_engine
    with pytest.raises(DBAPIError, match="ajout seul"), engine.begin() as c:
        c.exec_driver_sql("TRUNCATE audit_log")


def test_on_postgresql_the_application_role_may_only_append(pg_engine) -> None:
    engine = pg_engine
    from spie_hub.store.guards import harden_privileges

    role = f"spie_app_{engine.url.database}"[:60]
    with engine.begin() as c:
        c.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        c.exec_driver_sql(f'CREATE ROLE "{role}"')
        c.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    harden_privileges(engine, role)
    try:
        with engine.begin() as c:
            c.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
            assert c.exec_driver_sql("SELECT count(*) FROM audit_log").scalar() == 6
        for statement in ("UPDATE audit_log SET payload = '{}'", "DELETE FROM audit_log", "TRUNCATE audit_log",
                          "UPDATE audit_anchor SET seq = 99"):
            with pytest.raises(DBAPIError, match="permission denied|droit refusé"), engine.begin() as c:
                c.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
                c.exec_driver_sql(statement)
        # The hub itself, connected as that role, opens the store, appends and seals: the guards are in place.
        from urllib.parse import quote

        app = open_store(f"{engine.url.render_as_string(hide_password=False)}?options={quote(f'-c role={role}')}")
        AuditLog(app).append([AuditEvent("decision", {"n": 7}, "run-2", "flux")])
        seal(app, SIGNER)
        assert verify(app).ok and verify(app).entries == 7
        with pytest.raises(DBAPIError, match="permission denied|droit refusé"), app.begin() as c:
            c.exec_driver_sql("DELETE FROM audit_log")
        app.dispose()
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f'DROP OWNED BY "{role}"')
            c.exec_driver_sql(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("column", COLUMNS)
def test_a_single_byte_change_in_any_column_fails_at_that_entry(tampered, column: str) -> None:
    with tampered.begin() as c:
        value = c.execute(select(audit_log.c[column]).where(audit_log.c.seq == 3)).scalar_one()
        c.execute(update(audit_log).where(audit_log.c.seq == 3).values({column: _flip_one_byte(value)}))
    result = verify(tampered)
    assert not result.ok and result.first_bad_seq == 3


@pytest.mark.parametrize("seq", [1, 3, 6])
def test_a_deleted_row_fails_at_that_entry(tampered, seq: int) -> None:
    with tampered.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq == seq))
    result = verify(tampered)
    assert not result.ok and result.first_bad_seq == seq


def test_swapping_two_entries_fails_at_the_first_of_them(tampered) -> None:
    with tampered.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 2).values(seq=-2))
        c.execute(update(audit_log).where(audit_log.c.seq == 4).values(seq=2))
        c.execute(update(audit_log).where(audit_log.c.seq == -2).values(seq=4))
    result = verify(tampered)
    assert not result.ok and result.first_bad_seq == 2


def test_a_rewritten_and_rehashed_chain_is_caught_by_the_signed_checkpoint(tampered) -> None:
    seal(tampered, SIGNER)
    _rehash_from(tampered, 2, payload='{"n":2,"texte":"falsifié"}')
    result = verify(tampered)
    assert not result.ok and result.first_bad_seq == 6 and "point de contrôle signé" in result.reason


def _rehash_from(engine, seq: int, payload: str) -> None:
    """What an attacker without the signing key can do best: edit an entry and recompute every hash after it."""
    with engine.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == seq).values(payload=payload))
        rows = [dict(r._mapping) for r in c.execute(select(audit_log).order_by(audit_log.c.seq))]
        prev = rows[0]["prev_hash"]
        for row in rows:
            row["prev_hash"] = prev
            row["hash"] = entry_hash(row)
            c.execute(update(audit_log).where(audit_log.c.seq == row["seq"]).values(prev_hash=row["prev_hash"], hash=row["hash"]))
            prev = row["hash"]
        c.exec_driver_sql(f"UPDATE audit_head SET hash = '{prev}'")


def test_the_cli_exits_non_zero_and_names_the_first_bad_entry(tampered, database_url, capsys) -> None:
    from spie_hub.cli import main

    assert main(["audit", "verify"]) == 0
    drop_audit_guards(tampered)  # opening the store put the guards back
    with tampered.begin() as c:
        c.execute(text("UPDATE audit_log SET payload = '{}' WHERE seq = 5"))
    assert main(["audit", "verify"]) == 1
    assert "n° 5" in capsys.readouterr().out


def test_a_retention_purge_keeps_the_remaining_chain_verifiable_from_its_signed_anchor(engine) -> None:
    drop_audit_guards(engine)  # backdate the first entries: the guards would (rightly) refuse this edit
    with engine.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq <= 3).values(ts="2020-01-01T00:00:00+00:00"))
        rows = [dict(r._mapping) for r in c.execute(select(audit_log).order_by(audit_log.c.seq))]
    _rehash_all(engine, rows)
    from spie_hub.store.guards import install_guards

    install_guards(engine)
    removed = purge_audit(engine, SIGNER, dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc))
    assert removed == 3
    result = verify(engine)
    assert result.ok and result.first_seq == 4 and result.entries == 4  # 3 kept + the purge's own entry
    with pytest.raises(DBAPIError, match="ajout seul"), engine.begin() as c:
        c.exec_driver_sql("DELETE FROM audit_log WHERE seq = 5")  # above the anchor: still refused


def _rehash_all(engine, rows) -> None:
    prev = "0" * 64
    with engine.begin() as c:
        for row in rows:
            row["prev_hash"] = prev
            row["hash"] = entry_hash(row)
            c.execute(update(audit_log).where(audit_log.c.seq == row["seq"]).values(prev_hash=prev, hash=row["hash"]))
            prev = row["hash"]
        c.exec_driver_sql(f"UPDATE audit_head SET hash = '{prev}'")


def test_a_purged_head_without_a_signed_anchor_is_caught(tampered) -> None:
    with tampered.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq <= 2))
    result = verify(tampered)
    assert not result.ok and "début du journal supprimé" in result.reason


# -- offline bundle -------------------------------------------------------------------------------------------

@pytest.fixture
def bundle(engine, tmp_path: Path) -> tuple[Path, Path]:
    """An exported bundle after three sealed runs, and the hub's published public key."""
    seal(engine, SIGNER)
    _append(engine, 4, start=7)
    seal(engine, SIGNER)
    _append(engine, 3, start=11)
    folder = tmp_path / "export"
    assert export_bundle(engine, folder, SIGNER) == 13
    published = tmp_path / "cle-publique.pem"
    published.write_text(SIGNER.public_pem, encoding="utf-8")
    return folder, published


def _lines(folder: Path) -> list[str]:
    return (folder / ENTRIES).read_text(encoding="utf-8").splitlines(keepends=True)


def _write(folder: Path, lines: list[str]) -> None:
    (folder / ENTRIES).write_text("".join(lines), encoding="utf-8")


def _verdict(folder: Path, key: Path, receipts: list[Path] | None = None):
    return verify_bundle(folder, [key], receipts).result


def test_an_untouched_export_verifies_offline_with_the_published_key(bundle) -> None:
    result = _verdict(*bundle)
    assert result.ok and result.entries == 13 and result.checkpoints == 3


def _edit(line: str, **changes) -> str:
    row = json.loads(line)
    row.update(changes)
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


@pytest.mark.parametrize(("tamper", "seq", "words"), [
    (lambda ls: ls[:4] + [_edit(ls[4], payload='{"n":5}')] + ls[5:], 5, "contenu modifié"),
    (lambda ls: ls[:4] + [_edit(ls[4], subject="k1." + "0" * 32)] + ls[5:], 5, "contenu modifié"),
    (lambda ls: ls[:6] + ls[7:], 7, "absente"),
    (lambda ls: ls[:2] + ls[6:], 3, "absentes"),
    (lambda ls: ls[:3] + [ls[4], ls[3]] + ls[5:], 4, "déplacée"),
    (lambda ls: ls[:3] + [ls[3], ls[3]] + ls[4:], 4, "dupliquée"),
    (lambda ls: ls[:-2], 12, "tronqué"),
    (lambda ls: ls[1:], 1, "début du journal supprimé"),
    (lambda ls: ls[:5] + ["{pas du json\n"] + ls[6:], None, "ligne 6 illisible"),
], ids=["edit-payload", "edit-subject", "delete-one", "delete-range", "reorder", "duplicate", "truncate", "drop-head",
        "garbage-line"])
def test_the_offline_verifier_locates_every_kind_of_tampering(bundle, tamper, seq, words) -> None:
    folder, key = bundle
    _write(folder, tamper(_lines(folder)))
    result = _verdict(folder, key)
    assert not result.ok and result.first_bad_seq == seq and words in result.reason


def test_a_rehashed_export_is_caught_by_the_signed_checkpoints(bundle) -> None:
    folder, key = bundle
    rows = [json.loads(line) for line in _lines(folder)]
    rows[1]["payload"] = '{"n":2,"texte":"falsifié"}'
    prev = "0" * 64
    for row in rows:
        row["prev_hash"], row["hash"] = prev, None
        row["hash"] = prev = entry_hash(row)
    _write(folder, [json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows])
    result = _verdict(folder, key)
    assert not result.ok and "point de contrôle signé" in result.reason


def test_truncation_with_its_checkpoints_removed_is_still_caught_by_a_delivery_receipt(bundle, tmp_path: Path) -> None:
    folder, key = bundle
    from spie_hub.audit.receipts import sign_manifest

    last = json.loads(_lines(folder)[-1])
    receipt = tmp_path / "recu.manifest.json"
    receipt.write_text(json.dumps(sign_manifest({"fichier": "x.csv", "journal": {"entree": last["seq"], "empreinte": last["hash"]}},
                                                SIGNER)), encoding="utf-8")
    _write(folder, _lines(folder)[:-3])
    checkpoints = (folder / CHECKPOINTS).read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / CHECKPOINTS).write_text("".join(checkpoints[:-1]), encoding="utf-8")
    assert _verdict(folder, key).ok  # without the receipt, the truncation at a checkpoint boundary is invisible
    result = _verdict(folder, key, [receipt])
    assert not result.ok and "tronqué" in result.reason and result.first_bad_seq == 11


def test_checkpoints_re_signed_with_another_key_fail_against_the_published_key(bundle) -> None:
    folder, key = bundle
    rows = [json.loads(line) for line in (folder / CHECKPOINTS).read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["signature"] = OTHER.sign(checkpoint_statement(row["seq"], row["hash"], row["ts"], row["kid"]))
    (folder / CHECKPOINTS).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / KEYS).write_text(json.dumps({"s1": OTHER.public_b64}), encoding="utf-8")
    assert verify_bundle(folder).result.ok  # self-consistent: why the key must come from the published docs
    result = _verdict(folder, key)
    assert not result.ok and "signature invalide" in result.reason


def test_the_cli_verifies_an_export_without_any_database(bundle, tmp_path: Path, monkeypatch, capsys) -> None:
    from spie_hub.cli import main

    folder, key = bundle
    copy = tmp_path / "copie"
    shutil.copytree(folder, copy)
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert main(["audit", "verifier", str(copy), "--cle-publique", str(key)]) == 0
    assert "Journal intègre : 13 entrée(s)" in capsys.readouterr().out
    _write(copy, _lines(copy)[:3] + _lines(copy)[4:])
    assert main(["audit", "verifier", str(copy), "--cle-publique", str(key)]) == 1
    assert "ALTÉRÉ à l'entrée n° 4" in capsys.readouterr().out


def test_checkpoints_cannot_be_forged_in_the_database_without_the_key(engine) -> None:
    seal(engine, SIGNER)
    drop_audit_guards(engine)
    with engine.begin() as c:
        forged = base64.b64encode(b"\0" * 64).decode()
        c.execute(update(audit_checkpoints).values(signature=forged))
    result = verify(engine)
    assert not result.ok and "signature invalide" in result.reason


# -- signed delivery receipts ---------------------------------------------------------------------------------

def test_a_delivery_receipt_verifies_and_any_change_to_the_file_or_manifest_is_refused(hub_home, tmp_path, capsys) -> None:
    from spie_hub.cli import main
    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate
    from spie_hub.run.lifecycle import run_flow

    home = HubHome.from_env().ensure()
    flux = tmp_path / "flux.xml"
    generate(flux, None, 20, seed=4)
    delivered = Path(run_flow("caf-vers-departement", flux, home).destinataires["departement-052"].fichier)
    manifest = delivered.with_name(delivered.name.removesuffix(".csv") + ".manifest.json")
    key = tmp_path / "cle.pem"
    assert main(["cles", "publier", "--sortie", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o644, "a published public key is readable by anyone"
    assert main(["recu", "verifier", str(manifest), "--cle-publique", str(key)]) == 0
    receipt = json.loads(manifest.read_text(encoding="utf-8"))
    # The audit head by hash only (a number would count others' decisions: docs/divulgation.md).
    assert len(receipt["journal"]["point_de_controle"]) == 64 and "entree" not in receipt["journal"]
    assert receipt["signature"]["algorithme"] == "Ed25519"
    delivered.write_bytes(delivered.read_bytes() + b"x;y\r\n")  # a row added after delivery
    assert main(["recu", "verifier", str(manifest), "--cle-publique", str(key)]) == 1
    assert "ne correspond pas au manifeste signé" in capsys.readouterr().out
    receipt["enregistrements"] += 1
    manifest.write_text(json.dumps(receipt), encoding="utf-8")
    assert main(["recu", "verifier", str(manifest), "--cle-publique", str(key)]) == 1
    assert "signature du manifeste invalide" in capsys.readouterr().out


def test_each_run_ends_with_a_signed_checkpoint_over_the_head(hub_home, tmp_path) -> None:
    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate
    from spie_hub.run.lifecycle import run_flow

    home = HubHome.from_env().ensure()
    flux = tmp_path / "flux.xml"
    generate(flux, None, 10, seed=4)
    run_flow("caf-vers-departement", flux, home)
    engine = open_store(home.database_url)
    with engine.connect() as c:
        head = c.exec_driver_sql("SELECT seq, hash FROM audit_head").one()
        last = c.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc())).first()
    assert (last.seq, last.hash) == tuple(head) and last.kid == "s1"
    # Two: the head the delivery receipts name (sealed at the write-ahead), and the end of the run.
    assert verify(engine).ok and verify(engine).checkpoints == 2

"""The audit: append-only in the database, a Merkle tree sealed by a signed head at every append, verified with the
published key only, and an offline verifier that catches any edit, deletion, insertion, reordering or truncation of
an exported bundle and says where; heads kept by others (receipts, a DPO's export, the hub's last verification)
catch a history rewritten and re-signed by whoever holds the database and the signing function."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from audit_attacks import drop_all_guards, entries, rebuild, rewrite_and_resign, truncate_and_resign
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from spie_hub.audit import merkle
from spie_hub.audit.bundle import ENTRIES, HEADS, KEYS, export_bundle, verify_bundle
from spie_hub.audit.chain import verify
from spie_hub.audit.heads import TreeHead, latest_head, statement
from spie_hub.audit.log import AuditEvent, AuditLog, entry_hash
from spie_hub.audit.signing import SigningKey
from spie_hub.audit.tree import consistency_proof, entry_leaf, inclusion_proof
from spie_hub.core.home import HubHome
from spie_hub.store import audit_heads, audit_keys, audit_log, open_store

COLUMNS = ["ts", "run_id", "event", "flow", "recipient", "subject", "payload", "prev_hash", "hash"]
SIGNER = SigningKey("s1", b"s" * 32)
OTHER = SigningKey("s1", b"x" * 32)  # same kid, another key: what a forger would use
TRUSTED = {"s1": SIGNER.public_b64}


def _append(engine, n: int, start: int = 1) -> None:
    AuditLog(engine, SIGNER).append([AuditEvent("decision", {"n": i, "texte": "é"}, "run-1", "flux", "dep", f"k1.{i:032x}")
                                     for i in range(start, start + n)])


@pytest.fixture
def home(tmp_path: Path) -> HubHome:
    return HubHome(tmp_path / "hub").ensure()


def check(engine, home: HubHome, **kwargs):
    return verify(engine, home=home, trusted=TRUSTED, **kwargs)


@pytest.fixture
def engine(database_url: str):
    engine = open_store(database_url)
    _append(engine, 5)
    AuditLog(engine, SIGNER).append([AuditEvent("execution-fin", {"lus": 5}, "run-1", "flux")])
    yield engine
    engine.dispose()


@pytest.fixture
def tampered(engine):
    """The same store, after an attacker with the owner's rights switched the database guards off."""
    drop_all_guards(engine)
    return engine


def _flip_one_byte(value: str) -> str:
    middle = len(value) // 2
    return value[:middle] + chr(ord(value[middle]) ^ 1) + value[middle + 1:]


# -- in the database --------------------------------------------------------------------------------------------

def test_an_untouched_log_verifies_and_every_append_signed_its_head(engine, home) -> None:
    result = check(engine, home, incremental=False)
    assert result.ok and result.entries == 6 and result.checkpoints == 2 and result.size == 6
    with engine.connect() as c:
        head = latest_head(c)
    assert head is not None and head.size == 6 and head.root == result.root and head.verify(TRUSTED) is None


def test_an_append_without_a_signing_key_is_refused_never_left_unsealed(engine, monkeypatch) -> None:
    from spie_hub.core.errors import ConfigurationError

    monkeypatch.delenv("SPIE_HUB_SIGNING_KEY", raising=False)
    monkeypatch.setenv("SPIE_HUB_HOME", "/nonexistent/hub")
    with pytest.raises(ConfigurationError):
        AuditLog(engine).append([AuditEvent("acces-personne", {"motif": "x"})])
    with engine.connect() as c:
        assert c.execute(select(audit_log.c.seq).order_by(audit_log.c.seq.desc())).first()[0] == 6


@pytest.mark.parametrize("statement_", [
    "UPDATE audit_log SET payload = '{}' WHERE seq = 3",
    "DELETE FROM audit_log WHERE seq = 6",
    "UPDATE audit_heads SET root = 'x'",
    "DELETE FROM audit_heads",
    "UPDATE audit_nodes SET hash = 'x'",
    "DELETE FROM audit_nodes",
    "UPDATE audit_keys SET public_b64 = 'x'",
    "UPDATE audit_head SET seq = 5",
    "DELETE FROM audit_head",
    "UPDATE audit_anchor SET seq = 3",
    "DELETE FROM audit_anchor",
])
def test_the_database_itself_refuses_to_change_or_delete_any_audit_table(engine, home, statement_: str) -> None:
    with pytest.raises(DBAPIError, match="ajout seul|seulement vers l'avant|DELETE refusé"), engine.begin() as c:
        c.exec_driver_sql(statement_)
    assert check(engine, home).ok


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
    for table in ("audit_log", "audit_heads", "audit_nodes", "audit_head"):
        with pytest.raises(DBAPIError, match="ajout seul"), pg_engine.begin() as c:
            c.exec_driver_sql(f"TRUNCATE {table}")


def test_a_superuser_in_replica_mode_is_still_refused_by_the_triggers(pg_engine, tmp_path) -> None:
    """session_replication_role = replica silences ordinary triggers; the audit's fire ALWAYS."""
    for statement_ in ("DELETE FROM audit_log WHERE seq = 6", "DELETE FROM audit_heads", "UPDATE audit_head SET seq = 1"):
        with pytest.raises(DBAPIError, match="ajout seul|seulement vers l'avant"), pg_engine.begin() as c:
            c.exec_driver_sql("SET LOCAL session_replication_role = replica")
            c.exec_driver_sql(statement_)
    assert check(pg_engine, HubHome(tmp_path / "h").ensure()).ok


def test_on_postgresql_the_application_role_may_only_append_and_purge_nothing_young(pg_engine, tmp_path) -> None:
    engine = pg_engine
    from spie_hub.store.guards import harden_privileges, purge_upto

    role = f"spie_app_{engine.url.database}"[:60]
    with engine.begin() as c:
        c.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        c.exec_driver_sql(f'CREATE ROLE "{role}"')
        c.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    harden_privileges(engine, role)
    try:
        for statement_ in ("UPDATE audit_log SET payload = '{}'", "DELETE FROM audit_log", "TRUNCATE audit_log",
                           "UPDATE audit_anchor SET seq = 99", "DELETE FROM audit_heads", "DELETE FROM audit_nodes",
                           "UPDATE audit_policy SET min_age_days = 0"):
            with pytest.raises(DBAPIError, match="permission denied|droit refusé"), engine.begin() as c:
                c.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
                c.exec_driver_sql(statement_)
        from urllib.parse import quote

        app = open_store(f"{engine.url.render_as_string(hide_password=False)}?options={quote(f'-c role={role}')}")
        AuditLog(app, SIGNER).append([AuditEvent("decision", {"n": 7}, "run-2", "flux")])
        assert check(app, HubHome(tmp_path / "h").ensure()).entries == 7
        # The purge function the role may call refuses: no announcement, then entries minutes old.
        with pytest.raises(DBAPIError, match="aucune entrée « purge-journal »"):
            purge_upto(app, 6)
        AuditLog(app, SIGNER).append([AuditEvent("purge-journal", {"jusqua": 6})])
        with pytest.raises(DBAPIError, match="moins de 365 jours"):
            purge_upto(app, 6)
        with pytest.raises(DBAPIError, match="aucune tête signée"):
            purge_upto(app, 5)
        app.dispose()
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f'DROP OWNED BY "{role}"')
            c.exec_driver_sql(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("column", COLUMNS)
def test_a_single_byte_change_in_any_column_fails_at_that_entry(tampered, home, column: str) -> None:
    with tampered.begin() as c:
        value = c.execute(select(audit_log.c[column]).where(audit_log.c.seq == 3)).scalar_one()
        c.execute(update(audit_log).where(audit_log.c.seq == 3).values({column: _flip_one_byte(value)}))
    result = check(tampered, home)
    assert not result.ok and result.first_bad_seq == 3


@pytest.mark.parametrize("seq", [1, 3, 6])
def test_a_deleted_row_is_caught(tampered, home, seq: int) -> None:
    with tampered.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq == seq))
    result = check(tampered, home)
    assert not result.ok and result.first_bad_seq == seq


def test_an_unsealed_tail_is_reported(tampered, home) -> None:
    """An entry slipped in after the last head (never what the hub does: every append is sealed)."""
    row = entries(tampered)[-1] | {"seq": 7, "payload": '{"ajout":"hors du hub"}'}
    row["prev_hash"] = entries(tampered)[-1]["hash"]
    row["hash"] = entry_hash(row)
    with tampered.begin() as c:
        c.execute(audit_log.insert().values(**row))
        c.exec_driver_sql(f"UPDATE audit_head SET seq = 7, hash = '{row['hash']}'")
    result = check(tampered, home)
    assert not result.ok and "sans tête signée" in result.reason and result.first_bad_seq == 7


def test_a_subject_access_entry_cannot_be_deleted_unseen(tampered, home) -> None:
    AuditLog(tampered, SIGNER).append([AuditEvent("acces-personne", {"motif": "art. 15"})])
    with tampered.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq == 7))
        c.exec_driver_sql("UPDATE audit_head SET seq = 6, hash = (SELECT hash FROM audit_log WHERE seq = 6)")
    result = check(tampered, home)
    assert not result.ok and "tronqué" in result.reason


def test_a_rewritten_log_re_signed_with_the_hubs_own_key_passes_alone_but_not_against_a_kept_head(engine, home) -> None:
    """The operator's best: rewrite entry 2, recompute every hash, the tree and every head, re-signed by the hub."""
    assert check(engine, home).ok  # the hub's last verification keeps a head (its own witness)
    with engine.connect() as c:
        kept = latest_head(c)
    rewrite_and_resign(engine, SIGNER, 2, '{"n":2,"texte":"réécrit"}')
    state = Path(home.root) / "audit" / "derniere-verification.json"
    saved = state.read_text(encoding="utf-8")
    state.unlink()
    assert check(engine, home, incremental=False).ok, "self-consistent: why witnesses exist"
    state.write_text(saved, encoding="utf-8")
    result = check(engine, home, incremental=False)
    assert not result.ok and "la dernière vérification du hub" in result.reason and result.first_bad_seq == kept.size
    incremental = check(engine, home, incremental=True)
    assert not incremental.ok and "réécrit" in incremental.reason


def test_verification_never_trusts_a_key_the_database_holds(tampered, home) -> None:
    """Swap the recorded public key, re-sign every head with another key: the published key refuses them."""
    rows = entries(tampered)
    with tampered.begin() as c:
        c.execute(update(audit_keys).values(public_b64=OTHER.public_b64))
    rebuild(tampered, rows, OTHER)
    result = check(tampered, home)
    assert not result.ok and "signature invalide" in result.reason
    from spie_hub.audit.chain import default_trust

    keys, _ = default_trust(home, SIGNER, tampered)
    assert keys == TRUSTED, "the store's audit_keys never become a trust anchor"


def test_a_forged_head_signature_is_caught(tampered, home) -> None:
    with tampered.begin() as c:
        c.execute(update(audit_heads).values(signature=base64.b64encode(b"\0" * 64).decode()))
    result = check(tampered, home)
    assert not result.ok and "signature invalide" in result.reason


def test_a_stored_tree_node_that_lies_is_caught(tampered, home) -> None:
    with tampered.begin() as c:
        c.exec_driver_sql("UPDATE audit_nodes SET hash = '" + "ab" * 32 + "' WHERE level = 1 AND idx = 0")
    result = check(tampered, home)
    assert not result.ok and "arbre du journal stocké faux" in result.reason


def test_the_cli_exits_non_zero_and_names_the_first_bad_entry(tampered, database_url, capsys, monkeypatch, tmp_path) -> None:
    from spie_hub.cli import main

    monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path / "cli"))
    monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(b"s" * 32).decode())
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", "t1:" + base64.b64encode(b"k" * 32).decode())
    monkeypatch.setenv("SPIE_HUB_DATABASE_URL", database_url)
    with tampered.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 5).values(payload="{}"))
    assert main(["audit", "verify", "--complet"]) == 1
    assert "ALTÉRÉ à l'entrée n° 5" in capsys.readouterr().out


def test_proofs_from_the_stored_tree_verify_against_the_signed_head(engine) -> None:
    _append(engine, 7, start=7)
    with engine.connect() as c:
        head = latest_head(c)
        rows = entries(engine)
        for row in rows:
            path = inclusion_proof(c, row["seq"], head.size)
            assert merkle.verify_inclusion(merkle.leaf_hash(entry_leaf(row["hash"])), row["seq"] - 1, head.size, path,
                                           bytes.fromhex(head.root))
        first = c.execute(select(audit_heads).where(audit_heads.c.size == 6)).first()
        proof = consistency_proof(c, 6, head.size)
    assert merkle.verify_consistency(6, head.size, bytes.fromhex(first.root), bytes.fromhex(head.root), proof)


# -- retention ------------------------------------------------------------------------------------------------

def _backdate(engine, upto: int) -> None:
    """Make the first entries old (the guards rightly refuse this edit: the operator's tool), re-signed."""
    drop_all_guards(engine)
    rows = entries(engine)
    for row in rows:
        if row["seq"] <= upto:
            row["ts"] = "2020-01-01T00:00:00+00:00"
    rebuild(engine, rows, SIGNER)
    from spie_hub.store.guards import install_guards

    install_guards(engine)


def test_a_retention_purge_keeps_the_rest_verifiable_and_its_proofs_valid(engine, home) -> None:
    from spie_hub.audit.purge import purge_audit

    _backdate(engine, 5)
    _append(engine, 2, start=20)
    removed = purge_audit(engine, SIGNER, dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc))
    assert removed == 5  # up to the last head among the old entries (the first append's)
    result = check(engine, home, incremental=False)
    assert result.ok and result.first_seq == 6 and result.entries == 4  # 1 + 2 kept + the purge's own entry
    with engine.connect() as c:
        head = latest_head(c)
        announced = c.execute(select(audit_log.c.payload).where(audit_log.c.event == "purge-journal")).scalar_one()
        row = c.execute(select(audit_log).where(audit_log.c.seq == 7)).mappings().one()
        path = inclusion_proof(c, 7, head.size)
        first = TreeHead.from_row(c.execute(select(audit_heads).where(audit_heads.c.size == 5)).one())
        proof = consistency_proof(c, 5, head.size)
    assert json.loads(announced)["jusqua"] == 5
    assert merkle.verify_inclusion(merkle.leaf_hash(entry_leaf(row["hash"])), 6, head.size, path, bytes.fromhex(head.root))
    assert merkle.verify_consistency(5, head.size, bytes.fromhex(first.root), bytes.fromhex(head.root), proof)
    with pytest.raises(DBAPIError, match="ajout seul"), engine.begin() as c:
        c.exec_driver_sql("DELETE FROM audit_log WHERE seq = 7")  # above the anchor: still refused


def test_the_purge_refuses_entries_younger_than_the_floor(engine) -> None:
    from spie_hub.audit.purge import purge_audit
    from spie_hub.core.errors import ConfigurationError

    with pytest.raises((ConfigurationError, DBAPIError), match="moins de 365 jours"):
        purge_audit(engine, SIGNER, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
    assert len(entries(engine)) == 7  # the refused purge is on record (its announcement), nothing removed


def test_a_purged_head_without_an_anchor_is_caught(tampered, home) -> None:
    with tampered.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq <= 2))
    result = check(tampered, home)
    assert not result.ok and "début du journal supprimé" in result.reason


# -- offline bundle -------------------------------------------------------------------------------------------

@pytest.fixture
def bundle(engine, tmp_path: Path) -> tuple[Path, Path]:
    """An exported bundle after three sealed appends, and the hub's published public key."""
    _append(engine, 4, start=7)
    _append(engine, 3, start=11)
    folder = tmp_path / "export"
    assert export_bundle(engine, folder, SIGNER) == 13
    published = tmp_path / "cle-publique.pem"
    published.write_text(SIGNER.public_pem, encoding="utf-8")
    return folder, published


def _lines(folder: Path, name: str = ENTRIES) -> list[str]:
    return (folder / name).read_text(encoding="utf-8").splitlines(keepends=True)


def _write(folder: Path, lines: list[str], name: str = ENTRIES) -> None:
    (folder / name).write_text("".join(lines), encoding="utf-8")


def _verdict(folder: Path, key: Path, receipts: list[Path] | None = None, kept: list[Path] | None = None):
    return verify_bundle(folder, [key], receipts, kept).result


def test_an_untouched_export_verifies_offline_with_the_published_key(bundle) -> None:
    result = _verdict(*bundle)
    assert result.ok and result.entries == 13 and result.checkpoints == 4


def test_an_export_without_the_published_key_is_not_called_intact(bundle) -> None:
    result = verify_bundle(bundle[0]).result
    assert not result.ok and "clé publique publiée" in result.reason


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


def test_a_rehashed_export_is_caught_by_the_signed_heads(bundle) -> None:
    folder, key = bundle
    rows = [json.loads(line) for line in _lines(folder)]
    rows[1]["payload"] = '{"n":2,"texte":"falsifié"}'
    prev = "0" * 64
    for row in rows:
        row["prev_hash"], row["hash"] = prev, None
        row["hash"] = prev = entry_hash(row)
    _write(folder, [json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows])
    result = _verdict(folder, key)
    assert not result.ok and "tête signée" in result.reason


def test_an_export_re_signed_after_a_rewrite_is_caught_by_any_kept_head(engine, tmp_path: Path) -> None:
    """A superuser rewrites entry 2, recomputes everything, re-signs every head, exports: alone, the export is
    self-consistent; the head the DPO kept from an earlier export (or a partner's receipt) catches it at its size."""
    published = tmp_path / "cle.pem"
    published.write_text(SIGNER.public_pem, encoding="utf-8")
    with engine.connect() as c:
        kept = latest_head(c)
    kept_file = tmp_path / "tete.json"
    kept_file.write_text(json.dumps(kept.as_json()), encoding="utf-8")
    rewrite_and_resign(engine, SIGNER, 2, '{"n":2,"texte":"réécrit"}')
    _append(engine, 3, start=40)
    folder = tmp_path / "export"
    export_bundle(engine, folder, SIGNER)
    assert _verdict(folder, published).ok
    result = _verdict(folder, published, kept=[kept_file])
    assert not result.ok and result.first_bad_seq == kept.size and "tête gardée" in result.reason


def test_truncation_with_its_heads_removed_is_caught_by_a_kept_head(bundle, tmp_path: Path) -> None:
    folder, key = bundle
    heads = [json.loads(line) for line in _lines(folder, HEADS)]
    kept = tmp_path / "tete.json"
    kept.write_text(json.dumps(heads[-1]), encoding="utf-8")
    _write(folder, _lines(folder)[:-3])
    _write(folder, [json.dumps(h) + "\n" for h in heads[:-1]], HEADS)
    assert _verdict(folder, key).ok  # without a witness, a truncation at a head boundary is invisible
    result = _verdict(folder, key, kept=[kept])
    assert not result.ok and "tronqué" in result.reason


def test_heads_re_signed_with_another_key_fail_against_the_published_key(bundle) -> None:
    folder, key = bundle
    rows = [json.loads(line) for line in _lines(folder, HEADS)]
    for row in rows:
        row["signature"] = OTHER.sign(statement(row["taille"], row["racine"], row["horodatage"], row["cle"]).encode())
    _write(folder, [json.dumps(r) + "\n" for r in rows], HEADS)
    (folder / KEYS).write_text(json.dumps({"s1": OTHER.public_b64}), encoding="utf-8")
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


def test_a_truncated_store_re_signed_is_caught_by_the_hubs_last_verification(engine, home) -> None:
    assert check(engine, home).ok
    truncate_and_resign(engine, SIGNER, 3)
    result = check(engine, home, incremental=False)
    assert not result.ok and "tronqué" in result.reason


def test_a_backdated_entry_is_refused_and_cannot_make_young_history_purgeable(engine, home, monkeypatch) -> None:
    """The hub's clock set back, or a row written by hand with an old date: an entry is never dated before the one
    it follows (the hub keeps the previous time, the database refuses the row), so a purge's age check holds."""
    from spie_hub.audit import log as log_module
    from spie_hub.audit.purge import purge_audit
    from spie_hub.core.errors import ConfigurationError

    monkeypatch.setattr(log_module, "now", lambda: "2000-01-01T00:00:00.000000+00:00")
    AuditLog(engine, SIGNER).append([AuditEvent("note", {"texte": "horloge reculée"})])
    monkeypatch.undo()
    rows = entries(engine)
    assert rows[-1]["ts"] == rows[-2]["ts"], "the clock set back gives the previous entry's time"
    forged = rows[-1] | {"seq": 8, "ts": "2000-01-01T00:00:00.000000+00:00", "prev_hash": rows[-1]["hash"]}
    forged["hash"] = entry_hash(forged)
    with pytest.raises(DBAPIError, match="datée avant la précédente"), engine.begin() as c:
        c.execute(audit_log.insert().values(**forged))
    with pytest.raises((ConfigurationError, DBAPIError), match="moins de 365 jours"):
        purge_audit(engine, SIGNER, dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=10_000))
    assert check(engine, home).ok


def test_the_verifier_refuses_an_entry_dated_before_the_one_it_follows(engine, home) -> None:
    rows = entries(engine)
    rows[3]["ts"] = "2000-01-01T00:00:00+00:00"
    drop_all_guards(engine)
    rebuild(engine, rows, SIGNER)
    result = check(engine, home, incremental=False)
    assert not result.ok and result.first_bad_seq == 4 and "antidaté" in result.reason

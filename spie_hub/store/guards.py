"""Append-only audit in the database itself, not only in code.

Triggers (PostgreSQL and SQLite) refuse any UPDATE of audit entries, tree nodes, signed heads and keys, any
TRUNCATE, any DELETE of an entry above the retention anchor (``audit_anchor``, moved only forward, by
``spie_audit_purge``: a signed head at that size, the purge announced in the log, entries old enough), and any move
of the log's head other than forward onto an existing entry. On PostgreSQL they fire even under
``session_replication_role = replica``. On PostgreSQL, ``harden_privileges`` also leaves the application role only SELECT and
INSERT on the audit tables and EXECUTE on the purge function (run it as the database owner: ``spie-hub base durcir``).
Whoever owns the database can still drop a trigger: that is what the signed checkpoints and receipts are for.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import ProgrammingError

from spie_hub.core.errors import ConfigurationError

_PG = [
    """CREATE OR REPLACE FUNCTION spie_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_log' THEN
        IF OLD.seq <= (SELECT seq FROM audit_anchor WHERE id = 1) THEN
          RETURN OLD;
        END IF;
      END IF;
      -- The head only moves forward, onto an entry that exists with that hash (touching it unchanged takes the lock).
      -- Nested IFs: PL/pgSQL resolves every field of an expression, and audit_log rows have no "id".
      IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'audit_head' THEN
        IF (NEW.seq = OLD.seq AND NEW.hash = OLD.hash)
           OR (NEW.seq > OLD.seq AND NEW.hash = (SELECT hash FROM audit_log WHERE seq = NEW.seq)) THEN
          RETURN NEW;
        END IF;
      END IF;
      -- The purge anchor only moves forward, onto an entry that still exists (spie_audit_purge moves it first).
      IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'audit_anchor' THEN
        IF (NEW.seq = OLD.seq AND NEW.hash IS NOT DISTINCT FROM OLD.hash)
           OR (NEW.seq > OLD.seq AND NEW.hash = (SELECT hash FROM audit_log WHERE seq = NEW.seq)) THEN
          RETURN NEW;
        END IF;
      END IF;
      RAISE EXCEPTION 'journal d''audit en ajout seul : % refusé sur %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
    END $$""",
    """CREATE OR REPLACE FUNCTION spie_audit_purge(upto integer) RETURNS integer LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public, pg_temp AS $$
    DECLARE removed integer; floor_days integer; entry_ts text; entry_hash text;
    BEGIN
      IF NOT EXISTS (SELECT 1 FROM audit_heads WHERE size = upto) THEN
        RAISE EXCEPTION 'purge du journal refusée : aucune tête signée à la taille %', upto;
      END IF;
      -- The purge is announced in the log first, by the hub, under a signed head: never silent.
      IF NOT EXISTS (SELECT 1 FROM audit_log WHERE seq > upto AND event = 'purge-journal'
                     AND (payload::jsonb ->> 'jusqua') = upto::text) THEN
        RAISE EXCEPTION 'purge du journal refusée : aucune entrée « purge-journal » ne l''annonce jusqu''à %', upto;
      END IF;
      SELECT min_age_days INTO floor_days FROM audit_policy WHERE id = 1;
      SELECT ts, hash INTO entry_ts, entry_hash FROM audit_log WHERE seq = upto;
      IF entry_ts IS NULL THEN
        RAISE EXCEPTION 'purge du journal refusée : entrée % absente', upto;
      END IF;
      IF entry_ts::timestamptz > now() - make_interval(days => coalesce(floor_days, 365)) THEN
        RAISE EXCEPTION 'purge du journal refusée : l''entrée % a moins de % jours', upto, coalesce(floor_days, 365);
      END IF;
      UPDATE audit_anchor SET seq = upto, hash = entry_hash WHERE id = 1 AND seq < upto;
      DELETE FROM audit_log WHERE seq <= upto;
      GET DIAGNOSTICS removed = ROW_COUNT;
      RETURN removed;
    END $$""",
]
#: An entry is never dated before the one it follows: a purge checks the age of what it removes, and a backdated
#: entry would make minutes-old history look old enough.
_PG_TS = [
    """CREATE OR REPLACE FUNCTION spie_audit_ts_forward() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NOT isfinite(NEW.ts::timestamptz)
         OR NEW.ts::timestamptz < (SELECT ts::timestamptz FROM audit_log WHERE seq = NEW.seq - 1) THEN
        RAISE EXCEPTION 'journal d''audit : entrée n° % datée avant la précédente, refusée', NEW.seq
          USING ERRCODE = 'check_violation';
      END IF;
      RETURN NEW;
    END $$""",
    "DROP TRIGGER IF EXISTS spie_ts_forward ON audit_log",
    "CREATE TRIGGER spie_ts_forward BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION spie_audit_ts_forward()",
    "ALTER TABLE audit_log ENABLE ALWAYS TRIGGER spie_ts_forward",
]

#: Every audit table refuses what appending does not need; ``ENABLE ALWAYS`` keeps the triggers firing under
#: ``session_replication_role = replica`` (which silences ordinary triggers: a superuser's quiet delete).
_PG_TRIGGERS = {
    "audit_log": "BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW",
    "audit_checkpoints": "BEFORE UPDATE OR DELETE ON audit_checkpoints FOR EACH ROW",
    "audit_nodes": "BEFORE UPDATE OR DELETE ON audit_nodes FOR EACH ROW",
    "audit_heads": "BEFORE UPDATE OR DELETE ON audit_heads FOR EACH ROW",
    "audit_head_stamps": "BEFORE UPDATE OR DELETE ON audit_head_stamps FOR EACH ROW",
    "audit_keys": "BEFORE UPDATE OR DELETE ON audit_keys FOR EACH ROW",
    "audit_head": "BEFORE UPDATE OR DELETE ON audit_head FOR EACH ROW",
    "audit_anchor": "BEFORE UPDATE OR DELETE ON audit_anchor FOR EACH ROW",
}

_SQLITE = [
    """CREATE TRIGGER IF NOT EXISTS spie_audit_ts_forward_v2 BEFORE INSERT ON audit_log
       WHEN julianday(NEW.ts) IS NULL
         OR julianday(NEW.ts) < (SELECT julianday(ts) FROM audit_log WHERE seq = NEW.seq - 1)
       BEGIN SELECT RAISE(ABORT, 'journal d''audit : entrée datée avant la précédente, refusée'); END""",
    """CREATE TRIGGER IF NOT EXISTS spie_audit_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'journal d''audit en ajout seul : UPDATE refusé'); END""",
    """CREATE TRIGGER IF NOT EXISTS spie_audit_no_delete BEFORE DELETE ON audit_log
       WHEN OLD.seq > (SELECT seq FROM audit_anchor WHERE id = 1)
       BEGIN SELECT RAISE(ABORT, 'journal d''audit en ajout seul : DELETE refusé au-dessus de l''ancre'); END""",
    """CREATE TRIGGER IF NOT EXISTS spie_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
       BEGIN SELECT RAISE(ABORT, 'points de contrôle en ajout seul : UPDATE refusé'); END""",
    """CREATE TRIGGER IF NOT EXISTS spie_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
       BEGIN SELECT RAISE(ABORT, 'points de contrôle en ajout seul : DELETE refusé'); END""",
    """CREATE TRIGGER IF NOT EXISTS spie_head_forward BEFORE UPDATE ON audit_head
       WHEN NOT ((NEW.seq = OLD.seq AND NEW.hash = OLD.hash)
                 OR (NEW.seq > OLD.seq AND NEW.hash = (SELECT hash FROM audit_log WHERE seq = NEW.seq)))
       BEGIN SELECT RAISE(ABORT, 'tête du journal : seulement vers l''avant, sur une entrée existante'); END""",
    """CREATE TRIGGER IF NOT EXISTS spie_anchor_forward BEFORE UPDATE ON audit_anchor
       WHEN NOT ((NEW.seq = OLD.seq AND NEW.hash IS OLD.hash)
                 OR (NEW.seq > OLD.seq AND NEW.hash = (SELECT hash FROM audit_log WHERE seq = NEW.seq)))
       BEGIN SELECT RAISE(ABORT, 'ancre de purge : seulement vers l''avant, sur une entrée existante'); END""",
] + [
    f"""CREATE TRIGGER IF NOT EXISTS spie_{table}_no_{op.lower()} BEFORE {op} ON {table}
       BEGIN SELECT RAISE(ABORT, 'journal d''audit en ajout seul : {op} refusé sur {table}'); END"""
    for table in ("audit_nodes", "audit_heads", "audit_head_stamps", "audit_keys") for op in ("UPDATE", "DELETE")
] + [
    f"""CREATE TRIGGER IF NOT EXISTS spie_{table}_no_delete BEFORE DELETE ON {table}
       BEGIN SELECT RAISE(ABORT, 'journal d''audit : DELETE refusé sur {table}'); END"""
    for table in ("audit_head", "audit_anchor")
]


#: The registry of used pseudonymisation keys (``pseudo_keys``): a row is never deleted and its id, fingerprint and
#: first use never change, so a key id is never given to another secret; only the retirement date is set.
_PG_KEYS = """CREATE OR REPLACE FUNCTION spie_keys_registry_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'UPDATE' AND NEW.kid = OLD.kid AND NEW.fingerprint = OLD.fingerprint
         AND NEW.first_seen_at = OLD.first_seen_at THEN
        RETURN NEW;
      END IF;
      RAISE EXCEPTION 'registre des clés de pseudonymisation : % refusé (un identifiant de clé utilisé le reste, '
        'avec son empreinte)', TG_OP USING ERRCODE = 'insufficient_privilege';
    END $$"""
_SQLITE_KEYS = [
    """CREATE TRIGGER IF NOT EXISTS spie_keys_no_delete BEFORE DELETE ON pseudo_keys
       BEGIN SELECT RAISE(ABORT, 'registre des clés de pseudonymisation : DELETE refusé'); END""",
    """CREATE TRIGGER IF NOT EXISTS spie_keys_no_rewrite BEFORE UPDATE OF kid, fingerprint, first_seen_at ON pseudo_keys
       WHEN NEW.kid IS NOT OLD.kid OR NEW.fingerprint IS NOT OLD.fingerprint OR NEW.first_seen_at IS NOT OLD.first_seen_at
       BEGIN SELECT RAISE(ABORT, 'registre des clés de pseudonymisation : identifiant ou empreinte non modifiables'); END""",
]


def _install_pg_keys_guard(connection: Connection) -> None:
    present = connection.execute(text(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname IN ('spie_keys_guard', 'spie_keys_no_truncate') AND t.tgenabled <> 'D' "
        "AND c.relname = 'pseudo_keys'")).scalar_one()
    if present == 2:
        return
    try:
        with connection.begin_nested():
            connection.execute(text(_PG_KEYS))
            connection.execute(text("DROP TRIGGER IF EXISTS spie_keys_guard ON pseudo_keys"))
            connection.execute(text("CREATE TRIGGER spie_keys_guard BEFORE UPDATE OR DELETE ON pseudo_keys "
                                    "FOR EACH ROW EXECUTE FUNCTION spie_keys_registry_guard()"))
            connection.execute(text("DROP TRIGGER IF EXISTS spie_keys_no_truncate ON pseudo_keys"))
            connection.execute(text("CREATE TRIGGER spie_keys_no_truncate BEFORE TRUNCATE ON pseudo_keys "
                                    "FOR EACH STATEMENT EXECUTE FUNCTION spie_keys_registry_guard()"))
    except ProgrammingError:
        # A hardened role opening a store created before this guard existed: it may not create triggers, and its
        # privileges already forbid the deletion (spie-hub base durcir, run by the owner, installs the trigger).
        pass


def install_guards(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            _install_pg_keys_guard(connection)
            # Installed once by whoever creates the tables; a hardened application role (no DDL rights) then
            # finds them in place and changes nothing. An attacker who dropped one gets it back on the next open.
            present = connection.execute(text(
                "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE t.tgname IN ('spie_append_only', 'spie_no_truncate', 'spie_ts_forward') AND t.tgenabled = 'A' "
                "AND c.relname = ANY(:tables)"), {"tables": list(_PG_TRIGGERS)}).scalar_one()
            if present == 2 * len(_PG_TRIGGERS) + 1:
                return
            for statement in _PG_TS:
                connection.execute(text(statement))
            for statement in _PG:
                connection.execute(text(statement))
            for table, when in _PG_TRIGGERS.items():
                connection.execute(text(f"DROP TRIGGER IF EXISTS spie_append_only ON {table}"))
                connection.execute(text(f"CREATE TRIGGER spie_append_only {when} EXECUTE FUNCTION spie_audit_append_only()"))
                connection.execute(text(f"DROP TRIGGER IF EXISTS spie_no_truncate ON {table}"))
                connection.execute(text(f"CREATE TRIGGER spie_no_truncate BEFORE TRUNCATE ON {table} "
                                        "FOR EACH STATEMENT EXECUTE FUNCTION spie_audit_append_only()"))
                connection.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER spie_append_only"))
                connection.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER spie_no_truncate"))
        elif engine.dialect.name == "sqlite":
            connection.exec_driver_sql("DROP TRIGGER IF EXISTS spie_audit_ts_forward")  # compared text: see _v2
            for statement in _SQLITE + _SQLITE_KEYS:
                connection.exec_driver_sql(statement)


def purge_upto(engine: Engine, upto: int) -> int:
    """Delete the entries up to ``upto``; return how many were removed. The database checks (PostgreSQL: the
    ``spie_audit_purge`` function, the only way the application role can delete) that a signed head covers exactly
    ``upto`` entries, that a later ``purge-journal`` entry announces the purge, and that entry ``upto`` is older
    than ``audit_policy.min_age_days``; nodes and heads stay, so what remains is still provable."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            return int(connection.execute(text("SELECT spie_audit_purge(:upto)"), {"upto": upto}).scalar_one())
        return _sqlite_purge(connection, upto)


def _sqlite_purge(connection: Connection, upto: int) -> int:
    import datetime as dt
    import json

    if connection.exec_driver_sql("SELECT 1 FROM audit_heads WHERE size = ?", (upto,)).first() is None:
        raise ConfigurationError(f"purge du journal refusée : aucune tête signée à la taille {upto}")
    announced = [json.loads(p).get("jusqua") for (p,) in connection.exec_driver_sql(
        "SELECT payload FROM audit_log WHERE seq > ? AND event = 'purge-journal'", (upto,))]
    if upto not in announced:
        raise ConfigurationError(f"purge du journal refusée : aucune entrée « purge-journal » ne l'annonce jusqu'à {upto}")
    floor = connection.exec_driver_sql("SELECT min_age_days FROM audit_policy WHERE id = 1").scalar()
    floor = 365 if floor is None else int(floor)
    row = connection.exec_driver_sql("SELECT ts, hash FROM audit_log WHERE seq = ?", (upto,)).first()
    if row is None:
        raise ConfigurationError(f"purge du journal refusée : entrée {upto} absente")
    if dt.datetime.fromisoformat(row[0]) > dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=floor):
        raise ConfigurationError(f"purge du journal refusée : l'entrée {upto} a moins de {floor} jours")
    connection.exec_driver_sql("UPDATE audit_anchor SET seq = ?, hash = ? WHERE id = 1 AND seq < ?", (upto, row[1], upto))
    return connection.exec_driver_sql("DELETE FROM audit_log WHERE seq <= ?", (upto,)).rowcount


#: The audit tables: the role appends to them and nothing else (the head row moves on each append).
_AUDIT_GRANTS = {
    "audit_log": "SELECT, INSERT",
    "audit_checkpoints": "SELECT, INSERT",
    "audit_nodes": "SELECT, INSERT",
    "audit_heads": "SELECT, INSERT",
    "audit_head_stamps": "SELECT, INSERT",
    "audit_keys": "SELECT, INSERT",
    "audit_anchor": "SELECT",
    "audit_policy": "SELECT",
    "audit_head": "SELECT, UPDATE",
    # A key id once used stays known forever; only its retirement date is ever written.
    "pseudo_keys": "SELECT, INSERT, UPDATE (retired_at)",
}


def harden_privileges(engine: Engine, role: str) -> list[str]:
    """Leave ``role`` (the hub's application role) only what appending needs on the audit tables, and what the
    hub's work needs on every other table of the store, their sequences included (an INSERT into a table with a
    serial key draws from its sequence: without USAGE the first consent import or delivery row fails). Tables are
    taken from the store's schema, so a table added later is covered by the next ``spie-hub base durcir``.
    Return the tables the role may change."""
    if engine.dialect.name != "postgresql":
        raise ValueError("les privilèges ne s'appliquent qu'à PostgreSQL")
    from spie_hub.store import metadata

    with engine.connect() as connection:
        # GRANT by a role that owns nothing only warns ("no privileges were granted"): refuse instead of reporting
        # a hardening that did not happen.
        owns = connection.execute(text(
            "SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename = 'audit_log'")).scalar()
    if not owns:
        raise ConfigurationError("'base durcir' doit être lancé avec le rôle propriétaire des tables du hub "
                                 "(celui qui a créé la base), pas avec le rôle applicatif")
    install_guards(engine)  # as the owner: a store created before a guard existed gets it now
    quoted = engine.dialect.identifier_preparer.quote(role)
    work = [t.name for t in metadata.sorted_tables if t.name not in _AUDIT_GRANTS]
    with engine.begin() as connection:
        for table, grants in _AUDIT_GRANTS.items():
            connection.execute(text(f"REVOKE ALL ON {table} FROM PUBLIC, {quoted}"))
            connection.execute(text(f"GRANT {grants} ON {table} TO {quoted}"))
        connection.execute(text("REVOKE ALL ON FUNCTION spie_audit_purge(integer) FROM PUBLIC"))
        connection.execute(text(f"GRANT EXECUTE ON FUNCTION spie_audit_purge(integer) TO {quoted}"))
        for table in work:
            connection.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {quoted}"))
        # The sequences owned by those tables' serial columns (none behind the audit tables, whose keys are given).
        sequences = connection.execute(text(
            "SELECT DISTINCT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i') "
            "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = s.relnamespace "
            "WHERE s.relkind = 'S' AND n.nspname = current_schema() AND t.relname = ANY(:tables)"),
            {"tables": work}).scalars().all()
        for sequence in sequences:
            connection.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE {engine.dialect.identifier_preparer.quote(sequence)} "
                                    f"TO {quoted}"))
    return work

"""An audited action outside runs (a consent import, a withdrawal propagation) as ONE log entry, whatever the number
of people it touched.

Its per-person events (``consentement-importe``, ``consentement-retire``, ``retrait-propage``, ``avis-suppression``)
go to a batch file of their own (spie_hub/audit/segments.py, as a run's decisions do) and the log gets one ``lot``
entry naming the batch, its size and root, and the action; an action with no per-person event still gets its one
entry. So the log's size, which every receipt carries, counts actions, never people (docs/divulgation.md): two
imports that differ by one person's opposition leave logs of the same size.

The batch file is written (fsync'd, read-only) before the entry is committed, inside the caller's transaction:
rolled back or killed in between, the file is an orphan with no entry, removed at the next action of the same kind
(which holds the same lock) and said so in the logs.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from spie_hub.audit import segments
from spie_hub.audit.log import AuditEvent, AuditLog, canonical
from spie_hub.core.errors import StorageError
from spie_hub.core.home import HubHome

log = logging.getLogger("spie_hub.audit")


def action_id(kind: str) -> str:
    """The batch's id (its file name): the action's kind and a random part (no counter: it would count actions)."""
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def record_action(log_: AuditLog, connection: Connection, home: HubHome, kind: str, summary: dict[str, Any],
                  events: Sequence[AuditEvent], batch: str | None = None) -> None:
    """Append the action's single entry (in ``connection``'s transaction), its per-person events in a batch.
    ``batch``: the action's id (``action_id(kind)`` by default), the entry's ``run_id``."""
    batch = batch or action_id(kind)
    if events:
        try:
            ref = segments.write_segment(home, batch, None, (
                (e.event, e.recipient, e.subject, e.payload if isinstance(e.payload, str) else canonical(e.payload))
                for e in events))
        except (OSError, sqlite3.Error) as error:  # disk full, most likely: said in French, nothing stored
            if not isinstance(error, OSError):
                error = OSError(errno.ENOSPC if "full" in str(error) else errno.EIO, str(error))
            raise StorageError.from_os(error, segments.lots_root(home)) from None
        try:
            log_.append([AuditEvent(segments.LOT_EVENT, ref.payload() | {"action": kind, **summary}, run_id=batch)],
                        connection)
        except BaseException:
            segments.remove_segment(home, ref.path_rel)
            raise
    else:
        log_.append([AuditEvent(kind, summary, run_id=batch)], connection)


def remove_orphan_actions(engine: Any, home: HubHome, kind: str) -> list[str]:
    """Batches of ``kind`` that no entry names (killed between file and commit). The caller holds the action's lock,
    so no batch of that kind is being written."""
    root = segments.lots_root(home)
    if not root.is_dir():
        return []
    ids = {segments.run_of(p.name) for p in root.rglob("*") if p.is_file() and kind + "-" in p.name}
    if not ids:
        return []
    from sqlalchemy import func, select

    from spie_hub.store import audit_anchor, audit_log

    committed = segments.committed_lots(engine)
    with engine.connect() as connection:
        # A batch older than the log's first entry may have lost its entry to retention: not an orphan. Nothing was
        # ever purged (anchor 0): every batch no entry names is one, however old (the store's first import killed).
        purged = connection.execute(select(audit_anchor.c.seq)).scalar()
        log_starts = connection.execute(select(func.min(audit_log.c.ts))).scalar() if purged else ""
    removed = segments.remove_orphans(home, lambda rel: rel in committed, ids, log_starts)
    for rel in removed:
        log.warning("Lot orphelin supprimé (%s interrompu avant son entrée au journal) : %s", kind, rel)
    return removed

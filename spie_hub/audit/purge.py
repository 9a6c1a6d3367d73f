"""Retention of the audit log itself: entries past their period go, what remains still proves itself.

The purge cuts at a signed head (a tree size the hub signed), so the perfect subtrees of the purged prefix, which
the store keeps (``audit_nodes``: never deleted), still give that head's root, every later head's root, and every
inclusion and consistency proof. The purge is announced first by its own entry (``purge-journal``, sealed like any
other): the database function refuses a purge that no such entry announces, that no signed head covers, or whose
entries are younger than the floor the owner set (``audit_policy``). A superuser who deletes anyway is caught by
the next consistency check against any witness (a partner's receipt, a DPO's export).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, func, select

from spie_hub.audit.heads import Signer
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.store import audit_anchor, audit_heads, audit_log, audit_policy
from spie_hub.store.guards import purge_upto


def purge_audit(engine: Engine, signer: Signer, before: dt.datetime) -> int:
    """Drop the entries older than ``before`` up to the last signed head among them; return how many went."""
    with engine.connect() as connection:
        anchor = connection.execute(select(audit_anchor.c.seq)).scalar_one()
        old = connection.execute(select(func.max(audit_log.c.seq)).where(audit_log.c.ts < before.isoformat())).scalar()
        if old is None:
            return 0
        upto = connection.execute(select(func.max(audit_heads.c.size)).where(audit_heads.c.size <= old)).scalar()
        if upto is None or upto <= anchor:
            return 0
        digest = connection.execute(select(audit_log.c.hash).where(audit_log.c.seq == upto)).scalar_one()
    with engine.connect() as connection:
        floor = connection.execute(select(audit_policy.c.min_age_days)).scalar()
    # The floor the database applies is recorded with the purge (a lowered floor is then on record, signed); the
    # verifier holds its own (SPIE_HUB_AUDIT_MIN_AGE_DAYS) and refuses a purge younger than it.
    AuditLog(engine, signer).append([AuditEvent("purge-journal", {"jusqua": upto, "ancre": digest,
                                                                  "avant": before.isoformat(), "age_minimal_jours": floor})])
    return purge_upto(engine, upto)

"""Proof of one person's decision: from its leaf in a run's batch up to a signed tree head of the log.

The chain of custody, each link checkable without the hub (RFC 9162 hashing throughout):

1. the decision's leaf (``[run_id, event, flow, recipient, subject, payload]``) → inclusion path in its batch's tree
   → the batch root;
2. the batch root is in the payload of the run's ``lot`` entry, whose chain hash covers it;
3. that entry's leaf → inclusion path in the log's tree → the root of a signed tree head.

What the DPO hands a person or an auditor (``spie-hub dpo personne --preuves``) and what anyone holding the hub's
published key verifies (``check_decision_proof``). The proof names the person only by the pseudonym the decision
already holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, select

from spie_hub.audit import merkle, segments
from spie_hub.audit.heads import TreeHead, latest_head
from spie_hub.audit.log import entry_hash
from spie_hub.audit.receipts import ENTRY_FIELDS
from spie_hub.audit.tree import entry_leaf, inclusion_proof
from spie_hub.store import audit_log

PROOF_TYPE = "spie-hub/preuve-de-decision/v1"


def prove_decision(engine: Engine, home: Any, event: segments.SegmentEvent) -> dict[str, Any]:
    """The proof of one event found in a batch (``segments.find``), up to the log's latest signed head."""
    with engine.connect() as connection:
        rows = connection.execute(select(audit_log).where(audit_log.c.event == segments.LOT_EVENT,
                                                          audit_log.c.run_id == event.run_id)).mappings().all()
        row = next((r for r in rows if json.loads(r["payload"]).get("lot") == event.path_rel), None)
        if row is None:
            raise LookupError("entrée « lot » de ce lot absente du journal (purgée ou jamais engagée)")
        head = latest_head(connection)
        assert head is not None
        log_path = inclusion_proof(connection, row["seq"], head.size)
    ref = segments.SegmentRef.from_payload(row["payload"])
    batch_path = segments.inclusion_proof(home, ref, event.index)
    return {
        "type": PROOF_TYPE,
        "feuille": [event.run_id, event.event, event.flow, event.recipient, event.subject, event.payload],
        "lot": {"index": event.index, "feuilles": ref.leaves, "chemin": [h.hex() for h in batch_path]},
        "entree": {k: row[k] for k in ENTRY_FIELDS},
        "inclusion": {"index": row["seq"] - 1, "chemin": [h.hex() for h in log_path]},
        "tete": head.as_json(),
    }


def check_decision_proof(proof: Mapping[str, Any], trusted: Mapping[str, str]) -> list[str]:
    """Problems with a decision proof (empty: the decision is in the signed log)."""
    try:
        leaf = segments.leaf_bytes(*proof["feuille"])
        batch = proof["lot"]
        entry = proof["entree"]
        head = TreeHead.from_json(proof["tete"])
        batch_path = [bytes.fromhex(h) for h in batch["chemin"]]
        log_path = [bytes.fromhex(h) for h in proof["inclusion"]["chemin"]]
        payload = json.loads(entry["payload"])
    except (KeyError, TypeError, ValueError):
        return ["preuve incomplète ou illisible"]
    if problem := head.verify(trusted):
        return [problem]
    problems = []
    if entry.get("event") != segments.LOT_EVENT or entry_hash(entry) != entry.get("hash"):
        problems.append("l'entrée « lot » jointe ne correspond pas à son empreinte")
    if not merkle.verify_inclusion(merkle.leaf_hash(leaf), int(batch["index"]), int(payload.get("feuilles", -1)),
                                   batch_path, bytes.fromhex(str(payload.get("racine", "")))):
        problems.append("la décision n'est pas dans le lot que l'entrée engage (preuve d'inclusion fausse)")
    if not merkle.verify_inclusion(merkle.leaf_hash(entry_leaf(entry["hash"])), int(proof["inclusion"]["index"]),
                                   head.size, log_path, bytes.fromhex(head.root)):
        problems.append("l'entrée « lot » n'est pas dans le journal signé (preuve d'inclusion fausse)")
    return problems

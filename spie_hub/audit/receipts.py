"""Signed delivery receipts that make each recipient a witness of the audit log.

A receipt (the manifest beside each delivered file) is signed (Ed25519) and carries, under ``journal``:

* ``tete``: the signed tree head of the log right after the delivery was written to it (write-ahead, same
  transaction), with ``enonce``, the exact bytes the hub signed;
* ``entree``: the log entry recording this delivery (file name, SHA-256, the recipient's own record count: nothing
  about other recipients or withheld people) with its chain fields, and ``inclusion``: the entry's RFC 9162
  inclusion path up to the head's root;
* ``coherence``: a consistency proof from the head of this recipient's previous receipt (``depuis``) to this one.

The recipient keeps its heads. ``spie-hub recu verifier MANIFESTE --cle-publique CLE.pem [--tete-gardee ANCIEN]``
checks, without any access to the hub: the signatures, the file, that the delivery is in the log, and that the log
still extends every head it kept; a log rewritten, cut or reordered before a kept head fails that last check, even
re-signed with the hub's key (docs/verification-audit.md, also with ``openssl`` alone). Receipts carry sizes of the
log, never a count of decisions: the log has one entry per action, per-record decisions are batched
(docs/divulgation.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from spie_hub.audit import merkle
from spie_hub.audit.heads import TreeHead, first_head_covering
from spie_hub.audit.log import _CONTENT, canonical, entry_hash
from spie_hub.audit.signing import ALGORITHM, verify_signature
from spie_hub.audit.tree import consistency_proof, entry_leaf, inclusion_proof
from spie_hub.store import audit_log, deliveries

RECEIPT_TYPE = "spie-hub/recu-de-livraison/v2"
ENTRY_FIELDS = ("seq", "ts", "run_id", "event", "flow", "recipient", "subject", "payload", "prev_hash", "hash")


ACKNOWLEDGEMENT_TYPE = "spie-hub/accuse-de-traitement/v1"


def sign_document(document: dict[str, Any], signer: Any, kind: str) -> dict[str, Any]:
    """``document`` typed ``kind`` and signed (Ed25519 over its canonical JSON, ``signature`` excluded)."""
    body = dict(document, type=kind)
    return body | {"signature": {"cle": signer.kid, "algorithme": ALGORITHM, "valeur": signer.sign(canonical(body).encode())}}


def document_valid(document: Any, keys: Mapping[str, str], kind: str) -> bool:
    """Whether ``document`` is of type ``kind`` and signed by one of ``keys`` (kid → base64 public key)."""
    if not isinstance(document, dict):
        return False
    signature = document.get("signature") or {}
    if not isinstance(signature, dict):
        return False
    body = {k: v for k, v in document.items() if k != "signature"}
    key = keys.get(str(signature.get("cle", "")))
    if key is None or body.get("type") != kind:
        return False
    return verify_signature(key, canonical(body).encode(), str(signature.get("valeur", "")))


def sign_manifest(manifest: dict[str, Any], signer: Any) -> dict[str, Any]:
    return sign_document(manifest, signer, RECEIPT_TYPE)


def receipt_valid(receipt: dict[str, Any], keys: Mapping[str, str]) -> bool:
    return document_valid(receipt, keys, RECEIPT_TYPE)


# -- issuing ------------------------------------------------------------------------------------------------------

def journal_proof(engine: Engine, run_id: str, recipient_id: str) -> dict[str, Any]:
    """The ``journal`` block of a receipt: head, the delivery's entry and its inclusion path, and the consistency
    proof from the head of the recipient's previous published delivery."""
    with engine.connect() as connection:
        row = connection.execute(select(audit_log).where(
            audit_log.c.run_id == run_id, audit_log.c.event == "livraison", audit_log.c.recipient == recipient_id)
            .order_by(audit_log.c.seq.desc()).limit(1)).mappings().first()
        if row is None:
            raise LookupError(f"entrée « livraison » absente du journal pour {recipient_id}")
        head = first_head_covering(connection, row["seq"])
        if head is None:
            raise LookupError("aucune tête signée ne couvre la livraison")
        block: dict[str, Any] = {
            "tete": head.as_json(),
            "entree": {k: row[k] for k in ENTRY_FIELDS},
            "inclusion": {"index": row["seq"] - 1, "chemin": [h.hex() for h in inclusion_proof(connection, row["seq"], head.size)]},
        }
        previous = _previous_head(connection, recipient_id, row["seq"])
        if previous is not None and 0 < previous.size < head.size:
            block["coherence"] = {"depuis": previous.as_json(),
                                  "chemin": [h.hex() for h in consistency_proof(connection, previous.size, head.size)]}
        return block


def _previous_head(connection: Connection, recipient_id: str, before_seq: int) -> TreeHead | None:
    """The head of the recipient's latest *published* delivery before this one (a cancelled run's receipt never
    reached it, so it could not have kept that head)."""
    published = select(deliveries.c.run_id).where(deliveries.c.recipient == recipient_id)
    seq = connection.execute(select(audit_log.c.seq).where(
        audit_log.c.event == "livraison", audit_log.c.recipient == recipient_id, audit_log.c.seq < before_seq,
        audit_log.c.run_id.in_(published)).order_by(audit_log.c.seq.desc()).limit(1)).scalar()
    return first_head_covering(connection, seq) if seq is not None else None


# -- checking -----------------------------------------------------------------------------------------------------

def check_journal(receipt: Mapping[str, Any], trusted: Mapping[str, str], kept: list[tuple[str, TreeHead]] = ()) -> list[str]:  # type: ignore[assignment]
    """Problems with a receipt's ``journal`` block (empty: the delivery is in the signed log, and the log extends
    every ``kept`` head, each given with where it came from). Whatever the shapes of a hostile file, problems
    in French, never an exception."""
    try:
        return _check_journal(receipt, trusted, kept)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError):
        return ["bloc « journal » du reçu incomplet ou illisible"]


def _entry_shaped(entry: Any) -> bool:
    hexes = ("prev_hash", "hash")
    return (isinstance(entry, dict) and all(k in entry for k in ENTRY_FIELDS)
            and isinstance(entry["seq"], int) and not isinstance(entry["seq"], bool) and entry["seq"] > 0
            and all(isinstance(entry[k], str) and len(entry[k]) == 64 for k in hexes)
            and all(isinstance(entry[k], str) for k in ("ts", "event", "payload"))
            and all(entry[k] is None or isinstance(entry[k], str) for k in ("run_id", "flow", "recipient", "subject")))


def _check_journal(receipt: Mapping[str, Any], trusted: Mapping[str, str], kept: list[tuple[str, TreeHead]]) -> list[str]:
    block = receipt.get("journal")
    if not isinstance(block, dict):
        return ["le reçu ne porte aucune tête du journal"]
    try:
        head = TreeHead.from_json(block["tete"])
        entry = block["entree"]
        path = [bytes.fromhex(h) for h in block["inclusion"]["chemin"]]
        index = block["inclusion"]["index"]
        if not isinstance(index, int) or isinstance(index, bool) or len(path) > 64:
            raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        return ["bloc « journal » du reçu incomplet ou illisible"]
    if problem := head.verify(trusted):
        return [problem]
    problems: list[str] = []
    if not _entry_shaped(entry):
        return ["entrée du journal incomplète dans le reçu"]
    if entry_hash(entry) != entry["hash"]:
        problems.append("l'entrée du journal jointe au reçu ne correspond pas à son empreinte (modifiée)")
    payload = _payload(entry)
    if (entry["event"] != "livraison" or payload.get("sha256") != receipt.get("sha256")
            or payload.get("fichier") != receipt.get("fichier") or entry["recipient"] != receipt.get("destinataire")):
        problems.append("l'entrée du journal jointe ne décrit pas ce fichier pour ce destinataire")
    if index != entry["seq"] - 1 or not merkle.verify_inclusion(
            merkle.leaf_hash(entry_leaf(entry["hash"])), index, head.size, path, bytes.fromhex(head.root)):
        problems.append(f"la livraison n'est pas prouvée dans le journal signé (preuve d'inclusion fausse pour la "
                        f"tête de taille {head.size})")
    heads = list(kept)
    coherence = block.get("coherence")
    if isinstance(coherence, dict):
        try:
            since = TreeHead.from_json(coherence["depuis"])
            proof = [bytes.fromhex(h) for h in coherence["chemin"]]
        except (KeyError, TypeError, ValueError):
            return [*problems, "preuve de cohérence du reçu illisible"]
        if problem := since.verify(trusted):
            problems.append(problem)
        elif not merkle.verify_consistency(since.size, head.size, bytes.fromhex(since.root), bytes.fromhex(head.root), proof):
            problems.append(f"le journal ne prolonge plus la tête de taille {since.size} du reçu précédent (réécrit, "
                            "tronqué ou réordonné)")
        proofs = {since.size: (since, proof)}
    else:
        proofs = {}
    for origin, old in heads:
        problems += _check_kept(origin, old, head, proofs, trusted)
    return problems


def _check_kept(origin: str, old: TreeHead, head: TreeHead, proofs: dict[int, tuple[TreeHead, list[bytes]]],
                trusted: Mapping[str, str]) -> list[str]:
    if problem := old.verify(trusted):
        return [f"{origin} : {problem}"]
    if old.size > head.size:
        return [f"{origin} : le journal a {head.size} entrée(s), la tête gardée en attestait {old.size} (tronqué)"]
    if old.size == head.size:
        return [] if old.root == head.root else [f"{origin} : même taille ({old.size}), racine différente (journal réécrit)"]
    if old.size in proofs:
        since, proof = proofs[old.size]
        if since.root != old.root:
            return [f"{origin} : la tête de taille {old.size} que le hub présente n'est plus celle que vous avez gardée "
                    "(journal réécrit avant elle, puis re-signé)"]
        return []
    return [f"{origin} : aucune preuve de cohérence depuis la taille {old.size} dans ce reçu ; demandez-la au hub "
            f"(spie-hub audit coherence --depuis {old.size} --vers {head.size}) et passez-la avec --coherence"]


def check_consistency_file(data: Mapping[str, Any], head: TreeHead, kept: TreeHead, trusted: Mapping[str, str]) -> str | None:
    """A consistency proof the hub issued on demand (``spie-hub audit coherence``) from a kept head to ``head``."""
    try:
        target = TreeHead.from_json(data["tete"])
        proof = [bytes.fromhex(h) for h in data["chemin"]]
        start = data["depuis"]
        if not isinstance(start, int) or isinstance(start, bool) or len(proof) > 128:
            raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        return "preuve de cohérence illisible"
    if problem := target.verify(trusted):
        return problem
    if start != kept.size:
        return f"preuve de cohérence depuis la taille {start}, la tête gardée a la taille {kept.size}"
    # The proof must end at this receipt's own head: a proof to any other head (the kept one itself, or a head of
    # another log) proves nothing about the log this delivery is in.
    if (target.size, target.root) != (head.size, head.root):
        return (f"la preuve de cohérence n'aboutit pas à la tête de ce reçu (taille {head.size}) : demandez-la avec "
                f"spie-hub audit coherence --depuis {kept.size} --vers {head.size}")
    if not merkle.verify_consistency(kept.size, target.size, bytes.fromhex(kept.root), bytes.fromhex(target.root), proof):
        return (f"le journal ne prolonge plus la tête de taille {kept.size} que vous avez gardée : réécrit, tronqué ou "
                "réordonné avant elle")
    return None


def _payload(entry: Mapping[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(entry["payload"])
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def verify_receipt(path: Path, keys: Mapping[str, str], kept: list[tuple[str, TreeHead]] = ()) -> list[str]:  # type: ignore[assignment]
    """Problems found with a manifest, the file it describes and its proofs (empty list: the receipt holds)."""
    try:
        receipt = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return [f"manifeste illisible : {path.name}"]
    try:
        valid = isinstance(receipt, dict) and receipt_valid(receipt, keys)
    except (TypeError, ValueError, AttributeError, RecursionError):
        valid = False
    if not valid:
        return ["signature du manifeste invalide : il a été modifié ou n'a pas été émis par le hub"]
    name = Path(str(receipt.get("fichier", ""))).name
    data = path.with_name(name) if name not in ("", ".", "..") else path.parent / "\0"
    if not data.is_file():
        return [f"fichier livré absent à côté du manifeste : {receipt.get('fichier')}"]
    digest = hashlib.sha256()
    with data.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != receipt.get("sha256"):
        return [f"le fichier {data.name} ne correspond pas au manifeste signé (SHA-256 différent)"]
    return check_journal(receipt, keys, kept)


def kept_head(path: Path) -> TreeHead:
    """A head kept by a witness: a file holding a head, or an earlier receipt (its ``journal.tete``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("fichier illisible (JSON trop imbriqué)") from None
    if isinstance(data, dict) and isinstance(data.get("journal"), dict):
        data = data["journal"].get("tete")
    elif isinstance(data, dict) and isinstance(data.get("tete"), dict):
        data = data["tete"]
    if not isinstance(data, dict):
        raise ValueError("aucune tête de journal dans ce fichier")
    return TreeHead.from_json(data)


def entry_preimage(entry: Mapping[str, Any]) -> str:
    """What the entry's chain hash is the SHA-256 of (prev hash, then the JSON array of its columns)."""
    return entry["prev_hash"] + _CONTENT.encode([entry["seq"], entry["ts"], entry["run_id"], entry["event"], entry["flow"],
                                                 entry["recipient"], entry["subject"], entry["payload"]])

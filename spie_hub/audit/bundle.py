"""Export the audit as a bundle that anyone verifies offline, and verify such a bundle (no database).

Bundle layout (``spie-hub audit exporter --sortie DOSSIER``):

* ``journal.jsonl``: every kept entry, in log order, with its columns as hashed;
* ``tetes.jsonl``: the signed tree heads (each with ``enonce``, the exact signed bytes);
* ``ancre.json``: where the kept entries start after a retention purge: the last purged entry's chain hash and the
  perfect subtrees of the purged prefix (RFC 9162), from which the tree continues;
* ``cles-publiques.json``: kid → public key recorded by the hub (information only: never trusted);
* ``LISEZMOI.txt``: how to verify.

The verifier must be given the hub's *published* public key (``--cle-publique``): a key shipped in the bundle would
let whoever rewrote the bundle also re-sign it. Heads kept by others (``--recu`` for a delivery receipt,
``--tete-gardee`` for a head) are witnesses: the log recomputed from the bundle must give their root at their size,
so a log rewritten and re-signed by whoever holds the signing function is still caught.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from spie_hub.audit.chain import (
    Anchor,
    LogChecker,
    LotCheck,
    VerifyResult,
    nodes_below_anchor,
    seal,
    store_anchor,
    store_heads,
    store_keys,
    verifier_min_age,
)
from spie_hub.audit.heads import Signer, TreeHead
from spie_hub.audit.receipts import check_journal, kept_head, receipt_valid
from spie_hub.audit.signing import public_b64_from_pem
from spie_hub.store import audit_log, audit_nodes

ENTRIES, HEADS, ANCHOR, KEYS = "journal.jsonl", "tetes.jsonl", "ancre.json", "cles-publiques.json"
COLUMNS = ("seq", "ts", "run_id", "event", "flow", "recipient", "subject", "payload", "prev_hash", "hash")
README = """Export du journal d'audit du hub SPIE.

Vérification hors ligne, sans accès au hub :
    spie-hub audit verifier {dossier} --cle-publique cle-publique-audit.pem [--recu MANIFESTE.json ...] [--tete-gardee TETE.json ...]

La clé publique doit venir de la documentation publiée du hub, pas de ce dossier.
Toute modification, suppression, insertion, permutation ou troncature est détectée et localisée (n° d'entrée) ;
un journal réécrit puis re-signé est détecté par toute tête gardée par un tiers (reçu de livraison d'un partenaire,
export précédent du DPO).
"""


def export_bundle(engine: Engine, folder: Path, signer: Signer | None = None, batch: int = 10_000,
                  home: Any = None) -> int:
    """Write the bundle (after making sure the log's current size is sealed); return the number of entries. With
    ``home``, the batch files its ``lot`` entries name are copied too (``audit/lots/...``), so that each person's
    decision is checked offline as well."""
    if signer is not None:
        seal(engine, signer)
    folder.mkdir(parents=True, exist_ok=True)
    anchor = store_anchor(engine)
    count = 0
    with (folder / ENTRIES).open("w", encoding="utf-8") as out, engine.connect() as connection:
        rows = connection.execution_options(stream_results=True, yield_per=batch).execute(
            select(audit_log).where(audit_log.c.seq > anchor.seq).order_by(audit_log.c.seq))
        for row in rows.mappings():
            out.write(json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
            if home is not None and row["event"] == "lot":
                _copy_lot(home, folder, row["payload"])
    with (folder / HEADS).open("w", encoding="utf-8") as out:
        for head in store_heads(engine):
            if head.size >= anchor.seq:
                out.write(json.dumps(head.as_json(), ensure_ascii=False, separators=(",", ":")) + "\n")
    with engine.connect() as connection:  # the kept subtrees of the purged prefix: witnesses older than the purge
        below = [{"niveau": r.level, "n": r.idx, "empreinte": r.hash} for r in connection.execute(
            select(audit_nodes).where(((audit_nodes.c.idx + 1) * func.power(2, audit_nodes.c.level)) <= anchor.seq))
        ] if anchor.seq else []
    (folder / ANCHOR).write_text(json.dumps({"taille": anchor.seq, "empreinte": anchor.hash,
                                             "frontiere": [h.hex() for h in anchor.frontier], "noeuds": below}, indent=1) + "\n",
                                 encoding="utf-8")
    (folder / KEYS).write_text(json.dumps(store_keys(engine), indent=2) + "\n", encoding="utf-8")
    if signer is not None and hasattr(signer, "public_pem"):
        (folder / "cle-publique-audit.pem").write_text(signer.public_pem, encoding="utf-8")
    (folder / "LISEZMOI.txt").write_text(README.format(dossier=folder.name), encoding="utf-8")
    return count


def _copy_lot(home: Any, folder: Path, payload: str) -> None:
    import shutil

    from spie_hub.audit import segments

    try:
        source = segments.resolve(home, segments.SegmentRef.from_payload(payload).path_rel)
    except (KeyError, TypeError, ValueError):
        return
    if source.is_file():  # a purged batch is absent here too, and its purge entry says so
        target = folder / source.relative_to(Path(home.root if hasattr(home, "root") else home))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


@dataclass
class BundleVerdict:
    result: VerifyResult
    notes: list[str] = field(default_factory=list)


class _BadLine(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise _BadLine(number) from None
            if not isinstance(row, dict):
                raise _BadLine(number)
            yield row


def _fail(reason: str, seq: int | None = None) -> VerifyResult:
    return VerifyResult(False, 0, seq, reason)


def verify_bundle(folder: Path, public_keys_pem: list[Path] | None = None, receipts: list[Path] | None = None,
                  kept: list[Path] | None = None, check_lot: LotCheck | None = None) -> BundleVerdict:
    """``check_lot``: by default, the batch files the bundle holds (``audit/lots``), when it holds any."""
    notes: list[str] = []
    if not public_keys_pem:
        return BundleVerdict(_fail("clé publique publiée du hub requise (--cle-publique) : une clé lue dans le "
                                   "dossier lui-même ne prouverait rien"), notes)
    try:
        trusted_list = [public_b64_from_pem(pem.read_text(encoding="utf-8")) for pem in public_keys_pem]
    except (OSError, ValueError) as error:
        return BundleVerdict(_fail(f"clé publique illisible ({type(error).__name__})"), notes)
    try:
        heads = [TreeHead.from_json(h) for h in _jsonl(folder / HEADS)]
        # A head names its key id; the published keys are believed under whatever id they sign with.
        trusted = {h.kid: key for h in heads for key in trusted_list if h.verify({h.kid: key}) is None}
        for h in heads:
            trusted.setdefault(h.kid, trusted_list[0])
        anchor_data = json.loads((folder / ANCHOR).read_text(encoding="utf-8"))
        anchor = Anchor(int(anchor_data["taille"]), str(anchor_data["empreinte"]),
                        tuple(bytes.fromhex(h) for h in anchor_data["frontiere"]))
        witnesses: list[tuple[str, TreeHead]] = []
        for path in receipts or []:
            receipt = json.loads(path.read_text(encoding="utf-8"))
            keys = {str((receipt.get("signature") or {}).get("cle", "")): k for k in trusted_list}
            if not any(receipt_valid(receipt, {kid: k}) for kid in keys for k in trusted_list):
                return BundleVerdict(_fail(f"reçu {path.name} : signature invalide"), notes)
            head = TreeHead.from_json((receipt.get("journal") or {}).get("tete") or {})
            key = next((k for k in trusted_list if head.verify({head.kid: k}) is None), trusted_list[0])
            if problems := check_journal(receipt, {head.kid: key}):
                return BundleVerdict(_fail(f"reçu {path.name} : {problems[0]}"), notes)
            witnesses.append((f"le reçu {path.name}", head))
        for path in kept or []:
            head = kept_head(path)
            if not any(head.verify({head.kid: k}) is None for k in trusted_list):
                return BundleVerdict(_fail(f"tête gardée {path.name} : signature invalide"), notes)
            witnesses.append((f"la tête gardée {path.name}", head))
        if check_lot is None and (folder / "audit" / "lots").is_dir():
            from spie_hub.audit.chain import lot_check

            check_lot = lot_check(folder)
        elif check_lot is None:
            notes.append("export sans les fichiers des lots (décisions par personne) : seules leurs racines sont vérifiées")
        kept_nodes = {(int(n["niveau"]), int(n["n"])): bytes.fromhex(n["empreinte"]) for n in anchor_data.get("noeuds", [])}

        def node(level: int, index: int) -> bytes:
            if (level, index) not in kept_nodes:
                raise LookupError((level, index))
            return kept_nodes[(level, index)]

        checker = LogChecker(heads, trusted, anchor, witnesses, None, check_lot, nodes_below_anchor(node, anchor),
                             verifier_min_age())
        result = checker.run(_jsonl(folder / ENTRIES))
    except _BadLine as error:
        return BundleVerdict(_fail(f"ligne {error.line} illisible (JSON altéré)"), notes)
    except (OSError, KeyError, ValueError, TypeError, AttributeError, OverflowError, RecursionError) as error:
        return BundleVerdict(_fail(f"dossier d'export, reçu ou tête gardée incomplet ou illisible "
                                   f"({type(error).__name__})"), notes)
    return BundleVerdict(result, notes)

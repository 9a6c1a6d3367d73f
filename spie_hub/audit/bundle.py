"""Export the audit as a bundle that anyone verifies offline, and verify such a bundle (no database).

Bundle layout (``spie-hub audit exporter --sortie DOSSIER``):

* ``journal.jsonl``: every kept entry, in chain order, with its columns as hashed;
* ``points-de-controle.jsonl``: the signed checkpoints (Ed25519), the first one anchoring a purged head;
* ``cles-publiques.json``: kid → public key of every signing key used (also published with the docs);
* ``LISEZMOI.txt``: how to verify.

The verifier should be given the hub's published public key (``--cle-publique``): trusting the key shipped in
the bundle would let whoever rewrote the bundle also re-sign it. Delivery receipts (``--recu``) add attestations
the operator cannot withdraw, so a truncated log is caught even if its last checkpoints were deleted too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from spie_hub.audit.chain import ChainChecker, VerifyResult, seal, store_checkpoints, store_keys
from spie_hub.audit.receipts import receipt_valid
from spie_hub.audit.signing import SigningKey, public_b64_from_pem
from spie_hub.store import audit_log

ENTRIES, CHECKPOINTS, KEYS = "journal.jsonl", "points-de-controle.jsonl", "cles-publiques.json"
COLUMNS = ("seq", "ts", "run_id", "event", "flow", "recipient", "subject", "payload", "prev_hash", "hash")
README = """Export du journal d'audit du hub SPIE.

Vérification hors ligne, sans accès au hub :
    spie-hub audit verifier {dossier} --cle-publique cle-publique-audit.pem [--recu MANIFESTE.json ...]

La clé publique doit venir de la documentation publiée du hub, pas de ce dossier.
Toute modification, suppression, insertion, permutation ou troncature est détectée et localisée (n° d'entrée).
"""


def export_bundle(engine: Engine, folder: Path, signer: SigningKey, batch: int = 10_000) -> int:
    """Seal the current head, then write the bundle; return the number of entries exported."""
    seal(engine, signer)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with (folder / ENTRIES).open("w", encoding="utf-8") as out, engine.connect() as connection:
        rows = connection.execution_options(stream_results=True, yield_per=batch).execute(select(audit_log).order_by(audit_log.c.seq))
        for row in rows.mappings():
            out.write(json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
    with (folder / CHECKPOINTS).open("w", encoding="utf-8") as out:
        for cp in store_checkpoints(engine):
            out.write(json.dumps(cp, ensure_ascii=False, separators=(",", ":")) + "\n")
    (folder / KEYS).write_text(json.dumps(store_keys(engine), indent=2) + "\n", encoding="utf-8")
    (folder / "cle-publique-audit.pem").write_text(signer.public_pem, encoding="utf-8")
    (folder / "LISEZMOI.txt").write_text(README.format(dossier=folder.name), encoding="utf-8")
    return count


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


def verify_bundle(folder: Path, public_keys_pem: list[Path] | None = None, receipts: list[Path] | None = None) -> BundleVerdict:
    notes: list[str] = []
    trusted: list[str] = []
    if public_keys_pem:
        # Only the published keys are believed: a bundled key is used for its kid only if it is one of them.
        trusted = [public_b64_from_pem(pem.read_text(encoding="utf-8")) for pem in public_keys_pem]
        bundled = json.loads((folder / KEYS).read_text(encoding="utf-8")) if (folder / KEYS).is_file() else {}
        keys = {kid: public for kid, public in bundled.items() if public in trusted}
    else:
        keys = json.loads((folder / KEYS).read_text(encoding="utf-8"))
        notes.append("clés publiques lues dans le dossier lui-même : comparez-les à la clé publiée (--cle-publique)")
    try:
        checker = ChainChecker(list(_jsonl(folder / CHECKPOINTS)), keys, trusted)
        for path in receipts or []:
            receipt = json.loads(path.read_text(encoding="utf-8"))
            kid = (receipt.get("signature") or {}).get("cle", "")
            if not any(receipt_valid(receipt, {kid: key}) for key in (trusted or [keys.get(kid, "")])):
                return BundleVerdict(VerifyResult(False, 0, None, f"reçu {path.name} : signature invalide"), notes)
            head = receipt.get("journal") or {}
            if "entree" in head:  # a receipt issued before receipts stopped carrying a position
                checker.attest(int(head["entree"]), str(head["empreinte"]))
            elif isinstance(head.get("point_de_controle"), str):
                checker.attest_digest(head["point_de_controle"])
            else:
                return BundleVerdict(VerifyResult(False, 0, None, f"reçu {path.name} : ne nomme aucune tête du journal"),
                                     notes)
        result = checker.run(_jsonl(folder / ENTRIES))
    except _BadLine as error:
        return BundleVerdict(VerifyResult(False, 0, None, f"ligne {error.line} illisible (JSON altéré)"), notes)
    except (OSError, KeyError, ValueError) as error:
        return BundleVerdict(VerifyResult(False, 0, None, f"dossier d'export incomplet ou illisible ({type(error).__name__})"), notes)
    return BundleVerdict(result, notes)

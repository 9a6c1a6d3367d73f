"""Signed delivery receipts: each manifest is signed (Ed25519) so that its recipient can prove what it received.

The manifest names the delivered file (SHA-256, size, the recipient's own record count), the run, and the hash of
the head of the audit chain right after the delivery was written to it (write-ahead), a head the hub signs as a
checkpoint at once (``journal.point_de_controle``). A receipt therefore attests an entry the audit must keep, which
the offline verifier uses to detect a truncated or rewritten log. It carries no entry number: consecutive numbers
in one recipient's receipts would count every decision made for the others, down to one withheld person
(docs/divulgation.md); receipts issued before carry ``journal.entree`` and are still verified. The recipient
checks a receipt with ``spie-hub recu verifier MANIFESTE --cle-publique CLE.pem`` (the hub's published key), without
any access to the hub.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from spie_hub.audit.log import canonical
from spie_hub.audit.signing import ALGORITHM, SigningKey, verify_signature

RECEIPT_TYPE = "spie-hub/recu-de-livraison/v1"


def sign_manifest(manifest: dict[str, Any], signer: SigningKey) -> dict[str, Any]:
    body = dict(manifest, type=RECEIPT_TYPE)
    return body | {"signature": {"cle": signer.kid, "algorithme": ALGORITHM, "valeur": signer.sign(canonical(body).encode())}}


def receipt_valid(receipt: dict[str, Any], keys: dict[str, str]) -> bool:
    signature = receipt.get("signature") or {}
    body = {k: v for k, v in receipt.items() if k != "signature"}
    key = keys.get(signature.get("cle", ""))
    if key is None or body.get("type") != RECEIPT_TYPE:
        return False
    return verify_signature(key, canonical(body).encode(), signature.get("valeur", ""))


def verify_receipt(path: Path, keys: dict[str, str]) -> list[str]:
    """Problems found with a manifest and the file it describes (empty list: the receipt holds)."""
    try:
        receipt = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"manifeste illisible : {path.name}"]
    if not receipt_valid(receipt, keys):
        return ["signature du manifeste invalide : il a été modifié ou n'a pas été émis par le hub"]
    data = path.with_name(str(receipt.get("fichier", "")))
    if not data.is_file():
        return [f"fichier livré absent à côté du manifeste : {receipt.get('fichier')}"]
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    if digest != receipt.get("sha256"):
        return [f"le fichier {data.name} ne correspond pas au manifeste signé (SHA-256 différent)"]
    return []

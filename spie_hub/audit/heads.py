"""Signed tree heads: the hub's signed statement of the size and root of its log at one moment.

The signed bytes are the canonical JSON statement below (keys sorted, no spaces, UTF-8): a partner can check a head
with ``openssl pkeyutl -verify -rawin`` alone (docs/verification-audit.md), and the statement travels verbatim in
every receipt (``enonce``) so nobody has to rebuild it. Whoever holds an older head (a partner's receipt, a DPO's
export, the hub's own last verification) can demand a consistency proof to a newer one: a log rewritten, cut or
reordered before the older head cannot produce one, even re-signed with the hub's own key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, select

from spie_hub.audit.signing import verify_signature
from spie_hub.core.errors import ConfigurationError
from spie_hub.store import audit_heads, audit_keys

HEAD_TYPE = "spie-hub/tete-de-journal/v1"


class Signer(Protocol):
    """What signing heads and receipts needs: a key id and a detached Ed25519 signature (base64)."""

    kid: str

    @property
    def public_b64(self) -> str: ...

    def sign(self, message: bytes) -> str: ...


def statement(size: int, root_hex: str, ts: str, kid: str) -> str:
    return json.dumps({"type": HEAD_TYPE, "taille": size, "racine": root_hex, "horodatage": ts, "cle": kid},
                      ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: str  # hex
    ts: str
    kid: str
    signature: str  # base64

    @property
    def statement(self) -> str:
        return statement(self.size, self.root, self.ts, self.kid)

    def as_json(self) -> dict[str, Any]:
        """The head as receipts and exports carry it; ``enonce`` is exactly what was signed."""
        return {"taille": self.size, "racine": self.root, "horodatage": self.ts, "cle": self.kid,
                "signature": self.signature, "enonce": self.statement}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TreeHead:
        """Read a head from a receipt or a file (``ValueError`` when a field is missing or of the wrong type)."""
        try:
            size = data["taille"]
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 62:
                raise ValueError
            if not all(isinstance(data[k], str) for k in ("racine", "horodatage", "cle", "signature")):
                raise ValueError
            head = cls(size, data["racine"], data["horodatage"], data["cle"], data["signature"])
            if len(head.root) != 64 or head.root != head.root.lower():
                raise ValueError
            bytes.fromhex(head.root)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("tête de journal incomplète ou illisible") from None
        if "enonce" in data and data["enonce"] != head.statement:
            raise ValueError("l'énoncé de la tête ne correspond pas à ses champs")
        return head

    @classmethod
    def from_row(cls, row: Any) -> TreeHead:
        return cls(row.size, row.root, row.ts, row.kid, row.signature)

    def verify(self, trusted: Mapping[str, str]) -> str | None:
        """None when the head's signature verifies with a trusted key; otherwise what is wrong, in French."""
        key = trusted.get(self.kid)
        if key is None:
            return f"tête de journal (taille {self.size}) signée par une clé non publiée ({self.kid})"
        if not verify_signature(key, self.statement.encode(), self.signature):
            return f"tête de journal (taille {self.size}) : signature invalide (falsifiée)"
        return None


def sign_head(signer: Signer, size: int, root: bytes, ts: str) -> TreeHead:
    text = statement(size, root.hex(), ts, signer.kid)
    return TreeHead(size, root.hex(), ts, signer.kid, signer.sign(text.encode()))


def store_head(connection: Connection, head: TreeHead) -> None:
    connection.execute(audit_heads.insert().values(size=head.size, root=head.root, ts=head.ts, kid=head.kid,
                                                   signature=head.signature))


def latest_head(connection: Connection) -> TreeHead | None:
    row = connection.execute(select(audit_heads).order_by(audit_heads.c.size.desc()).limit(1)).first()
    return TreeHead.from_row(row) if row is not None else None


def head_at(connection: Connection, size: int) -> TreeHead | None:
    row = connection.execute(select(audit_heads).where(audit_heads.c.size == size)).first()
    return TreeHead.from_row(row) if row is not None else None


def first_head_covering(connection: Connection, seq: int) -> TreeHead | None:
    """The first head whose tree holds entry ``seq``."""
    row = connection.execute(select(audit_heads).where(audit_heads.c.size >= seq)
                             .order_by(audit_heads.c.size).limit(1)).first()
    return TreeHead.from_row(row) if row is not None else None


def record_signer(connection: Connection, signer: Signer) -> None:
    """Refuse a key whose secret changed behind an identifier the log already knows (what it signed would no longer
    verify with the published key); remember a new key's public half. ``audit_keys`` is a record for the DPO,
    never a trust anchor: verification takes the published keys (spie_hub/audit/trust.py)."""
    known = connection.execute(select(audit_keys.c.public_b64).where(audit_keys.c.kid == signer.kid)).scalar()
    if known is None:
        from spie_hub.audit.log import now

        connection.execute(audit_keys.insert().values(kid=signer.kid, public_b64=signer.public_b64, added_at=now()))
    elif known != signer.public_b64:
        raise ConfigurationError(
            f"La clé de signature « {signer.kid} » n'est plus celle que le journal connaît sous cet identifiant (secret "
            "remplacé) : ce qu'elle signerait ne se vérifierait plus avec la clé publiée. Remettez la clé d'origine, "
            "ou signez avec une nouvelle clé sous un nouvel identifiant et publiez-la.")


#: How far the hub's clock (a head's ``horodatage``) may be from the TSA's genTime before the head is said misdated.
CLOCK_TOLERANCE_SECONDS = 300


def stamp_head(engine: Any, head: TreeHead, home: Any = None) -> str | None:
    """Ask the configured TSA (RFC 3161) for a timestamp over the head's signed statement and keep it, so the head's
    date does not rest on the hub's clock. Done after the head's transaction (a TSA is a network service, never
    awaited under the log's lock). Returns None, or why there is no timestamp (said in the logs; the head stands)."""
    import logging

    from spie_hub.audit import timestamp

    settings = timestamp.tsa_settings(home)
    if settings is None:
        return None
    try:
        token = timestamp.stamp(settings, head.statement.encode())
    except timestamp.TimestampError as error:
        logging.getLogger("spie_hub.audit").warning("Tête de taille %d sans horodatage RFC 3161 : %s", head.size, error)
        return str(error)
    from spie_hub.audit.log import now
    from spie_hub.store import audit_head_stamps

    with engine.begin() as connection:
        connection.execute(audit_head_stamps.insert().values(size=head.size, token=token, obtained_at=now()))
    return None


def check_stamps(engine: Any, home: Any = None, since: int = 0) -> str | None:
    """None, or the first head whose RFC 3161 timestamp does not verify or contradicts the head's own date."""
    import datetime as dt

    from spie_hub.audit import timestamp
    from spie_hub.store import audit_head_stamps

    settings = timestamp.tsa_settings(home)
    if settings is None:
        return None
    with engine.connect() as connection:
        rows = connection.execute(select(audit_head_stamps, audit_heads).join(
            audit_heads, audit_heads.c.size == audit_head_stamps.c.size, isouter=True)
            .where(audit_head_stamps.c.size >= since)).mappings().all()
    for row in rows:
        if row["root"] is None:
            return f"horodatage RFC 3161 d'une tête de taille {row['size']} absente du journal"
        head = TreeHead(row["size"], row["root"], row["ts"], row["kid"], row["signature"])
        try:
            when = timestamp.check(settings, row["token"], head.statement.encode())
        except timestamp.TimestampError as error:
            return f"tête de taille {head.size} : horodatage RFC 3161 invalide ({error})"
        claimed = dt.datetime.fromisoformat(head.ts)
        if abs((when - claimed).total_seconds()) > CLOCK_TOLERANCE_SECONDS:
            return (f"tête de taille {head.size} datée du {head.ts[:19]} par le hub, du {when.isoformat()[:19]} par "
                    "l'autorité d'horodatage : horloge du hub faussée")
    return None

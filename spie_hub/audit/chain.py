"""Verify an audit chain against its signed checkpoints: one checker for the database and the offline bundle.

What each check catches, and where it says so (entry number):

* an edited entry: its SHA-256 no longer matches (and, if the attacker recomputed every hash after it, the next
  signed checkpoint no longer matches);
* a deleted or inserted entry: a gap or a repeat in the numbering, or a broken ``prev_hash`` link;
* reordered entries: numbering out of order and broken links;
* a truncated tail: a signed checkpoint (or a signed delivery receipt) attests more entries than remain;
* a purged head: allowed only down to a signed checkpoint (the anchor) whose hash the first kept entry links to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from spie_hub.audit.log import canonical, entry_hash, now
from spie_hub.audit.signing import SigningKey, verify_signature
from spie_hub.core.errors import ConfigurationError
from spie_hub.store import GENESIS_HASH, audit_checkpoints, audit_head, audit_keys, audit_log

CHECKPOINT_TYPE = "spie-hub/point-de-controle/v1"


def checkpoint_statement(seq: int, digest: str, ts: str, kid: str) -> bytes:
    return canonical({"type": CHECKPOINT_TYPE, "seq": seq, "empreinte": digest, "horodatage": ts, "cle": kid}).encode()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None
    checkpoints: int = 0
    first_seq: int = 1


def _fail(count: int, seq: int | None, reason: str, checkpoints: int = 0) -> VerifyResult:
    return VerifyResult(False, count, seq, reason, checkpoints)


class ChainChecker:
    """``checkpoints``: dicts with seq, hash, ts, kid, signature; ``keys``: kid → Ed25519 public key (base64)."""

    def __init__(self, checkpoints: Iterable[Mapping[str, Any]], keys: Mapping[str, str], trusted: Iterable[str] = ()) -> None:
        """``trusted``: published public keys to try when a checkpoint's key id is not in ``keys``."""
        self.attested: dict[int, str] = {}
        self.attested_digests: set[str] = set()
        self.problem: tuple[int, str] | None = None
        fallback = list(trusted)
        for cp in sorted(checkpoints, key=lambda c: c["seq"]):
            candidates = [keys[cp["kid"]]] if cp["kid"] in keys else fallback
            if not candidates:
                self.problem = (cp["seq"], f"point de contrôle n° {cp['seq']} signé par une clé inconnue ({cp['kid']})")
                break
            statement = checkpoint_statement(cp["seq"], cp["hash"], cp["ts"], cp["kid"])
            if not any(verify_signature(key, statement, cp["signature"]) for key in candidates):
                self.problem = (cp["seq"], f"point de contrôle n° {cp['seq']} : signature invalide (falsifié)")
                break
            self.attested[cp["seq"]] = cp["hash"]

    def attest(self, seq: int, digest: str) -> None:
        """Add an attestation verified elsewhere (a signed delivery receipt naming the head of the chain)."""
        self.attested.setdefault(seq, digest)

    def attest_digest(self, digest: str) -> None:
        """An entry's hash that a signed receipt attests, without its number (receipts carry no position: a number
        would count the decisions made for other recipients, docs/divulgation.md): the entry must be in the chain."""
        self.attested_digests.add(digest)

    def run(self, entries: Iterable[Mapping[str, Any]], head: tuple[int, str] | None = None) -> VerifyResult:
        if self.problem:
            return _fail(0, *self.problem)
        expected_seq: int | None = None
        expected_prev = GENESIS_HASH
        unseen = set(self.attested_digests)
        count, first, last_hash = 0, 1, GENESIS_HASH
        for row in entries:
            seq = row["seq"]
            if expected_seq is None:
                first = seq
                if seq != 1:
                    anchor = self.attested.get(seq - 1)
                    if anchor is None or anchor != row["prev_hash"]:
                        return _fail(0, 1, f"entrées n° 1 à {seq - 1} absentes sans point de contrôle signé qui les ancre "
                                           "(début du journal supprimé)", len(self.attested))
                    expected_prev = anchor
                expected_seq = seq
            if seq != expected_seq:
                if seq > expected_seq:
                    return _fail(count, expected_seq, f"entrée n° {expected_seq} absente à sa place (supprimée ou déplacée)"
                                 if seq == expected_seq + 1 else f"entrées n° {expected_seq} à {seq - 1} absentes (supprimées)")
                return _fail(count, seq, f"entrée n° {seq} dupliquée ou déplacée (ordre rompu)")
            if row["prev_hash"] != expected_prev:
                return _fail(count, seq, "chaînage rompu (entrée supprimée, insérée ou déplacée)")
            if entry_hash(dict(row)) != row["hash"]:
                return _fail(count, seq, "contenu modifié (empreinte SHA-256 différente)")
            if seq in self.attested and self.attested[seq] != row["hash"]:
                return _fail(count, seq, "ne correspond pas au point de contrôle signé (journal réécrit)")
            expected_seq, expected_prev, last_hash, count = seq + 1, row["hash"], row["hash"], count + 1
            unseen.discard(row["hash"])
        last = (expected_seq - 1) if expected_seq is not None else 0
        unseen -= {h for s, h in self.attested.items() if s < first}  # purged under retention, under a signed anchor
        if unseen:
            return _fail(count, last + 1, "journal tronqué ou réécrit : un reçu de livraison signé atteste une entrée "
                                          "(point de contrôle) qui n'y figure pas")
        beyond = [s for s in self.attested if s > last]
        if beyond:
            return _fail(count, last + 1, f"journal tronqué : un point de contrôle signé atteste l'entrée n° {max(beyond)}, "
                                          f"le journal s'arrête à l'entrée n° {last}")
        if head is not None and head != (last, last_hash) and not (count == 0 and head[0] == 0):
            if head[0] > last:
                return _fail(count, last + 1, f"entrées n° {last + 1} à {head[0]} absentes (fin du journal supprimée)")
            return _fail(count, head[0], "tête de chaîne incohérente avec le journal")
        return VerifyResult(True, count, checkpoints=len([s for s in self.attested if s >= first - 1]), first_seq=first)


def store_keys(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return {r.kid: r.public_b64 for r in connection.execute(select(audit_keys))}


def store_checkpoints(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq))]


def verify_store(engine: Engine, batch: int = 10_000) -> VerifyResult:
    checker = ChainChecker(store_checkpoints(engine), store_keys(engine))
    with engine.connect() as connection:
        head = tuple(connection.execute(select(audit_head.c.seq, audit_head.c.hash)).one())
        result = connection.execution_options(stream_results=True, yield_per=batch).execute(
            select(audit_log).order_by(audit_log.c.seq))
        return checker.run(result.mappings(), head)  # type: ignore[arg-type]


def _check_signer(connection: Connection, signer: SigningKey) -> None:
    known = connection.execute(select(audit_keys.c.public_b64).where(audit_keys.c.kid == signer.kid)).scalar()
    if known is not None and known != signer.public_b64:
        raise ConfigurationError(
            f"La clé de signature « {signer.kid} » n'est plus celle que le journal connaît sous cet identifiant (secret "
            "remplacé) : ce qu'elle signerait ne se vérifierait plus avec la clé publiée. Remettez la clé d'origine, "
            "ou signez avec une nouvelle clé sous un nouvel identifiant et publiez-la.")


def ensure_signer(engine: Engine, signer: SigningKey) -> None:
    """Refuse a signing key whose secret changed behind an identifier the audit already knows (checked before a run
    touches its input, and again at every checkpoint)."""
    with engine.connect() as connection:
        _check_signer(connection, signer)


def seal(engine: Engine, signer: SigningKey, at: tuple[int, str] | None = None) -> int | None:
    """Sign a checkpoint over the head of the chain (or over ``at``); return its number, None on an empty chain."""
    with engine.begin() as connection:
        _check_signer(connection, signer)
        seq, digest = at or tuple(connection.execute(select(audit_head.c.seq, audit_head.c.hash)).one())
        if seq == 0:
            return None
        if connection.execute(select(audit_checkpoints.c.seq).where(audit_checkpoints.c.seq == seq)).first() is None:
            ts = now()
            connection.execute(insert(audit_checkpoints).values(
                seq=seq, hash=digest, ts=ts, kid=signer.kid,
                signature=signer.sign(checkpoint_statement(seq, digest, ts, signer.kid))))
        if connection.execute(select(audit_keys.c.kid).where(audit_keys.c.kid == signer.kid)).first() is None:
            connection.execute(insert(audit_keys).values(kid=signer.kid, public_b64=signer.public_b64, added_at=now()))
    return seq


def verify(engine: Engine, batch: int = 10_000) -> VerifyResult:
    """Walk the chain against its signed checkpoints and report the first entry that does not verify."""
    return verify_store(engine, batch)

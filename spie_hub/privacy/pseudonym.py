"""Keyed pseudonyms (HMAC-SHA256) with the key id in every pseudonym.

* pivot pseudonym: HMAC(key, "nir|" + NIR13) — the hub's internal join key, never delivered;
* recipient pseudonym: HMAC(K_r, pivot) with K_r = HMAC(key, "destinataire|" + recipient) — different for
  each recipient, so two recipients cannot link their files without the hub.

When a partner sends no usable NIR, the pivot falls back to the partner's own identifiers
("repli|" + organisme + matricule + rôle + date de naissance + prénom): stable for that partner only, and marked as
such so it is never mistaken for a NIR-based pivot (see docs/pseudonymisation.md).

The recipient pseudonym is derived from the 128 bits the pivot pseudonym shows, so the hub can compute what a
recipient knows a person as from its own stored pivot (withdrawal notices, subject access) without any NIR.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, select, update

from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome
from spie_hub.core.nir import NirInvalide, normaliser_nir
from spie_hub.privacy.keys import KeyRing, PseudonymisationKey, load_checked_keyring
from spie_hub.store import consents, open_store, revocations

_HEX_CHARS = 32  # 128 bits; hex rather than base32, whose pure-Python encoder cost 3 µs a pseudonym


def _encode(kid: str, digest: bytes) -> str:
    return f"{kid}.{digest.hex()[:_HEX_CHARS]}"


@dataclass(frozen=True)
class Pivot:
    """A pivot pseudonym and its digest (the digest never leaves the process)."""

    digest: bytes
    pseudonyme: str
    repli: bool = False
    #: the same person's pivots under the previous keys of the ring (empty when there is no previous key)
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_pseudonyme(cls, pseudonyme: str) -> Pivot:
        _kid, _, hex_part = pseudonyme.partition(".")
        return cls(bytes.fromhex(hex_part), pseudonyme)


class Pseudonymiser:
    def __init__(self, key: PseudonymisationKey | KeyRing) -> None:
        self.ring = key if isinstance(key, KeyRing) else KeyRing(key)
        self.key = self.ring.current
        self._by_kid = {k.kid: k for k in self.ring.keys}
        self._recipient_keys: dict[tuple[str, str], bytes] = {}

    @property
    def kid(self) -> str:
        return self.key.kid

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._by_kid)

    def _mac(self, key: bytes, message: bytes) -> bytes:
        return hmac.digest(key, message, "sha256")

    def _aliases(self, message: bytes) -> tuple[str, ...]:
        return tuple(_encode(k.kid, self._mac(k.secret, message)) for k in self.ring.previous)

    def pivot_from_nir(self, nir13: str) -> Pivot:
        message = b"nir|" + nir13.encode("ascii")
        digest = self._mac(self.key.secret, message)
        return Pivot(digest, _encode(self.kid, digest), aliases=self._aliases(message) if self.ring.previous else ())

    def pivot_fallback(self, *parts: str) -> Pivot:
        message = ("repli|" + "|".join(p.strip().upper() for p in parts)).encode("utf-8")
        digest = self._mac(self.key.secret, message)
        return Pivot(digest, _encode(self.kid, digest), repli=True,
                     aliases=self._aliases(message) if self.ring.previous else ())

    def for_recipient(self, pivot: Pivot, recipient: str) -> str:
        """The recipient's pseudonym, under the key that made the pivot (so old pivots give old pseudonyms)."""
        kid = pivot.pseudonyme.partition(".")[0]
        key = self._recipient_keys.get((kid, recipient))
        if key is None:
            owner = self._by_kid.get(kid)
            if owner is None:
                raise ValueError(f"pseudonyme d'une clé retirée ou inconnue ({kid}) : il n'est plus résoluble")
            key = self._recipient_keys[(kid, recipient)] = self._mac(owner.secret, b"destinataire|" + recipient.encode())
        return _encode(kid, self._mac(key, pivot.digest[:_HEX_CHARS // 2]))

    def recipient_pseudonyms(self, pivot: Pivot, recipient: str) -> list[str]:
        """Every pseudonym the recipient may know the person by: current key first, then each previous key still
        in the ring. An alias under a retired key is skipped: a key is only retired once no audit entry (so no
        delivery) remains under it, and the ring is refused while it lacks a key never retired."""
        return [self.for_recipient(pivot, recipient)] + [self.for_recipient(Pivot.from_pseudonyme(a), recipient)
                                                           for a in pivot.aliases
                                                           if a.partition(".")[0] in self._by_kid]


def load_pseudonymiser(home: HubHome | None = None, engine: Engine | None = None) -> Pseudonymiser:
    """The hub's pseudonymiser, its ring checked against the keys the store knows (a changed secret behind a known
    id, or a known key missing, is refused before anything is read or delivered)."""
    home = home or HubHome.from_env()
    if engine is not None:
        return Pseudonymiser(load_checked_keyring(engine, home))
    own = open_store(home.database_url)
    try:
        return Pseudonymiser(load_checked_keyring(own, home))
    finally:
        own.dispose()


@dataclass(frozen=True)
class Rehoming:
    personnes: int = 0  # NIRs read that had something stored under the old key
    consentements: int = 0  # consent versions moved under the current key
    retraits: int = 0  # withdrawals moved under the current key
    invalides: int = 0  # lines that were not a valid NIR (never shown)


def rehome(engine: Engine, pseudonymiser: Pseudonymiser, kid: str, nirs: Iterable[str]) -> Rehoming:
    """Move what is stored under a person's pivot of the previous key ``kid`` (every consent version, every
    withdrawal) to their pivot under the current key, computed from their NIR, so that ``kid`` can later be retired
    without anything ceasing to apply. A withdrawal keeps the old pivot among its aliases: its notices still name
    the pseudonyms recipients received under ``kid``. Idempotent; one transaction per person."""
    if kid == pseudonymiser.kid:
        raise ConfigurationError(f"la clé « {kid} » est la clé actuelle : rien à reloger")
    old_key = pseudonymiser._by_kid.get(kid)
    if old_key is None:
        raise ConfigurationError(f"la clé « {kid} » n'est pas dans le trousseau : ses pivots ne sont plus calculables")
    old = Pseudonymiser(old_key)
    people = moved_consents = moved_withdrawals = invalid = 0
    for line in nirs:
        if not line.strip():
            continue
        try:
            nir13 = normaliser_nir(line.strip())
        except NirInvalide:
            invalid += 1
            continue
        source, target = old.pivot_from_nir(nir13).pseudonyme, pseudonymiser.pivot_from_nir(nir13).pseudonyme
        with engine.begin() as connection:
            n = connection.execute(update(consents).where(consents.c.subject == source).values(subject=target)).rowcount
            rows = connection.execute(select(revocations.c.id, revocations.c.aliases)
                                      .where(revocations.c.subject == source)).all()
            for row in rows:
                aliases = json.loads(row.aliases or "[]")
                connection.execute(update(revocations).where(revocations.c.id == row.id).values(
                    subject=target, aliases=json.dumps([*aliases, source] if source not in aliases else aliases)))
        people += 1 if n or rows else 0
        moved_consents += n
        moved_withdrawals += len(rows)
    return Rehoming(people, moved_consents, moved_withdrawals, invalid)

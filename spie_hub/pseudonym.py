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
from dataclasses import dataclass

from spie_hub.keys import PseudonymisationKey

_HEX_CHARS = 32  # 128 bits; hex rather than base32, whose pure-Python encoder cost 3 µs a pseudonym


def _encode(kid: str, digest: bytes) -> str:
    return f"{kid}.{digest.hex()[:_HEX_CHARS]}"


@dataclass(frozen=True)
class Pivot:
    """A pivot pseudonym and its digest (the digest never leaves the process)."""

    digest: bytes
    pseudonyme: str
    repli: bool = False

    @classmethod
    def from_pseudonyme(cls, pseudonyme: str) -> Pivot:
        _kid, _, hex_part = pseudonyme.partition(".")
        return cls(bytes.fromhex(hex_part), pseudonyme)


class Pseudonymiser:
    def __init__(self, key: PseudonymisationKey) -> None:
        self.key = key
        self._recipient_keys: dict[str, bytes] = {}

    @property
    def kid(self) -> str:
        return self.key.kid

    def _mac(self, key: bytes, message: bytes) -> bytes:
        return hmac.digest(key, message, "sha256")

    def pivot_from_nir(self, nir13: str) -> Pivot:
        digest = self._mac(self.key.secret, b"nir|" + nir13.encode("ascii"))
        return Pivot(digest, _encode(self.kid, digest))

    def pivot_fallback(self, *parts: str) -> Pivot:
        digest = self._mac(self.key.secret, ("repli|" + "|".join(p.strip().upper() for p in parts)).encode("utf-8"))
        return Pivot(digest, _encode(self.kid, digest), repli=True)

    def for_recipient(self, pivot: Pivot, recipient: str) -> str:
        key = self._recipient_keys.get(recipient)
        if key is None:
            key = self._recipient_keys[recipient] = self._mac(self.key.secret, b"destinataire|" + recipient.encode())
        if not pivot.pseudonyme.startswith(self.kid + "."):
            raise ValueError(f"pseudonyme pivot d'une autre clé que {self.kid} : dériver avec la clé d'origine")
        return _encode(self.kid, self._mac(key, pivot.digest[:_HEX_CHARS // 2]))

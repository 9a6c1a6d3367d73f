"""The audit signing key (Ed25519), distinct from the pseudonymisation key, injected by name and never logged.

Lookup order: ``SPIE_HUB_SIGNING_KEY`` (``kid:base64`` of the 32-byte private seed), ``SPIE_HUB_SIGNING_KEY_FILE``
(JSON file), the Airflow Variable or Connection ``spie_hub_signing_key`` inside a task, then
``$SPIE_HUB_HOME/keys/signature.json``. Only the public key ever leaves the hub (``spie-hub cles publier``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome
from spie_hub.privacy.keys import KID_PATTERN, PseudonymisationKey, find_key_source, parse_kid_secret, read_key_file

ENV_KEY = "SPIE_HUB_SIGNING_KEY"
ENV_KEY_FILE = "SPIE_HUB_SIGNING_KEY_FILE"
AIRFLOW_NAME = "spie_hub_signing_key"
ALGORITHM = "Ed25519"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not KID_PATTERN.match(self.kid):
            raise ConfigurationError("Identifiant de clé de signature invalide : 1 à 16 caractères parmi a-z, 0-9 et '-'")
        if len(self.seed) != 32:
            raise ConfigurationError("Clé de signature Ed25519 : 32 octets attendus (graine privée)")

    def __str__(self) -> str:
        return f"SigningKey(kid={self.kid}, seed=***)"

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._private.sign(message)).decode()

    @property
    def public_b64(self) -> str:
        raw = self._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    @property
    def public_pem(self) -> str:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    @classmethod
    def parse(cls, text: str, origin: str) -> SigningKey:
        return cls(*parse_kid_secret(text, origin))

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        return cls(*read_key_file(path, "graine_b64", "clé de signature"))


def public_key(public_b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))


def public_b64_from_pem(pem: str) -> str:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError("La clé publique fournie n'est pas une clé Ed25519")
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def verify_signature(public_b64: str, message: bytes, signature_b64: str) -> bool:
    try:
        public_key(public_b64).verify(base64.b64decode(signature_b64), message)
        return True
    except (InvalidSignature, ValueError, binascii.Error):
        return False


def generate_signing_key_file(path: Path, kid: str = "s1") -> SigningKey:
    """Write a new Ed25519 key (mode 0600) unless one exists; return the key in the file."""
    if path.exists():
        return SigningKey.from_file(path)
    key = SigningKey(kid, secrets.token_bytes(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"kid": key.kid, "algorithme": ALGORITHM, "graine_b64": base64.b64encode(key.seed).decode()}, handle)
    return key


def load_signing_key(home: HubHome | None = None, pseudonymisation: PseudonymisationKey | None = None) -> SigningKey:
    key = _find(home)
    if pseudonymisation is not None and (key.seed == pseudonymisation.secret[:32] or key.kid == pseudonymisation.kid):
        raise ConfigurationError(
            f"La clé de signature ({ENV_KEY}) doit être distincte de la clé de pseudonymisation (secret et identifiant)")
    return key


def _find(home: HubHome | None) -> SigningKey:
    default = (home or HubHome.from_env()).keys / "signature.json"
    origin, value = find_key_source(ENV_KEY, ENV_KEY_FILE, AIRFLOW_NAME, default, "clé de signature du journal")
    return SigningKey.from_file(value) if isinstance(value, Path) else SigningKey.parse(value, origin)


def load_hub_signer(home: HubHome | None = None) -> SigningKey:
    """The signing key, checked against the current pseudonymisation key."""
    from spie_hub.privacy.keys import load_key

    return load_signing_key(home, load_key(home))

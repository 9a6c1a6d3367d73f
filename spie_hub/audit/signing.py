"""The audit signing key (Ed25519), distinct from the pseudonymisation key, injected by name and never logged.

Production: a key pair generated in a PKCS#11 token (``SPIE_HUB_SIGNING_PKCS11_MODULE`` and the settings of
``spie_hub/audit/hsm.py``, docs/cles-hsm.md): the hub can sign, never read the key. When it is configured it is
the signer, whatever else is set.

Development: a seed the hub process can read, looked up in this order: ``SPIE_HUB_SIGNING_KEY`` (``kid:base64`` of
the 32-byte private seed), ``SPIE_HUB_SIGNING_KEY_FILE`` (JSON file), the Airflow Variable or Connection
``spie_hub_signing_key`` inside a task, then ``$SPIE_HUB_HOME/keys/signature.json``. Whoever can read it can re-sign
a rewritten log: the hub says so once per process. Only the public key ever leaves the hub (``spie-hub cles
publier``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

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

log = logging.getLogger("spie_hub.audit.signing")


@runtime_checkable
class Signer(Protocol):
    """What signs the audit (tree heads, receipts, exports): a development ``SigningKey`` or a PKCS#11 token's key
    (``spie_hub.audit.hsm.Pkcs11Signer``). Ed25519 only; ``sign`` returns the base64 signature."""

    @property
    def kid(self) -> str: ...

    def sign(self, message: bytes) -> str: ...

    @property
    def public_b64(self) -> str: ...

    @property
    def public_pem(self) -> str: ...


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


def load_signing_key(home: HubHome | None = None, pseudonymisation: PseudonymisationKey | None = None) -> Signer:
    """The token's key when a PKCS#11 module is configured, else the development seed (said once per process)."""
    from spie_hub.audit.hsm import ENV_KEY as ENV_PKCS11_KEY
    from spie_hub.audit.hsm import load_pkcs11_signer

    if (token_key := load_pkcs11_signer()) is not None:
        if pseudonymisation is not None and token_key.kid == pseudonymisation.kid:
            raise ConfigurationError(f"La clé de signature ({ENV_PKCS11_KEY}) doit avoir un identifiant distinct de "
                                     "celui de la clé de pseudonymisation")
        return token_key
    origin, key = _find(home)
    if pseudonymisation is not None and (key.seed == pseudonymisation.secret[:32] or key.kid == pseudonymisation.kid):
        raise ConfigurationError(
            f"La clé de signature ({ENV_KEY}) doit être distincte de la clé de pseudonymisation (secret et identifiant)")
    _say_development_key(origin, key.kid)
    return key


def _find(home: HubHome | None) -> tuple[str, SigningKey]:
    default = (home or HubHome.from_env()).keys / "signature.json"
    origin, value = find_key_source(ENV_KEY, ENV_KEY_FILE, AIRFLOW_NAME, default, "clé de signature du journal")
    if isinstance(value, Path):
        return f"fichier {value}", SigningKey.from_file(value)
    return origin, SigningKey.parse(value, origin)


#: Said once per process: a run, a DAG task or a CLI command loads the signer several times.
_DEVELOPMENT_KEY_SAID = False


def _say_development_key(origin: str, kid: str) -> None:
    """A note, not an error and not an audit entry: the key works, but whoever can read it can re-sign a rewritten
    log. To a person at a terminal on stderr; otherwise to the logs (INFO: an Airflow or Celery task's log keeps it,
    while a script reading the CLI's stderr gets no line it did not ask for)."""
    global _DEVELOPMENT_KEY_SAID
    if _DEVELOPMENT_KEY_SAID:
        return
    _DEVELOPMENT_KEY_SAID = True
    note = (f"Note : clé de signature du journal « {kid} » de développement ({origin}), lisible par le processus du "
            "hub : quiconque la lit peut signer un journal réécrit. En production, signez par un jeton PKCS#11 "
            "(SPIE_HUB_SIGNING_PKCS11_MODULE, docs/cles-hsm.md).")
    try:
        interactive = sys.stderr is not None and sys.stderr.isatty()
    except ValueError:  # stderr closed
        interactive = False
    if interactive:
        print(note, file=sys.stderr)
    else:
        log.info(note)


def load_hub_signer(home: HubHome | None = None) -> Signer:
    """The signing key, checked against the current pseudonymisation key."""
    from spie_hub.privacy.keys import load_key

    return load_signing_key(home, load_key(home))

"""The audit signing key inside a PKCS#11 token (an HSM, or SoftHSM2 in tests and CI): the hub signs, never reads it.

An Ed25519 key pair (``CKK_EC_EDWARDS``) generated *in* the token (``spie-hub cles hsm-generer``), its private half
``CKA_SENSITIVE`` and not ``CKA_EXTRACTABLE``: the hub process, its operator and anyone with a copy of the hub's
disk can ask the token for a signature (``CKM_EDDSA``) while the PIN is valid, never obtain the key. Whoever
rewrites the database therefore cannot re-sign it elsewhere, later, or after the PIN has been changed.

Settings, in the hub's lookup order (environment, then the Airflow Variable of the same name in lower case inside
a task): ``SPIE_HUB_SIGNING_PKCS11_MODULE`` (the PKCS#11 library, e.g. ``/usr/lib/softhsm/libsofthsm2.so``),
``SPIE_HUB_SIGNING_PKCS11_TOKEN`` (token label), ``SPIE_HUB_SIGNING_PKCS11_KEY`` (key label, which is the key id
``kid`` of every signature), and the PIN: ``SPIE_HUB_SIGNING_PKCS11_PIN``, ``SPIE_HUB_SIGNING_PKCS11_PIN_FILE`` or
the Airflow Variable ``spie_hub_signing_pkcs11_pin``. The PIN is never printed, logged or put in an error.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import (
    MultipleTokensReturned,
    NoSuchKey,
    NoSuchToken,
    PinExpired,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
)

from spie_hub.audit.signing import public_key, verify_signature
from spie_hub.core.errors import ConfigurationError
from spie_hub.privacy.keys import KID_PATTERN, secret_from_airflow

ENV_MODULE = "SPIE_HUB_SIGNING_PKCS11_MODULE"
ENV_TOKEN = "SPIE_HUB_SIGNING_PKCS11_TOKEN"
ENV_KEY = "SPIE_HUB_SIGNING_PKCS11_KEY"
ENV_PIN = "SPIE_HUB_SIGNING_PKCS11_PIN"
ENV_PIN_FILE = "SPIE_HUB_SIGNING_PKCS11_PIN_FILE"
AIRFLOW_PIN = "spie_hub_signing_pkcs11_pin"
DEBIAN_SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"

#: DER of the curve, as CKA_EC_PARAMS holds it: the OID id-Ed25519 (1.3.101.112), or the PrintableString
#: "edwards25519" that PKCS#11 3.0 also allows. Anything else (Ed448, a Weierstrass curve) is refused.
ED25519_PARAMS = (bytes.fromhex("06032b6570"), b"\x13\x0c" + b"edwards25519")
#: Signed and checked with the public key each time a signer is opened: a token whose public object does not match
#: its private key (or a module answering anything) is refused before it signs the first tree head.
PROBE = b"spie-hub/sonde-pkcs11/v1"


def _setting(env: str) -> str | None:
    """A non-secret setting: the environment, then the Airflow Variable of the same name in lower case."""
    return os.environ.get(env) or secret_from_airflow(env.lower())


@dataclass(frozen=True)
class Pkcs11Config:
    """Where the signing key is: the module, the token's label, the key's label (= kid) and the PIN (never shown)."""

    module: str
    token: str
    kid: str
    pin: str = field(repr=False)
    pin_origin: str = ENV_PIN

    def __post_init__(self) -> None:
        if not KID_PATTERN.match(self.kid):
            raise ConfigurationError(f"{ENV_KEY} : identifiant de clé de signature invalide (1 à 16 caractères parmi "
                                     "a-z, 0-9 et '-', ex. 's2')")

    def __str__(self) -> str:
        return f"Pkcs11Config(module={self.module}, jeton={self.token}, kid={self.kid}, pin=***)"

    __repr__ = __str__

    def with_kid(self, kid: str) -> Pkcs11Config:
        return Pkcs11Config(self.module, self.token, kid, self.pin, self.pin_origin)


def _pin() -> tuple[str, str]:
    """(PIN, where it was found) in the lookup order; its absence names the settings, never a value."""
    if value := os.environ.get(ENV_PIN):
        return value, f"variable d'environnement {ENV_PIN}"
    if path := os.environ.get(ENV_PIN_FILE):
        try:
            # One line; a trailing newline (echo > file) is not part of the PIN.
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n"), f"fichier {ENV_PIN_FILE} ({path})"
        except OSError as error:
            raise ConfigurationError(f"{ENV_PIN_FILE} : fichier du code PIN illisible ({path} : "
                                     f"{error.strerror or type(error).__name__})") from None
    if value := secret_from_airflow(AIRFLOW_PIN):
        return value, f"Variable Airflow {AIRFLOW_PIN}"
    raise ConfigurationError(f"Code PIN du jeton PKCS#11 absent : définissez {ENV_PIN}, {ENV_PIN_FILE} (fichier "
                             f"lisible par le seul compte du hub) ou la Variable Airflow {AIRFLOW_PIN}.")


def pkcs11_config(kid: str | None = None) -> Pkcs11Config | None:
    """The PKCS#11 settings, or None when no module is configured (the hub then signs with a development key).
    ``kid`` overrides ``SPIE_HUB_SIGNING_PKCS11_KEY`` (key generation names its own)."""
    module = _setting(ENV_MODULE)
    if not module:
        return None
    token = _setting(ENV_TOKEN)
    if not token:
        raise ConfigurationError(f"{ENV_MODULE} est défini mais pas {ENV_TOKEN} : indiquez l'étiquette du jeton "
                                 "qui détient la clé de signature (softhsm2-util --show-slots).")
    kid = kid or _setting(ENV_KEY)
    if not kid:
        raise ConfigurationError(f"{ENV_MODULE} est défini mais pas {ENV_KEY} : indiquez l'étiquette de la clé de "
                                 "signature dans le jeton (son identifiant, ex. 's2').")
    pin, origin = _pin()
    return Pkcs11Config(module, token, kid, pin, origin)


# --- the library, across fork ---------------------------------------------------------------------------------------

#: Module path → the process id that initialised it. PKCS#11 state does not survive fork(): a Celery worker or
#: the run's validation subprocess forked after the parent signed holds a copy of an initialised library whose
#: sessions and login belong to the parent. The child re-initialises (C_Finalize, C_Initialize) before its first
#: call; the parent's state is never touched.
_INITIALISED_IN: dict[str, int] = {}
#: One PKCS#11 call sequence at a time per process: C_Initialize is called without locking callbacks, and the login
#: state is shared by all sessions of a process (a second C_Login from another thread would be refused).
_LOCK = threading.Lock()


def _library(module: str) -> Any:
    if not Path(module).is_file():
        raise ConfigurationError(f"Module PKCS#11 introuvable : {module} (variable {ENV_MODULE} ; avec le paquet "
                                 f"Debian softhsm2 : {DEBIAN_SOFTHSM}).")
    try:
        lib = pkcs11.lib(module)
        if _INITIALISED_IN.get(module) not in (None, os.getpid()):
            with contextlib.suppress(PKCS11Error):  # the inherited copy: some modules refuse, initialising is enough
                lib.finalize()
            lib.initialize()
        _INITIALISED_IN[module] = os.getpid()
        return lib
    except PKCS11Error as error:
        raise ConfigurationError(f"Module PKCS#11 inutilisable : {module} (variable {ENV_MODULE}) : "
                                 f"{type(error).__name__}") from None


def _token(config: Pkcs11Config) -> Any:
    lib = _library(config.module)
    try:
        return lib.get_token(token_label=config.token)
    except NoSuchToken:
        labels = sorted({t.label for t in lib.get_tokens()})
        raise ConfigurationError(f"Jeton PKCS#11 « {config.token} » introuvable (variable {ENV_TOKEN}) ; jetons "
                                 f"présents : {', '.join(labels) or 'aucun'}.") from None
    except MultipleTokensReturned:
        raise ConfigurationError(f"Plusieurs jetons PKCS#11 portent l'étiquette « {config.token} » (variable "
                                 f"{ENV_TOKEN}) : donnez-leur des étiquettes distinctes.") from None


def _session(config: Pkcs11Config, rw: bool = False) -> Any:
    token = _token(config)
    try:
        return token.open(user_pin=config.pin, rw=rw)
    except (PinIncorrect, PinInvalid, PinLenRange):
        raise ConfigurationError(f"Code PIN refusé par le jeton « {config.token} » ({config.pin_origin}) : "
                                 "corrigez-le (il n'est jamais affiché).") from None
    except (PinLocked, PinExpired):
        raise ConfigurationError(f"Code PIN du jeton « {config.token} » bloqué ou expiré : le responsable sécurité "
                                 "(SO) du jeton doit le réinitialiser.") from None
    except PKCS11Error as error:
        raise ConfigurationError(f"Ouverture du jeton « {config.token} » impossible ({type(error).__name__}).") from None


def _raw_public(point: bytes) -> bytes:
    """CKA_EC_POINT of an Ed25519 key: the DER OCTET STRING of the 32-byte key (SoftHSM2, most HSMs), or the raw
    32 bytes (what PKCS#11 3.0 also allows)."""
    if len(point) == 34 and point[:2] == b"\x04\x20":
        return point[2:]
    if len(point) == 32:
        return point
    raise ConfigurationError("Clé publique du jeton PKCS#11 illisible (CKA_EC_POINT inattendu pour Ed25519).")


def _checked_private(session: Any, config: Pkcs11Config) -> Any:
    """The private key under the configured label, refused unless it is Ed25519 and was never readable."""
    try:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=config.kid)
    except NoSuchKey:
        raise ConfigurationError(f"Clé privée « {config.kid} » absente du jeton « {config.token} » (variable "
                                 f"{ENV_KEY}) : créez-la avec « spie-hub cles hsm-generer --kid {config.kid} ».") from None
    except PKCS11Error as error:  # MultipleObjectsReturned and the like
        raise ConfigurationError(f"Clé privée « {config.kid} » du jeton « {config.token} » ambiguë ou illisible "
                                 f"({type(error).__name__}) : une seule clé par étiquette.") from None
    if key.key_type != KeyType.EC_EDWARDS or key[Attribute.EC_PARAMS] not in ED25519_PARAMS:
        raise ConfigurationError(f"La clé « {config.kid} » du jeton « {config.token} » n'est pas une clé Ed25519.")
    # ALWAYS_SENSITIVE and NEVER_EXTRACTABLE: the key was never readable, not merely locked after an import (a key
    # that once lived in a file may have a copy outside the token).
    never_out = (key[Attribute.SENSITIVE] and key[Attribute.ALWAYS_SENSITIVE]
                 and not key[Attribute.EXTRACTABLE] and key[Attribute.NEVER_EXTRACTABLE])
    if not never_out:
        raise ConfigurationError(f"La clé « {config.kid} » du jeton « {config.token} » a été ou reste extractible "
                                 "(importée, ou créée sans CKA_SENSITIVE) : générez-en une dans le jeton avec "
                                 "« spie-hub cles hsm-generer ».")
    return key


def _public_b64(session: Any, config: Pkcs11Config) -> str:
    try:
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=config.kid)
    except PKCS11Error:
        raise ConfigurationError(f"Clé publique « {config.kid} » absente ou ambiguë dans le jeton « {config.token} » "
                                 f"(variable {ENV_KEY}).") from None
    return base64.b64encode(_raw_public(public[Attribute.EC_POINT])).decode()


class Pkcs11Signer:
    """Signs through the token; holds the public key and the settings, never the private key.

    One session per signing call, not one per process: a session (and its login) does not survive fork(), and the
    hub signs a few times per run (tree heads, receipts), so the cost (about 2 ms with SoftHSM2) buys a signer that
    a Celery worker or a forked subprocess can use as it is."""

    def __init__(self, config: Pkcs11Config) -> None:
        self._config = config
        with _LOCK, _session(config) as session:
            private = _checked_private(session, config)
            self._public_b64 = _public_b64(session, config)
            probe = base64.b64encode(private.sign(PROBE, mechanism=Mechanism.EDDSA)).decode()
        if not verify_signature(self._public_b64, PROBE, probe):
            raise ConfigurationError(f"La clé publique « {config.kid} » du jeton « {config.token} » ne correspond pas "
                                     "à sa clé privée : le jeton ne peut pas signer le journal.")

    @property
    def kid(self) -> str:
        return self._config.kid

    @property
    def token(self) -> str:
        return self._config.token

    def sign(self, message: bytes) -> str:
        with _LOCK, _session(self._config) as session:
            key = _checked_private(session, self._config)
            try:
                signature = key.sign(message, mechanism=Mechanism.EDDSA)
            except PKCS11Error as error:
                raise ConfigurationError(f"Signature par le jeton « {self._config.token} » refusée "
                                         f"({type(error).__name__}).") from None
        return base64.b64encode(signature).decode()

    @property
    def public_b64(self) -> str:
        return self._public_b64

    @property
    def public_pem(self) -> str:
        return public_key(self._public_b64).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def __str__(self) -> str:
        return f"Pkcs11Signer(kid={self.kid}, jeton={self._config.token}, module={self._config.module})"

    __repr__ = __str__


def load_pkcs11_signer() -> Pkcs11Signer | None:
    """The token's signer when a PKCS#11 module is configured, else None."""
    config = pkcs11_config()
    return Pkcs11Signer(config) if config else None


def generate_keypair(config: Pkcs11Config) -> Pkcs11Signer:
    """Generate an Ed25519 key pair in the token under ``config.kid``; refused if anything carries that label (a
    second key under one kid would make every signature ambiguous, and replacing one would orphan its heads)."""
    with _LOCK, _session(config, rw=True) as session:
        if any(True for _ in session.get_objects({Attribute.LABEL: config.kid})):
            raise ConfigurationError(f"Le jeton « {config.token} » détient déjà un objet « {config.kid} » : choisissez "
                                     "un autre identifiant (--kid) ; une clé de signature n'est jamais remplacée.")
        try:
            parameters = session.create_domain_parameters(
                KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: ED25519_PARAMS[0]}, local=True)
            parameters.generate_keypair(
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, store=True, label=config.kid, id=config.kid.encode(),
                public_template={Attribute.VERIFY: True, Attribute.PRIVATE: False},
                private_template={Attribute.SIGN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                  Attribute.EXTRACTABLE: False, Attribute.DERIVE: False})
        except PKCS11Error as error:
            raise ConfigurationError(f"Le jeton « {config.token} » n'a pas pu générer de clé Ed25519 "
                                     f"({type(error).__name__}) : il doit prendre en charge CKM_EC_EDWARDS_KEY_PAIR_GEN "
                                     "et CKM_EDDSA.") from None
    return Pkcs11Signer(config)

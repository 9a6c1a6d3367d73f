"""Pseudonymisation key material, injected by name (as in dlt) and never logged.

Lookup order: ``SPIE_HUB_PSEUDO_KEY`` (``kid:base64``, or several separated by commas, the current one first),
``SPIE_HUB_PSEUDO_KEY_FILE`` (JSON file), the Airflow Variable or Connection ``spie_hub_pseudo_key`` when running
inside an Airflow task, then ``$SPIE_HUB_HOME/keys/pseudonymisation.json``.

Rotation: a key ring holds the current key and the previous ones still within their retention period. New
pseudonyms use the current key; the previous keys keep old pseudonyms resolvable (consents stored under an old
pivot, data delivered under an old recipient pseudonym) until they are retired (docs/pseudonymisation.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome

ENV_KEY = "SPIE_HUB_PSEUDO_KEY"
ENV_KEY_FILE = "SPIE_HUB_PSEUDO_KEY_FILE"
AIRFLOW_VARIABLE = "spie_hub_pseudo_key"
KID_PATTERN = re.compile(r"^[a-z0-9-]{1,16}$")


def parse_kid_secret(text: str, origin: str) -> tuple[str, bytes]:
    """``kid:base64`` (the form every key takes in a variable) → (kid, secret bytes)."""
    kid, sep, encoded = text.strip().partition(":")
    if not sep:
        raise ConfigurationError(f"{origin} : format attendu 'identifiant:secret_base64'")
    try:
        return kid, base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ConfigurationError(f"{origin} : le secret n'est pas du base64 valide") from None


def find_key_source(env: str, env_file: str, airflow_name: str, default: Path, what: str) -> tuple[str, str | Path]:
    """Where a key is, in the hub's lookup order: (origin, "kid:base64") from the environment or Airflow, or
    ("fichier", path) from the file variable or the default file. Its absence names the variables to set."""
    if value := os.environ.get(env):
        return f"Variable d'environnement {env}", value
    if path := os.environ.get(env_file):
        return "fichier", Path(path)
    if value := secret_from_airflow(airflow_name):
        return f"Variable Airflow {airflow_name}", value
    if default.exists():
        return "fichier", default
    raise ConfigurationError(f"Aucune {what} : définissez {env} ('kid:base64') ou {env_file}, "
                             f"ou créez {default} avec 'spie-hub cles init'.")


def read_key_file(path: Path, secret_field: str, what: str) -> tuple[str, bytes]:
    """A single-key JSON file {"kid", <secret_field>: base64} → (kid, secret bytes)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["kid"], base64.b64decode(data[secret_field], validate=True)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigurationError(f"Fichier de {what} illisible : {path} (attendu : JSON avec 'kid' et '{secret_field}')") from None


@dataclass(frozen=True)
class PseudonymisationKey:
    kid: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not KID_PATTERN.match(self.kid):
            raise ConfigurationError(
                "Identifiant de clé invalide : 1 à 16 caractères parmi a-z, 0-9 et '-' (ex. 'k2026a')"
            )
        if len(self.secret) < 32:
            raise ConfigurationError("Clé de pseudonymisation trop courte : 32 octets aléatoires au minimum")

    def __str__(self) -> str:
        return f"PseudonymisationKey(kid={self.kid}, secret=***)"

    @classmethod
    def parse(cls, text: str, origin: str) -> PseudonymisationKey:
        return cls(*parse_kid_secret(text, origin))

    @classmethod
    def from_file(cls, path: Path) -> PseudonymisationKey:
        return cls(*read_key_file(path, "secret_b64", "clé de pseudonymisation"))


@dataclass(frozen=True)
class KeyRing:
    current: PseudonymisationKey
    previous: tuple[PseudonymisationKey, ...] = ()

    def __post_init__(self) -> None:
        kids = [k.kid for k in self.keys]
        if len(set(kids)) != len(kids):
            raise ConfigurationError("Trousseau de clés : deux clés portent le même identifiant")

    @property
    def keys(self) -> tuple[PseudonymisationKey, ...]:
        return (self.current, *self.previous)

    @classmethod
    def parse(cls, text: str, origin: str) -> KeyRing:
        keys = [PseudonymisationKey.parse(part, origin) for part in text.split(",") if part.strip()]
        if not keys:
            raise ConfigurationError(f"{origin} : aucune clé")
        return cls(keys[0], tuple(keys[1:]))

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if "cles" not in data:  # a single key
                return cls(PseudonymisationKey.from_file(path))
            keys = {kid: PseudonymisationKey(kid, base64.b64decode(b64, validate=True)) for kid, b64 in data["cles"].items()}
            return cls(keys[data["actuelle"]], tuple(k for kid, k in keys.items() if kid != data["actuelle"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigurationError(
                f"Fichier de clé illisible : {path} (attendu : JSON avec 'actuelle' et 'cles', ou 'kid' et 'secret_b64')"
            ) from None

    def write(self, path: Path) -> None:
        """Write the ring (mode 0600) atomically."""
        data = {"actuelle": self.current.kid, "cles": {k.kid: base64.b64encode(k.secret).decode() for k in self.keys}}
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        tmp.replace(path)


def generate_key_file(path: Path, kid: str = "k1") -> PseudonymisationKey:
    """Write a new random key (mode 0600) unless one exists; return the current key in the file."""
    if path.exists():
        return KeyRing.from_file(path).current
    key = PseudonymisationKey(kid, secrets.token_bytes(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    KeyRing(key).write(path)
    return key


def rotate_key_file(path: Path, kid: str) -> KeyRing:
    """Make a new random key current; the previous ones stay in the ring to resolve old pseudonyms."""
    ring = KeyRing.from_file(path)
    new = KeyRing(PseudonymisationKey(kid, secrets.token_bytes(32)), ring.keys)
    new.write(path)
    return new


def retire_key(path: Path, kid: str) -> KeyRing:
    ring = KeyRing.from_file(path)
    if kid == ring.current.kid:
        raise ConfigurationError(f"La clé {kid} est la clé actuelle : faites d'abord une rotation")
    if kid not in {k.kid for k in ring.previous}:
        raise ConfigurationError(f"Clé {kid} absente du trousseau {path}")
    new = KeyRing(ring.current, tuple(k for k in ring.previous if k.kid != kid))
    new.write(path)
    return new


def secret_from_airflow(name: str) -> str | None:
    """A secret from the Airflow secrets backend: Variable ``name`` ("kid:base64"), or Connection ``name``
    (login = kid, password = base64). Only inside a running task, never at DAG parse time or outside Airflow."""
    if "AIRFLOW_CTX_DAG_ID" not in os.environ:
        return None
    from airflow.sdk import Connection, Variable

    try:
        value = Variable.get(name, default=None)
    except Exception:  # noqa: BLE001 - no Variable of that name, or no backend: try the Connection
        value = None
    if value:
        return str(value)
    try:
        connection = Connection.get(name)
    except Exception:  # noqa: BLE001 - no Connection of that name either: fall through to the file
        return None
    return f"{connection.login}:{connection.password}" if connection.login and connection.password else None


def load_keyring(home: HubHome | None = None) -> KeyRing:
    default = (home or HubHome.from_env()).keys / "pseudonymisation.json"
    origin, value = find_key_source(ENV_KEY, ENV_KEY_FILE, AIRFLOW_VARIABLE, default, "clé de pseudonymisation")
    return KeyRing.from_file(value) if isinstance(value, Path) else KeyRing.parse(value, origin)


def key_file(home: HubHome | None = None) -> Path:
    """The key-ring file that rotation and retirement rewrite."""
    return Path(os.environ.get(ENV_KEY_FILE) or (home or HubHome.from_env()).keys / "pseudonymisation.json")


def load_key(home: HubHome | None = None) -> PseudonymisationKey:
    """The current pseudonymisation key."""
    return load_keyring(home).current

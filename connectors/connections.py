"""Partner endpoints by name (an SFTP account, an HTTPS API), found by one lookup chain, as Airflow Connections.

Lookup order for a connection id ``conn_id`` (as dlt does for every named secret):

1. inside a running Airflow task: the Airflow Connection ``conn_id`` (its secrets backend: metadata DB, Vault…);
2. the environment variable ``AIRFLOW_CONN_<ID>`` (id upper-cased, ``-`` and ``.`` as ``_``), in Airflow's own URI
   or JSON form — so that the same setting works inside and outside Airflow;
3. the file ``$SPIE_HUB_HOME/connexions/<conn_id>.json`` (Airflow's JSON form), readable by its owner only.

A missing connection names the variable to set. A connection never shows its password or its extras (a private key,
a client secret): ``repr``, ``str`` and every error name the connection id only.
"""

from __future__ import annotations

import json
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def env_name(conn_id: str) -> str:
    """The environment variable Airflow reads for ``conn_id`` (``sftp-caf`` → ``AIRFLOW_CONN_SFTP_CAF``)."""
    return "AIRFLOW_CONN_" + re.sub(r"[^A-Za-z0-9]", "_", conn_id).upper()


@dataclass(frozen=True)
class PartnerConnection:
    """What the hub needs to reach one partner endpoint. ``extra`` holds the type's own settings (a pinned host key,
    a token URL, a CA file, a private key)."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: Where it was found (shown to operators; never a value).
    origin: str = ""

    def __repr__(self) -> str:
        return (f"PartnerConnection(conn_id={self.conn_id!r}, conn_type={self.conn_type!r}, host={self.host!r}, "
                f"port={self.port!r}, login={self.login!r}, extra_keys={sorted(self.extra)!r})")

    __str__ = __repr__

    def setting(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default)

    def required(self, key: str) -> Any:
        """An extra the endpoint cannot work without: its absence names the connection and the key."""
        value = self.extra.get(key)
        if value in (None, ""):
            raise ConfigurationError(f"Connexion {self.conn_id} : paramètre « {key} » absent des extras "
                                     f"(défini dans {self.origin or env_name(self.conn_id)})")
        return value


def _port(value: Any, conn_id: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"Connexion {conn_id} : port invalide") from None
    if not 0 < port < 65536:
        raise ConfigurationError(f"Connexion {conn_id} : port hors limites")
    return port


def _extra(value: Any, conn_id: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigurationError(f"Connexion {conn_id} : extras illisibles (JSON attendu)") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"Connexion {conn_id} : extras illisibles (objet JSON attendu)")
    return value


def from_json(conn_id: str, text: str, origin: str) -> PartnerConnection:
    """Airflow's JSON form: {"conn_type", "host", "port", "login", "password", "schema", "extra"}."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigurationError(f"Connexion {conn_id} ({origin}) : JSON illisible") from None
    if not isinstance(data, dict) or not isinstance(data.get("conn_type"), str):
        raise ConfigurationError(f"Connexion {conn_id} ({origin}) : objet JSON avec « conn_type » attendu")
    for key in ("host", "login", "password", "schema"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigurationError(f"Connexion {conn_id} ({origin}) : « {key} » doit être un texte")
    return PartnerConnection(conn_id, data["conn_type"], data.get("host") or None, _port(data.get("port"), conn_id),
                             data.get("login") or None, data.get("password") or None, data.get("schema") or None,
                             _extra(data.get("extra"), conn_id), origin)


def from_uri(conn_id: str, uri: str, origin: str) -> PartnerConnection:
    """Airflow's URI form: ``conn-type://login:password@host:port/schema?extra_key=value`` (percent-encoded)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"Connexion {conn_id} ({origin}) : URI illisible") from None
    if not parts.scheme:
        raise ConfigurationError(f"Connexion {conn_id} ({origin}) : URI sans type (« sftp://… », « https://… »)")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    extra: dict[str, Any] = {k: v[-1] for k, v in query.items()}
    if "__extra__" in extra:
        extra = _extra(extra["__extra__"], conn_id)
    unquote = urllib.parse.unquote
    return PartnerConnection(conn_id, parts.scheme.replace("-", "_"), unquote(parts.hostname) if parts.hostname else None,
                             port, unquote(parts.username) if parts.username else None,
                             unquote(parts.password) if parts.password else None,
                             unquote(parts.path.lstrip("/")) or None, extra, origin)


def _from_airflow(conn_id: str) -> PartnerConnection | None:
    # Only inside a running task: never at DAG parse time (no DB or network then), never outside Airflow.
    if "AIRFLOW_CTX_DAG_ID" not in os.environ:
        return None
    from airflow.sdk import Connection

    try:
        connection = Connection.get(conn_id)
    except Exception:  # noqa: BLE001 - no such Connection in Airflow: the environment and the file come next
        return None
    return PartnerConnection(conn_id, connection.conn_type or "", connection.host or None, connection.port,
                             connection.login or None, connection.password or None, connection.schema or None,
                             connection.extra_dejson or {}, f"Connexion Airflow {conn_id}")


def connection_file(conn_id: str, home: HubHome | None = None) -> Path:
    home = home or HubHome.from_env()
    return home.root / "connexions" / f"{conn_id}.json"


def get_connection(conn_id: str, home: HubHome | None = None) -> PartnerConnection:
    """The connection ``conn_id`` from the lookup chain; ``ConfigurationError`` names what to set."""
    if not isinstance(conn_id, str) or not _ID.match(conn_id):
        raise ConfigurationError("Identifiant de connexion invalide (lettres, chiffres, « - », « _ », « . »)")
    if (found := _from_airflow(conn_id)) is not None:
        return found
    variable = env_name(conn_id)
    if value := os.environ.get(variable):
        origin = f"variable d'environnement {variable}"
        return from_json(conn_id, value, origin) if value.lstrip().startswith("{") else from_uri(conn_id, value, origin)
    path = connection_file(conn_id, home)
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ConfigurationError(f"Connexion « {conn_id} » introuvable : définissez la connexion Airflow {conn_id}, "
                                 f"ou la variable {variable}, ou le fichier {path}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"Connexion {conn_id} : {path} n'est pas un fichier ordinaire (lien refusé)")
    if info.st_mode & 0o077:
        raise ConfigurationError(f"Connexion {conn_id} : {path} est lisible par d'autres que son propriétaire "
                                 f"(chmod 600 attendu : il contient des secrets)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ConfigurationError(f"Connexion {conn_id} : {path} illisible") from None
    return from_json(conn_id, text, f"fichier {path}")

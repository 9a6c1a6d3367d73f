"""What every partner API client takes from its connection: the base URL, the CA, the HTTP settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.connections import PartnerConnection
from connectors.http.session import Authenticator, HttpSettings, PartnerSession
from spie_hub.core.errors import ConfigurationError


@dataclass(frozen=True)
class ClientHooks:
    """Injection points for tests and the crash harness: how to wait, the clock, the jitter source."""

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    extra_settings: dict[str, Any] = field(default_factory=dict)


def base_url(connection: PartnerConnection, default_path: str = "") -> str:
    """``https://host[:port]`` + the connection's ``chemin_base`` extra (or the API's default path)."""
    host = (connection.host or "").strip()
    if not host:
        raise ConfigurationError(f"Connexion {connection.conn_id} : hôte (host) absent")
    if "://" in host:
        scheme, _, host = host.partition("://")
        if scheme != "https":
            raise ConfigurationError(f"Connexion {connection.conn_id} : seul https:// est accepté (TLS obligatoire)")
    host = host.rstrip("/")
    port = f":{connection.port}" if connection.port and ":" not in host.rpartition("]")[2] else ""
    path = str(connection.setting("chemin_base", default_path) or "").strip("/")
    return f"https://{host}{port}" + (f"/{path}" if path else "")


def open_session(connection: PartnerConnection, partner: str, auth: Authenticator | None, default_path: str = "",
                 hooks: ClientHooks | None = None) -> PartnerSession:
    hooks = hooks or ClientHooks()
    settings = HttpSettings.from_extra({**dict(connection.extra), **hooks.extra_settings}, connection.conn_id)
    ca_file = connection.setting("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise ConfigurationError(f"Connexion {connection.conn_id} : « ca_file » doit être un chemin")
    if ca_file and not Path(ca_file).is_file():
        raise ConfigurationError(f"Connexion {connection.conn_id} : autorité de certification « ca_file » introuvable "
                                 f"({ca_file})")
    return PartnerSession(partner, base_url(connection, default_path), ca_file=ca_file or None, settings=settings,
                          auth=auth, proxy=connection.setting("proxy"), sleep=hooks.sleep, clock=hooks.clock)

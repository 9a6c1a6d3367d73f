"""Partner API clients by name, as ``flows.yaml`` names them (``api:`` of an ``api-https`` transport)."""

from __future__ import annotations

from typing import Any, Protocol

from connectors.apis.common import ClientHooks
from connectors.apis.france_travail import FranceTravailClient
from connectors.apis.i_milo import IMiloClient
from connectors.connections import PartnerConnection
from spie_hub.core.errors import ConfigurationError


class ApiClient(Protocol):
    api: str

    def close(self) -> None: ...


API_CLIENTS: dict[str, type[Any]] = {FranceTravailClient.api: FranceTravailClient, IMiloClient.api: IMiloClient}
#: What each API can land (source) or receive (recipient).
RESSOURCES: dict[str, dict[str, str]] = {
    "france-travail": {"usagers": "source", "orientations": "destinataire"},
    "i-milo": {"evenements": "source"},
}


def known_apis() -> list[str]:
    return sorted(API_CLIENTS)


def client_for(api: str, connection: PartnerConnection, hooks: ClientHooks | None = None) -> Any:
    try:
        cls = API_CLIENTS[api]
    except KeyError:
        raise ConfigurationError(f"API « {api} » inconnue (connues : {', '.join(known_apis())})") from None
    return cls(connection, hooks)

"""i-milo (missions locales) operator API (shared/formats/README.md §4), behind a Gravitee gateway.

Connection: ``host`` (and ``port``), ``password`` = the API key sent as ``X-Gravitee-Api-Key`` (never in a URL);
extras ``chemin_base`` (default none), ``ca_file``, HTTP settings (``HttpSettings.EXTRAS``).

- ``evenements()``: ``GET /operateurs/events`` — the queue of events (``identifiant``, ``idDossier``, ``type`` RDV |
  SESSION | DOSSIER, ``action`` CREATE | UPDATE | DELETE | ARCHIVE, ``idType``, ``date``);
- ``dossier(id)``: ``GET /sue/dossiers/{idDossier}`` — identity, CEJ (``accompagnementCEJ``) and ``situations``;
- ``acquitter(id)``: ``POST /operateurs/events/{id}/ack`` — to be called only once what the event brought is stored
  durably (an acknowledged event is gone from the queue).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from connectors.apis.common import ClientHooks, open_session
from connectors.connections import PartnerConnection
from connectors.http.auth import ApiKeyAuth
from connectors.http.errors import ApiFatalError
from spie_hub.core.errors import ConfigurationError

PARTNER = "i-milo"
API_KEY_HEADER = "X-Gravitee-Api-Key"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _identifier(value: Any, what: str) -> str:
    """An id placed in a URL path: digits, letters, ``-`` and ``_`` only (a ``/`` or ``..`` would reach another path)."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not _ID.match(text):
        raise ApiFatalError(f"API {PARTNER} : {what} invalide dans la file d'événements")
    return text


class IMiloClient:
    api: ClassVar[str] = "i-milo"

    def __init__(self, connection: PartnerConnection, hooks: ClientHooks | None = None) -> None:
        if not connection.password:
            raise ConfigurationError(f"Connexion {connection.conn_id} : clé d'API i-milo absente (mot de passe de la connexion)")
        self.session = open_session(connection, PARTNER, ApiKeyAuth(API_KEY_HEADER, connection.password), "", hooks)

    def close(self) -> None:
        self.session.close()

    def evenements(self) -> list[dict[str, Any]]:
        data = self.session.request("GET", "/operateurs/events", accept=(200, 204)).data
        if data is None:
            return []
        if isinstance(data, dict):  # some gateways wrap the list
            data = data.get("evenements", data.get("events"))
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ApiFatalError(f"API {PARTNER} : file d'événements inattendue (liste d'objets attendue)")
        for item in data:
            _identifier(item.get("identifiant"), "identifiant d'événement")
        return data

    def dossier(self, id_dossier: Any) -> dict[str, Any] | None:
        """The dossier, or None when i-milo no longer has it (404, 410: archived or deleted since the event)."""
        response = self.session.request("GET", f"/sue/dossiers/{_identifier(id_dossier, 'idDossier')}",
                                        accept=(200, 404, 410))
        if response.status != 200:
            return None
        if not isinstance(response.data, dict):
            raise ApiFatalError(f"API {PARTNER} : dossier inattendu (objet JSON attendu) sur {response.endpoint}")
        return response.data

    def acquitter(self, identifiant: Any) -> None:
        self.session.request("POST", f"/operateurs/events/{_identifier(identifiant, 'identifiant')}/ack",
                             accept=(200, 201, 202, 204, 404), expect_json=False)

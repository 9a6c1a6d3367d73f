"""Authenticators for partner APIs: OAuth2 client credentials (France Travail) and an API key header (i-milo).

Secrets come from the connection (``login`` = client id, ``password`` = client secret or API key) and go into a
header or a form body only: never into a URL, a log line or an error message. A token is kept in memory until shortly
before it expires (``expires_in``), and dropped when the API answers 401 (``refresh``): the session then asks for a
new one, once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from connectors.http.errors import ApiFatalError, redact_url
from spie_hub.core.errors import ConfigurationError

if TYPE_CHECKING:
    from connectors.http.session import PartnerSession


class ApiKeyAuth:
    """A fixed key in a header (``X-Gravitee-Api-Key`` for i-milo's Gravitee gateway). Nothing to refresh."""

    def __init__(self, header: str, key: str) -> None:
        if not key:
            raise ConfigurationError("Clé d'API absente (mot de passe de la connexion)")
        self.header, self._key = header, key

    def __repr__(self) -> str:
        return f"ApiKeyAuth(header={self.header!r})"

    def apply(self, headers: dict[str, str], session: PartnerSession) -> None:
        headers[self.header] = self._key

    def refresh(self) -> bool:
        return False  # a key refused once is refused again: the 401 is reported


class OAuth2ClientCredentials:
    """``grant_type=client_credentials`` against ``token_url`` (France Travail: ``?realm=/partenaire``)."""

    #: Renew this long before the announced expiry (clock skew, a long request started just before).
    MARGIN_SECONDS = 60.0
    #: The lifetime assumed when ``expires_in`` is absent, unreadable, not finite or not positive.
    DEFAULT_LIFETIME = 300.0
    #: A token is kept at least this long, whatever ``expires_in`` says (a 0 s or 1 s lifetime would otherwise mean one
    #: token request, with the client secret, per API call); a token refused earlier is renewed by the 401 path.
    MIN_KEEP_SECONDS = 60.0

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str, *, realm: str | None = None,
                 conn_id: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        if not client_id or not client_secret:
            raise ConfigurationError(f"Connexion {conn_id} : identifiant (login) et secret (mot de passe) OAuth2 requis")
        self.token_url, self.scope, self.realm, self.conn_id = token_url, scope, realm, conn_id
        self._client_id, self._client_secret = client_id, client_secret
        self._token: str | None = None
        self._expires_at = 0.0
        self.clock = clock
        #: Tokens obtained so far (tests and operators: a refresh storm shows here).
        self.fetched = 0

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(token_url={redact_url(self.token_url)!r}, scope={self.scope!r})"

    def apply(self, headers: dict[str, str], session: PartnerSession) -> None:
        if self._token is None or self.clock() >= self._expires_at:
            self._fetch(session)
        headers["Authorization"] = f"Bearer {self._token}"

    def refresh(self) -> bool:
        self._token = None
        return True

    @classmethod
    def keep_seconds(cls, expires_in: object) -> float:
        """How long a token announced with ``expires_in`` is kept: the lifetime less a margin (at most half the
        lifetime), never under ``MIN_KEEP_SECONDS``; a missing, non-finite or non-positive value means the default."""
        try:
            lifetime = float(expires_in) if not isinstance(expires_in, bool) else math.nan  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            lifetime = math.nan
        if not math.isfinite(lifetime) or lifetime <= 0:
            lifetime = cls.DEFAULT_LIFETIME
        return max(cls.MIN_KEEP_SECONDS, lifetime - min(cls.MARGIN_SECONDS, lifetime / 2))

    def _fetch(self, session: PartnerSession) -> None:
        form = {"grant_type": "client_credentials", "client_id": self._client_id,
                "client_secret": self._client_secret, "scope": self.scope}
        try:
            response = session.request("POST", self.token_url, params={"realm": self.realm} if self.realm else None,
                                       form=form, accept=(200,), authenticate=False)
        except ApiFatalError as error:
            if error.status in (400, 401, 403):
                raise ConfigurationError(
                    f"Connexion {self.conn_id} : identifiants OAuth2 refusés par {redact_url(self.token_url)} "
                    f"({error.status}) ; vérifier le login, le mot de passe et les « scopes » de la connexion") from None
            error.service = True  # the token endpoint answers for the whole connection
            raise
        data = response.data
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiFatalError(f"API {session.partner} : réponse du serveur de jetons sans « access_token » "
                                f"({redact_url(self.token_url)})", endpoint=response.endpoint, service=True)
        self._token = token
        self._expires_at = self.clock() + self.keep_seconds(data.get("expires_in"))
        self.fetched += 1

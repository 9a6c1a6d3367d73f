"""What an HTTP answer means for the hub: success, worth retrying, or fatal — and URLs as they may be shown.

Every message is French and names the endpoint through ``redact_url`` only: no user info, no query string value,
no path segment that looks like an identifier (a dossier number, a token). Never a response body: a partner's error
page may echo what was sent (a NIR, a secret).
"""

from __future__ import annotations

import re
import urllib.parse

from spie_hub.core.errors import HubError, RetriableError

#: Statuses worth another attempt (the server or a proxy is overloaded or restarting).
RETRIABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Statuses about the connection itself (credentials, a proxy asking for its own), never about one person.
SERVICE_STATUSES = frozenset({401, 407})

_STATUS_TEXT = {
    400: "requête refusée par le partenaire (400, données invalides)",
    401: "authentification refusée (401)",
    403: "accès interdit (403, droits ou habilitation manquants)",
    404: "ressource introuvable (404)",
    405: "méthode non autorisée (405)",
    409: "conflit (409)",
    410: "ressource supprimée (410)",
    413: "requête trop volumineuse pour le partenaire (413)",
    415: "type de contenu refusé par le partenaire (415)",
    422: "données refusées par le partenaire (422)",
    408: "délai dépassé côté partenaire (408)",
    425: "requête trop précoce (425)",
    429: "trop de requêtes (429)",
    500: "erreur interne du partenaire (500)",
    502: "passerelle en erreur (502)",
    503: "service indisponible (503)",
    504: "passerelle sans réponse (504)",
}

#: A path segment shown as is: words, versions (``v2``), ``oauth2`` — anything else (digits, opaque ids) is hidden.
_PLAIN_SEGMENT = re.compile(r"^(?:[A-Za-z][A-Za-z_.-]*[0-9]?|v[0-9]{1,2})$")


class ApiError(HubError):
    """A partner API could not give what was asked. ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "", service: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint
        #: The whole service or connection is concerned (TLS, credentials, the token endpoint): nothing about one
        #: person or one line; a pass stops rather than answering every line with the same error.
        self.service = service or status in SERVICE_STATUSES

    @property
    def about_one(self) -> bool:
        """A fatal answer about one person, line or event (her data, her dossier): that line's answer, not a reason
        to stop the pass. Retriable errors and service-wide ones are never about one."""
        return isinstance(self, ApiFatalError) and not self.service


class ApiRetriableError(ApiError, RetriableError):
    """Transient (network, timeout, 5xx, 429 after the allowed attempts): the orchestrator may run it again later."""


class ApiFatalError(ApiError):
    """Retrying would give the same answer (refused credentials, 4xx, malformed answer, redirect elsewhere)."""


class ApiAnswerError(ApiFatalError):
    """The partner answered, with a business error code (France Travail ``codeRetour`` R…)."""

    #: ``codeRetour`` about the connection's rights, not the person asked about.
    SERVICE_CODES = frozenset({"R001"})

    def __init__(self, message: str, *, code: str, status: int | None = None, endpoint: str = "") -> None:
        super().__init__(message, status=status, endpoint=endpoint, service=code in self.SERVICE_CODES)
        self.code = code


def is_retriable(status: int) -> bool:
    return status in RETRIABLE_STATUSES or 500 <= status <= 599


def status_text(status: int) -> str:
    if status in _STATUS_TEXT:
        return _STATUS_TEXT[status]
    if 500 <= status <= 599:
        return f"erreur du serveur du partenaire ({status})"
    if 300 <= status <= 399:
        return f"redirection inattendue ({status})"
    return f"réponse HTTP {status}"


def error_for_status(status: int, endpoint: str, partner: str) -> ApiError:
    """The error for a non-success status after the attempts allowed (never the body)."""
    cls = ApiRetriableError if is_retriable(status) else ApiFatalError
    return cls(f"API {partner} : {status_text(status)} sur {endpoint}", status=status, endpoint=endpoint)


def redact_path(path: str) -> str:
    """A URL path as logs and errors may show it: identifier-looking segments replaced by ``{id}``."""
    segments = path.split("/")
    return "/".join(s if not s or _PLAIN_SEGMENT.match(s) else "{id}" for s in segments)


def redact_url(url: str, *, with_host: bool = True) -> str:
    """``scheme://host:port/path?key=…``: never user info, never a query value, identifiers hidden in the path."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(adresse illisible)"
    keys = [k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    query = "&".join(f"{urllib.parse.quote(k, safe='')}=…" for k in keys)
    path = redact_path(parts.path or "/")
    origin = f"{parts.scheme}://{host}{f':{port}' if port else ''}" if with_host and parts.scheme else ""
    return f"{origin}{path}{'?' + query if query else ''}"

"""The hardened HTTPS client every partner API goes through (requests): one ``requests.Session`` per connection.

What it guarantees, whatever the partner's server does:

- **TLS verified**, always: the system's authorities, or the CA file a connection names (``extra.ca_file``); there is
  no switch to turn verification off. Plain ``http://`` is refused.
- **Bounded in time**: connect and read timeouts, and a *total* deadline per attempt — a server that trickles one
  byte a second (each read within its timeout), in its TLS handshake, its headers or its body, is cut when the
  deadline passes: a watchdog timer shuts the attempt's socket down (``_Watchdog``), whatever requests is doing.
  Bodies are read with ``read1`` (what the socket has) so that the deadline is also checked between reads.
- **Bounded in size**: a declared ``Content-Length`` above the cap is refused before reading; an answer that never
  ends is cut as soon as it passes ``taille_max`` (50 MiB by default), counted after decompression.
- **Retries** (bounded): 5xx, 408 and connection errors with exponential backoff and jitter; 429 waits what
  ``Retry-After`` says (seconds or an HTTP date), capped. 401: the authenticator refreshes its token once, then the
  request is sent again.
- **Redirects** are followed only for reads (GET, HEAD) and only to the same scheme, host and port; another host is
  refused without being named (a redirect could send the bearer token or a person's data elsewhere, and its host
  name is the partner's text). A redirected write (POST, PUT…) is a fatal error, never a change of method.
- **JSON checked**: ``Content-Type`` must be JSON before the body is parsed; a malformed body is a fatal error
  naming the endpoint — never quoting the body.
- **Logs** carry the method, the redacted path, the status and the duration; nothing else (no header, no query
  value, no body). Errors are French, name the redacted endpoint, and never chain the library's exception (its text
  holds the full URL).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from connectors.http.errors import (
    ApiError,
    ApiFatalError,
    ApiRetriableError,
    error_for_status,
    is_retriable,
    redact_path,
    redact_url,
)
from spie_hub.core.errors import ConfigurationError

log = logging.getLogger("spie_hub.http")

MIB = 1 << 20
_CHUNK = 1 << 16


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts, caps and retries of one partner connection (extras of the connection may override each)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    #: Total time for one attempt: connection, headers and the whole body.
    deadline: float = 120.0
    max_bytes: int = 50 * MIB
    #: Attempts in all for a retriable failure (the first included).
    attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: The longest wait a ``Retry-After`` may impose (a partner asking for an hour gets the cap, then a retriable error).
    retry_after_max: float = 120.0
    max_redirects: int = 3

    #: Extras of a connection that set these values (French keys, as the rest of the registry).
    EXTRAS = {
        "delai_connexion": "connect_timeout", "delai_lecture": "read_timeout", "delai_total": "deadline",
        "taille_max": "max_bytes", "tentatives": "attempts", "attente_base": "backoff_base",
        "attente_max": "backoff_max", "retry_after_max": "retry_after_max",
    }

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], conn_id: str = "") -> HttpSettings:
        values: dict[str, Any] = {}
        for key, attribute in cls.EXTRAS.items():
            if key not in extra:
                continue
            raw = extra[key]
            try:
                number = int(raw) if attribute in ("max_bytes", "attempts") else float(raw)
            except (TypeError, ValueError):
                raise ConfigurationError(f"Connexion {conn_id} : « {key} » doit être un nombre") from None
            if number <= 0 if attribute != "backoff_base" else number < 0:
                raise ConfigurationError(f"Connexion {conn_id} : « {key} » doit être positif")
            values[attribute] = number
        return cls(**values)


class Authenticator(Protocol):
    """Adds credentials to a request; ``refresh`` drops a cached credential (True when a new one can be had)."""

    def apply(self, headers: dict[str, str], session: PartnerSession) -> None: ...

    def refresh(self) -> bool: ...


@dataclass
class ApiResponse:
    status: int
    headers: Mapping[str, str]
    endpoint: str
    data: Any = None
    body: bytes = field(default=b"", repr=False)


class _Watchdog:
    """The total deadline of one attempt, enforced from a timer thread: when it fires, every socket the attempt opened
    or reused is shut down, so that a read blocked in requests/urllib3 (headers trickled one byte at a time, each
    within the read timeout) fails at once. ``shutdown`` of the plain socket (not the TLS layer's, which is not
    thread-safe) only wakes the reader; the connection is then discarded by urllib3."""

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(max(0.001, seconds), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._current.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._current.watchdog = None

    @classmethod
    def watch(cls, sock: socket.socket | None) -> None:
        """Called by the connection (on connect and before each request) in the attempt's thread."""
        watchdog = getattr(cls._current, "watchdog", None)
        if watchdog is None or sock is None:
            return
        with watchdog._lock:
            watchdog._sockets.append(sock)
            expired = watchdog.expired
        if expired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _Watchdog.watch(sock)  # before the TLS handshake, which a server may trickle too
        return sock


class _WatchedPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedConnection

    def _validate_conn(self, conn: Any) -> None:
        super()._validate_conn(conn)
        _Watchdog.watch(getattr(conn, "sock", None))  # a kept-alive connection reused by this attempt


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose HTTPS connections report their sockets to the attempt's watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme, "https": _WatchedPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": _WatchedPool}
        return manager


class _Transient(Exception):
    """One attempt failed in a way worth another (connection, timeout, deadline, 5xx)."""

    def __init__(self, reason: str, status: int | None = None, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.wait = reason, status, wait


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def retry_after_seconds(value: str | None, cap: float, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """``Retry-After`` as seconds to wait (delta-seconds or an HTTP date), within [0, cap]; None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - now()).total_seconds(), cap))


def is_json_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class PartnerSession:
    """One partner connection's HTTPS session. ``partner`` names it in messages (``France Travail``)."""

    def __init__(self, partner: str, base_url: str, *, ca_file: str | None = None, settings: HttpSettings | None = None,
                 auth: Authenticator | None = None, proxy: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random) -> None:
        if urllib.parse.urlsplit(base_url).scheme != "https":
            raise ConfigurationError(f"API {partner} : adresse en https:// attendue (TLS obligatoire)")
        self.partner = partner
        self.base_url = base_url.rstrip("/")
        self.settings = settings or HttpSettings()
        self.auth = auth
        self.sleep, self.clock, self.jitter = sleep, clock, jitter
        self._session = requests.Session()
        # Nothing from the environment: no ~/.netrc credentials sent to a partner, no REQUESTS_CA_BUNDLE replacing the
        # CA the connection pins; a proxy only when the connection names one.
        self._session.trust_env = False
        self._session.mount("https://", _WatchedAdapter())
        self._session.mount("http://", _WatchedAdapter())
        self.verify: bool | str = ca_file or True
        self.proxies = {"https": proxy} if proxy else {}
        self._session.headers.update({"User-Agent": "spie-hub", "Accept": "application/json"})

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PartnerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        if path.startswith("https://") or path.startswith("http://"):
            return path
        return self.base_url + ("" if path.startswith("/") else "/") + path

    # -- the one entry point --------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json_body: Any = None,
                form: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                accept: Collection[int] = (200, 201, 202, 204, 206), expect_json: bool = True,
                authenticate: bool = True) -> ApiResponse:
        """Send one request with the guarantees above; a status outside ``accept`` raises (``ApiRetriableError``
        after the attempts allowed, ``ApiFatalError`` otherwise)."""
        url = self.url(path)
        if urllib.parse.urlsplit(url).scheme != "https":
            raise ConfigurationError(f"API {self.partner} : adresse en https:// attendue (TLS obligatoire)")
        endpoint = f"{method} {redact_url(url)}"
        settings = self.settings
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            try:
                watchdog = _Watchdog(settings.deadline)
                with watchdog:
                    try:
                        response = self._attempt(method, url, params, json_body, form, headers, authenticate)
                    except (_Transient, ApiError, OSError, requests.exceptions.RequestException):
                        if not watchdog.expired:
                            raise
                        raise _Transient(f"réponse jamais terminée (délai total de {settings.deadline:g} s "
                                         "dépassé)") from None
            except _Transient as failure:
                if attempt >= settings.attempts:
                    status = f" (dernier statut {failure.status})" if failure.status else ""
                    raise ApiRetriableError(f"API {self.partner} : {failure.reason} sur {endpoint}{status}, "
                                            f"après {attempt} tentative(s) ; nouvel essai au prochain passage",
                                            status=failure.status, endpoint=endpoint) from None
                self.sleep(failure.wait if failure.wait is not None else self._backoff(attempt))
                continue
            if response.status == 401 and authenticate and self.auth is not None and not refreshed:
                # An expired or revoked token: one new token, then the same request again (not counted as an attempt).
                refreshed = True
                if self.auth.refresh():
                    attempt -= 1
                    continue
            if response.status in accept:
                response.endpoint = endpoint
                if expect_json and response.status != 204 and response.body:
                    response.data = self._parse(response, endpoint)
                return response
            raise error_for_status(response.status, endpoint, self.partner)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * (2 ** (attempt - 1)))
        return ceiling * (0.5 + self.jitter() / 2)  # "equal jitter": never zero, never in lockstep with others

    def _parse(self, response: ApiResponse, endpoint: str) -> Any:
        content_type = response.headers.get("Content-Type")
        if not is_json_type(content_type):
            media = (content_type or "absent").split(";", 1)[0].strip()[:60]
            raise ApiFatalError(f"API {self.partner} : réponse de type « {media} » au lieu de JSON sur {endpoint} "
                                "(page d'erreur d'un proxy ou mauvaise adresse ?)", status=response.status, endpoint=endpoint,
                                service=True)
        try:
            return json.loads(response.body)
        except (ValueError, RecursionError):
            raise ApiFatalError(f"API {self.partner} : réponse JSON illisible sur {endpoint}",
                                status=response.status, endpoint=endpoint) from None

    # -- one attempt, redirects included --------------------------------------------------------------------------
    def _attempt(self, method: str, url: str, params: Mapping[str, Any] | None, json_body: Any,
                 form: Mapping[str, str] | None, headers: Mapping[str, str] | None, authenticate: bool) -> ApiResponse:
        settings = self.settings
        start = self.clock()
        deadline = start + settings.deadline
        origin = _origin(url)
        current = url
        for _ in range(settings.max_redirects + 1):
            request_headers = dict(headers or {})
            if authenticate and self.auth is not None:
                self.auth.apply(request_headers, self)
            remaining = max(0.001, deadline - self.clock())
            try:
                raw = self._session.request(
                    method, current, params=params, json=json_body, data=form, headers=request_headers,
                    timeout=(min(settings.connect_timeout, remaining), min(settings.read_timeout, remaining)),
                    allow_redirects=False, stream=True, verify=self.verify, proxies=self.proxies)
            except requests.exceptions.SSLError:
                raise ApiFatalError(f"API {self.partner} : connexion TLS refusée vers {redact_url(current)} "
                                    "(certificat non reconnu par l'autorité configurée, « ca_file »)",
                                    service=True) from None
            except requests.exceptions.Timeout:
                self._log(method, current, "délai", start)
                raise _Transient("délai de réponse dépassé") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
                self._log(method, current, "réseau", start)
                raise _Transient("partenaire injoignable (connexion impossible ou coupée)") from None
            except requests.exceptions.RequestException:
                raise ApiFatalError(f"API {self.partner} : requête impossible vers {redact_url(current)}",
                                    service=True) from None
            try:
                status = raw.status_code
                if 300 <= status <= 399 and status != 304:
                    location = raw.headers.get("Location")
                    self._log(method, current, status, start)
                    if not location:
                        raise ApiFatalError(f"API {self.partner} : redirection sans destination sur {redact_url(current)}",
                                            status=status)
                    if method not in ("GET", "HEAD"):
                        # A write is never followed: following a 301/302/303 would turn it into a GET without its
                        # body (the partner would receive nothing, and a JSON 200 there would look like success);
                        # even a 307/308 is refused, as the body (a person's data) would go to an address not chosen.
                        raise ApiFatalError(f"API {self.partner} : redirection ({status}) refusée pour une écriture "
                                            f"({method}) sur {redact_url(current)} ; rien n'a été transmis",
                                            status=status, endpoint=f"{method} {redact_url(current)}", service=True)
                    try:
                        target = urllib.parse.urljoin(current, location)
                        same_origin = _origin(target) == origin
                    except ValueError:
                        same_origin = False
                    if not same_origin:
                        # The target is the partner's text (it may carry a NIR in a host name): never shown.
                        raise ApiFatalError(
                            f"API {self.partner} : redirection vers un autre hôte refusée sur {redact_url(current)}",
                            status=status)
                    current, params = target, None  # the query of the new location is the server's
                    continue
                if status == 429:
                    wait = retry_after_seconds(raw.headers.get("Retry-After"), settings.retry_after_max)
                    self._log(method, current, status, start)
                    raise _Transient("trop de requêtes (429)", status, wait)
                if is_retriable(status):
                    self._log(method, current, status, start)
                    raise _Transient(f"erreur {status} du partenaire", status)
                body = self._read(raw, deadline, method, current)
                self._log(method, current, status, start)
                return ApiResponse(status, raw.headers, "", body=body)
            finally:
                raw.close()
        raise ApiFatalError(f"API {self.partner} : trop de redirections sur {redact_url(url)}")

    def _read(self, raw: requests.Response, deadline: float, method: str, url: str) -> bytes:
        limit = self.settings.max_bytes
        declared = raw.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiFatalError(f"API {self.partner} : réponse trop volumineuse ({int(declared)} octets annoncés, "
                                f"au plus {limit}) sur {redact_url(url)}")
        body = bytearray()
        stream = raw.raw
        while True:
            if self.clock() > deadline:
                self._log(method, url, "coupé", deadline - self.settings.deadline)
                raise _Transient(f"réponse jamais terminée (délai total de {self.settings.deadline:g} s dépassé)")
            try:
                chunk = stream.read1(_CHUNK, decode_content=True)
            except Exception as error:  # noqa: BLE001 - urllib3's own errors (timeout, cut, bad chunk): not imported here
                if isinstance(error, ApiError):
                    raise
                raise _Transient("réponse interrompue (connexion coupée ou délai de lecture dépassé)") from None
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                raise ApiFatalError(f"API {self.partner} : réponse trop volumineuse (plus de {limit} octets) sur "
                                    f"{redact_url(url)} ; lecture arrêtée")

    def _log(self, method: str, url: str, status: int | str, start: float) -> None:
        log.info("%s %s %s %d ms", method, redact_path(urllib.parse.urlsplit(url).path), status,
                 round((self.clock() - start) * 1000))

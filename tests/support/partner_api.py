"""A real local HTTPS server playing France Travail's partner APIs and i-milo's operator API, with fault injection.

``http.server.ThreadingHTTPServer`` behind ``ssl``: a certificate authority and a server certificate (127.0.0.1 and
localhost) generated with ``cryptography`` in a folder of the test; the client trusts that CA through the
connection's ``ca_file`` extra (never by turning verification off). The TLS handshake runs in each connection's
own thread, so that a client that stalls never blocks the accepting thread.

Routes (shapes of shared/formats/les-emplois/ft_api_mock_responses.json and README §3–4, synthetic people):

- ``POST /connexion/oauth2/access_token?realm=/partenaire`` (form: client credentials) → ``access_token``;
- under ``/partenaire`` with ``Authorization: Bearer``: ``recherche`` (POST rechercher-usager by NIR + date),
  then with ``ft-jeton-usager``: ``diagnostic``, ``lecture-orientation``, ``orientation`` (POST, deduplicated by
  ``Idempotency-Key``), ``rendez-vous`` (``range`` pagination, 206 + ``Content-Range``), ``statut``;
- under ``/milo`` with ``X-Gravitee-Api-Key``: ``evenements`` (GET the queue), ``dossier`` (GET a dossier),
  ``ack`` (POST or GET ``/operateurs/events/{id}/ack``, removes the event from the queue).

Faults (``inject(route, kind, value, count)``, consumed in order, one per request to the route):
``401`` (the tokens expire, the request is answered 401), ``429`` (``Retry-After: value``), ``500`` (or ``value``
as status), ``aucune`` (let one request through), ``sommeil`` (sleep ``value`` seconds before answering: a read
timeout), ``code-retour`` (the lookup answers ``value``), ``json-malforme``, ``html`` (a proxy's error page as 200
text/html), ``redirection-externe`` (302 to another host), ``redirection-interne`` (307 to the same path on this
host), ``filet`` (a body that trickles one byte at a time and never finishes), ``sans-fin`` (a body that never
ends), ``coupure`` (the connection closed without an answer). Every request is recorded (method, path, query, headers, body) for assertions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TOKEN_PATH = "/connexion/oauth2/access_token"

#: Synthetic people (the NIRs of tests/partners/caf-msa fixtures): two known to France Travail, one not.
PEOPLE: list[dict[str, Any]] = [
    {"nir": "2820251108030", "date_naissance": "1982-02-01", "code": "S001", "parcours": "PSO",
     "contraintes": {"23": "OUI", "27": "OUI", "25": "NON_ABORDEE"}},
    {"nir": "1770393050005", "date_naissance": "1977-03-23", "code": "S001", "parcours": "PED",
     "contraintes": {"28": "OUI"}},
    {"nir": "2730799404078", "date_naissance": "1973-07-21", "code": "S002"},
]
LIBELLES_CONTRAINTES = {"23": "Développer sa mobilité", "24": "Surmonter ses contraintes familiales",
                        "25": "Prendre en compte son état de santé",
                        "26": "Développer ses capacités en lecture, écriture et calcul",
                        "27": "Faire face à des difficultés de logement", "28": "Faire face à des difficultés financières",
                        "29": "Faire face à des difficultés administratives ou juridiques"}


def nir15(nir13: str) -> str:
    return f"{nir13}{97 - int(nir13) % 97:02d}"


# -- certificates ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certificates(folder: Path, name: str = "SPIE tests") -> Certificates:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it (PEM files in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return files


# -- recorded requests and faults ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recorded:
    method: str
    route: str | None
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def url(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


@dataclass
class Fault:
    kind: str
    value: Any = None


@dataclass
class _State:
    tokens: dict[str, float] = field(default_factory=dict)
    jetons: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=lambda: defaultdict(list))
    requests: list[Recorded] = field(default_factory=list)
    #: Orientations applied (one per distinct Idempotency-Key): (nir, body).
    orientations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    idempotency: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    dossiers: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: PartnerApi, context: ssl.SSLContext) -> None:
        self.api, self.context = api, context
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # The handshake happens on the first read, in the connection's own thread.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (timeout, cap, refused certificate) is part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stall per answer)
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.api.handle(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.api.handle(self, "POST")


class PartnerApi:
    """The server, started on a free port of 127.0.0.1 (``stop()`` to end it)."""

    def __init__(self, folder: Path) -> None:
        self.certificates = make_certificates(folder / "tls")
        self.client_id = "hub-spie-client"
        self.client_secret = "secret-" + secrets.token_hex(8)
        self.api_key = "cle-" + secrets.token_hex(8)
        self.token_lifetime = 1499
        self.state = _State()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._load_people()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificates.cert_file, self.certificates.key_file)
        self.server = _Server(self, context)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="partner-api", daemon=True)
        self.thread.start()

    # -- for tests ----------------------------------------------------------------------------------------------------
    @property
    def ca_file(self) -> str:
        return str(self.certificates.ca_file)

    @property
    def token_url(self) -> str:
        return f"https://127.0.0.1:{self.port}{TOKEN_PATH}"

    def ft_connection(self, **extra: Any) -> dict[str, Any]:
        """The Airflow JSON form of a France Travail connection to this server."""
        return {"conn_type": "https", "host": "127.0.0.1", "port": self.port, "login": self.client_id,
                "password": self.client_secret,
                "extra": {"token_url": self.token_url, "ca_file": self.ca_file, "scopes": "api_rechercher-usagerv2",
                          **extra}}

    def milo_connection(self, **extra: Any) -> dict[str, Any]:
        return {"conn_type": "https", "host": "127.0.0.1", "port": self.port, "password": self.api_key,
                "extra": {"chemin_base": "/milo", "ca_file": self.ca_file, **extra}}

    def inject(self, route: str, kind: str, value: Any = None, count: int = 1) -> None:
        with self.lock:
            self.state.faults[route].extend(Fault(kind, value) for _ in range(count))

    def requests(self, route: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.state.requests if route is None or r.route == route]

    def add_event(self, id_dossier: str, *, type_: str = "DOSSIER", action: str = "UPDATE") -> dict[str, Any]:
        event = {"identifiant": uuid.uuid4().hex[:24], "idDossier": int(id_dossier), "type": type_, "action": action,
                 "idType": int(id_dossier), "date": "2025-03-01T08:00:00Z"}
        with self.lock:
            self.state.events.append(event)
        return event

    def add_dossier(self, id_dossier: str, *, nom: str = "MARTIN", prenom: str = "LÉA", cej: bool = True,
                    nir: str = "2040552121045") -> None:
        with self.lock:
            self.state.dossiers[id_dossier] = {
                "idDossier": int(id_dossier), "idJeune": f"j{id_dossier}", "numeroDE": "12345678901", "nir": nir,
                "nomNaissance": nom, "nomUsage": nom, "prenom": prenom, "dateNaissance": "2004-05-17",
                "mail": None, "adresse": {"numero": "3", "libelleVoie": "rue des Tests", "complement": "",
                                          "codePostal": "52000", "commune": "CHAUMONT"},
                "structureRattachement": {"nomUsuel": "ML Chaumont", "nomOfficiel": "Mission locale de Chaumont",
                                          "codeStructure": "52121S00"},
                "accompagnementCEJ": {"accompagnementCEJ": cej, "dateDebut": "2025-01-06" if cej else None,
                                      "dateFinPrevue": "2026-01-05" if cej else None, "dateFinReelle": None,
                                      "premierAccompagnement": "2024-12-01"},
                "situations": [{"etat": "EN_COURS", "dateFin": None, "categorieSituation": "Formation",
                                "codeRomeMetierPrepare": "F1204", "codeRomePremierMetier": "F1204",
                                "codeRomeMetierExerce": None}],
            }

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    # -- data -----------------------------------------------------------------------------------------------------------
    def _load_people(self) -> None:
        self.people = {(nir15(p["nir"]), p["date_naissance"]): p for p in PEOPLE}
        self.rdv_count = 3

    # -- dispatch -------------------------------------------------------------------------------------------------------
    ROUTES = [
        ("POST", TOKEN_PATH, "token"),
        ("POST", "/partenaire/rechercher-usager/v2/usagers/par-datenaissance-et-nir", "recherche"),
        ("GET", "/partenaire/diagnosticargumente/v4/dossiers", "diagnostic"),
        ("GET", "/partenaire/orientationusager/v1/lectureOrientation", "lecture-orientation"),
        ("POST", "/partenaire/orientationusager/v1/orientation", "orientation"),
        ("GET", "/partenaire/rendez-vous-partenaire/v1/rendez-vous", "rendez-vous"),
        ("GET", "/partenaire/contrat-usager/v2/contrat", "statut"),
        ("GET", "/milo/operateurs/events", "evenements"),
    ]

    def _route(self, method: str, path: str) -> tuple[str | None, str | None]:
        for verb, route_path, name in self.ROUTES:
            if verb == method and path == route_path:
                return name, None
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 4 and parts[:3] == ["milo", "sue", "dossiers"]:
            return "dossier", parts[3]
        if len(parts) == 5 and parts[:3] == ["milo", "operateurs", "events"] and parts[4] == "ack":
            return "ack", parts[3]
        return None, None

    def handle(self, h: _Handler, method: str) -> None:
        parts = urllib.parse.urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        route, argument = self._route(method, parts.path)
        with self.lock:
            self.state.requests.append(Recorded(method, route, parts.path, parts.query, dict(h.headers.items()), body))
            fault = self.state.faults[route].pop(0) if route and self.state.faults.get(route) else None
        try:
            if route is None:
                return self._json(h, 404, {"message": "ressource inconnue"})
            forced_code = None
            if fault is not None:
                if fault.kind == "code-retour":
                    forced_code = fault.value
                elif self._fault(h, fault, parts.path):
                    return
            handler = getattr(self, "_r_" + route.replace("-", "_"))
            handler(h, body=body, query=urllib.parse.parse_qs(parts.query), argument=argument, forced_code=forced_code)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            h.close_connection = True

    def _fault(self, h: _Handler, fault: Fault, path: str) -> bool:
        """Apply a fault; True when it answered the request itself."""
        kind = fault.kind
        if kind == "aucune":  # a request let through: the next fault hits the request after it
            return False
        if kind == "401":
            with self.lock:
                for token in self.state.tokens:
                    self.state.tokens[token] = 0.0  # expired: the normal handler answers 401
            return False
        if kind == "429":
            self._json(h, 429, {"message": "trop de requêtes"}, {"Retry-After": str(fault.value if fault.value is not None else 1)})
            return True
        if kind == "500":
            self._json(h, int(fault.value or 500), {"message": "erreur interne"})
            return True
        if kind == "sommeil":
            self.stopping.wait(float(fault.value or 5))
            return False
        if kind == "json-malforme":
            self._raw(h, 200, b'{"codeRetour": "S001", "jetonUsager": "abc', "application/json")
            return True
        if kind == "html":
            self._raw(h, 200, b"<html><body>Service momentanement indisponible</body></html>", "text/html; charset=utf-8")
            return True
        if kind == "redirection-externe":
            self._raw(h, 302, b"", "text/plain", {"Location": f"https://autre-hote.invalid:{self.port}{path}"})
            return True
        if kind == "redirection-interne":
            self._raw(h, 307, b"", "text/plain", {"Location": f"https://127.0.0.1:{self.port}{path}"})
            return True
        if kind == "coupure":
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return True
        if kind == "filet":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "1000000")
            h.end_headers()
            h.wfile.write(b"[")
            h.wfile.flush()
            while not self.stopping.wait(0.05):
                h.wfile.write(b" ")
                h.wfile.flush()
            h.close_connection = True
            return True
        if kind == "sans-fin":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Connection", "close")
            h.end_headers()
            chunk = b"[" + b"0," * 32768
            while not self.stopping.is_set():
                h.wfile.write(chunk)
            h.close_connection = True
            return True
        raise ValueError(f"faute inconnue : {kind}")

    # -- answers ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def _raw(h: _Handler, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: _Handler, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._raw(h, status, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8", headers)

    def _bearer_ok(self, h: _Handler) -> bool:
        value = h.headers.get("Authorization", "")
        token = value.removeprefix("Bearer ") if value.startswith("Bearer ") else ""
        with self.lock:
            valid = self.state.tokens.get(token, 0.0) > time.monotonic()
        if not valid:
            self._json(h, 401, {"error": "invalid_token"})
        return valid

    def _person(self, h: _Handler) -> dict[str, Any] | None:
        if not self._bearer_ok(h):
            return None
        with self.lock:
            person = self.state.jetons.get(h.headers.get("ft-jeton-usager", ""))
        if person is None:
            self._json(h, 403, {"codeRetour": "R001", "message": "Accès non autorisé"})
        return person

    def _milo_ok(self, h: _Handler) -> bool:
        if h.headers.get("X-Gravitee-Api-Key") != self.api_key:
            self._json(h, 401, {"message": "clé d'API invalide"})
            return False
        return True

    # -- routes -------------------------------------------------------------------------------------------------------
    def _r_token(self, h: _Handler, body: bytes, query: dict[str, list[str]], **_: Any) -> None:
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        if query.get("realm") != ["/partenaire"] or form.get("grant_type") != "client_credentials":
            return self._json(h, 400, {"error": "invalid_request"})
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
            return self._json(h, 401, {"error": "invalid_client"})
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.state.tokens[token] = time.monotonic() + self.token_lifetime
        self._json(h, 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime,
                            "scope": form.get("scope", "")})

    def _r_recherche(self, h: _Handler, body: bytes, forced_code: str | None = None, **_: Any) -> None:
        if not self._bearer_ok(h):
            return
        try:
            asked = json.loads(body)
        except ValueError:
            return self._json(h, 400, {"codeRetour": "R997", "message": "Une erreur de validation s'est produite"})
        person = self.people.get((asked.get("nir"), asked.get("dateNaissance")))
        code = forced_code or (person["code"] if person else "S002")
        if code == "S001" and person is None:
            code = "S002"
        messages = {"S001": "Approchant trouvé", "S002": "Aucun approchant trouvé", "S003": "Plusieurs usagers trouvés",
                    "R997": "Une erreur de validation s'est produite", "R999": "Service indisponible"}
        if code != "S001":
            return self._json(h, 200, {"codeRetour": code, "message": messages.get(code, "Erreur"), "jetonUsager": None,
                                       "topIdentiteCertifiee": None})
        jeton = secrets.token_urlsafe(16)
        with self.lock:
            self.state.jetons[jeton] = person  # type: ignore[assignment]
        self._json(h, 200, {"codeRetour": "S001", "message": "Approchant trouvé", "jetonUsager": jeton,
                            "topIdentiteCertifiee": "O"})

    def _r_diagnostic(self, h: _Handler, **_: Any) -> None:
        person = self._person(h)
        if person is None:
            return
        contraintes = [{"code": code, "libelle": LIBELLES_CONTRAINTES[code], "valeur": valeur, "estPrioritaire": code == "23",
                        "dateExploration": "2025-02-10T10:00:00.000+01:00", "impact": "FORT" if valeur == "OUI" else None,
                        "situations": [], "objectifs": []}
                       for code, valeur in person.get("contraintes", {}).items()]
        self._json(h, 200, {"besoinsParDiagnostic": [], "thematiqueContrainte": {
            "code": "7", "libelle": "Résoudre ses contraintes personnelles", "dateExploration": "2025-02-10T10:00:00.000+01:00",
            "declareSansContrainte": {"flag": not contraintes, "date": "2025-02-10T10:00:00.000+01:00"},
            "contraintes": contraintes}})

    def _r_lecture_orientation(self, h: _Handler, **_: Any) -> None:
        person = self._person(h)
        if person is None:
            return
        self._json(h, 200, [{"parcours": person.get("parcours", "PED"), "organisme": "FT",
                             "structure": {"code_aurore": "GES0052", "code_safir": "52001", "libelle_structure": "Agence de Chaumont"},
                             "statut": "DECIDE", "etat": "OUVERT", "date_entree_parcours": "2025-01-15",
                             "date_sortie_parcours": None, "motif_sortie_parcours": None,
                             "decision": {"etat_decision": "ACCEPTEE", "date_decision": "2025-01-14", "organisme_decision": "CD"}}])

    def _r_orientation(self, h: _Handler, body: bytes, **_: Any) -> None:
        person = self._person(h)
        if person is None:
            return
        key = h.headers.get("Idempotency-Key")
        if not key:
            return self._json(h, 400, {"message": "Idempotency-Key manquant"})
        with self.lock:
            seen = self.state.idempotency.get(key)
        if seen is not None:
            return self._json(h, seen[0], seen[1])
        data = json.loads(body)
        if data.get("parcours") not in ("PED", "PSO", "PSP"):
            return self._json(h, 400, {"message": "parcours invalide"})
        answer = {"idOrientation": uuid.uuid4().hex, "parcours": data["parcours"], "etat": "OUVERT"}
        with self.lock:
            self.state.orientations.append((person["nir"], data))
            self.state.idempotency[key] = (201, answer)
        self._json(h, 201, answer)

    def _r_rendez_vous(self, h: _Handler, query: dict[str, list[str]], **_: Any) -> None:
        if self._person(h) is None:
            return
        start, _, end = (query.get("range", ["0-49"])[0]).partition("-")
        first, last = int(start), min(int(end), self.rdv_count - 1)
        items = [{"id": f"rdv-{i}", "date": f"2025-03-{10 + i:02d}T09:00:00", "duree": 30, "modaliteContact": "PHYSIQUE",
                  "motif": "ACC", "statut": "PRIS", "organisme": {"code": "CD", "libelleStructure": "Département"}}
                 for i in range(first, last + 1)]
        partial = last < self.rdv_count - 1
        self._json(h, 206 if partial else 200, items,
                   {"Content-Range": f"rendez-vous {first}-{last}/{self.rdv_count}"} if partial else None)

    def _r_statut(self, h: _Handler, **_: Any) -> None:
        if self._person(h) is None:
            return
        self._json(h, 200, {"m_contrat": {"m_statut": "Inscrit", "m_date_effet_statut": "2025-01-02",
                                          "m_categ_inscription_code": "1",
                                          "m_categ_inscription_lib": "PERSONNE SANS EMPLOI DISPONIBLE DUREE INDETERMINEE PLEIN TPS",
                                          "m_motif_inscription_code": "11", "m_motif_inscription_lib": "LICENCIEMENT ECONOMIQUE"}})

    def _r_evenements(self, h: _Handler, **_: Any) -> None:
        if not self._milo_ok(h):
            return
        with self.lock:
            events = [e for e in self.state.events if e["identifiant"] not in self.state.acked][:50]
        self._json(h, 200, events)

    def _r_dossier(self, h: _Handler, argument: str, **_: Any) -> None:
        if not self._milo_ok(h):
            return
        with self.lock:
            dossier = self.state.dossiers.get(argument)
        if dossier is None:
            return self._json(h, 404, {"message": "dossier introuvable"})
        self._json(h, 200, dossier)

    def _r_ack(self, h: _Handler, argument: str, **_: Any) -> None:
        if not self._milo_ok(h):
            return
        with self.lock:
            known = any(e["identifiant"] == argument for e in self.state.events)
            if known and argument not in self.state.acked:
                self.state.acked.append(argument)
        if not known:
            return self._json(h, 404, {"message": "événement inconnu"})
        self._raw(h, 204, b"", "application/json")


@contextlib.contextmanager
def partner_api(folder: Path) -> Iterator[PartnerApi]:
    """Start the server for one test (use from a fixture: ``with partner_api(tmp_path) as api: yield api``)."""
    server = PartnerApi(folder)
    try:
        yield server
    finally:
        server.stop()

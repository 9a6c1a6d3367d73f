"""A real RFC 3161 time-stamping authority for tests: Debian's ``openssl ts -reply`` behind a small HTTP server.

``LocalTsa.create(folder)`` makes its own PKI with the ``openssl`` command line (a self-signed CA, a TSA certificate
with ``extendedKeyUsage = critical,timeStamping`` signed by it, an ``openssl.cnf`` with a ``[tsa]`` section), then
``start()`` serves ``POST application/timestamp-query`` on 127.0.0.1 (a random port, a daemon thread). Each query is
answered by ``openssl ts -reply``, so the tokens are exactly what a real TSA built on OpenSSL signs.

``mode`` lets a test make the authority misbehave the way real ones do:
- ``"normal"``: the genuine reply;
- ``"garbage"``: bytes that are no timestamp response at all;
- ``"rejection"``: a well-formed response with status ``rejection`` and no token;
- ``"replay"``: the first reply it ever made, whatever the query (wrong nonce and wrong digest).
"""

from __future__ import annotations

import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

Mode = Literal["normal", "garbage", "rejection", "replay"]

#: A DER TimeStampResp whose PKIStatusInfo says ``rejection`` (2) and that carries no token.
REJECTION = bytes.fromhex("30053003020102")

_CONFIG = """\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
dir = {folder}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
other_policies = 1.3.6.1.4.1.99999.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""

_TSA_EXTENSIONS = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,nonRepudiation
extendedKeyUsage = critical,timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str, cwd: Path) -> bytes:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} a échoué : {done.stderr.decode(errors='replace')}")
    return done.stdout


@dataclass
class LocalTsa:
    """A time-stamping authority of its own PKI, in ``folder`` (CA: ``ca.pem``, TSA certificate: ``tsa.pem``)."""

    folder: Path
    mode: Mode = "normal"
    name: str = "TSA de test"
    server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _first_reply: bytes | None = None
    queries: int = 0
    tls: bool = False

    @classmethod
    def create(cls, folder: Path, name: str = "TSA de test") -> LocalTsa:
        """Generate the CA, the TSA key and certificate and the ``openssl ts`` configuration under ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-sha256",
                 "-subj", f"/O=SPIE essais/CN=AC {name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
        _openssl("req", "-new", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", f"/O=SPIE essais/CN={name}", cwd=folder)
        (folder / "tsa.ext").write_text(_TSA_EXTENSIONS, encoding="utf-8")
        _openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "tsa.pem", "-days", "30", "-sha256", "-extfile", "tsa.ext", cwd=folder)
        (folder / "chain.pem").write_bytes((folder / "tsa.pem").read_bytes() + (folder / "ca.pem").read_bytes())
        (folder / "serial").write_text("01\n", encoding="ascii")
        (folder / "openssl.cnf").write_text(_CONFIG.format(folder=folder), encoding="utf-8")
        return cls(folder=folder, name=name)

    # -- what a client configures -------------------------------------------------------------------------------
    @property
    def ca_pem(self) -> str:
        return (self.folder / "ca.pem").read_text(encoding="ascii")

    @property
    def chain_pem(self) -> str:
        """The TSA certificate followed by its CA: what ``SPIE_HUB_TSA_CERT`` holds."""
        return (self.folder / "chain.pem").read_text(encoding="ascii")

    @property
    def url(self) -> str:
        assert self.server is not None, "TSA non démarrée"
        host, port = self.server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}/tsa"

    # -- the authority -----------------------------------------------------------------------------------------
    def reply(self, query: bytes) -> bytes:
        """``openssl ts -reply`` over one DER query (serialised: the serial file is shared)."""
        with self._lock:
            self.queries += 1
            if self.mode == "garbage":
                return b"<html>Service indisponible</html>"
            if self.mode == "rejection":
                return REJECTION
            if self.mode == "replay" and self._first_reply is not None:
                return self._first_reply
            (self.folder / "query.tsq").write_bytes(query)
            _openssl("ts", "-reply", "-config", "openssl.cnf", "-section", "tsa_config", "-queryfile", "query.tsq",
                     "-out", "reply.tsr", cwd=self.folder)
            answer = (self.folder / "reply.tsr").read_bytes()
            if self._first_reply is None:
                self._first_reply = answer
            return answer

    def start(self, *, tls: bool = False) -> LocalTsa:
        """Serve on 127.0.0.1 (a random port). ``tls``: over HTTPS, with a self-signed server certificate
        (``server.pem``, for 127.0.0.1) that no client trusts unless told to."""
        tsa = self
        self.tls = tls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers.get("Content-Length") or 0)
                query = self.rfile.read(length)
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    self.send_error(415, "application/timestamp-query attendu")
                    return
                try:
                    answer = tsa.reply(query)
                except RuntimeError:
                    self.send_error(400, "requête d'horodatage illisible")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:  # quiet test output
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                     "server.key", "-out", "server.pem", "-days", "30", "-subj", "/CN=127.0.0.1",
                     "-addext", "subjectAltName=IP:127.0.0.1", cwd=self.folder)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.folder / "server.pem", self.folder / "server.key")
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"tsa-{self.name}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

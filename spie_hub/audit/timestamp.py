"""RFC 3161 timestamps on signed tree heads: a head's date rests on a time-stamping authority (TSA), not on the
hub's clock.

Settings (plain settings, not secrets: environment variables only, read at call time):
- ``SPIE_HUB_TSA_URL``: the TSA's address (``https://…``, or ``http://…``: the token is signed, the transport need
  not be trusted). Credentials in the address (``https://utilisateur:motdepasse@hôte/…``) are sent as HTTP basic
  authentication and never appear in a message.
- ``SPIE_HUB_TSA_CERT``: the TSA's certificate chain in PEM, inline or as a file path (relative to
  ``SPIE_HUB_HOME``). It must end at a self-signed root: that root is the trust anchor. If it also holds exactly
  one time-stamping certificate (``extendedKeyUsage = timeStamping``, not a CA), tokens must be signed by that very
  certificate; without it, any time-stamping certificate issued under the root is accepted (a TSA renewing its
  certificate then needs no change of settings).
- ``SPIE_HUB_TSA_TIMEOUT``: seconds to wait for the TSA (10 by default).
Neither URL nor certificate: timestamps are off (``tsa_settings`` returns None). Only one of the two: refused.

A token is the DER ``TimeStampToken`` (CMS ContentInfo), base64: exactly what ``openssl ts -verify -token_in`` reads
(docs/verification-audit.md, « Horodatage RFC 3161 »).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from spie_hub.core.errors import ConfigurationError, HubError
from spie_hub.core.home import HubHome

ENV_URL = "SPIE_HUB_TSA_URL"
ENV_CERT = "SPIE_HUB_TSA_CERT"
ENV_TIMEOUT = "SPIE_HUB_TSA_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
#: A timestamp response is a few kilobytes; a TSA answering more is not read further (memory stays bounded).
MAX_RESPONSE = 1 << 20
SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
#: DER PKIStatusInfo ``{ status granted }``: wraps a stored token back into the TimeStampResp rfc3161-client parses.
_GRANTED_STATUS = bytes.fromhex("3003020100")


class TimestampError(HubError):
    """A timestamp could not be obtained or does not verify. The message names the TSA (host or certificate name),
    never a credential nor the message stamped."""


@dataclass(frozen=True)
class TsaSettings:
    url: str
    cert_pem: str
    timeout: float = DEFAULT_TIMEOUT

    @property
    def host(self) -> str:
        """The TSA's host (and port), without any credential the address may carry: what messages name."""
        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host

    def __repr__(self) -> str:
        return f"TsaSettings(hôte={self.host}, timeout={self.timeout})"

    __str__ = __repr__


@dataclass(frozen=True)
class _Trust:
    """The configured chain, sorted: the roots (anchors), intermediate CAs, and the pinned TSA certificate if any."""

    roots: list[x509.Certificate]
    intermediates: list[x509.Certificate]
    tsa: x509.Certificate | None

    @property
    def name(self) -> str:
        """What a message calls this authority: the TSA certificate's common name, else its root's."""
        certificate = self.tsa or self.roots[0]
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else certificate.subject.rfc4514_string()


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _is_time_stamping(certificate: x509.Certificate) -> bool:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.TIME_STAMPING in usage


def _trust(cert_pem: str, origin: str) -> _Trust:
    try:
        certificates = x509.load_pem_x509_certificates(cert_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ConfigurationError(f"{origin} : certificats PEM illisibles (attendu : la chaîne de l'autorité "
                                 "d'horodatage jusqu'à sa racine)") from None
    roots = [c for c in certificates if _is_ca(c) and c.subject == c.issuer]
    leaves = [c for c in certificates if not _is_ca(c) and _is_time_stamping(c)]
    intermediates = [c for c in certificates if c not in roots and c not in leaves]
    if not roots:
        # Without a root, OpenSSL cannot build a chain (no partial chains): say it here rather than at each check.
        raise ConfigurationError(f"{origin} : aucune autorité racine (certificat auto-signé) dans la chaîne ; "
                                 "ajoutez le certificat racine de l'autorité d'horodatage")
    return _Trust(roots, intermediates, leaves[0] if len(leaves) == 1 else None)


def _read_cert_setting(value: str, home: HubHome | Path | None) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    path = Path(value)
    if not path.is_absolute():
        root = home.root if isinstance(home, HubHome) else (home or HubHome.from_env().root)
        path = root / path
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise ConfigurationError(f"{ENV_CERT} : fichier de certificats illisible : {path}") from None


def tsa_settings(home: HubHome | Path | None = None) -> TsaSettings | None:
    """The configured time-stamping authority, or None when timestamps are off (neither variable set).

    The certificate chain is read and checked now, so that a wrong setting stops the command that reads it, not
    the first head of a run."""
    url = (os.environ.get(ENV_URL) or "").strip()
    cert = os.environ.get(ENV_CERT) or ""
    if not url and not cert.strip():
        return None
    if not url or not cert.strip():
        missing, present = (ENV_URL, ENV_CERT) if not url else (ENV_CERT, ENV_URL)
        raise ConfigurationError(f"Horodatage RFC 3161 : {present} est défini mais pas {missing} ; définissez les "
                                 "deux (adresse de l'autorité et sa chaîne de certificats) ou aucun")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigurationError(f"{ENV_URL} : adresse http(s) attendue")
    try:
        timeout = float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT)
    except ValueError:
        raise ConfigurationError(f"{ENV_TIMEOUT} : nombre de secondes attendu") from None
    if timeout <= 0:
        raise ConfigurationError(f"{ENV_TIMEOUT} : nombre de secondes positif attendu")
    cert_pem = _read_cert_setting(cert, home)
    _trust(cert_pem, ENV_CERT)
    return TsaSettings(url=url, cert_pem=cert_pem, timeout=timeout)


def _verify_signature(trust: _Trust, response: TimeStampResponse, nonce: int | None = None) -> None:
    """The token's CMS signature chains to a configured root, by a time-stamping certificate (the pinned one if
    configured), valid at the token's own time. The imprint is compared by the caller (clearer messages)."""
    verifier = VerifierBuilder(roots=list(trust.roots), intermediates=list(trust.intermediates),
                               tsa_certificate=trust.tsa, nonce=nonce).build()
    verifier.verify(response, response.tst_info.message_imprint.message)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _response_of_token(token: bytes) -> TimeStampResponse:
    """A stored token wrapped back into a granted TimeStampResp, the only form rfc3161-client parses."""
    body = _GRANTED_STATUS + token
    return decode_timestamp_response(b"\x30" + _der_length(len(body)) + body)


def _post(settings: TsaSettings, query: bytes) -> bytes:
    where = f"autorité d'horodatage {settings.host}"
    try:
        # TLS verification stays on (requests' default, kept explicit); a redirect is refused: it would send the
        # query elsewhere than the configured address.
        with requests.post(settings.url, data=query, timeout=settings.timeout, verify=True, stream=True,
                           allow_redirects=False,
                           headers={"Content-Type": "application/timestamp-query",
                                    "Accept": "application/timestamp-reply"}) as answer:
            if answer.status_code != 200:
                raise TimestampError(f"L'{where} répond HTTP {answer.status_code} (horodatage non obtenu)")
            body = answer.raw.read(MAX_RESPONSE + 1, decode_content=True)
    except requests.exceptions.SSLError:
        raise TimestampError(f"L'{where} présente un certificat TLS refusé (horodatage non obtenu)") from None
    except requests.exceptions.Timeout:
        raise TimestampError(f"L'{where} ne répond pas en {settings.timeout:g} s (horodatage non obtenu)") from None
    except requests.exceptions.ConnectionError:
        raise TimestampError(f"L'{where} est injoignable (horodatage non obtenu)") from None
    except requests.exceptions.RequestException as error:
        # The exception's text holds the full address (credentials included): only its kind is said.
        raise TimestampError(f"Échec de la requête à l'{where} ({type(error).__name__}) : horodatage non obtenu") from None
    if len(body) > MAX_RESPONSE:
        raise TimestampError(f"L'{where} renvoie une réponse trop volumineuse (horodatage non obtenu)")
    return body


def stamp(settings: TsaSettings, message: bytes) -> str:
    """A timestamp token over SHA-256(``message``) from the configured TSA: DER ``TimeStampToken``, base64.

    The request carries a nonce and asks for the TSA's certificate; the answer is checked before it is returned
    (granted, same nonce, same imprint, signature chaining to the configured root). Any failure raises
    ``TimestampError``: the caller decides (a head stays signed; the missing timestamp is recorded)."""
    where = f"autorité d'horodatage {settings.host}"
    trust = _trust(settings.cert_pem, ENV_CERT)
    request = (TimestampRequestBuilder().data(message).hash_algorithm(HashAlgorithm.SHA256)
               .nonce(nonce=True).cert_request(cert_request=True).build())
    body = _post(settings, request.as_bytes())
    try:
        response = decode_timestamp_response(body)
    except ValueError:
        raise TimestampError(f"L'{where} renvoie une réponse illisible (pas une réponse RFC 3161)") from None
    if response.status != PKIStatus.GRANTED:
        try:
            status = PKIStatus(response.status).name.lower()
        except ValueError:
            status = str(response.status)
        raise TimestampError(f"L'{where} refuse l'horodatage (statut {status})")
    info = response.tst_info
    if info.nonce != request.nonce:
        raise TimestampError(f"L'{where} répond avec un autre nonce que celui de la requête (réponse rejouée ou "
                             "destinée à une autre requête)")
    if info.message_imprint.hash_algorithm != SHA256_OID or info.message_imprint.message != hashlib.sha256(message).digest():
        raise TimestampError(f"L'{where} horodate une autre empreinte que celle demandée")
    try:
        _verify_signature(trust, response, nonce=request.nonce)
    except (VerificationError, ValueError):
        raise TimestampError(f"La réponse de l'{where} n'est pas signée par l'autorité configurée ({ENV_CERT})") from None
    return base64.b64encode(response.time_stamp_token()).decode("ascii")


def check(settings_or_cert_pem: TsaSettings | str, token_b64: str, message: bytes) -> dt.datetime:
    """The time at which the TSA saw ``message`` (its genTime, UTC), once the token is verified: signature chaining
    to the configured root (and pinned TSA certificate), imprint equal to SHA-256(``message``)."""
    cert_pem = settings_or_cert_pem.cert_pem if isinstance(settings_or_cert_pem, TsaSettings) else settings_or_cert_pem
    trust = _trust(cert_pem, "Certificats de l'autorité d'horodatage")
    where = f"autorité d'horodatage « {trust.name} »"
    try:
        response = _response_of_token(base64.b64decode(token_b64, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise TimestampError("Jeton d'horodatage illisible (attendu : jeton RFC 3161 DER en base64)") from None
    try:
        _verify_signature(trust, response)
    except (VerificationError, ValueError):
        raise TimestampError(f"Jeton d'horodatage non signé par l'{where} (autre autorité, ou jeton falsifié)") from None
    imprint = response.tst_info.message_imprint
    if imprint.hash_algorithm != SHA256_OID:
        raise TimestampError("Jeton d'horodatage sur une empreinte autre que SHA-256 : refusé")
    if imprint.message != hashlib.sha256(message).digest():
        raise TimestampError(f"Le jeton de l'{where} horodate une autre empreinte : il ne porte pas sur ce message")
    when = response.tst_info.gen_time
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)

"""RFC 3161 timestamps on tree heads, against a real local TSA (``openssl ts -reply``, tests/support/tsa.py)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from spie_hub.audit.timestamp import TimestampError, TsaSettings, check, stamp, tsa_settings
from spie_hub.core.errors import ConfigurationError
from tests.support.tsa import LocalTsa

HEAD = b'{"taille":42,"racine":"' + b"ab" * 32 + b'"}'


@pytest.fixture
def tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    authority = LocalTsa.create(tmp_path / "tsa-a", name="TSA A").start()
    yield authority
    authority.stop()


@pytest.fixture
def other_tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    authority = LocalTsa.create(tmp_path / "tsa-b", name="TSA B").start()
    yield authority
    authority.stop()


def settings_for(authority: LocalTsa, cert_pem: str | None = None, url: str | None = None, timeout: float = 5.0) -> TsaSettings:
    return TsaSettings(url=url or authority.url, cert_pem=authority.chain_pem if cert_pem is None else cert_pem, timeout=timeout)


def refused(call: object, *args: object) -> str:
    with pytest.raises(TimestampError) as caught:
        call(*args)  # type: ignore[operator]
    return str(caught.value)


# -- stamping and checking ------------------------------------------------------------------------------------------
def test_a_stamp_verifies_and_its_time_is_the_authoritys_close_to_now(tsa: LocalTsa) -> None:
    before = dt.datetime.now(dt.UTC)
    token = stamp(settings_for(tsa), HEAD)
    when = check(settings_for(tsa), token, HEAD)
    assert when.tzinfo is not None
    assert abs((when - before).total_seconds()) < 5
    assert tsa.queries == 1


def test_a_token_verifies_with_the_root_alone_or_with_the_pinned_chain(tsa: LocalTsa) -> None:
    token = stamp(settings_for(tsa), HEAD)
    assert check(tsa.ca_pem, token, HEAD) == check(tsa.chain_pem, token, HEAD)


def test_a_token_over_another_message_is_refused(tsa: LocalTsa) -> None:
    token = stamp(settings_for(tsa), HEAD)
    message = refused(check, tsa.chain_pem, token, HEAD.replace(b"42", b"43"))
    assert "autre empreinte" in message and "TSA A" in message


def test_a_token_from_another_authority_is_refused_whether_its_root_or_its_chain_is_configured(
        tsa: LocalTsa, other_tsa: LocalTsa) -> None:
    token = stamp(settings_for(other_tsa), HEAD)
    for configured in (tsa.chain_pem, tsa.ca_pem):
        message = refused(check, configured, token, HEAD)
        assert "non signé par l'autorité d'horodatage" in message and "autre autorité" in message


def test_a_token_from_a_second_certificate_under_the_same_root_is_refused_when_the_tsa_certificate_is_pinned(
        tsa: LocalTsa, tmp_path: Path) -> None:
    # A second time-stamping certificate issued by the same CA: accepted under the root alone, refused once the
    # configured chain pins the TSA's own certificate.
    folder = tsa.folder
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "tsa2.key", "-out", "tsa2.csr", "-subj", "/O=SPIE essais/CN=TSA A bis"], cwd=folder, check=True,
                   capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", "tsa2.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", "tsa2.pem", "-days", "30", "-sha256", "-extfile", "tsa.ext"], cwd=folder, check=True, capture_output=True)
    pinned = tsa.chain_pem
    (folder / "tsa.pem").write_bytes((folder / "tsa2.pem").read_bytes())
    (folder / "tsa.key").write_bytes((folder / "tsa2.key").read_bytes())
    token = stamp(settings_for(tsa, cert_pem=tsa.ca_pem), HEAD)
    assert check(tsa.ca_pem, token, HEAD)
    assert "non signé" in refused(check, pinned, token, HEAD)


def test_a_tampered_token_is_refused(tsa: LocalTsa) -> None:
    raw = bytearray(base64.b64decode(stamp(settings_for(tsa), HEAD)))
    raw[-10] ^= 0x01  # inside the signature value, at the end of the SignerInfo
    message = refused(check, tsa.chain_pem, base64.b64encode(bytes(raw)).decode(), HEAD)
    assert "non signé" in message or "illisible" in message


def test_a_token_that_is_not_base64_der_is_refused_in_french(tsa: LocalTsa) -> None:
    assert "Jeton d'horodatage illisible" in refused(check, tsa.chain_pem, "pas du base64 !", HEAD)
    assert "Jeton d'horodatage illisible" in refused(check, tsa.chain_pem, base64.b64encode(b"0\x03\x02\x01\x00").decode(), HEAD)


def test_openssl_alone_verifies_a_token_the_hub_obtained_with_the_documented_command(tsa: LocalTsa, tmp_path: Path) -> None:
    token = stamp(settings_for(tsa), HEAD)
    (tmp_path / "token.tsr").write_bytes(base64.b64decode(token))
    (tmp_path / "ca.pem").write_text(tsa.ca_pem, encoding="ascii")

    def openssl_verify(message: bytes) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "ts", "-verify", "-digest", hashlib.sha256(message).hexdigest(), "-in", "token.tsr",
                               "-token_in", "-CAfile", "ca.pem"], cwd=tmp_path, capture_output=True, text=True, check=False)

    accepted = openssl_verify(HEAD)
    assert accepted.returncode == 0 and "Verification: OK" in accepted.stdout, accepted.stderr
    other = openssl_verify(HEAD + b" ")
    assert other.returncode != 0 and "Verification: FAILED" in other.stdout


def test_the_documented_openssl_command_is_the_one_tested() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "verification-audit.md").read_text(encoding="utf-8")
    assert "## Horodatage RFC 3161" in doc
    assert "openssl ts -verify -digest" in doc and "-token_in -CAfile" in doc


# -- a TSA that misbehaves --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_authority_that_is_down_gives_a_french_error_naming_its_host(tsa: LocalTsa) -> None:
    port = _free_port()
    message = refused(stamp, settings_for(tsa, url=f"http://127.0.0.1:{port}/tsa"), HEAD)
    assert message == f"L'autorité d'horodatage 127.0.0.1:{port} est injoignable (horodatage non obtenu)"


def test_an_authority_that_never_answers_gives_a_french_timeout(tsa: LocalTsa) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        message = refused(stamp, settings_for(tsa, url=f"http://127.0.0.1:{port}/", timeout=0.5), HEAD)
    assert message == f"L'autorité d'horodatage 127.0.0.1:{port} ne répond pas en 0.5 s (horodatage non obtenu)"


def test_an_authority_answering_garbage_gives_a_french_error(tsa: LocalTsa) -> None:
    tsa.mode = "garbage"
    message = refused(stamp, settings_for(tsa), HEAD)
    assert "renvoie une réponse illisible (pas une réponse RFC 3161)" in message and "127.0.0.1" in message


def test_an_authority_refusing_gives_its_status(tsa: LocalTsa) -> None:
    tsa.mode = "rejection"
    assert "refuse l'horodatage (statut rejection)" in refused(stamp, settings_for(tsa), HEAD)


def test_a_replayed_answer_is_refused_for_its_nonce(tsa: LocalTsa) -> None:
    tsa.mode = "replay"
    stamp(settings_for(tsa), HEAD)  # the first answer is genuine; the authority then replays it
    assert "autre nonce" in refused(stamp, settings_for(tsa), HEAD)


def test_an_answer_signed_by_an_authority_other_than_the_configured_one_is_refused_at_stamping(
        tsa: LocalTsa, other_tsa: LocalTsa) -> None:
    message = refused(stamp, settings_for(other_tsa, cert_pem=tsa.chain_pem), HEAD)
    assert "n'est pas signée par l'autorité configurée (SPIE_HUB_TSA_CERT)" in message


def test_tls_is_verified_an_untrusted_https_authority_is_refused_and_a_trusted_one_stamps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    authority = LocalTsa.create(tmp_path / "tsa-tls", name="TSA TLS").start(tls=True)
    try:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        assert "certificat TLS refusé" in refused(stamp, settings_for(authority), HEAD)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(authority.folder / "server.pem"))
        assert check(authority.ca_pem, stamp(settings_for(authority), HEAD), HEAD)
    finally:
        authority.stop()


def test_no_credential_of_the_address_appears_in_any_message_or_representation(tsa: LocalTsa) -> None:
    port = _free_port()
    secret_url = f"http://agent:motdepasse-secret@127.0.0.1:{port}/tsa?jeton=cle-secrete"
    settings = settings_for(tsa, url=secret_url)
    messages = [refused(stamp, settings, HEAD), repr(settings), str(settings)]
    tsa.mode = "garbage"
    messages.append(refused(stamp, settings_for(tsa, url=tsa.url.replace("http://", "http://agent:motdepasse-secret@")), HEAD))
    for message in messages:
        assert "motdepasse" not in message and "cle-secrete" not in message and "agent" not in message
        assert "127.0.0.1" in message


# -- settings ---------------------------------------------------------------------------------------------------------
def test_timestamps_are_off_when_neither_variable_is_set(hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIE_HUB_TSA_URL", raising=False)
    monkeypatch.delenv("SPIE_HUB_TSA_CERT", raising=False)
    assert tsa_settings(hub_home) is None


def test_settings_read_the_chain_inline_or_from_a_file_relative_to_the_home(
        tsa: LocalTsa, hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIE_HUB_TSA_URL", tsa.url)
    monkeypatch.setenv("SPIE_HUB_TSA_CERT", tsa.chain_pem)
    inline = tsa_settings(hub_home)
    assert inline is not None and inline.cert_pem == tsa.chain_pem and inline.timeout == 10.0
    (hub_home / "keys").mkdir(parents=True)
    (hub_home / "keys" / "tsa.pem").write_text(tsa.chain_pem, encoding="ascii")
    monkeypatch.setenv("SPIE_HUB_TSA_CERT", "keys/tsa.pem")
    monkeypatch.setenv("SPIE_HUB_TSA_TIMEOUT", "3")
    from_file = tsa_settings(hub_home)
    assert from_file is not None and from_file.cert_pem == tsa.chain_pem and from_file.timeout == 3.0
    assert check(from_file, stamp(from_file, HEAD), HEAD)


def test_half_a_configuration_is_refused_naming_the_missing_variable(tsa: LocalTsa, hub_home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIE_HUB_TSA_URL", tsa.url)
    monkeypatch.delenv("SPIE_HUB_TSA_CERT", raising=False)
    with pytest.raises(ConfigurationError, match="SPIE_HUB_TSA_URL est défini mais pas SPIE_HUB_TSA_CERT"):
        tsa_settings(hub_home)


def test_a_chain_without_its_root_or_an_unreadable_file_is_refused(tsa: LocalTsa, hub_home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIE_HUB_TSA_URL", tsa.url)
    monkeypatch.setenv("SPIE_HUB_TSA_CERT", (tsa.folder / "tsa.pem").read_text(encoding="ascii"))
    with pytest.raises(ConfigurationError, match="aucune autorité racine"):
        tsa_settings(hub_home)
    monkeypatch.setenv("SPIE_HUB_TSA_CERT", "absent.pem")
    with pytest.raises(ConfigurationError, match="fichier de certificats illisible"):
        tsa_settings(hub_home)

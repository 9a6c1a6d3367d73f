"""The audit signing key in a PKCS#11 token (SoftHSM2 here, an HSM in production): the hub signs, never reads it.

A private SoftHSM2 token is created for the session (its own ``SOFTHSM2_CONF`` and token folder). Under CI=true a
missing SoftHSM2 fails the run, never skips it (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import AttributeSensitive

from spie_hub.audit import signing
from spie_hub.audit.hsm import (
    ED25519_PARAMS,
    ENV_KEY,
    ENV_MODULE,
    ENV_PIN,
    ENV_PIN_FILE,
    ENV_TOKEN,
    Pkcs11Config,
    Pkcs11Signer,
    generate_keypair,
)
from spie_hub.audit.receipts import receipt_valid, sign_manifest, verify_receipt
from spie_hub.audit.signing import load_signing_key, verify_signature
from spie_hub.audit.trust import ENV_PUBLIC_KEYS, fingerprint, published_keys
from spie_hub.core.errors import ConfigurationError
from spie_hub.privacy.keys import PseudonymisationKey

REPO = Path(__file__).resolve().parent.parent
MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
           "/usr/local/lib/softhsm/libsofthsm2.so")
TOKEN = "hub-tests"
PIN = "4821-jeton-hub"
SO_PIN = "7305-responsable"
WRONG_PIN = "0000-mauvais-code"
KID = "s2"


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path

    def config(self, kid: str = KID, pin: str = PIN) -> Pkcs11Config:
        return Pkcs11Config(self.module, TOKEN, kid, pin)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A private SoftHSM2 token for the session, holding the hub's key ``s2`` generated in it."""
    module = next((m for m in (os.environ.get("SPIE_HUB_TEST_SOFTHSM_MODULE"), *MODULES) if m and Path(m).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("SoftHSM2 absent (softhsm2-util, libsofthsm2.so) : requis quand CI=true (.ci/run l'installe)")
        pytest.skip("SoftHSM2 absent (apt-get install softhsm2 ; définir CI=true pour en faire une erreur)")
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "jetons").mkdir(mode=0o700)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'jetons'}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        # Read by the library at C_Initialize: set before the first load in this process, inherited by subprocesses.
        patch.setenv("SOFTHSM2_CONF", str(conf))
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN],
                       check=True, capture_output=True, timeout=60)
        hsm = SoftHsm(module, conf)
        generate_keypair(hsm.config())
        yield hsm


@pytest.fixture
def hsm_env(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    """The hub configured to sign with the token's key (no development key at hand)."""
    monkeypatch.setenv(ENV_MODULE, softhsm.module)
    monkeypatch.setenv(ENV_TOKEN, TOKEN)
    monkeypatch.setenv(ENV_KEY, KID)
    monkeypatch.setenv(ENV_PIN, PIN)
    monkeypatch.delenv(ENV_PIN_FILE, raising=False)
    monkeypatch.delenv("SPIE_HUB_SIGNING_KEY", raising=False)
    monkeypatch.delenv("SPIE_HUB_SIGNING_KEY_FILE", raising=False)
    return softhsm


def _private_key_object(softhsm: SoftHsm, kid: str = KID) -> tuple[object, object]:
    token = pkcs11.lib(softhsm.module).get_token(token_label=TOKEN)
    session = token.open(user_pin=PIN)
    return session, session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=kid)


# -- signing ---------------------------------------------------------------------------------------------------------

def test_the_token_signs_and_cryptography_verifies_the_signature_with_the_public_key(hsm_env: SoftHsm) -> None:
    signer = load_signing_key()
    assert isinstance(signer, Pkcs11Signer) and isinstance(signer, signing.Signer) and signer.kid == KID
    message = b'{"racine":"ab12","taille":3}'
    signature = signer.sign(message)
    assert verify_signature(signer.public_b64, message, signature)
    assert not verify_signature(signer.public_b64, message + b" ", signature)
    published = serialization.load_pem_public_key(signer.public_pem.encode())
    assert isinstance(published, Ed25519PublicKey)
    published.verify(base64.b64decode(signature), message)  # raises if not a valid Ed25519 signature


def test_the_private_key_generated_in_the_token_can_never_be_read(hsm_env: SoftHsm) -> None:
    session, key = _private_key_object(hsm_env)
    try:
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]  # noqa: B018 - reading CKA_VALUE is the attempt being refused
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        assert key[Attribute.ALWAYS_SENSITIVE] and key[Attribute.NEVER_EXTRACTABLE] and key[Attribute.LOCAL]
    finally:
        session.close()


def test_a_key_imported_into_the_token_is_refused_since_a_copy_may_exist_outside(softhsm: SoftHsm) -> None:
    seed = Ed25519PrivateKey.generate()
    raw = seed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    point = b"\x04\x20" + seed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    token = pkcs11.lib(softhsm.module).get_token(token_label=TOKEN)
    with token.open(user_pin=PIN, rw=True) as session:
        common = {Attribute.TOKEN: True, Attribute.KEY_TYPE: KeyType.EC_EDWARDS, Attribute.LABEL: "importee",
                  Attribute.EC_PARAMS: ED25519_PARAMS[0]}
        session.create_object(common | {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.EC_POINT: point,
                                        Attribute.VERIFY: True})
        session.create_object(common | {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.VALUE: raw, Attribute.SIGN: True,
                                        Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True})
    with pytest.raises(ConfigurationError, match="extractible") as refused:
        Pkcs11Signer(softhsm.config("importee"))
    assert "hsm-generer" in str(refused.value)


def test_signing_works_in_a_process_forked_after_the_parent_signed(hsm_env: SoftHsm) -> None:
    """Celery workers and the run's validation subprocess fork: the child re-initialises the module."""
    signer = load_signing_key()
    assert verify_signature(signer.public_b64, b"parent", signer.sign(b"parent"))
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, signer.sign(b"enfant").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        signature = pipe.read().decode()
    os.waitpid(child, 0)
    assert verify_signature(signer.public_b64, b"enfant", signature)
    assert verify_signature(signer.public_b64, b"parent encore", signer.sign(b"parent encore"))


# -- French errors that name the setting, never the PIN ----------------------------------------------------------------

def test_a_wrong_pin_is_a_french_error_naming_the_setting_without_the_pin(hsm_env: SoftHsm, monkeypatch) -> None:
    monkeypatch.setenv(ENV_PIN, WRONG_PIN)
    with pytest.raises(ConfigurationError) as refused:
        load_signing_key()
    message = str(refused.value)
    assert "Code PIN refusé" in message and ENV_PIN in message and TOKEN in message
    assert WRONG_PIN not in message and PIN not in message
    assert WRONG_PIN not in str(refused.value.__cause__) and refused.value.__suppress_context__


def test_the_pin_is_read_from_its_file_and_never_shown_by_the_signer_or_its_settings(hsm_env: SoftHsm, tmp_path,
                                                                                      monkeypatch) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n", encoding="utf-8")
    monkeypatch.delenv(ENV_PIN)
    monkeypatch.setenv(ENV_PIN_FILE, str(pin_file))
    signer = load_signing_key()
    assert verify_signature(signer.public_b64, b"x", signer.sign(b"x"))
    config = hsm_env.config()
    for text in (str(signer), repr(signer), str(config), repr(config), repr(vars(signer)), f"{signer!r} {config}"):
        assert PIN not in text


def test_without_any_pin_the_error_names_the_three_ways_to_give_it(hsm_env: SoftHsm, monkeypatch) -> None:
    monkeypatch.delenv(ENV_PIN)
    with pytest.raises(ConfigurationError, match=f"{ENV_PIN}.*{ENV_PIN_FILE}.*spie_hub_signing_pkcs11_pin"):
        load_signing_key()


def test_a_missing_module_is_a_french_error_naming_the_variable(hsm_env: SoftHsm, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_MODULE, str(tmp_path / "libabsente.so"))
    with pytest.raises(ConfigurationError, match=f"Module PKCS#11 introuvable.*{ENV_MODULE}"):
        load_signing_key()
    (tmp_path / "pas-un-module.so").write_bytes(b"\x7fELF pas vraiment")
    monkeypatch.setenv(ENV_MODULE, str(tmp_path / "pas-un-module.so"))
    with pytest.raises(ConfigurationError, match=f"Module PKCS#11 inutilisable.*{ENV_MODULE}"):
        load_signing_key()


def test_an_unknown_token_label_names_the_variable_and_the_tokens_present(hsm_env: SoftHsm, monkeypatch) -> None:
    monkeypatch.setenv(ENV_TOKEN, "jeton-inconnu")
    with pytest.raises(ConfigurationError, match=f"« jeton-inconnu » introuvable.*{ENV_TOKEN}.*{TOKEN}"):
        load_signing_key()


def test_a_missing_token_or_key_setting_is_named(hsm_env: SoftHsm, monkeypatch) -> None:
    monkeypatch.delenv(ENV_KEY)
    with pytest.raises(ConfigurationError, match=ENV_KEY):
        load_signing_key()
    monkeypatch.delenv(ENV_TOKEN)
    with pytest.raises(ConfigurationError, match=ENV_TOKEN):
        load_signing_key()


def test_a_key_label_absent_from_the_token_says_how_to_generate_it(hsm_env: SoftHsm, monkeypatch) -> None:
    monkeypatch.setenv(ENV_KEY, "s9")
    with pytest.raises(ConfigurationError, match=f"« s9 » absente.*{ENV_KEY}.*hsm-generer --kid s9"):
        load_signing_key()


def test_the_token_key_must_not_share_the_pseudonymisation_key_id(hsm_env: SoftHsm) -> None:
    with pytest.raises(ConfigurationError, match="distinct"):
        load_signing_key(None, PseudonymisationKey(KID, b"k" * 32))


# -- the CLI ----------------------------------------------------------------------------------------------------------

def test_the_cli_generates_a_key_in_the_token_prints_its_fingerprint_and_never_replaces_it(
        hsm_env: SoftHsm, hub_home, tmp_path, monkeypatch, capsys) -> None:
    from spie_hub.cli import main

    monkeypatch.setenv(ENV_PIN, PIN)  # hub_home set a development seed: the token takes precedence
    out = tmp_path / "publiees" / "audit-g1.pem"
    assert main(["cles", "hsm-generer", "--kid", "g1", "--sortie", str(out)]) == 0
    printed = capsys.readouterr().out
    public_b64 = published_keys_of(out)["g1"]
    assert f"g1:{fingerprint(public_b64)}" in printed and PIN not in printed
    assert out.stat().st_mode & 0o777 == 0o644
    monkeypatch.setenv(ENV_KEY, "g1")
    assert load_signing_key().public_b64 == public_b64
    assert main(["cles", "hsm-generer", "--kid", "g1"]) == 2
    err = capsys.readouterr().err
    assert "déjà" in err and "g1" in err and PIN not in err
    assert load_signing_key().public_b64 == public_b64  # still the same key


def test_the_cli_without_a_configured_module_says_which_variable_to_set(hub_home, monkeypatch, capsys) -> None:
    from spie_hub.cli import main

    monkeypatch.delenv(ENV_MODULE, raising=False)
    assert main(["cles", "hsm-generer", "--kid", "g2"]) == 2
    assert ENV_MODULE in capsys.readouterr().err


def published_keys_of(path: Path) -> dict[str, str]:
    previous = os.environ.get(ENV_PUBLIC_KEYS)
    os.environ[ENV_PUBLIC_KEYS] = str(path)
    try:
        return published_keys(None)
    finally:
        if previous is None:
            del os.environ[ENV_PUBLIC_KEYS]
        else:
            os.environ[ENV_PUBLIC_KEYS] = previous


# -- a real run signed by the token ------------------------------------------------------------------------------------

def test_a_manifest_signed_by_the_token_is_a_valid_receipt_for_the_published_key_only(hsm_env: SoftHsm) -> None:
    signer = load_signing_key()
    receipt = sign_manifest({"fichier": "x.csv", "enregistrements": 3}, signer)
    assert receipt["signature"]["cle"] == KID and receipt["signature"]["algorithme"] == "Ed25519"
    assert receipt_valid(receipt, {KID: signer.public_b64})
    assert not receipt_valid(receipt, {KID: signing.SigningKey(KID, b"s" * 32).public_b64})


def test_a_real_run_signed_by_the_token_delivers_receipts_that_verify_with_the_published_key(
        hsm_env: SoftHsm, hub_home, tmp_path, monkeypatch, capsys) -> None:
    from helpers import first_delivery

    from spie_hub.cli import main

    monkeypatch.delenv("SPIE_HUB_SIGNING_KEY")  # hub_home's development seed: the run must not fall back to it
    home, engine, _pseudonymiser, _flux, _bundle, summary = first_delivery(tmp_path, 20, seed=11)
    engine.dispose()
    delivered = Path(summary.destinataires["departement-052"].fichier)
    manifest = delivered.with_name(delivered.name.removesuffix(".csv") + ".manifest.json")
    receipt = json.loads(manifest.read_text(encoding="utf-8"))
    assert receipt["signature"]["cle"] == KID
    published = tmp_path / "publiees" / f"audit-{KID}.pem"
    assert main(["cles", "publier", "--sortie", str(published)]) == 0  # what the hub publishes is the token's key
    keys = published_keys_of(published)
    assert verify_receipt(manifest, keys) == []
    assert main(["recu", "verifier", str(manifest), "--cle-publique", str(published)]) == 0
    assert "Reçu valide" in capsys.readouterr().out
    # The development seed hub_home had configured would not have made it: the token signed.
    assert verify_receipt(manifest, {KID: signing.SigningKey(KID, b"s" * 32).public_b64}) != []


# -- the development key says what it is -------------------------------------------------------------------------------

def test_a_development_key_is_noted_once_in_the_logs_when_nobody_is_at_a_terminal(hub_home, monkeypatch, caplog) -> None:
    monkeypatch.delenv(ENV_MODULE, raising=False)
    monkeypatch.setattr(signing, "_DEVELOPMENT_KEY_SAID", False)
    with caplog.at_level(logging.INFO, logger="spie_hub.audit.signing"):
        load_signing_key()
        load_signing_key()
    notes = [r.getMessage() for r in caplog.records if r.name == "spie_hub.audit.signing"]
    assert len(notes) == 1 and "de développement" in notes[0] and "SPIE_HUB_SIGNING_KEY" in notes[0]
    assert "PKCS#11" in notes[0] and base64.b64encode(b"s" * 32).decode() not in notes[0]


def test_a_development_key_is_said_once_on_stderr_to_a_person_at_a_terminal(hub_home) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIE_HUB_SIGNING_PKCS11")}
    main_fd, child_fd = pty.openpty()
    code = ("from spie_hub.audit.signing import load_signing_key; load_signing_key(); load_signing_key(); "
            "print('fin', flush=True)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=child_fd, stdin=subprocess.DEVNULL)
    os.close(child_fd)
    said = b""
    # Read the terminal while the child runs (under load, what it wrote must not be lost once it has exited).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([main_fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # the terminal's other end closed: everything was read
                break
            if not chunk:
                break
            said += chunk
        elif process.poll() is not None:
            break
    stdout, _ = process.communicate(timeout=120)
    os.close(main_fd)
    text = said.decode()
    # stdout may carry a log line of the test environment (CI=true); the note goes to the terminal, once.
    assert process.returncode == 0 and stdout.endswith(b"fin\n")
    assert text.count("de développement") == 1 and "lisible par le processus du hub" in text

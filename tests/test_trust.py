"""The trust anchor: published keys and configured fingerprints, never a key the database holds."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from spie_hub.audit.signing import SigningKey
from spie_hub.audit.trust import (
    ENV_FINGERPRINTS,
    ENV_PUBLIC_KEYS,
    anchor_for_store,
    fingerprint,
    pinned_fingerprints,
    published_keys,
)
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome

HUB = SigningKey("s2", b"h" * 32)
OLD = SigningKey("s1", b"o" * 32)
FORGER = SigningKey("s2", b"f" * 32)  # the kid the hub uses, another key: what a rewrite would sign with


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubHome:
    monkeypatch.delenv(ENV_PUBLIC_KEYS, raising=False)
    monkeypatch.delenv(ENV_FINGERPRINTS, raising=False)
    return HubHome(tmp_path / "hub")


def publish(folder: Path, key: SigningKey, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"audit-{key.kid}.pem")
    path.write_text(key.public_pem, encoding="utf-8")
    return path


def test_a_fingerprint_is_the_sha256_of_the_raw_public_key() -> None:
    raw = base64.b64decode(HUB.public_b64)
    assert fingerprint(HUB.public_b64) == hashlib.sha256(raw).hexdigest()
    with pytest.raises(ConfigurationError, match="32 octets"):
        fingerprint(base64.b64encode(b"x" * 31).decode())


def test_published_keys_are_read_from_a_directory_and_from_files_separated_by_colons(home, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "publiees"
    publish(folder, HUB)
    old = publish(tmp_path / "ailleurs", OLD)
    monkeypatch.setenv(ENV_PUBLIC_KEYS, f"{folder}:{old}")
    assert published_keys(home) == {"s2": HUB.public_b64, "s1": OLD.public_b64}


def test_nothing_configured_means_no_published_key(home) -> None:
    assert published_keys(home) == {}


def test_a_pem_not_named_after_its_kid_is_refused_rather_than_guessed(home, tmp_path, monkeypatch) -> None:
    publish(tmp_path / "publiees", HUB, "cle-du-hub.pem")
    monkeypatch.setenv(ENV_PUBLIC_KEYS, str(tmp_path / "publiees"))
    with pytest.raises(ConfigurationError, match="audit-<kid>.pem"):
        published_keys(home)


def test_a_missing_path_or_a_non_key_file_names_the_setting(home, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_PUBLIC_KEYS, str(tmp_path / "absent"))
    with pytest.raises(ConfigurationError, match=ENV_PUBLIC_KEYS):
        published_keys(home)
    (tmp_path / "audit-s3.pem").write_text("pas une clé", encoding="utf-8")
    monkeypatch.setenv(ENV_PUBLIC_KEYS, str(tmp_path / "audit-s3.pem"))
    with pytest.raises(ConfigurationError, match="Ed25519"):
        published_keys(home)


def test_a_published_key_contradicting_its_configured_fingerprint_is_refused(home, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_PUBLIC_KEYS, str(publish(tmp_path / "publiees", FORGER)))
    monkeypatch.setenv(ENV_FINGERPRINTS, f"s2:{fingerprint(HUB.public_b64)}")
    with pytest.raises(ConfigurationError, match="empreinte ne correspond pas"):
        published_keys(home)


def test_fingerprints_are_read_as_kid_colon_hex_and_anything_else_is_refused(home, monkeypatch) -> None:
    monkeypatch.setenv(ENV_FINGERPRINTS, f" s2:{fingerprint(HUB.public_b64).upper()} , s1:{fingerprint(OLD.public_b64)}")
    assert pinned_fingerprints() == {"s2": fingerprint(HUB.public_b64), "s1": fingerprint(OLD.public_b64)}
    for wrong in ("s2", "s2:abc", f"S 2:{fingerprint(HUB.public_b64)}"):
        monkeypatch.setenv(ENV_FINGERPRINTS, wrong)
        with pytest.raises(ConfigurationError, match=ENV_FINGERPRINTS):
            pinned_fingerprints()


def test_with_published_keys_the_anchor_is_them_and_a_key_swapped_into_the_database_is_not_admitted(
        home, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_PUBLIC_KEYS, str(publish(tmp_path / "publiees", HUB)))
    anchor = anchor_for_store(home, FORGER)  # even the signer in service does not widen a published anchor
    assert anchor.keys == {"s2": HUB.public_b64}
    assert not anchor.admits("s2", FORGER.public_b64) and anchor.admits("s2", HUB.public_b64)
    assert not anchor.admits("s1", OLD.public_b64)  # a kid nobody published or pinned
    assert anchor.admitted({"s2": FORGER.public_b64, "s9": OLD.public_b64}) == {"s2": HUB.public_b64}
    assert anchor.note and "s2" in anchor.note and "ni publiée" in anchor.note


def test_with_fingerprints_only_a_key_found_in_the_store_is_admitted_when_its_fingerprint_matches(home, monkeypatch) -> None:
    monkeypatch.setenv(ENV_FINGERPRINTS, f"s2:{fingerprint(HUB.public_b64)},s1:{fingerprint(OLD.public_b64)}")
    anchor = anchor_for_store(home, HUB)
    assert anchor.keys == {"s2": HUB.public_b64} and anchor.note is None and ENV_FINGERPRINTS in anchor.origin
    # What the audit_keys table claims: the old key is admitted by its fingerprint, a forged s2 is not.
    assert anchor.admitted({"s1": OLD.public_b64, "s2": FORGER.public_b64}) == {"s2": HUB.public_b64, "s1": OLD.public_b64}
    forged = anchor_for_store(home, FORGER)
    assert forged.keys == {} and forged.note and "ni publiée" in forged.note


def test_with_nothing_configured_the_anchor_is_the_signers_key_and_says_it_is_weaker(home) -> None:
    anchor = anchor_for_store(home, HUB)
    assert anchor.keys == {"s2": HUB.public_b64}
    assert anchor.note and "clé de signature actuelle du hub" in anchor.note and ENV_PUBLIC_KEYS in anchor.note
    assert not anchor.admits("s1", OLD.public_b64)  # never what the database holds
    with pytest.raises(ConfigurationError, match=ENV_PUBLIC_KEYS):
        anchor_for_store(home, None)


def test_a_published_key_kept_inside_the_hubs_home_is_said_to_prove_less(home, monkeypatch) -> None:
    monkeypatch.setenv(ENV_PUBLIC_KEYS, str(publish(home.root / "publiees", HUB)))
    anchor = anchor_for_store(home, HUB)
    assert anchor.keys == {"s2": HUB.public_b64}
    assert anchor.note and "dossier du hub" in anchor.note

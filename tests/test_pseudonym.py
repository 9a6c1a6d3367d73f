import base64

import pytest

from spie_hub.core.errors import ConfigurationError
from spie_hub.privacy.keys import ENV_KEY, KeyRing, PseudonymisationKey, generate_key_file, load_key
from spie_hub.privacy.pseudonym import Pseudonymiser

SECRET = b"s" * 32


def test_the_same_person_gets_different_pseudonyms_for_two_recipients() -> None:
    p = Pseudonymiser(PseudonymisationKey("k1", SECRET))
    pivot = p.pivot_from_nir("2820251108030")
    dep, ft = p.for_recipient(pivot, "departement-052"), p.for_recipient(pivot, "france-travail")
    assert dep != ft != pivot.pseudonyme
    assert p.for_recipient(p.pivot_from_nir("2820251108030"), "departement-052") == dep


def test_every_pseudonym_carries_its_key_id_and_changes_with_the_key() -> None:
    a = Pseudonymiser(PseudonymisationKey("k1", SECRET)).pivot_from_nir("2820251108030").pseudonyme
    b = Pseudonymiser(PseudonymisationKey("k2", b"t" * 32)).pivot_from_nir("2820251108030").pseudonyme
    assert a.startswith("k1.") and b.startswith("k2.") and a[3:] != b[3:]


def test_the_fallback_pivot_never_equals_a_nir_pivot() -> None:
    p = Pseudonymiser(PseudonymisationKey("k1", SECRET))
    assert p.pivot_fallback("2820251108030").digest != p.pivot_from_nir("2820251108030").digest
    assert p.pivot_fallback("CAF", "521", "205599").repli


def test_the_secret_never_appears_in_the_key_representation() -> None:
    key = PseudonymisationKey("k1", SECRET)
    assert "sss" not in repr(key) and "sss" not in str(key)
    assert base64.b64encode(SECRET).decode() not in repr(key)


def test_a_missing_key_names_the_variable_to_set(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv("SPIE_HUB_PSEUDO_KEY_FILE", raising=False)
    monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path))
    with pytest.raises(ConfigurationError, match=ENV_KEY):
        load_key()


def test_a_generated_key_file_is_private_and_reloads(tmp_path) -> None:
    path = tmp_path / "keys" / "k.json"
    key = generate_key_file(path, "demo1")
    assert path.stat().st_mode & 0o077 == 0
    assert KeyRing.from_file(path).current == key
    assert generate_key_file(path, "other") == key  # never overwritten


def test_a_short_or_malformed_key_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="trop courte"):
        PseudonymisationKey("k1", b"x" * 8)
    with pytest.raises(ConfigurationError, match="base64"):
        PseudonymisationKey.parse("k1:%%%", "test")

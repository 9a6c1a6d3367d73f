import pytest

from spie_hub.core.nir import NirInvalide, cle_nir, est_nir_valide, normaliser_nir


@pytest.mark.parametrize(("nir13", "key"), [("2820251108030", 94), ("1770393050005", 66), ("2730799404078", 91)])
def test_the_key_of_the_real_fixture_nirs_matches_the_documented_value(nir13: str, key: int) -> None:
    assert cle_nir(nir13) == key


def test_corsica_departments_count_as_19_and_18_for_the_key() -> None:
    assert cle_nir("185022A123456") == 97 - int("1850219123456") % 97
    assert cle_nir("185022B123456") == 97 - int("1850218123456") % 97


def test_a_15_character_nir_is_normalised_to_13_when_its_key_is_right() -> None:
    assert normaliser_nir("2 69 05 49 588 157 80") == "2690549588157"
    corse = "185022A123456"
    assert normaliser_nir(f"{corse}{cle_nir(corse):02d}") == corse


@pytest.mark.parametrize("month", ["20", "42", "50", "99"])
def test_fictitious_months_are_accepted(month: str) -> None:
    assert est_nir_valide(f"185{month}75123456")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("12345", "caractères au lieu de 13 ou 15"),
        ("2820251108031" + "00", "clé de contrôle"),
        ("5820251108030", "premier caractère"),
        ("2821351108030", "mois de naissance 13"),
        ("28202X1108030", "non numériques"),
    ],
)
def test_an_invalid_nir_gets_an_error_naming_the_problem_without_repeating_the_nir(raw: str, problem: str) -> None:
    with pytest.raises(NirInvalide) as caught:
        normaliser_nir(raw)
    assert problem in str(caught.value)
    assert raw not in str(caught.value)

from pathlib import Path

import pytest

from schemas.codes import Frein, TypeOrientation
from schemas.crosswalks import FREIN_DEPUIS_CNAF_DSP, FREIN_DEPUIS_FT_CONTRAINTE, ORIENTATION
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import REGISTRY_PATH
from spie_hub.registry import load_flows


def test_every_national_frein_but_numerique_has_a_cnaf_and_a_france_travail_code() -> None:
    covered = set(FREIN_DEPUIS_CNAF_DSP.values()) & set(FREIN_DEPUIS_FT_CONTRAINTE.values())
    assert covered == set(Frein) - {Frein.NUMERIQUE}


def test_no_difficulty_codes_map_to_no_frein() -> None:
    assert not {"0401", "0501", "1001"} & set(FREIN_DEPUIS_CNAF_DSP)


@pytest.mark.parametrize(("code", "ft"), [("EMPLOI", "PED"), ("socio_pro", "PSO"), ("social", "PSP")])
def test_orientations_of_every_partner_meet_the_france_travail_parcours(code: str, ft: str) -> None:
    assert ORIENTATION[code].france_travail == ft
    assert TypeOrientation.from_france_travail(ft) is ORIENTATION[code]


def _registry(tmp_path: Path, politique: str) -> Path:
    text = REGISTRY_PATH.read_text(encoding="utf-8").replace(
        "          contact: {base: consentement}\n", f"          contact: {{base: consentement}}\n{politique}", 1)
    path = tmp_path / "flows.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("rule", "message"), [
    ("          sante-handicap: {base: legale, article: x}\n", "catégorie particulière"),
    ("          diagnostic: {base: legale}\n", "citer son article"),
    ("          inconnue: {base: consentement}\n", "catégorie inconnue"),
    ("          diagnostic: {base: contrat}\n", "base 'contrat' inconnue"),
])
def test_a_flow_policy_that_breaks_a_rule_is_refused_at_load(tmp_path: Path, rule: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_flows(_registry(tmp_path, rule))

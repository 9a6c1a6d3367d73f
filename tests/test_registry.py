"""The flow registry (flows.yaml) is validated as data: every mistake is refused when it loads, in French, naming
the flow, the recipient when there is one, and the key — never the value of a key that could be a secret."""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from connectors.formats.base import InputFacts, Reader
from connectors.formats.registry import register_reader, unregister
from connectors.transports.base import Transport, TransportOptions
from connectors.transports.local import LocalFolderOptions
from connectors.transports.registry import register_transport, unregister_transport
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import MAPPINGS_DIR, REGISTRY_PATH
from spie_hub.registry import clear_cache, get_flow, load_flows, organisation

FLOW: dict[str, Any] = {
    "titre": "Flux de test",
    "finalite": "Tester le registre",
    "source": {
        "partenaire": "caf-msa",
        "format": "cnaf-vrsb0801",
        "mapping": "caf_vrsb",
        "transport": {"type": "dossier-local", "dossier": "inbox/caf-msa", "motif": "*.xml"},
    },
    "perimetre": [{"champ": "droit_rsa.departement", "egal": "052", "libelle": "département 052"}],
    "destinataires": {
        "departement-052": {
            "libelle": "Département",
            "sortie": "csv_departement",
            "transport": {"type": "dossier-local", "dossier": "outbox/departement-052"},
            "categories_requises": ["droits-rsa"],
            "politique": {
                "droits-rsa": {"base": "legale", "article": "CASF art. L262-40"},
                "identite": {"base": "consentement"},
            },
        },
    },
}


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def _flow(**changes: Any) -> dict[str, Any]:
    """The small valid flow above with ``changes`` applied; a key path ``a__b`` reaches into blocks."""
    flow = copy.deepcopy(FLOW)
    for path, value in changes.items():
        *parents, last = path.split("__")
        block = flow
        for key in parents:
            block = block[key]
        if value is _DROP:
            del block[last]
        else:
            block[last] = value
    return flow


_DROP = object()
RECIPIENT = "destinataires__departement-052"


def _write(tmp_path: Path, flow: dict[str, Any] | None = None, *, name: str = "flows.yaml", **top: Any) -> Path:
    path = tmp_path / name
    document = {"flux": {"f": flow if flow is not None else _flow()}, **top}
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def _refused(tmp_path: Path, flow: dict[str, Any] | None = None, *, mappings_dir: Path | None = None, **top: Any) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_flows(_write(tmp_path, flow, **top), mappings_dir=mappings_dir)
    return str(caught.value)


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    """A copy of the shipped mappings/ (and sorties/) that a test may add to."""
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS_DIR, folder)
    return folder


# -- what loads -----------------------------------------------------------------------------------------------------

def test_the_shipped_registry_loads_with_validated_transports_and_a_default_return_folder() -> None:
    flows = load_flows(REGISTRY_PATH)
    caf = flows["caf-vers-departement"]
    assert caf.transport == LocalFolderOptions(type="dossier-local", dossier="inbox/caf-msa", motif="*.xml")
    assert caf.retour == LocalFolderOptions(type="dossier-local", dossier="outbox/caf-msa")
    assert {r.id: r.transport.dossier for r in caf.destinataires} == {
        "departement-052": "outbox/departement-052", "plateforme-insertion": "outbox/plateforme-insertion"}
    assert flows["france-travail-vers-departement"].format == "ft-flux-mensuel"
    assert organisation(REGISTRY_PATH)["conservation_journal_jours"] == "1095"


def test_get_flow_reads_the_registry_named_by_spie_hub_flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(_write(tmp_path)))
    assert get_flow("f").partenaire == "caf-msa"
    with pytest.raises(ConfigurationError, match="Flux inconnu : autre"):
        get_flow("autre")


def test_a_declared_return_transport_is_kept(tmp_path: Path) -> None:
    retour = {"type": "dossier-local", "dossier": "retours/caf"}
    flow = load_flows(_write(tmp_path, _flow(source__retour=retour)))["f"]
    assert flow.retour == LocalFolderOptions(type="dossier-local", dossier="retours/caf")


def test_a_rewritten_registry_is_read_again(tmp_path: Path) -> None:
    path = _write(tmp_path)
    assert load_flows(path)["f"].titre == "Flux de test"
    path.write_text(yaml.safe_dump({"flux": {"f": _flow(titre="Nouveau titre, plus long")}}, allow_unicode=True), encoding="utf-8")
    assert load_flows(path)["f"].titre == "Nouveau titre, plus long"


# -- transports -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ftps", "https", "ftp"])
def test_an_unknown_source_transport_type_is_refused_naming_the_flow_and_the_type(tmp_path: Path, kind: str) -> None:
    message = _refused(tmp_path, _flow(source__transport={"type": kind, "dossier": "inbox/caf-msa"}))
    assert message.startswith("flows.yaml, flux f, source : type de transport inconnu")
    assert f"« {kind} »" in message and "dossier-local" in message


def test_an_unknown_recipient_transport_type_is_refused_naming_the_recipient(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(**{f"{RECIPIENT}__transport": {"type": "ftps", "dossier": "x"}}))
    assert message.startswith("flows.yaml, flux f, destinataire departement-052 : type de transport inconnu « ftps »")


def test_a_transport_without_a_type_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(source__transport={"dossier": "inbox/caf-msa"}))
    assert "flux f, source : transport sans « type »" in message


@pytest.mark.parametrize("folder", ["/etc/cron.d", "../outbox", "inbox/../../x", "~/x"])
def test_a_folder_outside_the_hub_home_is_refused(tmp_path: Path, folder: str) -> None:
    message = _refused(tmp_path, _flow(source__transport={"type": "dossier-local", "dossier": folder}))
    assert message.startswith("flows.yaml, flux f, source, transport dossier-local : clé « dossier »")
    assert "SPIE_HUB_HOME" in message


def test_a_recipient_folder_outside_the_hub_home_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(**{f"{RECIPIENT}__transport": {"type": "dossier-local", "dossier": "/srv/depot"}}))
    assert message.startswith("flows.yaml, flux f, destinataire departement-052, transport dossier-local : clé « dossier »")


def test_a_return_folder_outside_the_hub_home_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(source__retour={"type": "dossier-local", "dossier": "../../x"}))
    assert message.startswith("flows.yaml, flux f, source, retour, transport dossier-local : clé « dossier »")


def test_an_unknown_transport_key_is_refused_without_showing_its_value(tmp_path: Path) -> None:
    transport = {"type": "dossier-local", "dossier": "inbox/caf-msa", "mot_de_passe": "s3cr3t-Ne-Pas-Afficher"}
    message = _refused(tmp_path, _flow(source__transport=transport))
    assert "flux f, source, transport dossier-local : clé inconnue « mot_de_passe »" in message
    assert "s3cr3t" not in message


# -- unknown and missing keys ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "expected"), [
    ({"titree": "x"}, "flows.yaml, flux f : clé inconnue « titree »"),
    ({"source__formatt": "x"}, "flows.yaml, flux f, source : clé inconnue « formatt »"),
    ({f"{RECIPIENT}__sortiee": "x"}, "flows.yaml, flux f, destinataire departement-052 : clé inconnue « sortiee »"),
    ({f"{RECIPIENT}__politique__identite__bse": "x"},
     "flows.yaml, flux f, destinataire departement-052 : clé inconnue « politique.identite.bse »"),
    ({"perimetre": [{"champ": "droit_rsa.departement", "egal": "052", "libelle": "x", "egale": "052"}]},
     "flows.yaml, flux f, périmètre (condition n° 1) : clé inconnue « egale »"),
])
def test_an_unknown_key_is_refused_naming_the_flow_and_the_key(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    assert _refused(tmp_path, _flow(**change)) == expected


def test_an_unknown_key_at_the_top_or_in_organisation_is_refused(tmp_path: Path) -> None:
    assert _refused(tmp_path, fluxx={}) == "flows.yaml : clé inconnue « fluxx »"
    with pytest.raises(ConfigurationError, match="flows.yaml : clé inconnue « organisation.dpoo »"):
        organisation(_write(tmp_path, organisation={"nom": "GIP", "dpoo": "x"}))


@pytest.mark.parametrize(("change", "expected"), [
    ({"titre": _DROP}, "flows.yaml, flux f : clé « titre » manquante"),
    ({"destinataires": _DROP}, "flows.yaml, flux f : clé « destinataires » manquante"),
    ({"source__mapping": _DROP}, "flows.yaml, flux f, source : clé « mapping » manquante"),
    ({"source__transport": _DROP}, "flows.yaml, flux f, source : clé « transport » manquante"),
    ({"source": _DROP}, "flows.yaml, flux f : clé « source » manquante"),
    ({f"{RECIPIENT}__sortie": _DROP}, "flows.yaml, flux f, destinataire departement-052 : clé « sortie » manquante"),
    ({f"{RECIPIENT}__politique__identite__base": _DROP},
     "flows.yaml, flux f, destinataire departement-052 : clé « politique.identite.base » manquante"),
])
def test_a_missing_required_key_is_refused_naming_it(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    assert _refused(tmp_path, _flow(**change)) == expected


@pytest.mark.parametrize(("change", "expected"), [
    ({"conservation_jours": "730"}, "flux f : clé « conservation_jours » : nombre entier attendu"),
    ({"conservation_jours": 0}, "flux f : clé « conservation_jours » : nombre supérieur à 0 attendu"),
    ({f"{RECIPIENT}__politique__droits-rsa__opposable": "oui"},
     "destinataire departement-052 : clé « politique.droits-rsa.opposable » : booléen attendu"),
    ({"destinataires": ["departement-052"]}, "flux f : clé « destinataires » : dictionnaire (clé: valeur) attendu"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    assert expected in _refused(tmp_path, _flow(**change))


def test_a_key_given_twice_is_refused_rather_than_silently_replaced(tmp_path: Path) -> None:
    path = tmp_path / "flows.yaml"
    text = yaml.safe_dump({"flux": {"f": _flow()}}, allow_unicode=True)
    path.write_text(text + "  f:\n    titre: doublon\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"flows.yaml illisible : clé « f » en double \(ligne \d+\)"):
        load_flows(path)


def test_a_perimeter_on_a_field_the_schema_does_not_have_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(perimetre=[{"champ": "droit_rsa.department", "egal": "052", "libelle": "x"}]))
    assert message.startswith("flows.yaml, flux f, périmètre (condition n° 1) : clé « champ » : « droit_rsa.department »")


@pytest.mark.parametrize("partner", ["../outbox", "/tmp/x", "Département 52", "a\nb"])
def test_a_partner_id_that_could_not_be_a_folder_name_is_refused(tmp_path: Path, partner: str) -> None:
    message = _refused(tmp_path, _flow(source__partenaire=partner))
    assert message.startswith(f"flows.yaml, flux f, source : clé « partenaire » : identifiant {partner!r} invalide")


def test_an_invalid_recipient_id_is_refused_before_anything_else(tmp_path: Path) -> None:
    flow = _flow()
    flow["destinataires"]["../outbox"] = flow["destinataires"].pop("departement-052")
    assert "flux f, destinataire : identifiant '../outbox' invalide" in _refused(tmp_path, flow)


# -- formats, mappings and outputs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sortie", ["../../x", "sorties/csv_departement", "/etc/passwd", "csv_departement.yaml"])
def test_an_output_spec_given_as_a_path_is_refused(tmp_path: Path, sortie: str) -> None:
    message = _refused(tmp_path, _flow(**{f"{RECIPIENT}__sortie": sortie}))
    assert message.startswith("flows.yaml, flux f, destinataire departement-052 : clé « sortie » : nom de sortie")


def test_an_output_spec_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(**{f"{RECIPIENT}__sortie": "csv_inexistant"}))
    assert message.startswith("flows.yaml, flux f, destinataire departement-052 : clé « sortie » : sortie « csv_inexistant » introuvable")


def test_an_output_spec_naming_an_unknown_output_format_is_refused(tmp_path: Path, mappings: Path) -> None:
    (mappings / "sorties" / "tableur.yaml").write_text("sortie: tableur\nformat: xlsx\ncolonnes: []\n", encoding="utf-8")
    message = _refused(tmp_path, _flow(**{f"{RECIPIENT}__sortie": "tableur"}), mappings_dir=mappings)
    assert "destinataire departement-052 : clé « sortie » : la sortie « tableur » déclare un format inconnu « xlsx »" in message


def test_an_unknown_source_format_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(source__format="edifact"))
    assert message.startswith("flows.yaml, flux f, source : clé « format » : format d'entrée inconnu « edifact »")


@pytest.mark.parametrize("mapping", ["../caf_vrsb", "sorties/csv_departement", "/etc/passwd", "caf_vrsb.yaml", ".."])
def test_a_mapping_given_as_a_path_is_refused(tmp_path: Path, mapping: str) -> None:
    message = _refused(tmp_path, _flow(source__mapping=mapping))
    assert message.startswith("flows.yaml, flux f, source : clé « mapping » : nom de mapping")


def test_a_mapping_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    assert "clé « mapping » : mapping « absent » introuvable" in _refused(tmp_path, _flow(source__mapping="absent"))


def test_a_mapping_written_for_another_format_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _flow(source__format="ft-flux-mensuel", source__mapping="caf_vrsb"))
    assert message == ("flows.yaml, flux f, source : clé « mapping » : le mapping « caf_vrsb » lit le format "
                       "« cnaf-vrsb0801 », la source déclare le format « ft-flux-mensuel »")


@pytest.mark.parametrize("version", ["2.0.0", "0.9.0"])
def test_a_mapping_for_another_major_schema_version_is_refused(tmp_path: Path, mappings: Path, version: str) -> None:
    text = (mappings / "caf_vrsb.yaml").read_text(encoding="utf-8")
    text = re.sub(r'version_schema: "[0-9.]+"', f'version_schema: "{version}"', text)
    (mappings / "caf_futur.yaml").write_text(text, encoding="utf-8")
    message = _refused(tmp_path, _flow(source__mapping="caf_futur"), mappings_dir=mappings)
    assert f"le mapping « caf_futur » vise le schéma SPIE {version}" in message and "version majeure 1 attendue" in message


def test_a_mapping_without_a_schema_version_is_refused(tmp_path: Path, mappings: Path) -> None:
    text = (mappings / "caf_vrsb.yaml").read_text(encoding="utf-8")
    text = re.sub(r'version_schema: "[0-9.]+"\n', "", text)
    (mappings / "caf_sans_version.yaml").write_text(text, encoding="utf-8")
    message = _refused(tmp_path, _flow(source__mapping="caf_sans_version"), mappings_dir=mappings)
    assert "le mapping « caf_sans_version » ne déclare pas « version_schema »" in message


# -- policy rules (the RGPD checks) ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "expected"), [
    ({"base": "legale"}, "une base légale doit citer son article"),
    ({"base": "contrat"}, "base 'contrat' inconnue"),
    ({"base": "consentement", "article": 12}, "clé « politique.identite.article » : texte attendu"),
])
def test_a_policy_rule_that_breaks_a_rule_is_refused_naming_the_recipient(tmp_path: Path, rule: dict[str, Any], expected: str) -> None:
    message = _refused(tmp_path, _flow(**{f"{RECIPIENT}__politique__identite": rule}))
    assert message.startswith("flows.yaml, flux f, destinataire departement-052 : ") and expected in message


def test_a_legal_basis_never_covers_a_special_category(tmp_path: Path) -> None:
    rule = {"base": "legale", "article": "art. X"}
    assert "catégorie particulière" in _refused(tmp_path, _flow(**{f"{RECIPIENT}__politique__sante-handicap": rule}))


def test_an_unknown_required_category_is_refused(tmp_path: Path) -> None:
    assert "catégorie inconnue 'droit-rsa'" in _refused(tmp_path, _flow(**{f"{RECIPIENT}__categories_requises": ["droit-rsa"]}))


# -- extension: a transport and a reader registered at run time ------------------------------------------------------

class ToyOptions(TransportOptions):
    boite: str


class ToyTransport(Transport):
    type: ClassVar[str] = "jouet"
    Options: ClassVar[type[TransportOptions]] = ToyOptions


class ToyReader(Reader):
    format: ClassVar[str] = "toy"

    def records(self, stream: Any, facts: InputFacts, *, validate: bool = True) -> Iterator[Any]:
        return iter(())


def test_a_transport_and_a_reader_registered_at_run_time_are_accepted_and_refused_once_removed(tmp_path: Path, mappings: Path) -> None:
    (mappings / "toy.yaml").write_text("mapping: toy\nformat: toy\nversion_schema: \"1.0.0\"\nchamps: {}\n", encoding="utf-8")
    path = _write(tmp_path, _flow(source__format="toy", source__mapping="toy", source__transport={"type": "jouet", "boite": "b1"}))
    register_transport(ToyTransport)  # type: ignore[type-abstract]
    register_reader(ToyReader)  # type: ignore[type-abstract]
    try:
        flow = load_flows(path, mappings_dir=mappings)["f"]
        assert flow.transport == ToyOptions(type="jouet", boite="b1") and flow.format == "toy"
        with pytest.raises(ConfigurationError, match="transport jouet : clé « boite » manquante"):
            load_flows(_write(tmp_path, _flow(source__format="toy", source__mapping="toy", source__transport={"type": "jouet"}),
                              name="sans-boite.yaml"), mappings_dir=mappings)
    finally:
        unregister_transport("jouet")
        unregister("toy")
    with pytest.raises(ConfigurationError, match="type de transport inconnu « jouet »"):
        load_flows(path, mappings_dir=mappings)


def test_a_yaml_syntax_error_names_the_line_but_not_the_text(tmp_path: Path) -> None:
    path = tmp_path / "flows.yaml"
    path.write_text("flux:\n  f:\n    titre: [non fermé, secret-xyz\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"flows.yaml illisible : .*\(ligne \d+\)") as caught:
        load_flows(path)
    assert "secret-xyz" not in str(caught.value)


# -- one inbox, one reader per file ---------------------------------------------------------------------------------

def _two_flows(tmp_path: Path, first: str, second: str) -> Path:
    path = tmp_path / "flows.yaml"
    flux = {"a": _flow(source__transport__motif=first), "b": _flow(source__transport__motif=second)}
    path.write_text(yaml.safe_dump({"flux": flux}, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(("first", "second"), [("*.xml", "*.xml"), ("*.xml", "*caf*.xml"), ("*", "RSA_*.xml")])
def test_two_flows_whose_patterns_overlap_on_one_inbox_are_refused(tmp_path: Path, first: str, second: str) -> None:
    with pytest.raises(ConfigurationError, match="recouvrent ceux du flux a"):
        load_flows(_two_flows(tmp_path, first, second))


def test_two_flows_with_disjoint_patterns_may_share_an_inbox(tmp_path: Path) -> None:
    assert set(load_flows(_two_flows(tmp_path, "*inscriptions*.xml", "*cessations*.xml"))) == {"a", "b"}


def test_a_flow_named_like_a_folder_of_the_hub_is_refused(tmp_path: Path) -> None:
    """archive/consentements holds the consent files the hub imported: a flow of that name would share its archive."""
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump({"flux": {"consentements": _flow()}}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="identifiant réservé"):
        load_flows(path)

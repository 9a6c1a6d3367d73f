"""Issue 9, who may say what: the issuer of a consent file is the consent inbox it came through, and the registry
declares, per issuer, the recipients and categories it may grant for; refusals are accepted from any issuer."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CAF_FIXTURES
from helpers import consent_resource, write_bundle

from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import REGISTRY_PATH
from spie_hub.registry import clear_cache, consent_registry

NIR = "2730799404078"  # BULLOCK, in the CAF fixture RSABEM-ouvert.xml


def spie_hub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spie_hub.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def _drop(home: Path, issuer: str, name: str, *resources: dict[str, Any]) -> Path:
    folder = home / "inbox" / "consentements" / issuer
    folder.mkdir(parents=True, exist_ok=True)
    return write_bundle(folder / name, *resources)


def _delivered(home: Path) -> str:
    return "".join(p.read_text(encoding="utf-8-sig") for p in (home / "outbox" / "departement-052").glob("*.csv"))


def test_france_travail_cannot_grant_the_departement_identity_through_its_inbox(hub_home: Path) -> None:
    _drop(hub_home, "france-travail", "consentements.json", consent_resource("c1", NIR, grantees=("departement-052",)))
    imported = spie_hub("consent", "importer")
    assert imported.returncode == 1 and "autorité" in imported.stdout, imported.stdout + imported.stderr
    assert NIR not in imported.stdout + imported.stderr and "Traceback" not in imported.stderr
    assert list((hub_home / "inbox" / "consentements" / "france-travail").iterdir()) == []  # claimed and archived
    assert len(list((hub_home / "archive" / "consentements" / "france-travail").iterdir())) == 1
    run = spie_hub("run", "--flux", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM-ouvert.xml"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{NIR};BULLOCK" not in _delivered(hub_home)


def test_the_collecting_body_grants_through_its_inbox_and_a_refusal_from_another_issuer_applies(hub_home: Path) -> None:
    _drop(hub_home, "departement-052", "a.json", consent_resource("c1", NIR, grantees=("departement-052",)))
    imported = spie_hub("consent", "importer", "--emetteur", "departement-052")
    assert imported.returncode == 0 and "importés : 1" in imported.stdout, imported.stdout + imported.stderr
    _drop(hub_home, "france-travail", "o.json", consent_resource("o1", NIR, decision="deny", kind="opposition",
                                                                  grantees=("departement-052",)))
    assert spie_hub("consent", "importer").returncode == 0
    run = spie_hub("run", "--flux", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM-ouvert.xml"))
    assert run.returncode == 0 and f"{NIR};BULLOCK" not in _delivered(hub_home)


def test_an_undeclared_issuer_is_refused_with_a_french_error(hub_home: Path) -> None:
    result = spie_hub("consent", "importer", "--emetteur", "inconnu")
    assert result.returncode == 2 and "non déclaré" in result.stderr and "Traceback" not in result.stderr
    bundle = write_bundle(hub_home.parent / "b.json", consent_resource("c1", NIR))
    result = spie_hub("consent", "import", str(bundle), "--emetteur", "inconnu")
    assert result.returncode == 2 and "non déclaré" in result.stderr


def test_a_file_of_another_type_is_left_in_the_inbox(hub_home: Path) -> None:
    folder = hub_home / "inbox" / "consentements" / "departement-052"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("rien", encoding="utf-8")
    result = spie_hub("consent", "importer")
    assert result.returncode == 1 and "non pris en charge" in result.stdout
    assert (folder / "notes.txt").exists()


# -- the registry's consentements section, validated like the rest -----------------------------------------------

@pytest.fixture
def registry_file(tmp_path: Path):
    clear_cache()
    data = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8"))

    def write(change) -> Path:
        changed = copy.deepcopy(data)
        change(changed["consentements"])
        path = tmp_path / "flows.yaml"
        path.write_text(yaml.safe_dump(changed, allow_unicode=True), encoding="utf-8")
        return path

    yield write
    clear_cache()


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["emetteurs"]["departement-052"]["recueille"].update({"inconnu": ["identite"]}), "destinataire inconnu"),
    (lambda c: c["emetteurs"]["departement-052"]["recueille"].update({"departement-052": ["adresse"]}),
     "catégorie inconnue"),
    (lambda c: c["emetteurs"]["france-travail"].update({"boite": {"type": "dossier-local", "dossier": "inbox/caf-msa"}}),
     "même dossier"),
    (lambda c: c["emetteurs"]["france-travail"].update({"peut_tout": True}), "clé inconnue"),
    (lambda c: c["emetteurs"]["france-travail"].pop("boite"), "france-travail.boite » manquante"),
    (lambda c: c["emetteurs"].update({"Mauvais Nom": c["emetteurs"]["caf-msa"]}), "identifiant"),
])
def test_the_consentements_section_is_validated_with_french_errors(registry_file, change, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        consent_registry(registry_file(change))
    assert message in str(caught.value) and "consentements" in str(caught.value)


def test_a_consent_import_killed_after_claiming_a_file_gives_it_back_on_the_next_pass(hub_home: Path) -> None:
    _drop(hub_home, "departement-052", "a.json", consent_resource("c1", NIR, grantees=("departement-052",)))
    killed = subprocess.run([sys.executable, "-m", "spie_hub.cli", "consent", "importer"], capture_output=True,
                            text=True, env={**os.environ, "SPIE_HUB_FAILPOINT": "consentements-boite"}, timeout=300)
    assert killed.returncode == -9
    assert list((hub_home / "inbox" / "consentements" / "departement-052").iterdir()) == []  # claimed, then killed
    again = spie_hub("consent", "importer")
    assert again.returncode == 0 and "importés : 1" in again.stdout, again.stdout + again.stderr
    assert list((hub_home / "staging" / "consentements").iterdir()) == []
    assert len(list((hub_home / "archive" / "consentements" / "departement-052").iterdir())) == 1


@pytest.mark.parametrize("narrowed", ["recueille: {}", "recueille:\n        plateforme-insertion: [identite, contact]"])
def test_a_permit_stops_granting_once_the_registry_takes_its_issuers_authority_away(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, narrowed: str) -> None:
    """Authority is the registry's as it stands at each decision, not only at import: a grant recorded while the
    Département could collect for itself no longer delivers once flows.yaml says it cannot."""
    _drop(hub_home, "departement-052", "a.json", consent_resource("c1", NIR, grantees=("departement-052",)))
    assert spie_hub("consent", "importer").returncode == 0
    granted = spie_hub("run", "--flux", "caf-vers-departement", "--input", str(CAF_FIXTURES / "RSABEM-ouvert.xml"))
    assert granted.returncode == 0 and f"{NIR};BULLOCK" in _delivered(hub_home), "the grant applies while authorised"
    text = REGISTRY_PATH.read_text(encoding="utf-8")
    declared = ("recueille:\n        departement-052: [identite, contact, sante-handicap]\n"
                "        plateforme-insertion: [identite, contact]\n"
                "        missions-locales: [droits-rsa, contact]\n"
                "        cap-emploi: [sante-handicap, contact]")
    assert declared in text
    registry = tmp_path / "flows.yaml"
    registry.write_text(text.replace(declared, narrowed, 1), encoding="utf-8")
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(registry))
    for old in (hub_home / "outbox" / "departement-052").glob("*"):
        old.unlink()
    changed = tmp_path / "RSABEM-ouvert-bis.xml"
    changed.write_bytes((CAF_FIXTURES / "RSABEM-ouvert.xml").read_bytes() + b"<!-- autre fichier -->\n")
    run = spie_hub("run", "--flux", "caf-vers-departement", "--input", str(changed))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{NIR};BULLOCK" not in _delivered(hub_home)


def test_a_withdrawal_outside_the_issuers_authority_is_not_reported_as_a_refused_grant(hub_home: Path) -> None:
    _drop(hub_home, "france-travail", "w.json",
          consent_resource("w1", NIR, status="inactive", grantees=("departement-052",)))
    imported = spie_hub("consent", "importer")
    assert "autorisation refusée" not in imported.stdout, imported.stdout
    assert NIR not in imported.stdout + imported.stderr and "Traceback" not in imported.stderr

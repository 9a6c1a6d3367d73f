"""Keys: pseudonymisation and signing keys are distinct; rotation keeps old pseudonyms resolvable until the old
key is retired; every re-identification with a key is audited."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest
from helpers import consent_resource, people_of, write_bundle
from sqlalchemy import select

from consent.fhir_import import import_consents
from consent.revocation import propagate_withdrawals
from spie_hub.audit.signing import SigningKey, load_signing_key
from spie_hub.cli import main
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.dpo.subject_access import subject_access
from spie_hub.privacy.keys import KeyRing, PseudonymisationKey, generate_key_file, load_keyring
from spie_hub.privacy.pseudonym import Pseudonymiser, load_pseudonymiser
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import audit_log, open_store

DEP = "departement-052"


def test_the_signing_key_must_differ_from_the_pseudonymisation_key(monkeypatch, hub_home) -> None:
    secret = b"k" * 32
    monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(secret).decode())
    with pytest.raises(ConfigurationError, match="distincte"):
        load_signing_key(None, PseudonymisationKey("t1", secret))


def test_a_missing_signing_key_names_the_variable_to_set(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SPIE_HUB_SIGNING_KEY", raising=False)
    monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path))
    with pytest.raises(ConfigurationError, match="SPIE_HUB_SIGNING_KEY"):
        load_signing_key()


def test_a_signing_key_never_shows_its_secret() -> None:
    key = SigningKey("s1", b"z" * 32)
    assert base64.b64encode(b"z" * 32).decode() not in repr(key) + str(key)


def test_the_environment_may_hold_a_ring_with_the_current_key_first(monkeypatch) -> None:
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"k2:{base64.b64encode(b'b' * 32).decode()},k1:{base64.b64encode(b'a' * 32).decode()}")
    ring = load_keyring()
    assert ring.current.kid == "k2" and [k.kid for k in ring.previous] == ["k1"]
    pivot = Pseudonymiser(ring).pivot_from_nir("2820251108030")
    old = Pseudonymiser(ring.previous[0]).pivot_from_nir("2820251108030")
    assert pivot.pseudonyme.startswith("k2.") and pivot.aliases == (old.pseudonyme,)


@pytest.fixture
def rotated(hub_home: Path, monkeypatch, tmp_path: Path):
    """A hub that delivered under key k1, then rotated to k2."""
    monkeypatch.delenv("SPIE_HUB_PSEUDO_KEY")
    home = HubHome.from_env().ensure()
    generate_key_file(home.keys / "pseudonymisation.json", "k1")
    flux1, flux2 = tmp_path / "f1.xml", tmp_path / "f2.xml"
    generate(flux1, tmp_path / "c.json", 40, seed=9, anomaly_rate=0)
    import datetime as dt

    generate(flux2, tmp_path / "c.json", 40, seed=9, anomaly_rate=0, reference=dt.date(2026, 11, 30))
    engine = open_store(home.database_url)
    before = load_pseudonymiser(home)
    people = [p for p in people_of(flux1) if p["NIR"]]
    consenting = [p for p in people if p["PRENOM"]][:3]
    import_consents(write_bundle(tmp_path / "b.json", *[consent_resource(f"c{i}", p["NIR"]) for i, p in enumerate(consenting)]),
                    engine, before, emetteur=DEP)
    first = run_flow("caf-vers-departement", flux1, home)
    assert main(["cles", "rotation", "--kid", "k2"]) == 0
    yield home, engine, before, load_pseudonymiser(home), consenting, first, flux2
    engine.dispose()


def _rows(path: str) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return {r["Pseudonyme"]: r for r in csv.DictReader(handle, delimiter=";")}


def test_after_a_rotation_consents_under_the_old_key_still_apply_and_new_files_use_the_new_key(rotated) -> None:
    home, _, before, after, consenting, first, flux2 = rotated
    assert after.kid == "k2" and after.kids == ("k2", "k1")
    second = run_flow("caf-vers-departement", flux2, home)
    rows_before, rows_after = _rows(first.destinataires[DEP].fichier), _rows(second.destinataires[DEP].fichier)
    assert all(p.startswith("k1.") for p in rows_before)
    assert all(p.startswith("k2.") for p in rows_after)
    for person in consenting:
        pivot = after.pivot_from_nir(person["NIR"])
        new, old = after.recipient_pseudonyms(pivot, DEP)
        assert old == before.for_recipient(before.pivot_from_nir(person["NIR"]), DEP)
        if old in rows_before:  # delivered (in perimeter): identity under the consent given before the rotation
            assert rows_before[old]["NIR"] == person["NIR"] and rows_after[new]["NIR"] == person["NIR"]


def test_subject_access_and_withdrawal_notices_resolve_pseudonyms_of_the_old_key(rotated, tmp_path) -> None:
    home, engine, _, after, consenting, first, flux2 = rotated
    delivered = _rows(first.destinataires[DEP].fichier)
    person = next(p for p in consenting if after.recipient_pseudonyms(after.pivot_from_nir(p["NIR"]), DEP)[1] in delivered)
    report = subject_access(engine, after, person["NIR"], load_flows(), demandeur="dpo", motif="test")
    assert any(e.evenement == "decision" and e.decision == "livre" and e.destinataire == DEP for e in report.echanges)
    assert report.cle == "k2,k1"
    index = consenting.index(person)
    import_consents(write_bundle(tmp_path / "r.json", consent_resource(f"c{index}", person["NIR"], status="inactive")),
                    engine, after, emetteur=DEP)
    propagation = propagate_withdrawals(engine, home, after, load_flows())
    notice = Path(propagation.fichiers[0]).read_text(encoding="utf-8-sig")
    old_pseudonym = after.recipient_pseudonyms(after.pivot_from_nir(person["NIR"]), DEP)[1]
    assert old_pseudonym in notice  # the pseudonym the recipient actually holds
    # The withdrawal (stored under k2) outranks the consent stored under k1: nothing more is sent.
    second = _rows(run_flow("caf-vers-departement", flux2, home).destinataires[DEP].fichier)
    new_pseudonym = after.recipient_pseudonyms(after.pivot_from_nir(person["NIR"]), DEP)[0]
    assert second[new_pseudonym]["NIR"] == "" and second[new_pseudonym]["État du droit RSA"]


def test_retiring_a_key_that_consents_depend_on_is_refused_even_forced(rotated, capsys) -> None:
    home, engine, *_ = rotated
    assert main(["cles", "retirer", "--kid", "k2"]) == 2  # the current key
    assert main(["cles", "retirer", "--kid", "k1"]) == 1
    assert "consentement(s)" in capsys.readouterr().err
    assert main(["cles", "retirer", "--kid", "k1", "--forcer"]) == 1  # no way around it
    assert [k.kid for k in KeyRing.from_file(home.keys / "pseudonymisation.json").keys] == ["k2", "k1"]
    with engine.connect() as c:
        events = [r.event for r in c.execute(select(audit_log.c.event))]
    assert "rotation-cle" in events and "retrait-cle" not in events


def test_every_re_identification_is_audited_with_who_why_and_which_keys(rotated) -> None:
    _, engine, _, after, consenting, *_ = rotated
    subject_access(engine, after, consenting[0]["NIR"], load_flows(), demandeur="dpo-cd52", motif="demande art. 15 n° 12")
    with engine.connect() as c:
        payload = json.loads(c.execute(select(audit_log.c.payload).where(audit_log.c.event == "acces-personne")).scalar_one())
    assert {k: v for k, v in payload.items() if k != "sel"} == {"demandeur": "dpo-cd52", "motif": "demande art. 15 n° 12",
                                                                "cle": "k2,k1"}

"""Key operations never make an opposition, a refusal or a withdrawal stop applying; a key id is never reused; a
rotation is only done where the key really lives; a changed secret behind a known id is refused."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import json
from pathlib import Path

import pytest
from helpers import consent_resource, people_of, write_bundle
from sqlalchemy import select

from consent.fhir_import import import_consents
from spie_hub.audit.signing import load_hub_signer
from spie_hub.cli import main
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.keys import KeyRing, generate_key_file
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.run.lifecycle import run_flow
from spie_hub.run.retention import purge_audit
from spie_hub.store import audit_log, open_store, pseudo_keys

DEP, PLATEFORME = "departement-052", "plateforme-insertion"


def _b64(byte: bytes) -> str:
    return base64.b64encode(byte * 32).decode()


def _pseudonyms(path: str) -> set[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return {r["Pseudonyme"] for r in csv.DictReader(handle, delimiter=";")}


def _events(engine) -> list[str]:  # noqa: ANN001 - an SQLAlchemy engine
    with engine.connect() as c:
        return [r.event for r in c.execute(select(audit_log.c.event))]


@pytest.fixture
def file_keyed(hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> HubHome:
    """A hub whose pseudonymisation key is its own key file (k1), as after `spie-hub cles init`."""
    monkeypatch.delenv("SPIE_HUB_PSEUDO_KEY")
    home = HubHome.from_env().ensure()
    generate_key_file(home.keys / "pseudonymisation.json", "k1")
    return home


# --- 1. retiring a key never drops an opposition --------------------------------------------------------------


def test_retiring_a_key_that_holds_an_opposition_is_refused_even_forced_and_the_opposition_still_applies(
        file_keyed: HubHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = file_keyed
    flux1, flux2 = tmp_path / "f1.xml", tmp_path / "f2.xml"
    generate(flux1, None, 40, seed=9, anomaly_rate=0)
    generate(flux2, None, 40, seed=9, anomaly_rate=0, reference=dt.date(2026, 11, 30))
    engine = open_store(home.database_url)
    first = run_flow("caf-vers-departement", flux1, home)
    under_k1 = load_pseudonymiser(home)
    delivered = _pseudonyms(first.destinataires[PLATEFORME].fichier)
    person = next(p for p in people_of(flux1)
                  if p["NIR"] and under_k1.for_recipient(under_k1.pivot_from_nir(p["NIR"]), PLATEFORME) in delivered)
    opposition = consent_resource("opp-1", person["NIR"], decision="deny", kind="opposition", grantees=(PLATEFORME,),
                                  categories=("identite", "droits-rsa"))
    assert import_consents(write_bundle(tmp_path / "o.json", opposition), engine, under_k1, emetteur=PLATEFORME).importes == 1
    assert main(["cles", "rotation", "--kid", "k2"]) == 0
    capsys.readouterr()

    assert main(["cles", "retirer", "--kid", "k1", "--forcer"]) == 1
    err = capsys.readouterr().err
    assert "k1" in err and "opposition" in err.lower() and "Traceback" not in err
    assert "k1" in [k.kid for k in KeyRing.from_file(home.keys / "pseudonymisation.json").keys]
    assert "retrait-cle" not in _events(engine)

    # The opposition recorded under k1 still applies after the rotation: the person is not sent to the platform.
    after = load_pseudonymiser(home)
    second = run_flow("caf-vers-departement", flux2, home)
    pivot = after.pivot_from_nir(person["NIR"])
    assert not set(after.recipient_pseudonyms(pivot, PLATEFORME)) & _pseudonyms(second.destinataires[PLATEFORME].fichier)
    engine.dispose()


def test_a_key_is_retired_once_nothing_depends_on_it_and_the_answer_says_what_remains(
        file_keyed: HubHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = file_keyed
    engine = open_store(home.database_url)
    under_k1 = load_pseudonymiser(home)
    import_consents(write_bundle(tmp_path / "a.json", consent_resource("c1", "2820251108030")), engine, under_k1,
                    emetteur=DEP)
    assert main(["cles", "rotation", "--kid", "k2"]) == 0
    assert main(["cles", "retirer", "--kid", "k1"]) == 1
    err = capsys.readouterr().err
    assert "1 consentement(s)" in err and "0 opposition" in err and "spie-hub cles reloger" in err
    # Re-homing with the person's NIR (read on standard input) moves the consent under the current key.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO("2820251108030\n"))
        assert main(["cles", "reloger", "--kid", "k1"]) == 0
    assert "2820251108030" not in capsys.readouterr().out
    # What remains: the audit entries under k1's pseudonyms (the import), needed for subject access until purged.
    assert main(["cles", "retirer", "--kid", "k1"]) == 1
    err = capsys.readouterr().err
    assert "consentement(s) dont" not in err and "journal d'audit" in err
    with engine.begin() as c:  # the owner's floor, lowered to reach the end of retention within a test
        c.exec_driver_sql("UPDATE audit_policy SET min_age_days = 0")
    purge_audit(engine, load_hub_signer(home), dt.datetime.now(dt.UTC) + dt.timedelta(days=1))  # end of retention
    from spie_hub.registry import load_flows
    from spie_hub.run.retention import purge_segments

    # ... of the batches too (the import's per-consent events are in its batch file).
    purge_segments(engine, home, load_flows(), dt.datetime.now(dt.UTC) + dt.timedelta(days=4000))
    assert main(["cles", "retirer", "--kid", "k1"]) == 0
    assert [k.kid for k in KeyRing.from_file(home.keys / "pseudonymisation.json").keys] == ["k2"]
    # Still applies under the current key.
    after = load_pseudonymiser(home)
    with engine.connect() as c:
        from spie_hub.store import consents

        subjects = c.execute(select(consents.c.subject)).scalars().all()
    assert subjects == [after.pivot_from_nir("2820251108030").pseudonyme]
    assert "retrait-cle" in _events(engine)
    engine.dispose()


# --- 2. a key id is never reused --------------------------------------------------------------------------------


def test_a_retired_key_id_is_never_given_to_a_new_secret(file_keyed: HubHome, capsys: pytest.CaptureFixture[str]) -> None:
    home = file_keyed
    load_pseudonymiser(home)  # k1 in use
    assert main(["cles", "rotation", "--kid", "k2"]) == 0
    assert main(["cles", "retirer", "--kid", "k1"]) == 0  # nothing depends on it
    capsys.readouterr()
    assert main(["cles", "rotation", "--kid", "k1"]) == 2
    assert "k1" in capsys.readouterr().err
    assert KeyRing.from_file(home.keys / "pseudonymisation.json").current.kid == "k2"


def test_a_used_key_id_under_another_secret_in_the_environment_is_refused(
        file_keyed: HubHome, monkeypatch: pytest.MonkeyPatch) -> None:
    home = file_keyed
    load_pseudonymiser(home)
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"k1:{_b64(b'z')}")
    with pytest.raises(ConfigurationError, match="k1"):
        load_pseudonymiser(home)


# --- 3. rotation only where the key lives ----------------------------------------------------------------------


def test_rotation_is_refused_when_the_key_comes_from_the_environment(
        hub_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = HubHome.from_env().ensure()
    generate_key_file(home.keys / "pseudonymisation.json", "k1")  # an unused file left by `cles init`
    before = (home.keys / "pseudonymisation.json").read_bytes()
    engine = open_store(home.database_url)
    assert main(["cles", "rotation", "--kid", "k2"]) == 2
    err = capsys.readouterr().err
    assert "SPIE_HUB_PSEUDO_KEY" in err and "k2:" in err and "t1" in err
    assert (home.keys / "pseudonymisation.json").read_bytes() == before
    assert "rotation-cle" not in _events(engine)
    engine.dispose()


def test_rotation_is_refused_when_the_key_file_is_named_by_a_variable(
        file_keyed: HubHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "secrets" / "pseudo.json"
    generate_key_file(elsewhere, "m1")
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY_FILE", str(elsewhere))
    before = elsewhere.read_bytes()
    assert main(["cles", "rotation", "--kid", "m2"]) == 2
    assert "SPIE_HUB_PSEUDO_KEY_FILE" in capsys.readouterr().err
    assert elsewhere.read_bytes() == before


def test_rotation_of_the_file_is_refused_when_the_hub_runs_with_another_key(
        file_keyed: HubHome, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The runs (Airflow) used a key from elsewhere; the operator's shell only sees the hub's file."""
    home = file_keyed
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"airflow1:{_b64(b'a')}")
    load_pseudonymiser(home)  # what the runs use, recorded in the store
    monkeypatch.delenv("SPIE_HUB_PSEUDO_KEY")
    before = (home.keys / "pseudonymisation.json").read_bytes()
    assert main(["cles", "rotation", "--kid", "k2"]) == 2
    assert "airflow1" in capsys.readouterr().err
    assert (home.keys / "pseudonymisation.json").read_bytes() == before


# --- 4. a changed secret behind a known id ------------------------------------------------------------------


def test_a_changed_secret_under_a_known_key_id_stops_runs_imports_and_subject_access(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    home = HubHome.from_env().ensure()
    flux = tmp_path / "f.xml"
    generate(flux, None, 10, seed=3, anomaly_rate=0)
    assert main(["run", "--flux", "caf-vers-departement", "--input", str(flux)]) == 0
    engine = open_store(home.database_url)
    with engine.connect() as c:
        (row,) = c.execute(select(pseudo_keys)).all()
    assert row.kid == "t1" and row.fingerprint not in (hashlib.sha256(b"k" * 32).hexdigest(), _b64(b"k"))
    outputs = sorted(p.name for p in home.outbox.rglob("*"))

    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t1:{_b64(b'x')}")  # same id, another secret
    capsys.readouterr()
    flux2 = tmp_path / "f2.xml"
    generate(flux2, None, 10, seed=3, anomaly_rate=0, reference=dt.date(2026, 11, 30))
    assert main(["run", "--flux", "caf-vers-departement", "--input", str(flux2)]) == 2
    assert "t1" in capsys.readouterr().err
    bundle = write_bundle(tmp_path / "c.json", consent_resource("c1", "2820251108030"))
    assert main(["consent", "import", str(bundle), "--emetteur", DEP]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("2820251108030\n"))
    assert main(["dpo", "personne", "--nir", "-", "--demandeur", "dpo", "--motif", "test"]) == 2
    err = capsys.readouterr().err
    assert "t1" in err and _b64(b"x") not in err and "Traceback" not in err
    assert sorted(p.name for p in home.outbox.rglob("*")) == outputs  # nothing delivered under the changed secret
    with engine.connect() as c:
        assert c.execute(select(pseudo_keys.c.fingerprint)).scalar_one() == row.fingerprint
    engine.dispose()


def test_a_known_key_missing_from_the_ring_is_refused(hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = HubHome.from_env().ensure()
    load_pseudonymiser(home)  # t1 in use
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t2:{_b64(b'n')}")  # t1 dropped without retirement
    with pytest.raises(ConfigurationError, match="t1"):
        load_pseudonymiser(home)
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t2:{_b64(b'n')},t1:{_b64(b'k')}")  # a proper rotation
    assert load_pseudonymiser(home).kids == ("t2", "t1")


def test_the_fingerprint_is_keyed_and_never_shows_the_secret(hub_home: Path) -> None:
    home = HubHome.from_env().ensure()
    load_pseudonymiser(home)
    engine = open_store(home.database_url)
    with engine.connect() as c:
        fingerprint = c.execute(select(pseudo_keys.c.fingerprint)).scalar_one()
    engine.dispose()
    secret = b"k" * 32
    assert fingerprint not in json.dumps([base64.b64encode(secret).decode(), hashlib.sha256(secret).hexdigest(),
                                          secret.hex()])


def test_the_registry_of_used_keys_cannot_be_deleted_or_rewritten_even_by_the_owner(
        database_url: str, hub_home: Path) -> None:
    from sqlalchemy.exc import DBAPIError

    home = HubHome.from_env().ensure()
    engine = open_store(database_url)
    load_pseudonymiser(home, engine)
    for statement in ("DELETE FROM pseudo_keys", "UPDATE pseudo_keys SET fingerprint = 'x'",
                      "UPDATE pseudo_keys SET kid = 'autre'"):
        with pytest.raises(DBAPIError, match="registre des clés"), engine.begin() as c:
            c.exec_driver_sql(statement)
    with engine.begin() as c:  # retirement is the one change allowed
        c.exec_driver_sql("UPDATE pseudo_keys SET retired_at = '2026-12-01'")
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="registre des clés"), engine.begin() as c:
            c.exec_driver_sql("TRUNCATE pseudo_keys")
    engine.dispose()


def test_a_key_retired_from_the_environment_is_removed_by_the_operator_and_then_stays_out(
        hub_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    home = HubHome.from_env().ensure()
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t2:{_b64(b'n')},t1:{_b64(b'k')}")
    load_pseudonymiser(home)
    assert main(["cles", "retirer", "--kid", "t1"]) == 0
    assert "SPIE_HUB_PSEUDO_KEY" in capsys.readouterr().out
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t2:{_b64(b'n')}")
    assert load_pseudonymiser(home).kids == ("t2",)
    assert main(["cles", "retirer", "--kid", "t1"]) == 2  # already retired
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t3:{_b64(b'm')},t1:{_b64(b'w')}")  # the retired id, another secret
    with pytest.raises(ConfigurationError, match="t1"):
        load_pseudonymiser(home)


def test_a_refused_ring_records_none_of_its_new_keys(hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = HubHome.from_env().ensure()
    load_pseudonymiser(home)  # t1 in use
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t2:{_b64(b'n')},t1:{_b64(b'x')}")  # t1's secret changed
    with pytest.raises(ConfigurationError, match="t1"):
        load_pseudonymiser(home)
    engine = open_store(home.database_url)
    with engine.connect() as c:
        assert c.execute(select(pseudo_keys.c.kid)).scalars().all() == ["t1"]
    engine.dispose()
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", f"t1:{_b64(b'k')}")  # the operator puts the right secret back
    assert load_pseudonymiser(home).kids == ("t1",)

"""Builders shared by the tests: FHIR consents and hub stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lxml import etree

from consent.fhir_build import consent


def consent_resource(cid: str, nir: str, *, decision: str = "permit", status: str = "active",
                     grantees: tuple[str, ...] = ("departement-052",), categories: tuple[str, ...] = ("identite",),
                     start: str = "2020-01-01", end: str = "2099-12-31", kind: str = "consentement") -> dict[str, Any]:
    """A hub Consent: ``decision`` is what the person decided (permit = accord, deny = refus) about ``categories``."""
    return consent(cid, nir, grant=decision == "permit", status=status, recipients=grantees, categories=categories,
                   start=start, end=end, kind=kind)


def write_bundle(path: Path, *resources: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in resources]}), encoding="utf-8")
    return path


def people_of(flux: Path) -> list[dict[str, str]]:
    """The synthetic population as written in the flux (identities to hunt for in every output)."""
    people = []
    for _, foyer in etree.iterparse(str(flux), tag="InfosFoyerRSA"):
        for person in foyer.iterfind("Personne"):
            people.append({k: person.findtext(f"Identification/{k}") for k in ("NIR", "NOM", "PRENOM", "DTNAI")})
        foyer.clear()
    return people


def drop_audit_guards(engine) -> None:  # noqa: ANN001 - an SQLAlchemy engine
    """Act as an attacker with the database owner's rights: switch off the append-only triggers."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
            connection.exec_driver_sql("ALTER TABLE audit_checkpoints DISABLE TRIGGER USER")
        else:
            for name in ("spie_audit_no_update", "spie_audit_no_delete", "spie_checkpoints_no_update", "spie_checkpoints_no_delete"):
                connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")


def first_delivery(tmp_path: Path, households: int, seed: int, anomaly_rate: float = 0.0):  # noqa: ANN201
    """A hub (from the environment) that imported the demo consents of a synthetic population and ran the CAF flow
    once: (home, engine, pseudonymiser, flux, consent bundle, run summary)."""
    from consent.fhir_import import import_consents
    from spie_hub.core.home import HubHome
    from spie_hub.demo.data import generate
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.run.lifecycle import run_flow
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    flux, bundle = tmp_path / "flux1.xml", tmp_path / "consents.json"
    generate(flux, bundle, households, seed=seed, anomaly_rate=anomaly_rate)
    engine = open_store(home.database_url)
    pseudonymiser = load_pseudonymiser(home)
    import_consents(bundle, engine, pseudonymiser, emetteur="departement-052")
    return home, engine, pseudonymiser, flux, bundle, run_flow("caf-vers-departement", flux, home)


def audit_events(engine, home, event: str) -> list:  # noqa: ANN001 - an SQLAlchemy engine, a HubHome or path
    """The per-person events of one kind the audit holds in its committed batches (runs' decisions, consent
    imports, withdrawal propagation: spie_hub/audit/segments.py), each with run_id, recipient, subject, payload."""
    from spie_hub.audit import segments

    committed = segments.committed_lots(engine)
    return [e for e in segments.iter_events(home, event=event) if e.path_rel in committed]

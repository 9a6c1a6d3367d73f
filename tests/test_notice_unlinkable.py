"""Deletion notices carry nothing two recipients could match: each recipient's notice names the withdrawal by a
reference of its own (a keyed hash of recipient and hub reference), its file by a random token of its own, and no
version number (which would tell a recipient that a version it never saw, about another recipient, exists).

Observed before: the Département's and the platform's notices of one withdrawal both cited ``c-…/v2`` and ended
with the same token, so two colluding recipients linked their pseudonyms and the platform recovered a NIR it was
never given; a notice citing ``/v3`` told the Département that a ``v2`` (the platform's withdrawal) existed.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import audit_events, people_of

from consent.fhir_build import consent
from consent.fhir_import import import_resources
from consent.revocation import propagate_withdrawals
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

FLOW = "caf-vers-departement"
DEP, PLATFORM = "departement-052", "plateforme-insertion"
REFERENCE = "Référence du retrait"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


@pytest.fixture
def hub(hub_home: Path, tmp_path: Path) -> Any:
    """A fresh hub, a CAF file, and a person Y of it that the platform receives (found by a scouting hub with the
    same keys)."""
    flux = tmp_path / "flux.xml"
    generate(flux, None, 12, seed=5, anomaly_rate=0)
    first = run_flow(FLOW, flux, HubHome(tmp_path / "eclaireur").ensure())
    assert first.statut == "termine"
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    pseudonymiser = load_pseudonymiser(home)
    platform = {r["Pseudonyme"] for r in _rows(Path(first.destinataires[PLATFORM].fichier))}
    y = next(p["NIR"] for p in people_of(flux) if p["NIR"] and pseudonymiser.for_recipient(
        pseudonymiser.pivot_from_nir(p["NIR"]), PLATFORM) in platform)
    yield home, engine, pseudonymiser, flux, y
    engine.dispose()


def _import(engine: Any, pseudonymiser: Any, resource: dict[str, Any]) -> None:
    report = import_resources([("e", resource)], engine, pseudonymiser, emetteur=DEP)
    assert not report.erreurs, report.erreurs


def _notices(home: HubHome) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Recipient → (file name, row) of every deletion notice in its drop."""
    found: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for rid in (DEP, PLATFORM):
        for path in sorted((home.outbox / rid).glob("avis-suppression_*.csv")):
            found.setdefault(rid, []).extend((path.name, row) for row in _rows(path))
    return found


def test_two_recipients_notified_of_one_withdrawal_share_no_reference_nor_file_token(hub) -> None:
    home, engine, pseudonymiser, flux, y = hub
    grant = consent("c-y", y, recipients=[DEP, PLATFORM], categories=["identite", "contact"])
    _import(engine, pseudonymiser, grant)
    assert run_flow(FLOW, flux, home).statut == "termine"
    _import(engine, pseudonymiser, consent("c-y", y, recipients=[DEP, PLATFORM], categories=["identite", "contact"],
                                           status="inactive"))
    assert propagate_withdrawals(engine, home, pseudonymiser, load_flows()).avis == 2
    notices = _notices(home)
    assert set(notices) == {DEP, PLATFORM}
    (dep_name, dep_row), = notices[DEP]
    (platform_name, platform_row), = notices[PLATFORM]
    assert dep_row[REFERENCE] != platform_row[REFERENCE]
    assert dep_name.rsplit("_", 1)[1] != platform_name.rsplit("_", 1)[1]  # each recipient's own random token
    for row in (dep_row, platform_row):
        assert re.fullmatch(r"r-[0-9a-f]{16}", row[REFERENCE]), row[REFERENCE]
    # No identifier of one notice's line (pseudonym, files, reference) appears in the other's.
    identifiers = ("Pseudonyme", "Fichiers concernés", REFERENCE)
    assert not {dep_row[k] for k in identifiers} & {platform_row[k] for k in identifiers}
    # The DPO finds each notice again: its audit entry holds the hub's reference and the recipient's own.
    entries = {e.recipient: json.loads(e.payload) for e in audit_events(engine, home, "avis-suppression")}
    assert entries[DEP]["reference_avis"] == dep_row[REFERENCE]
    assert entries[PLATFORM]["reference_avis"] == platform_row[REFERENCE]
    assert entries[DEP]["consentement"] == entries[PLATFORM]["consentement"]  # the hub's own, kept for the DPO


def test_a_notice_tells_no_recipient_how_many_versions_the_consent_had(hub) -> None:
    home, engine, pseudonymiser, flux, y = hub
    _import(engine, pseudonymiser, consent("c-y", y, recipients=[DEP, PLATFORM], categories=["contact"]))
    assert run_flow(FLOW, flux, home).statut == "termine"
    # v2 withdraws the platform only (the Département never hears of it), v3 withdraws everything.
    _import(engine, pseudonymiser, consent("c-y", y, recipients=[DEP], categories=["contact"]))
    assert propagate_withdrawals(engine, home, pseudonymiser, load_flows()).avis == 1
    _import(engine, pseudonymiser, consent("c-y", y, recipients=[DEP], categories=["contact"], status="inactive"))
    assert propagate_withdrawals(engine, home, pseudonymiser, load_flows()).avis == 1
    notices = _notices(home)
    assert len(notices[DEP]) == 1 and len(notices[PLATFORM]) == 1
    for rid, found in notices.items():
        for name, _row in found:
            text = (home.outbox / rid / name).read_text(encoding="utf-8-sig")
            assert not re.search(r"/v\d|\bv\d\b|c-[0-9a-f]{16}", text), f"{rid} : {text}"

"""Consents sent by partners over SFTP (flow 8): the issuer of a consent file is the SFTP account it came through,
never what the file says about itself."""

# ruff: noqa: F401, F811 - the harness's fixtures are imported by name, then requested as arguments
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from sqlalchemy import select
from support.sshd import Accounts, sftp_accounts, sshd_server

from consent.fhir_build import bundle, consent
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import clear_cache, consent_registry
from spie_hub.run.consent_inbox import import_consent_inboxes
from spie_hub.store import consents, open_store


def _registry(tmp_path: Path) -> Path:
    document = yaml.safe_load((REPO / "flows.yaml").read_text(encoding="utf-8"))
    issuers = document["consentements"]["emetteurs"]
    issuers["cap-emploi"]["boite"] = {"type": "sftp", "connexion": "sftp-cap", "dossier": "depot",
                                      "stabilite_secondes": 0}
    issuers["missions-locales"]["boite"] = {"type": "sftp", "connexion": "sftp-ml", "dossier": "depot",
                                            "stabilite_secondes": 0}
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def test_a_consent_file_is_issued_by_the_sftp_account_it_came_through(
        sftp_accounts: Accounts, hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cap, ml = sftp_accounts("cap"), sftp_accounts("ml")
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAP", cap.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_ML", ml.connection_json())
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(_registry(tmp_path)))
    clear_cache()
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    try:
        assert consent_registry().emetteurs["cap-emploi"].boite.type == "sftp"
        # Cap emploi collects express consent for disability data to the Département: accepted from its account.
        grant = consent("cap-1", "1791152121103", recipients=["departement-052"], categories=["sante-handicap"],
                        explicit=True, collected_by="cap-emploi")
        cap.put("depot/consentements.json", json.dumps(bundle([grant])).encode())
        # The same grant sent through the missions locales' account claims an authority that account does not have:
        # refused, whatever the file says about who collected it.
        forged = consent("ml-1", "2820251108030", recipients=["departement-052"], categories=["sante-handicap"],
                         explicit=True, collected_by="cap-emploi")
        ml.put("depot/consentements.json", json.dumps(bundle([forged])).encode())
        old = time.time() - 120
        for account in (cap, ml):
            os.utime(account.folder("depot") / "consentements.json", (old, old))
        report = import_consent_inboxes(home, engine, load_pseudonymiser(home))
        by_issuer = {item.emetteur: item for item in report.fichiers}
        assert by_issuer["cap-emploi"].rapport is not None and by_issuer["cap-emploi"].rapport.importes == 1
        ml_report = by_issuer["missions-locales"].rapport
        assert ml_report is not None and ml_report.importes == 0 and ml_report.erreurs
        with engine.connect() as connection:
            issuers = {row[0] for row in connection.execute(select(consents.c.emetteur))}
        assert issuers == {"cap-emploi"}
        # Taken from the drops once imported.
        assert cap.files("depot") == [] and ml.files("depot") == []
    finally:
        engine.dispose()
        clear_cache()

"""Subject access (`dpo personne`) answers from what was actually delivered: per flow and recipient, the columns
of that flow's output for that recipient, checked against the delivered files themselves; records sent without a
NIR are found by their fallback identifiers; the NIR is read from standard input only."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import first_delivery, people_of
from sqlalchemy import select

from connectors.formats.registry import load_output
from spie_hub.audit import segments
from spie_hub.dpo.subject_access import subject_access
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import consents

CAF = "caf-vers-departement"
FT = "france-travail-vers-departement"
DEPT = "departement-052"
FT_HEADER = "nir;identifiantpe;nom;prenom;dtnai;date;code;motif;nir2;codeinsee;localite;adresse;ale"
#: A person France Travail sends without a NIR: found only by its fallback identifiers (mappings/ft_flux_mensuel.yaml).
NO_NIR = {"identifiantpe": "7654321Z", "nom": "SANSNIR", "prenom": "ODILE", "dtnai": "03/04/1980"}


def _delivered_rows(home: Path, file_name: str) -> tuple[list[str], list[list[str]]]:
    with (home / "outbox" / DEPT / file_name).open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter=";"))
    return rows[0], rows[1:]


@pytest.fixture
def two_flows(hub_home: Path, tmp_path: Path):
    """The CAF flow then the France Travail flow delivered to the same recipient, one person in both."""
    home, engine, pseudonymiser, flux, _bundle, summary = first_delivery(tmp_path, 40, seed=7)
    candidates = [p["NIR"] for p in people_of(flux) if p["NIR"] and p["NIR"][3:5] != "13"]
    # The person whose identity the Département received in the CAF file (demo consent): the richest answer.
    identity_ok = set()
    for event in segments.iter_events(home, event="decision", flow=CAF, recipient=DEPT):
        payload = json.loads(event.payload)
        if payload["decision"] == "livre" and payload["categories"].get("identite", {}).get("permis"):
            identity_ok.add(event.subject)
    nir = next(n for n in candidates
               if pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(n[:13]), DEPT) in identity_ok)
    ft = tmp_path / "FT_inscriptions_052_202612.csv"
    ft.write_text("\n".join([
        FT_HEADER,
        f"{nir[:13]};1234567A;DUPONT;MARIE;01/02/1982;15/11/2026;1;;;52121;CHAUMONT;8 RUE DE LA GARE;52001",
        f";{NO_NIR['identifiantpe']};{NO_NIR['nom']};{NO_NIR['prenom']};{NO_NIR['dtnai']};16/11/2026;2;;;52448;"
        "SAINT-DIZIER;12 AVENUE DE VERDUN;52002",
    ]) + "\n", encoding="utf-8")
    ft_summary = run_flow(FT, ft, home)
    assert ft_summary.destinataires[DEPT].livres == 2
    yield home, engine, pseudonymiser, nir
    engine.dispose()


def test_a_person_delivered_in_two_flows_to_one_recipient_gets_exactly_the_columns_of_each_delivered_file(two_flows) -> None:
    home, engine, pseudonymiser, nir = two_flows
    report = subject_access(engine, pseudonymiser, nir, load_flows(), demandeur="dpo", motif="test")
    pseudonym = pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(nir[:13]), DEPT)
    delivered = [e for e in report.echanges if e.evenement == "decision" and e.destinataire == DEPT and e.decision == "livre"]
    assert sorted(e.flux for e in delivered) == [CAF, FT]
    for exchange in delivered:
        header, rows = _delivered_rows(home.root, exchange.fichier)
        row = next(r for r in rows if r[0] == pseudonym)
        cells = dict(zip(header, row, strict=True))
        # Every listed column is a column of that very file, every value the person got is listed, and every
        # column not listed is empty in the person's row: the list is exactly what the file could tell about them.
        assert set(exchange.champs) <= set(header)
        assert {h for h, v in cells.items() if v} <= set(exchange.champs)
        assert all(not v for h, v in cells.items() if h not in exchange.champs)
        assert exchange.champs == [h for h in header if h in exchange.champs]  # in the file's order
        assert exchange.ligne is not None and rows[exchange.ligne - 2] == row
        assert len(exchange.champs) == len(set(exchange.champs))
    caf = next(e for e in delivered if e.flux == CAF)
    ft = next(e for e in delivered if e.flux == FT)
    for column in ("Nom de naissance", "Sexe", "N° allocataire", "N° de demande RSA", "État du droit RSA", "NIR"):
        assert column in caf.champs
    assert "Événement France Travail" not in caf.champs and "Événement France Travail" in ft.champs
    assert "État du droit RSA" not in ft.champs
    expected_caf = [c.entete for c in load_output("csv_departement").columns
                    if c.category is None or caf.categories.get(c.category.value, "").startswith(("legale", "consentement"))]
    assert caf.champs == expected_caf


def test_a_record_sent_without_a_nir_is_found_by_its_fallback_identifiers_and_the_answer_says_what_cannot_be(two_flows) -> None:
    home, engine, pseudonymiser, nir = two_flows
    by_nir = subject_access(engine, pseudonymiser, nir, load_flows(), demandeur="dpo", motif="test")
    assert any(FT in note and "identifiantpe" in note for note in by_nir.limites)
    parts = [NO_NIR["identifiantpe"], NO_NIR["nom"].lower(), NO_NIR["dtnai"], NO_NIR["prenom"]]
    found = subject_access(engine, pseudonymiser, None, load_flows(), demandeur="dpo", motif="test", repli={FT: parts})
    decisions = [e for e in found.echanges if e.evenement == "decision"]
    assert [(e.flux, e.destinataire, e.decision) for e in decisions] == [(FT, DEPT, "livre")]
    assert decisions[0].pivot == "repli"
    header, rows = _delivered_rows(home.root, decisions[0].fichier)
    pseudonym = pseudonymiser.for_recipient(pseudonymiser.pivot_fallback(*parts), DEPT)
    assert any(r[0] == pseudonym for r in rows)
    with pytest.raises(Exception, match="identifiants de repli"):
        subject_access(engine, pseudonymiser, None, load_flows(), demandeur="dpo", motif="test", repli={FT: parts[:2]})


def test_the_consents_shown_carry_no_partner_consent_id(two_flows) -> None:
    _home, engine, pseudonymiser, nir = two_flows
    report = subject_access(engine, pseudonymiser, nir, load_flows(), demandeur="dpo", motif="test")
    with engine.connect() as c:
        partner_ids = {r.consent_id for r in c.execute(select(consents.c.consent_id))}
    assert report.consentements
    text = json.dumps(report.to_dict(), ensure_ascii=False)
    # Neither as a value nor inside a reference ("<id>/v<n>"), in the consents listed or in the decisions' grounds.
    assert not [i for i in partner_ids if f'"{i}"' in text or f"{i}/v" in text]


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spie_hub.cli", "dpo", "personne", *args], input=stdin,
                          capture_output=True, text=True, env=os.environ.copy())


def test_the_cli_reads_the_nir_from_standard_input_only(two_flows) -> None:
    _home, _engine, _pseudonymiser, nir = two_flows
    result = _cli("--demandeur", "dpo", stdin=nir + "\n")
    assert result.returncode == 0, result.stderr
    assert "Recherche journalisée" in result.stdout and nir not in result.stdout + result.stderr
    assert "Nom de naissance" in result.stdout and "N° allocataire" in result.stdout
    on_the_line = _cli("--nir", nir)
    assert on_the_line.returncode == 2 and "entrée standard" in on_the_line.stderr
    assert nir not in on_the_line.stdout + on_the_line.stderr
    fallback = _cli(stdin=f"repli {FT} : {NO_NIR['identifiantpe']} | {NO_NIR['nom']} | {NO_NIR['dtnai']} | {NO_NIR['prenom']}\n")
    assert fallback.returncode == 0, fallback.stderr
    assert "repli" in fallback.stdout and NO_NIR["nom"] not in fallback.stdout and NO_NIR["identifiantpe"] not in fallback.stdout
    nothing = _cli(stdin="\n")
    assert nothing.returncode == 2 and "NIR" in nothing.stderr
    bad = _cli(stdin="repli flux-inconnu : a | b\n")
    assert bad.returncode == 2 and "Flux inconnu" in bad.stderr and "Traceback" not in bad.stderr
    misplaced = _cli(stdin=f"repli {nir} : a | b\n")  # the NIR typed where the flow goes: never echoed
    assert misplaced.returncode == 2 and "Flux inconnu" in misplaced.stderr
    assert nir not in misplaced.stdout + misplaced.stderr
    twice = _cli(stdin=f"repli {nir} : a\nrepli {nir} : b\n")
    assert twice.returncode == 2 and nir not in twice.stdout + twice.stderr


def test_household_columns_a_recipient_does_not_declare_are_not_listed(hub_home: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    registry = (Path(__file__).resolve().parent.parent / "flows.yaml").read_text(encoding="utf-8")
    stripped = re.sub(r"\n\s*champs_foyer: \[[^\]]*\]", "", registry)
    assert stripped != registry
    (tmp_path / "flows.yaml").write_text(stripped, encoding="utf-8")
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(tmp_path / "flows.yaml"))
    home, engine, pseudonymiser, flux, _bundle, _summary = first_delivery(tmp_path, 30, seed=7)
    try:
        nirs = [p["NIR"] for p in people_of(flux) if p["NIR"] and p["NIR"][3:5] != "13"]
        checked = 0
        for nir in nirs[:10]:
            report = subject_access(engine, pseudonymiser, nir, load_flows(), demandeur="dpo", motif="test")
            pseudonym = pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(nir[:13]), DEPT)
            for e in report.echanges:
                if e.evenement == "decision" and e.destinataire == DEPT and e.decision == "livre":
                    header, rows = _delivered_rows(home.root, e.fichier)
                    cells = dict(zip(header, next(r for r in rows if r[0] == pseudonym), strict=True))
                    assert "N° allocataire" not in e.champs and "Date de demande RSA" not in e.champs
                    assert not cells["N° allocataire"] and not cells["Date de demande RSA"]
                    assert "État du droit RSA" in e.champs and cells["État du droit RSA"]
                    checked += 1
        assert checked
    finally:
        engine.dispose()


def test_an_unreadable_mapping_is_said_rather_than_read_as_no_fallback_identifiers(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spie_hub.core import home as hub_home_module
    from spie_hub.core.errors import ConfigurationError
    from spie_hub.dpo.subject_access import fallback_identifiers
    from spie_hub.registry import load_flows

    flow = load_flows()["caf-vers-departement"]
    assert fallback_identifiers(flow), "the CNAF mapping declares fallback identifiers"
    monkeypatch.setattr(hub_home_module, "MAPPINGS_DIR", tmp_path / "absent")
    with pytest.raises(ConfigurationError, match="illisible"):
        fallback_identifiers(flow)

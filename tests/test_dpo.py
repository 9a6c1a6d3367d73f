"""The DPO's tools: the offline HTML report (in a real browser), the art. 30 register, subject access, purge,
and the small-cell suppression of counts sent to partners."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser import render
from helpers import drop_audit_guards, first_delivery, people_of
from sqlalchemy import select, update

from consent.fhir_import import import_consents
from consent.revocation import propagate_withdrawals
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate, write_withdrawals
from spie_hub.dpo.register import as_markdown
from spie_hub.dpo.report import write_report
from spie_hub.dpo.subject_access import subject_access
from spie_hub.privacy.disclosure import suppress
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.run.retention import purge
from spie_hub.store import audit_log, deliveries

FLOW = "caf-vers-departement"
TODAY = dt.date.today()


@pytest.fixture
def hub(hub_home: Path, database_url: str, tmp_path: Path):
    home, engine, pseudonymiser, flux, bundle, summary = first_delivery(tmp_path, 120, seed=5, anomaly_rate=0.02)
    write_withdrawals(bundle, tmp_path / "retraits.csv", 6)
    import_consents(tmp_path / "retraits.csv", engine, pseudonymiser, emetteur="departement-052")
    propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    yield home, engine, pseudonymiser, flux, summary
    engine.dispose()


SECTIONS = ["synthese", "couverture", "decisions", "retenus", "retraits", "particulieres", "audit", "registre"]
FACTS = """{
  sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
  charts: document.querySelectorAll('svg.chart').length,
  bars: document.querySelectorAll('svg.chart rect.bar').length,
  chartWidths: [...document.querySelectorAll('svg.chart')].map(s => s.getBoundingClientRect().width),
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
            .filter(u => !u.startsWith('#')),
  scripts: document.scripts.length,
  auditOk: !!document.querySelector('#audit .ok'),
  text: document.body.innerText
}"""


def test_the_report_renders_its_sections_and_charts_offline_in_a_real_browser(hub, tmp_path: Path) -> None:
    home, engine, _, flux, _ = hub
    output = tmp_path / "rapport.html"
    data = write_report(engine, TODAY - dt.timedelta(days=7), TODAY, output)
    assert data.runs == 1 and data.retraits and data.audit.ok
    page = render(output, FACTS)
    facts = page.facts
    assert facts["sections"] == SECTIONS
    assert facts["charts"] >= 4 and facts["bars"] >= 10 and min(facts["chartWidths"]) > 100
    assert facts["auditOk"] and facts["scripts"] == 0 and facts["external"] == []
    assert page.requests == [output.resolve().as_uri()]  # the page asked for nothing but itself
    assert page.screenshot.startswith(b"\x89PNG")
    assert "Registre des activités de traitement" in facts["text"] and "plateforme-insertion" in facts["text"]
    html = output.read_text(encoding="utf-8")
    for person in people_of(flux):
        assert person["NIR"] not in html and person["NOM"] not in html


def test_the_report_says_when_the_audit_chain_is_broken(hub, tmp_path: Path) -> None:
    _, engine, _, _, _ = hub
    drop_audit_guards(engine)
    with engine.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 3).values(payload='{"falsifie":true}'))
    data = write_report(engine, TODAY, TODAY, tmp_path / "r.html")
    assert not data.audit.ok
    assert "Journal ALTÉRÉ à l'entrée n° 3" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_the_cli_writes_the_report_for_a_period(hub, tmp_path: Path) -> None:
    out = tmp_path / "cli.html"
    result = subprocess.run([sys.executable, "-m", "spie_hub.cli", "dpo", "rapport", "--du", "2026-01-01", "--au",
                             TODAY.isoformat(), "--sortie", str(out)], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "Rapport DPO du 1er janvier 2026" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "spie_hub.cli", "dpo", "rapport", "--du", "hier", "--au", "2026-01-01",
                          "--sortie", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "AAAA-MM-JJ" in bad.stderr


def test_the_register_lists_purpose_bases_recipients_retention_and_transfers() -> None:
    text = as_markdown()
    for expected in ("## Flux bénéficiaires RSA (CAF/MSA) vers le Département", "Finalité : Orientation",
                     "CASF art. L262-40 ; RGPD art. 6.1.c — sans droit d'opposition",
                     "RGPD art. 6.1.e — droit d'opposition (RGPD art. 21)", "consentement de la personne",
                     "Transferts hors Union européenne : aucun", "730 jours", "Délégué à la protection des données"):
        assert expected in text


def test_subject_access_lists_every_exchange_and_is_itself_audited(hub) -> None:
    home, engine, pseudonymiser, flux, summary = hub
    delivered_nir = next(p["NIR"] for p in people_of(flux) if p["NIR"] and p["NIR"][3:5] != "13")
    report = subject_access(engine, pseudonymiser, delivered_nir, load_flows(), demandeur="dpo", motif="test")
    decisions = [e for e in report.echanges if e.evenement == "decision"]
    assert {e.destinataire for e in decisions} == {"departement-052", "plateforme-insertion"}
    for e in decisions:
        if e.decision == "livre":
            assert e.fichier and "Pseudonyme" in e.champs and "État du droit RSA" in e.champs
            assert ("NIR" in e.champs) == (e.categories.get("identite", "").startswith(("legale", "consentement")))
    with engine.connect() as c:
        access = c.execute(select(audit_log).where(audit_log.c.event == "acces-personne")).one()
    assert access.subject == report.pseudonyme_pivot and delivered_nir not in access.payload
    assert {k: v for k, v in json.loads(access.payload).items() if k != "sel"} == {"demandeur": "dpo", "motif": "test",
                                                                                    "cle": "t1"}


def test_subject_access_from_the_cli_never_prints_the_nir(hub) -> None:
    _, _, _, flux, _ = hub
    nir = next(p["NIR"] for p in people_of(flux) if p["NIR"] and p["NIR"][3:5] != "13")
    result = subprocess.run([sys.executable, "-m", "spie_hub.cli", "dpo", "personne", "--nir", "-", "--demandeur", "dpo"],
                            input=nir + "\n", capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert "Recherche journalisée" in result.stdout and "departement-052" in result.stdout and nir not in result.stdout
    invalid = subprocess.run([sys.executable, "-m", "spie_hub.cli", "dpo", "personne"], input="2821351108030\n",
                             capture_output=True, text=True, env=os.environ.copy())
    assert invalid.returncode == 1 and "NIR invalide" in invalid.stderr and "2821351108030" not in invalid.stderr


def test_the_purge_deletes_what_is_past_retention_keeps_the_rest_and_is_audited(hub) -> None:
    home, engine, _, _, summary = hub
    flow = load_flows()[FLOW]
    recent = Path(summary.destinataires["plateforme-insertion"].fichier)
    old = Path(summary.destinataires["departement-052"].fichier)
    long_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=flow.conservation_jours + 1))
    with engine.begin() as c:
        c.execute(update(deliveries).where(deliveries.c.recipient == "departement-052")
                  .values(delivered_at=long_ago.isoformat()))
    notice = next((home.root / "outbox" / "departement-052").glob("avis-suppression_*"))
    os.utime(notice, (long_ago.timestamp(), long_ago.timestamp()))
    reports = purge(engine, home, load_flows())
    removed = set(reports[0].fichiers)
    assert str(old.relative_to(home.root)) in removed and str(notice.relative_to(home.root)) in removed
    assert not old.exists() and not notice.exists() and recent.exists()
    assert not old.with_name(old.name.removesuffix(".csv") + ".manifest.json").exists()
    with engine.connect() as c:
        audited = json.loads(c.execute(select(audit_log.c.payload).where(
            audit_log.c.event == "purge", audit_log.c.flow == FLOW)).scalar_one())
    assert audited["nombre"] == len(removed) and audited["conservation_jours"] == flow.conservation_jours


@pytest.mark.parametrize(("cells", "expected"), [
    ({"livres": 120, "retenus": 3}, {"livres": "≥ 11", "retenus": "< 11"}),  # the complement is never misstated
    ({"livres": 120, "retenus": 0}, {"livres": 120, "retenus": 0}),
    ({"livres": 40, "retenus": 12}, {"livres": 40, "retenus": 12}),
    ({"a": 2, "b": 5, "c": 50}, {"a": "< 11", "b": "< 11", "c": 50}),
])
def test_small_cells_and_their_complement_are_suppressed(cells, expected) -> None:
    assert suppress(cells, 11) == expected


def test_the_senders_receipt_hides_small_withheld_counts(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    flux = tmp_path / "petit.xml"
    generate(flux, None, 4, seed=3, anomaly_rate=0)
    summary = run_flow(FLOW, flux, home)
    receipt = json.loads(next((home.outbox / "caf-msa" / "accuses").glob("*_accuse.json")).read_text(encoding="utf-8"))
    assert receipt["enregistrements_lus"] == summary.lus
    small = [rid for rid, c in summary.destinataires.items() if 0 < c.retenus < 11]
    assert small, "a file of 4 households has small withheld counts"
    # Not only the small ones: no delivered or withheld count per recipient at all (docs/divulgation.md).
    assert receipt["destinataires"] == sorted(summary.destinataires)

"""The DPO report says the truth at a glance: one scale per chart and a real time axis, what each figure counts and
on which day, first refusals apart from withdrawals, French words and formats, filters, and a PDF."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from browser import chromium
from helpers import first_delivery
from lxml import html as lxml_html
from sqlalchemy import insert, update

from consent.fhir_build import consent
from consent.fhir_import import import_consents
from consent.revocation import propagate_withdrawals
from spie_hub.demo.data import generate, write_withdrawals
from spie_hub.dpo.french import NNBSP, date_fr, nombre
from spie_hub.dpo.report import write_report
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import runs

CAF = "caf-vers-departement"
TODAY = dt.date.today()
GAP_DAYS = 5


@pytest.fixture
def hub(hub_home: Path, tmp_path: Path):
    """Two runs five days apart, withdrawals and a new opposition, 600 households (counts above a thousand)."""
    home, engine, pseudonymiser, flux, bundle, summary = first_delivery(tmp_path, 600, seed=5, anomaly_rate=0.02)
    second = tmp_path / "flux2.xml"
    generate(second, None, 30, seed=6, anomaly_rate=0.0, reference=dt.date(2026, 11, 30))
    later = run_flow(CAF, second, home)
    with engine.begin() as c:  # the first run happened five days before the second one
        first_day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=GAP_DAYS)).isoformat()
        c.execute(update(runs).where(runs.c.run_id == summary.run_id).values(started_at=first_day))
    write_withdrawals(bundle, tmp_path / "retraits.csv", 6)
    import_consents(tmp_path / "retraits.csv", engine, pseudonymiser, emetteur="departement-052")
    entries = json.loads(bundle.read_text(encoding="utf-8"))["entry"]
    nirs = [e["resource"]["subject"]["identifier"]["value"] for e in entries]
    opposition = tmp_path / "opposition.json"
    opposition.write_text(json.dumps(consent("nouvelle-opposition-1", nirs[-1], grant=False, kind="opposition",
                                             blanket=True, recipients=["plateforme-insertion"], start="2026-01-01",
                                             end=None, controller="departement-052")), encoding="utf-8")
    import_consents(opposition, engine, pseudonymiser, emetteur="departement-052")
    propagate_withdrawals(engine, home, pseudonymiser, load_flows())
    yield home, engine, summary, later
    engine.dispose()


def _doc(path: Path):  # noqa: ANN202 - an lxml element
    return lxml_html.fromstring(path.read_text(encoding="utf-8"))


def _words(element) -> str:  # noqa: ANN001 - an lxml element
    """The visible text, one space between cells (no stylesheet, no chart tooltips)."""
    for hidden in element.xpath(".//style|.//title|.//svg"):
        hidden.drop_tree()
    # Only ASCII white space: the narrow no-break space inside numbers is part of what is checked.
    return re.sub(r"[ \t\r\n]+", " ", " ".join(element.itertext())).strip()


def _text(path: Path) -> str:
    return _words(_doc(path).body)


def _charts(path: Path) -> dict[str, list]:
    return {svg.findtext("title"): svg.findall(".//rect[@class='bar']") for svg in _doc(path).iter("svg")}


def test_every_chart_of_counts_draws_its_values_on_one_scale(hub, tmp_path: Path) -> None:
    _, engine, _, _ = hub
    out = tmp_path / "r.html"
    data = write_report(engine, TODAY - dt.timedelta(days=10), TODAY, out)
    assert len(data.motifs) >= 2 and len(set(data.motifs.values())) >= 2, "unequal reasons to draw"
    charts = _charts(out)
    count_charts = [title for title in charts if "par motif" in title or "propagation" in title or "par jour" in title]
    assert len(count_charts) == 3
    for title in count_charts:
        rects = charts[title]
        vertical = "par jour" in title
        lengths = defaultdict(float)  # one bar = the stacked segments at the same position
        for rect in rects:
            where = rect.get("x") if vertical else rect.get("y")
            lengths[where] += float(rect.get("height" if vertical else "width"))
        totals = defaultdict(int)
        for rect in rects:
            totals[rect.get("x") if vertical else rect.get("y")] += int(rect.get("data-value"))
        ratios = {round(lengths[k] / totals[k], 3) for k in totals}
        assert len(ratios) == 1, f"{title}: lengths not proportional to values {dict(totals)} → {dict(lengths)}"


def test_the_timeline_has_one_slot_per_day_of_the_period(hub, tmp_path: Path) -> None:
    _, engine, _, _ = hub
    out = tmp_path / "r.html"
    write_report(engine, TODAY - dt.timedelta(days=20), TODAY, out)
    title = next(t for t in _charts(out) if "par jour" in t)
    columns = {}
    for rect in _charts(out)[title]:
        columns[rect.get("data-day")] = float(rect.get("x"))
    assert len(columns) == 2
    (day1, x1), (day2, x2) = sorted(columns.items())
    assert (dt.date.fromisoformat(day2) - dt.date.fromisoformat(day1)).days == GAP_DAYS
    width = 760 - 64 - 10
    assert x2 - x1 == pytest.approx(GAP_DAYS * width / 21, abs=0.05)  # 21 days from du to au included


def test_each_figure_says_what_it_counts_and_on_which_day_in_french(hub, tmp_path: Path) -> None:
    _, engine, summary, later = hub
    out = tmp_path / "r.html"
    data = write_report(engine, TODAY - dt.timedelta(days=10), TODAY, out)
    text = _text(out)
    assert "décisions livrées" in text and "personne(s) distincte(s)" in text and "(enregistrement × destinataire)" in text
    assert f"Consentements et oppositions actifs au {date_fr(TODAY)}" in text
    # French number formats: thousands with a narrow no-break space, no ISO dates, no raw codes.
    assert data.lus >= 1000 and nombre(data.lus) in text and NNBSP in nombre(data.lus)
    assert f"{data.lus:,}" not in text and str(data.lus) not in text.replace(nombre(data.lus), "")
    assert TODAY.isoformat() not in text and f"du {date_fr(TODAY - dt.timedelta(days=10))} au {date_fr(TODAY)}" in text
    for code in ("termine", "legale", "consentement:", "sans-consentement", "hors-politique"):
        assert not re.search(rf"(?<![\w-]){re.escape(code)}(?![\w-])", text), code
    assert "terminée : 2" in text and "base légale" in text
    # A snapshot at another day is stated as such, with its own count.
    earlier = tmp_path / "avant.html"
    before = write_report(engine, dt.date(2024, 1, 1), dt.date(2024, 12, 31), earlier)
    assert sum(before.consentements_actifs.values()) == 0 < sum(data.consentements_actifs.values())
    assert f"actifs au {date_fr(dt.date(2024, 12, 31))}" in _text(earlier)


def test_first_refusals_and_withdrawals_are_counted_apart(hub, tmp_path: Path) -> None:
    _, engine, _, _ = hub
    out = tmp_path / "r.html"
    data = write_report(engine, TODAY - dt.timedelta(days=10), TODAY, out)
    oppositions = sum(1 for e in json.loads((tmp_path / "consents.json").read_text(encoding="utf-8"))["entry"]
                      if e["resource"]["category"][0]["coding"][0]["code"] == "opposition")
    assert len(data.retraits_seuls) == 6 and len(data.premiers_refus) == oppositions + 1
    text = _text(out)
    assert "Retraits de consentement 6 " in text and f"Refus et oppositions exprimés {oppositions + 1} " in text
    assert "nouvelle-opposition-1" not in out.read_text(encoding="utf-8")  # the partner's id never shows


def test_filters_by_flow_and_recipient(hub, tmp_path: Path) -> None:
    _, engine, _, _ = hub
    out = tmp_path / "plateforme.html"
    data = write_report(engine, TODAY - dt.timedelta(days=10), TODAY, out, destinataire="plateforme-insertion")
    assert set(data.livres) == {"plateforme-insertion"} and {c.destinataire for c in data.coverage} == {"plateforme-insertion"}
    assert all(r["destinataires"] == ["plateforme-insertion"] for r in data.retraits)
    assert "departement-052 ·" not in out.read_text(encoding="utf-8")
    ft = write_report(engine, TODAY - dt.timedelta(days=10), TODAY, tmp_path / "ft.html", flux="france-travail-vers-departement")
    assert ft.runs == 0 and not ft.livres and [f.id for f in ft.flows] == ["france-travail-vers-departement"]
    for args, message in ((["--flux", "inconnu"], "Flux inconnu"), (["--destinataire", "personne"], "Destinataire inconnu"),
                          (["--flux", "france-travail-vers-departement", "--destinataire", "plateforme-insertion"], "ne livre pas")):
        bad = subprocess.run([sys.executable, "-m", "spie_hub.cli", "dpo", "rapport", "--du", "2026-01-01", "--au",
                              TODAY.isoformat(), "--sortie", str(tmp_path / "x.html"), *args],
                             capture_output=True, text=True, env=os.environ.copy())
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_special_category_exchanges_are_shown(hub, tmp_path: Path) -> None:
    _, engine, _, _ = hub
    stats = {"livres": 3, "retenus": 0, "motifs": {},
             "fondements": {"sante-handicap": {"consentement": 3, "sans-consentement": 2}, "droits-rsa": {"legale": 5}}}
    with engine.begin() as c:
        c.execute(insert(runs).values(run_id="art9", flow=CAF, input_name="x.xml", input_sha256="1" * 64,
                                      started_at=dt.datetime.now(dt.timezone.utc).isoformat(), status="termine",
                                      summary=json.dumps({"lus": 5, "rejetes": 0, "departement-052": stats})))
    out = tmp_path / "r.html"
    data = write_report(engine, TODAY - dt.timedelta(days=1), TODAY, out)
    assert (CAF, "departement-052", 3, 2) in data.particuliere
    section = _words(_doc(out).get_element_by_id("particulieres"))
    assert "caf-vers-departement departement-052 3 2" in section


def test_the_cli_prints_the_report_to_pdf_through_the_browser(hub, tmp_path: Path) -> None:
    chromium()  # skips (or fails under CI) without the browser
    html, pdf = tmp_path / "r.html", tmp_path / "sous-dossier" / "rapport.pdf"
    result = subprocess.run([sys.executable, "-m", "spie_hub.cli", "dpo", "rapport", "--du", "2026-01-01", "--au",
                             TODAY.isoformat(), "--sortie", str(html), "--pdf", str(pdf)],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stderr
    content = pdf.read_bytes()
    assert content.startswith(b"%PDF-") and len(content) > 10_000
    found = re.search(rb"/Title\s*<([0-9A-Fa-f]+)>", content) or re.search(rb"/Title\s*\(([^)]*)\)", content)
    assert found, "the PDF carries the report's title"
    raw = found.group(1)
    title = bytes.fromhex(raw.decode()).decode("utf-16") if re.fullmatch(rb"[0-9A-Fa-f]+", raw) else raw.decode("latin-1")
    assert title.startswith("Rapport DPO — hub SPIE — du 1er janvier 2026")
    assert not list(pdf.parent.glob(".*.tmp"))


@pytest.mark.parametrize(("end", "expiring"), [("2026-12", True), ("2026", True), ("2027", False), ("2026-11", False)])
def test_a_consent_ending_on_a_partial_date_expires_on_the_last_day_it_covers(hub_home: Path, tmp_path: Path, end: str,
                                                                             expiring: bool) -> None:
    """"2026-12" covers the whole of December: active on 1 December and expiring within 30 days, not already past."""
    from spie_hub.core.home import HubHome
    from spie_hub.dpo.report_data import gather
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    bundle = tmp_path / "c.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": consent(
        "c1", "1850578006048", grant=True, recipients=("departement-052",), categories=("identite",),
        start="2026-01-01", end=end)}]}), encoding="utf-8")
    report = import_consents(bundle, engine, load_pseudonymiser(home), today=dt.date(2026, 12, 1))
    assert report.importes == 1, report.erreurs
    data = gather(engine, load_flows(), dt.date(2026, 11, 1), dt.date(2026, 12, 1))
    assert sum(data.consentements_actifs.values()) == (1 if end != "2026-11" else 0)
    assert data.expirant_30j == (1 if expiring else 0)

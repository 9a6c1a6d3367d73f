"""``spie-hub dpo rapport``: a self-contained HTML report (no script, no external resource, strict CSP), and its PDF
printed by the browser (``--pdf``: Chromium headless, the same engine the tests open the report with)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine

from spie_hub.core.errors import ConfigurationError, HubError
from spie_hub.dpo import charts, french
from spie_hub.dpo.register import register
from spie_hub.dpo.report_data import BASE_LABELS, GROUND_LABELS, KIND_LABELS, STATUS_LABELS, ReportData, gather
from spie_hub.registry import load_flows

_ENV = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["html", "j2"]))
_ENV.filters.update(nombre=french.nombre, date_fr=french.date_fr, horodatage=french.horodatage_fr,
                    duree=french.duree_fr)
_ENV.globals.update(pourcent=french.pourcent)
_GROUNDS = list(GROUND_LABELS.items())
_STATES = [("propages", "propagés"), ("en-attente", "en attente de propagation")]
#: How long Chromium may take to print the report.
PDF_TIMEOUT_S = 180


def _charts(data: ReportData) -> dict[str, object]:
    coverage_rows = [(f"{c.destinataire} · {c.categorie}", dict(c.grounds)) for c in data.coverage]
    reasons = [(motif[:60], {"retenus": n}) for motif, n in data.motifs.most_common(12)]

    def states(rows: list[dict[str, object]]) -> dict[str, int]:
        propagated = sum(1 for r in rows if r["propage_le"])
        return {"propages": propagated, "en-attente": len(rows) - propagated}

    withdrawals = [("Retraits de consentement", states(data.retraits_seuls)),
                   ("Refus et oppositions exprimés", states(data.premiers_refus))]
    return {
        "coverage": charts.share_bars("Répartition des décisions par fondement (100 % = décisions de la ligne)",
                                      coverage_rows, _GROUNDS, "décisions"),
        "timeline": charts.timeline("Décisions (enregistrement × destinataire) livrées et retenues, par jour",
                                    data.du, data.au, data.par_jour, [("livres", "livrées"), ("retenus", "retenues")],
                                    "décisions"),
        "reasons": charts.bars("Décisions retenues (enregistrement entier), par motif", reasons,
                               [("retenus", "retenues")], "décisions", label_width=420),
        "withdrawals": charts.bars("Retraits, refus et oppositions enregistrés, et leur propagation",
                                   withdrawals if data.retraits else [], _STATES, "retraits ou refus"),
    }


def _check_filters(flows: dict[str, object], flux: str | None, destinataire: str | None) -> None:
    if flux is not None and flux not in flows:
        raise ConfigurationError(f"Flux inconnu : {flux} (flux déclarés : {', '.join(sorted(flows))})")
    recipients = sorted({r.id for f in flows.values() for r in f.destinataires})  # type: ignore[attr-defined]
    if destinataire is not None and destinataire not in recipients:
        raise ConfigurationError(f"Destinataire inconnu : {destinataire} (destinataires déclarés : {', '.join(recipients)})")
    if flux and destinataire and destinataire not in {r.id for r in flows[flux].destinataires}:  # type: ignore[attr-defined]
        raise ConfigurationError(f"Le flux {flux} ne livre pas le destinataire {destinataire}")


def render_report(engine: Engine, du: dt.date, au: dt.date, *, flux: str | None = None,
                  destinataire: str | None = None) -> tuple[str, ReportData]:
    flows = load_flows()
    _check_filters(flows, flux, destinataire)
    data = gather(engine, flows, du, au, flux=flux, destinataire=destinataire)
    org, fiches = register()
    fiches = [f for f in fiches if any(flow.id == f.flux for flow in data.flows)]
    html = _ENV.get_template("rapport.html.j2").render(
        d=data, charts=_charts(data), labels=GROUND_LABELS, statuts=STATUS_LABELS, bases=BASE_LABELS,
        natures=KIND_LABELS, org=org, fiches=fiches)
    return html, data


def write_report(engine: Engine, du: dt.date, au: dt.date, output: Path, *, flux: str | None = None,
                 destinataire: str | None = None, pdf: Path | None = None) -> ReportData:
    html, data = render_report(engine, du, au, flux=flux, destinataire=destinataire)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(output)
    if pdf is not None:
        print_pdf(output, pdf)
    return data


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise ConfigurationError("Impression PDF : Chromium est introuvable (paquet Debian `chromium`)")
    return path


def print_pdf(html: Path, pdf: Path) -> None:
    """The report printed by Chromium headless (its own print stylesheet applies), written atomically."""
    pdf.parent.mkdir(parents=True, exist_ok=True)
    tmp = pdf.with_name(f".{pdf.name}.{os.getpid()}.tmp")
    profile = tempfile.mkdtemp(prefix="spie-pdf-")
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-default-apps", f"--user-data-dir={profile}", f"--print-to-pdf={tmp}",
               html.resolve().as_uri()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PDF_TIMEOUT_S, check=False)
        if result.returncode != 0 or not tmp.is_file() or not tmp.read_bytes()[:5] == b"%PDF-":
            raise HubError(f"Impression PDF échouée (Chromium, code {result.returncode}) : aucun PDF écrit")
        tmp.replace(pdf)
    except subprocess.TimeoutExpired:
        raise HubError(f"Impression PDF : Chromium n'a pas terminé en {PDF_TIMEOUT_S} s") from None
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)

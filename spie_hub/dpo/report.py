"""``spie-hub dpo rapport``: a self-contained HTML report (no script, no external resource, strict CSP)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine

from spie_hub.dpo import charts
from spie_hub.dpo.register import register
from spie_hub.dpo.report_data import GROUND_LABELS, ReportData, gather
from spie_hub.registry import load_flows

_ENV = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["html", "j2"]))
_GROUNDS = [(k, v) for k, v in GROUND_LABELS.items()]


def _charts(data: ReportData) -> dict[str, object]:
    coverage_rows = [(f"{c.destinataire} · {c.categorie}", dict(c.grounds)) for c in data.coverage]
    timeline = [(day, dict(v)) for day, v in sorted(data.par_jour.items())]
    reasons = [(motif[:60], {"retenus": n}) for motif, n in data.motifs.most_common(12)]
    propagated = sum(1 for r in data.retraits if r["propage_le"])
    withdrawals = [("Retraits et oppositions", {"propages": propagated, "en-attente": len(data.retraits) - propagated}),
                   ("Avis de suppression déposés", {"avis": sum(r["avis"] or 0 for r in data.retraits)})]
    return {
        "coverage": charts.stacked_bars("Couverture par destinataire et catégorie", coverage_rows, _GROUNDS),
        "timeline": charts.columns("Enregistrements livrés et retenus par jour", timeline,
                                   [("livres", "livrés"), ("retenus", "retenus")]),
        "reasons": charts.stacked_bars("Enregistrements retenus par motif", reasons, [("retenus", "retenus")], label_width=420),
        "withdrawals": charts.stacked_bars("Propagation des retraits", withdrawals if data.retraits else [],
                                           [("propages", "propagés"), ("en-attente", "en attente"), ("avis", "avis")]),
    }


def write_report(engine: Engine, du: dt.date, au: dt.date, output: Path) -> ReportData:
    data = gather(engine, load_flows(), du, au)
    org, fiches = register()
    html = _ENV.get_template("rapport.html.j2").render(d=data, charts=_charts(data), labels=GROUND_LABELS, org=org, fiches=fiches)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(output)
    return data

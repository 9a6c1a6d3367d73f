"""What the DPO's report shows, gathered from the store without reading a single person's record.

Runs keep, per recipient, their counts by reason and by ground of decision (pipeline statistics), so the report
aggregates a few rows per run even for files of millions of records.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from consent.decision import ConsentIndex, version_from_row
from schemas.categories import CategorieDonnees
from spie_hub.audit.chain import VerifyResult, verify
from spie_hub.registry import Flow
from spie_hub.store import audit_log, consents, revocations, runs

GROUND_LABELS = {
    "legale": "base légale", "consentement": "consentement", "refus": "refus exprimé", "opposition": "opposition",
    "sans-consentement": "pas de consentement", "hors-politique": "hors politique du flux",
}


@dataclass
class Coverage:
    flux: str
    destinataire: str
    categorie: str
    base: str  # "legale" | "consentement"
    grounds: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.grounds.values())

    @property
    def permis(self) -> int:
        return self.grounds["legale"] + self.grounds["consentement"]


@dataclass
class ReportData:
    du: dt.date
    au: dt.date
    genere_le: str
    audit: VerifyResult
    flows: list[Flow]
    runs: int = 0
    statuts: Counter[str] = field(default_factory=Counter)
    lus: int = 0
    rejetes: int = 0
    livres: Counter[str] = field(default_factory=Counter)
    retenus: Counter[str] = field(default_factory=Counter)
    par_jour: dict[str, Counter[str]] = field(default_factory=dict)  # day → {"livres": n, "retenus": n}
    motifs: Counter[str] = field(default_factory=Counter)
    refus_par_categorie: Counter[tuple[str, str]] = field(default_factory=Counter)  # (category, ground) → n
    coverage: list[Coverage] = field(default_factory=list)
    retraits: list[dict[str, Any]] = field(default_factory=list)
    consentements_actifs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (issuer, kind)
    consentements_importes: int = 0
    expirant_30j: int = 0
    particuliere: list[tuple[str, str, int, int]] = field(default_factory=list)  # flow, recipient, permitted, withheld
    particuliere_sous_base_legale: int = 0
    acces_personne: int = 0

    @property
    def delais_propagation(self) -> list[float]:
        return [r["delai_s"] for r in self.retraits if r["delai_s"] is not None]

    @property
    def delai_median_s(self) -> float | None:
        delays = self.delais_propagation
        return statistics.median(delays) if delays else None


def _in_period(column: Any, du: dt.date, au: dt.date) -> Any:
    return (column >= du.isoformat()) & (column < (au + dt.timedelta(days=1)).isoformat())


def _seconds(start: str, end: str | None) -> float | None:
    if end is None:
        return None
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def _runs(data: ReportData, engine: Engine, flows: dict[str, Flow]) -> None:
    coverage: dict[tuple[str, str, str], Coverage] = {}
    with engine.connect() as connection:
        rows = connection.execute(select(runs).where(_in_period(runs.c.started_at, data.du, data.au))
                                  .order_by(runs.c.started_at)).all()
    for row in rows:
        data.runs += 1
        data.statuts[row.status] += 1
        summary = json.loads(row.summary or "{}")
        data.lus += summary.get("lus", 0)
        data.rejetes += summary.get("rejetes", 0)
        day = row.started_at[:10]
        per_day = data.par_jour.setdefault(day, Counter())
        flow = flows.get(row.flow)
        for rid, counts in summary.items():
            if not isinstance(counts, dict):
                continue
            data.livres[rid] += counts.get("livres", 0)
            data.retenus[rid] += counts.get("retenus", 0)
            per_day["livres"] += counts.get("livres", 0)
            per_day["retenus"] += counts.get("retenus", 0)
            data.motifs.update(counts.get("motifs", {}))
            recipient = next((r for r in flow.destinataires if r.id == rid), None) if flow else None
            for category, grounds in counts.get("fondements", {}).items():
                for ground, n in grounds.items():
                    if ground not in ("legale", "consentement"):
                        data.refus_par_categorie[(category, ground)] += n
                base = recipient.politique.get(CategorieDonnees(category)) if recipient else None
                key = (row.flow, rid, category)
                entry = coverage.setdefault(key, Coverage(row.flow, rid, category, base.kind if base else "hors politique", Counter()))
                entry.grounds.update(grounds)
                if CategorieDonnees(category).categorie_particuliere and grounds.get("legale"):
                    data.particuliere_sous_base_legale += grounds["legale"]
    data.coverage = sorted(coverage.values(), key=lambda c: (c.flux, c.destinataire, c.categorie))
    special = CategorieDonnees.SANTE_HANDICAP.value
    data.particuliere = [(c.flux, c.destinataire, c.permis, c.total - c.permis) for c in data.coverage if c.categorie == special]


def _consents(data: ReportData, engine: Engine) -> None:
    today = data.au
    soon = (today + dt.timedelta(days=30)).isoformat()
    with engine.connect() as connection:
        data.consentements_importes = connection.execute(
            select(func.count()).select_from(consents).where(_in_period(consents.c.imported_at, data.du, data.au))).scalar_one()
        latest = ConsentIndex.latest_versions(version_from_row(r) for r in connection.execute(select(consents)))
    for version in latest:
        if version.status != "active":
            continue
        if any(r.in_period(today) for r in version.rules):
            data.consentements_actifs[(version.emetteur, version.kind)] += 1
            ends = [r.end[:10] for r in version.rules if r.end]
            if version.kind == "consentement" and ends and today.isoformat() <= max(ends) <= soon:
                data.expirant_30j += 1


def _withdrawals(data: ReportData, engine: Engine) -> None:
    with engine.connect() as connection:
        rows = connection.execute(select(revocations).where(_in_period(revocations.c.recorded_at, data.du, data.au))
                                  .order_by(revocations.c.id)).all()
        data.acces_personne = connection.execute(
            select(func.count()).select_from(audit_log).where(
                audit_log.c.event == "acces-personne", _in_period(audit_log.c.ts, data.du, data.au))).scalar_one()
    for row in rows:
        recipients = sorted({p[0] for p in json.loads(row.pairs)})
        data.retraits.append({"id": row.id, "consentement": row.consent_ref, "destinataires": recipients,
                              "enregistre_le": row.recorded_at, "propage_le": row.propagated_at,
                              "avis": row.notices, "delai_s": _seconds(row.recorded_at, row.propagated_at)})


def gather(engine: Engine, flows: dict[str, Flow], du: dt.date, au: dt.date) -> ReportData:
    from spie_hub.audit.log import now

    data = ReportData(du=du, au=au, genere_le=now()[:19].replace("T", " "), audit=verify(engine), flows=list(flows.values()))
    _runs(data, engine, flows)
    _consents(data, engine)
    _withdrawals(data, engine)
    return data


def by_recipient(coverage: list[Coverage]) -> dict[tuple[str, str], list[Coverage]]:
    grouped: dict[tuple[str, str], list[Coverage]] = defaultdict(list)
    for c in coverage:
        grouped[(c.flux, c.destinataire)].append(c)
    return grouped

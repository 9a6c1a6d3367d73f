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
from spie_hub.audit import segments
from spie_hub.audit.chain import VerifyResult, verify
from spie_hub.core.home import HubHome
from spie_hub.registry import Flow
from spie_hub.store import audit_log, consents, revocations, runs

GROUND_LABELS = {
    "legale": "base légale", "consentement": "consentement", "refus": "refus exprimé", "opposition": "opposition",
    "sans-consentement": "pas de consentement", "hors-politique": "hors politique du flux",
    "sans-nir": "opposition non vérifiable (sans NIR)",
}
#: The run statuses, in the DPO's words (never the codes the store keeps).
STATUS_LABELS = {
    "termine": "terminée", "deja-livre": "déjà livrée (fichier renvoyé)", "quarantaine": "fichier mis en quarantaine",
    "annule": "annulée (interrompue, rien livré)", "incomplete": "incomplète (interrompue en cours de livraison)",
    "en-cours": "en cours", "publication": "en cours de livraison", "refuse": "fichier refusé",
    "livraison-en-attente": "livraison en attente d'un dépôt",
}
#: What the policy of a category rests on, in words.
BASE_LABELS = {"legale": "base légale", "consentement": "consentement", "hors politique": "hors politique du flux"}
#: Consent kinds as the report names them.
KIND_LABELS = {"consentement": "consentements", "opposition": "oppositions"}


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
    #: Filters the report was drawn with (None: every flow, every recipient).
    flux: str | None = None
    destinataire: str | None = None
    #: recipient → distinct pseudonyms with at least one decision in the period: people, not decisions (per key).
    personnes: Counter[str] = field(default_factory=Counter)

    @property
    def premiers_refus(self) -> list[dict[str, Any]]:
        """Refusals and oppositions recorded as such (a first refusal or a new opposition)."""
        return [r for r in self.retraits if r["nature"] == "refus"]

    @property
    def retraits_seuls(self) -> list[dict[str, Any]]:
        """Withdrawals proper: a consent that permitted something and no longer does."""
        return [r for r in self.retraits if r["nature"] == "retrait"]

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


def _recipients_in_scope(data: ReportData, flows: dict[str, Flow]) -> set[str] | None:
    """The recipients the report is about (None: all)."""
    if data.destinataire:
        return {data.destinataire}
    if data.flux and data.flux in flows:
        return {r.id for r in flows[data.flux].destinataires}
    return None


def _runs(data: ReportData, engine: Engine, flows: dict[str, Flow]) -> None:
    coverage: dict[tuple[str, str, str], Coverage] = {}
    query = select(runs).where(_in_period(runs.c.started_at, data.du, data.au)).order_by(runs.c.started_at)
    if data.flux:
        query = query.where(runs.c.flow == data.flux)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    for row in rows:
        summary = json.loads(row.summary or "{}")
        flow = flows.get(row.flow)
        if data.destinataire and not isinstance(summary.get(data.destinataire), dict) and (
                flow is None or data.destinataire not in {r.id for r in flow.destinataires}):
            continue  # a run of a flow that does not deliver to the chosen recipient
        data.runs += 1
        data.statuts[row.status] += 1
        data.lus += summary.get("lus", 0)
        data.rejetes += summary.get("rejetes", 0)
        day = row.started_at[:10]
        per_day = data.par_jour.setdefault(day, Counter())
        for rid, counts in summary.items():
            if not isinstance(counts, dict) or (data.destinataire and rid != data.destinataire):
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
                try:
                    known = CategorieDonnees(category)
                except ValueError:
                    known = None
                base = recipient.politique.get(known) if recipient and known else None
                key = (row.flow, rid, category)
                entry = coverage.setdefault(key, Coverage(row.flow, rid, category, base.kind if base else "hors politique", Counter()))
                entry.grounds.update(grounds)
                if known is not None and known.categorie_particuliere and grounds.get("legale"):
                    data.particuliere_sous_base_legale += grounds["legale"]
    data.coverage = sorted(coverage.values(), key=lambda c: (c.flux, c.destinataire, c.categorie))
    special = CategorieDonnees.SANTE_HANDICAP.value
    data.particuliere = [(c.flux, c.destinataire, c.permis, c.total - c.permis) for c in data.coverage if c.categorie == special]


def _people(data: ReportData, home: HubHome) -> None:
    """Distinct people per recipient with at least one decision: the decisions are under the recipient's pseudonym,
    so counting distinct pseudonyms counts people (per key: a key rotation starts new pseudonyms). Counted inside
    the runs' segments of the period (spie_hub/audit/segments.py), on disk, never as a set held in memory."""
    counted = segments.distinct_subjects(home, data.du, data.au, flow=data.flux, recipient=data.destinataire)
    for recipient, n in counted.items():
        if recipient:
            data.personnes[recipient] = int(n)


def _names(rule: Any, recipient: str) -> bool:
    names = getattr(rule, "names", None)
    return bool(names(recipient)) if callable(names) else recipient in rule.recipients


def _consents(data: ReportData, engine: Engine, flows: dict[str, Flow]) -> None:
    """Snapshot at the end of the period (``au``): what was active that day, whatever the period's start."""
    today = data.au
    soon = (today + dt.timedelta(days=30)).isoformat()
    scope = _recipients_in_scope(data, flows)
    with engine.connect() as connection:
        data.consentements_importes = connection.execute(
            select(func.count()).select_from(consents).where(_in_period(consents.c.imported_at, data.du, data.au))).scalar_one()
        # Versions imported after the snapshot day did not exist on that day.
        rows = connection.execute(select(consents).where(consents.c.imported_at < (today + dt.timedelta(days=1)).isoformat()))
        latest = ConsentIndex.latest_versions(version_from_row(r) for r in rows)
    for version in latest:
        if version.status != "active":
            continue
        rules = [r for r in version.rules if scope is None or any(_names(r, rid) for rid in scope)]
        if any(r.in_period(today) for r in rules):
            data.consentements_actifs[(version.emetteur, version.kind)] += 1
            ends = [r.last_day for r in rules if r.last_day]
            if version.kind == "consentement" and ends and today.isoformat() <= max(ends) <= soon:
                data.expirant_30j += 1


def _nature(connection: Any, reference: str) -> str:
    """A withdrawal proper ("retrait": a consent that permitted and no longer does) or a refusal recorded as such
    ("refus": a first refusal or an opposition), from the consent version the withdrawal cites."""
    ref, _, version = reference.rpartition("/v")
    row = None
    if ref and version.isdigit() and "ref" in consents.c:
        row = connection.execute(select(consents.c.kind, consents.c.status, consents.c.version).where(
            consents.c.ref == ref, consents.c.version == int(version))).first()
    if row is None:
        return "retrait"
    if row.status != "active" or (row.kind == "consentement" and row.version > 1):
        return "retrait"
    return "refus"


def _withdrawals(data: ReportData, engine: Engine, flows: dict[str, Flow]) -> None:
    scope = _recipients_in_scope(data, flows)
    with engine.connect() as connection:
        rows = connection.execute(select(revocations).where(_in_period(revocations.c.recorded_at, data.du, data.au))
                                  .order_by(revocations.c.id)).all()
        data.acces_personne = connection.execute(
            select(func.count()).select_from(audit_log).where(
                audit_log.c.event == "acces-personne", _in_period(audit_log.c.ts, data.du, data.au))).scalar_one()
        natures = {row.consent_ref: _nature(connection, row.consent_ref) for row in rows}
    for row in rows:
        recipients = sorted({p[0] for p in json.loads(row.pairs)})
        if scope is not None:
            recipients = [r for r in recipients if r in scope]
            if not recipients:
                continue
        data.retraits.append({"id": row.id, "consentement": row.consent_ref, "destinataires": recipients,
                              "nature": natures[row.consent_ref],
                              "enregistre_le": row.recorded_at, "propage_le": row.propagated_at,
                              "avis": row.notices, "delai_s": _seconds(row.recorded_at, row.propagated_at)})


def gather(engine: Engine, flows: dict[str, Flow], du: dt.date, au: dt.date, *, flux: str | None = None,
           destinataire: str | None = None, home: HubHome | None = None) -> ReportData:
    """``home``: where the runs' segments are (the environment's hub by default)."""
    from spie_hub.audit.log import now

    shown = [f for f in flows.values() if (flux is None or f.id == flux)
             and (destinataire is None or any(r.id == destinataire for r in f.destinataires))]
    data = ReportData(du=du, au=au, genere_le=now()[:19].replace("T", " "), audit=verify(engine), flows=shown,
                      flux=flux, destinataire=destinataire)
    _runs(data, engine, flows)
    _people(data, home or HubHome.from_env())
    _consents(data, engine, flows)
    _withdrawals(data, engine, flows)
    return data


def by_recipient(coverage: list[Coverage]) -> dict[tuple[str, str], list[Coverage]]:
    grouped: dict[tuple[str, str], list[Coverage]] = defaultdict(list)
    for c in coverage:
        grouped[(c.flux, c.destinataire)].append(c)
    return grouped

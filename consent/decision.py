"""Per-record, per-recipient, per-category decisions.

Rules, in order, for each data category present in a record and each recipient:

1. a category outside the flow's policy for that recipient is withheld;
2. under a legal basis (article cited): permitted, unless the basis is open to objection (RGPD art. 21, e.g.
   6.1.e) and an active refusal or opposition of the person covers it; a legal basis never covers a special
   category (the registry refuses such a policy);
3. under consent: an active, in-period refusal covering it wins; otherwise an active, in-period permission
   covering it is required.

Only the latest version of each consent (per issuer) counts. Each decision cites its ground: the article, or the
consent and its version, or the reason of the refusal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from schemas.categories import CategorieDonnees
from spie_hub.registry import ConsentRegistry, Recipient
from spie_hub.store import consents

#: In a rule's recipients: every recipient (a refusal naming none, or naming one the hub cannot identify).
ALL_RECIPIENTS = "*"


def _first_day(text: str) -> str:
    """A FHIR date, partial or not, as the ISO date of its first day (``2026`` → ``2026-01-01``)."""
    text = text[:10]
    if len(text) == 4:
        return f"{text}-01-01"
    if len(text) == 7:
        return f"{text}-01"
    return text


def _last_day(text: str) -> str:
    """A FHIR date, partial or not, as the ISO date of its last day (``2026-11`` → ``2026-11-30``)."""
    text = text[:10]
    if len(text) == 4:
        return f"{text}-12-31"
    if len(text) == 7:
        year, month = int(text[:4]), int(text[5:7])
        following = dt.date(year + month // 12, month % 12 + 1, 1)
        return (following - dt.timedelta(days=1)).isoformat()
    return text


@dataclass(frozen=True)
class Rule:
    effect: str  # "permit" | "deny"
    recipients: frozenset[str]  # may hold ALL_RECIPIENTS (refusals only)
    categories: frozenset[str]
    start: str | None
    end: str | None

    def in_period(self, day: dt.date) -> bool:
        # Dates are compared as dates, never as strings: a partial start begins on its first day, a partial end
        # covers its whole month or year (a stored "2026-11" end is not already past on 2026-11-21).
        iso = day.isoformat()
        return (self.start is None or _first_day(self.start) <= iso) and (self.end is None or iso <= _last_day(self.end))

    @property
    def last_day(self) -> str | None:
        """The ISO date of the last day the rule covers (a partial end covers its whole month or year)."""
        return None if self.end is None else _last_day(self.end)

    def names(self, recipient: str) -> bool:
        return recipient in self.recipients or (self.effect == "deny" and ALL_RECIPIENTS in self.recipients)


@dataclass(frozen=True)
class ConsentVersion:
    consent_id: str
    version: int
    status: str
    decision: str
    rules: tuple[Rule, ...]
    emetteur: str = "hub"
    kind: str = "consentement"
    #: The hub's own opaque reference (``c-`` + 16 hex): the only one that leaves the consent registry. A
    #: partner's Consent.id can be anything, a NIR included.
    hub_ref: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.hub_ref or opaque_ref_fallback(self.emetteur, self.consent_id)}/v{self.version}"

    def covers(self, effect: str, recipient: str, category: CategorieDonnees, day: dt.date) -> bool:
        if self.status != "active":
            return False
        return any(r.effect == effect and r.names(recipient) and category.value in r.categories and r.in_period(day)
                   for r in self.rules)


def opaque_ref_fallback(emetteur: str, consent_id: str) -> str:
    """For a row stored before the hub kept its own references: a hash, still never the partner's id."""
    return "c-" + hashlib.sha256(f"{emetteur}|{consent_id}".encode()).hexdigest()[:16]


def version_from_row(row: Any) -> ConsentVersion:
    rules = tuple(Rule(r["effet"], frozenset(r["destinataires"]), frozenset(r["categories"]), r["debut"], r["fin"])
                  for r in json.loads(row.rules))
    return ConsentVersion(row.consent_id, row.version, row.status, row.decision, rules, row.emetteur, row.kind,
                          getattr(row, "ref", None))


def permitted_pairs(found: Iterable[ConsentVersion], day: dt.date) -> set[tuple[str, str]]:
    """(recipient, category) pairs a set of consents permits on ``day`` (refusals subtracted)."""
    allowed: set[tuple[str, str]] = set()
    denied: set[tuple[str, str]] = set()
    denied_everywhere: set[str] = set()
    for version in found:
        if version.status != "active":
            continue
        for rule in version.rules:
            if not rule.in_period(day):
                continue
            if rule.effect == "permit":
                allowed.update((r, c) for r in rule.recipients if r != ALL_RECIPIENTS for c in rule.categories)
            else:
                denied.update((r, c) for r in rule.recipients for c in rule.categories)
                if ALL_RECIPIENTS in rule.recipients:
                    denied_everywhere.update(rule.categories)
    return {(r, c) for r, c in allowed - denied if c not in denied_everywhere}


@dataclass(frozen=True)
class CategoryDecision:
    permis: bool
    fondement: str  # "legale:<article>" | "consentement:<id>/v<n>" | the reason of a refusal


@dataclass(frozen=True)
class RecordDecision:
    livre: bool
    categories: dict[CategorieDonnees, CategoryDecision]
    motif: str | None = None

    @property
    def permises(self) -> frozenset[CategorieDonnees]:
        return frozenset(c for c, d in self.categories.items() if d.permis)

    def as_payload(self) -> dict[str, object]:
        return {
            "decision": "livre" if self.livre else "retenu",
            "motif": self.motif,
            "categories": {c.value: {"permis": d.permis, "fondement": d.fondement} for c, d in self.categories.items()},
        }


#: (issuer, recipient, category) -> whether the registry, as it is now, lets that issuer record permits for it.
Authority = Callable[[str, str, str], bool]
#: The issuer of what the operator imports itself (``consent import FICHIER`` without ``--emetteur``).
OPERATOR_ISSUER = "hub"


def registry_authority(registry: ConsentRegistry) -> Authority:
    """Authority as the registry declares it today. A permit is checked when it is imported *and* each time it is
    used: an issuer whose authority was narrowed or removed since no longer grants anything outside it."""

    def may(issuer: str, recipient: str, category: str) -> bool:
        declared = registry.emetteurs.get(issuer)
        if declared is None:
            return issuer == OPERATOR_ISSUER
        return declared.may_permit(recipient, category)

    return may


def within_authority(version: ConsentVersion, authority: Authority) -> ConsentVersion:
    """The version with its permits cut down to what its issuer may grant now (refusals are never cut)."""
    rules: list[Rule] = []
    changed = False
    for rule in version.rules:
        if rule.effect != "permit":
            rules.append(rule)
            continue
        for recipient in sorted(rule.recipients):
            allowed = frozenset(c for c in rule.categories if authority(version.emetteur, recipient, c))
            changed |= allowed != rule.categories or len(rule.recipients) > 1
            if allowed:
                rules.append(Rule(rule.effect, frozenset({recipient}), allowed, rule.start, rule.end))
    return dataclasses.replace(version, rules=tuple(rules)) if changed else version


class ConsentIndex:
    """Looks consents up by batches of pivot pseudonyms so memory never grows with the input file. With an
    ``authority``, permits are cut down to what their issuer may grant as the registry stands."""

    def __init__(self, engine: Engine, authority: Authority | None = None) -> None:
        self.engine = engine
        self.authority = authority

    @staticmethod
    def latest_versions(versions: Iterable[ConsentVersion]) -> list[ConsentVersion]:
        latest: dict[tuple[str, str], ConsentVersion] = {}
        for version in versions:
            key = (version.emetteur, version.consent_id)
            if key not in latest or latest[key].version < version.version:
                latest[key] = version
        return list(latest.values())

    def lookup(self, pivots: Iterable[str]) -> dict[str, list[ConsentVersion]]:
        wanted = list(set(pivots))
        rows_by_subject: dict[str, list[ConsentVersion]] = defaultdict(list)
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                rows = connection.execute(select(consents).where(consents.c.subject.in_(wanted[start:start + 500])))
                for row in rows:
                    version = version_from_row(row)
                    if self.authority is not None:
                        version = within_authority(version, self.authority)
                    rows_by_subject[row.subject].append(version)
        return {subject: self.latest_versions(versions) for subject, versions in rows_by_subject.items()}


def _first(found: list[ConsentVersion], effect: str, recipient: str, category: CategorieDonnees, day: dt.date) -> ConsentVersion | None:
    return next((c for c in found if c.covers(effect, recipient, category, day)), None)


def decide(recipient: Recipient, present: Iterable[CategorieDonnees], found: list[ConsentVersion], day: dt.date) -> RecordDecision:
    decisions: dict[CategorieDonnees, CategoryDecision] = {}
    for category in present:
        base = recipient.politique.get(category)
        if base is None:
            decisions[category] = CategoryDecision(False, "catégorie hors politique du flux pour ce destinataire")
            continue
        refusal = _first(found, "deny", recipient.id, category, day)
        if base.kind == "legale":
            if refusal is not None and base.opposable:
                decisions[category] = CategoryDecision(False, f"opposition:{refusal.ref}")
            else:
                decisions[category] = CategoryDecision(True, f"legale:{base.article}")
            continue
        if refusal is not None:
            decisions[category] = CategoryDecision(False, f"refus exprimé:{refusal.ref}")
            continue
        permit = _first(found, "permit", recipient.id, category, day)
        if permit is not None:
            decisions[category] = CategoryDecision(True, f"consentement:{permit.ref}")
        else:
            decisions[category] = CategoryDecision(False, "aucun consentement actif couvrant cette catégorie")
    missing = [c for c in recipient.categories_requises if not (c in decisions and decisions[c].permis)]
    if missing:
        return RecordDecision(False, decisions, "catégorie requise non permise : " + ", ".join(c.value for c in missing))
    return RecordDecision(True, decisions)

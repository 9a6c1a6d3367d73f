"""Per-record, per-recipient, per-category consent decisions.

Rules (issue 2; refined by the DPO issue): a category under a legal basis is permitted with its article cited;
a category under consent needs an *active*, in-period ``permit`` Consent naming the recipient and the category,
and no active ``deny`` covering them. The latest version of each Consent is the one that counts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from schemas.categories import CategorieDonnees
from spie_hub.registry import Recipient
from spie_hub.store import consents


@dataclass(frozen=True)
class ConsentVersion:
    consent_id: str
    version: int
    status: str
    decision: str
    grantees: frozenset[str]
    categories: frozenset[str]
    period_start: str | None
    period_end: str | None

    @property
    def ref(self) -> str:
        return f"{self.consent_id}/v{self.version}"

    def applies(self, recipient: str, category: CategorieDonnees, day: dt.date) -> bool:
        if self.status != "active" or recipient not in self.grantees or category.value not in self.categories:
            return False
        iso = day.isoformat()
        return (self.period_start is None or self.period_start[:10] <= iso) and (
            self.period_end is None or iso <= self.period_end[:10]
        )


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


class ConsentIndex:
    """Looks consents up by batches of pivot pseudonyms so memory never grows with the input file."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def lookup(self, pivots: Iterable[str]) -> dict[str, list[ConsentVersion]]:
        wanted = list(set(pivots))
        latest: dict[str, tuple[str, ConsentVersion]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = connection.execute(select(consents).where(consents.c.subject.in_(chunk)))
                for row in rows:
                    version = ConsentVersion(
                        row.consent_id, row.version, row.status, row.decision,
                        frozenset(json.loads(row.grantees)), frozenset(json.loads(row.categories)),
                        row.period_start, row.period_end,
                    )
                    current = latest.get(row.consent_id)
                    if current is None or current[1].version < version.version:
                        latest[row.consent_id] = (row.subject, version)
        by_subject: dict[str, list[ConsentVersion]] = defaultdict(list)
        for subject, version in latest.values():
            by_subject[subject].append(version)
        return by_subject


def decide(recipient: Recipient, present: Iterable[CategorieDonnees], found: list[ConsentVersion], day: dt.date) -> RecordDecision:
    decisions: dict[CategorieDonnees, CategoryDecision] = {}
    for category in present:
        base = recipient.politique.get(category)
        if base is None:
            decisions[category] = CategoryDecision(False, "catégorie hors politique du flux pour ce destinataire")
            continue
        if base.kind == "legale":
            decisions[category] = CategoryDecision(True, f"legale:{base.article}")
            continue
        deny = next((c for c in found if c.decision == "deny" and c.applies(recipient.id, category, day)), None)
        if deny is not None:
            decisions[category] = CategoryDecision(False, f"refus exprimé:{deny.ref}")
            continue
        permit = next((c for c in found if c.decision == "permit" and c.applies(recipient.id, category, day)), None)
        if permit is not None:
            decisions[category] = CategoryDecision(True, f"consentement:{permit.ref}")
        else:
            decisions[category] = CategoryDecision(False, "aucun consentement actif couvrant cette catégorie")
    missing = [c for c in recipient.categories_requises if not (c in decisions and decisions[c].permis)]
    if missing:
        return RecordDecision(False, decisions, "catégorie requise non permise : " + ", ".join(c.value for c in missing))
    return RecordDecision(True, decisions)

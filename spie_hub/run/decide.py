"""Stage 2, decide: for each shared record and each recipient, what may go (consent, legal basis, perimeter),
with the statistics the DPO's report reads. Pure decisions: nothing is written here."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from typing import Any

from consent.decision import CategoryDecision, ConsentIndex, ConsentVersion, RecordDecision, decide
from schemas.categories import CATEGORIE_DU_BLOC, CHAMPS_FOYER, CategorieDonnees
from schemas.spie_v1 import PersonneSPIE
from spie_hub.audit.log import canonical
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import Condition, Flow, Recipient
from spie_hub.run.records import Mapped
from spie_hub.run.summary import RecipientCounts

StatKey = tuple[str | None, tuple[tuple[str, str], ...]]
#: The ground (and the record's motif) when a person's objections cannot be checked: a record without a NIR has a
#: fallback pivot, which never matches the NIR pivot that oppositions, refusals and withdrawals are stored under.
SANS_NIR = "opposition non vérifiable (sans NIR)"
#: One decision: recipient, the pseudonym it knows the person by, the decision and its canonical audit text.
Decided = tuple[Recipient, str, RecordDecision, str, Mapped]


def _ground(fondement: str) -> str:
    """The family of a decision's ground, without any consent reference (bounded set, for statistics)."""
    if fondement == SANS_NIR:
        return "sans-nir"
    head = fondement.split(":", 1)[0]
    return {"refus exprimé": "refus"}.get(head, head if ":" in fondement else
                                          "hors-politique" if "hors politique" in fondement else "sans-consentement")


def _stat_key(decision: RecordDecision) -> StatKey:
    return (None if decision.livre else decision.motif,
            tuple((c.value, _ground(d.fondement)) for c, d in decision.categories.items()))


def present_categories(record: PersonneSPIE) -> tuple[CategorieDonnees, ...]:
    seen: list[CategorieDonnees] = []
    for block, category in CATEGORIE_DU_BLOC.items():
        if getattr(record, block) and category not in seen:
            seen.append(category)
    return tuple(seen)


def without_nir(recipient: Recipient, decision: RecordDecision) -> RecordDecision:
    """The decision for a person whose objections cannot be checked (no NIR, fallback pivot).

    Only a legal basis that is not open to objection (a legal obligation, RGPD art. 6.1.c) still applies: a category
    under consent or under an opposable basis is withheld with the stable ground ``SANS_NIR``, because the hub
    cannot see the person's oppositions or withdrawals. A required category withheld so withholds the record.
    """
    categories: dict[CategorieDonnees, CategoryDecision] = {}
    for category, verdict in decision.categories.items():
        base = recipient.politique.get(category)
        still_applies = base is None or (base.kind == "legale" and not base.opposable)  # None: already withheld
        categories[category] = verdict if still_applies else CategoryDecision(False, SANS_NIR)
    missing = [c for c in recipient.categories_requises if not (c in categories and categories[c].permis)]
    if not missing:
        return RecordDecision(True, categories)
    if any(c in categories and categories[c].fondement == SANS_NIR for c in missing):
        return RecordDecision(False, categories, SANS_NIR)
    return RecordDecision(False, categories, decision.motif or
                          "catégorie requise non permise : " + ", ".join(c.value for c in missing))


def without_household_fields(record: PersonneSPIE, keep: frozenset[str]) -> PersonneSPIE:
    """The record without the household fields the recipient does not declare (``champs_foyer``): the same object
    when there is nothing to remove, a copy otherwise (the shared record stays whole for the other recipients)."""
    updates: dict[str, dict[str, Any]] = {}
    for name, (block_name, attribute, system) in CHAMPS_FOYER.items():
        block = getattr(record, block_name)
        if name in keep or block is None:
            continue
        current = updates.get(block_name, {}).get(attribute, getattr(block, attribute))
        if system is not None:
            kept = [i for i in current if i.systeme != system]
            if len(kept) != len(current):
                updates.setdefault(block_name, {})[attribute] = kept
        elif current:
            updates.setdefault(block_name, {})[attribute] = [] if isinstance(current, list) else None
    if not updates:
        return record
    return record.model_copy(update={b: getattr(record, b).model_copy(update=u) for b, u in updates.items()})


def outside_perimeter(record: PersonneSPIE, perimetre: tuple[Condition, ...]) -> str | None:
    for condition in perimetre:
        value: Any = record
        for part in condition.champ.split("."):
            value = getattr(value, part, None) if value is not None else None
        if hasattr(value, "value"):
            value = value.value
        if value != condition.egal:
            return f"hors périmètre du flux : {condition.libelle} (non)"
    return None


class Decider:
    def __init__(self, flow: Flow, recipients: list[Recipient], consents: ConsentIndex, pseudonymiser: Pseudonymiser,
                 today: dt.date) -> None:
        self.flow, self.recipients, self.consents = flow, recipients, consents
        self.pseudonymiser, self.today = pseudonymiser, today
        self._cache: dict[tuple[Any, ...], tuple[RecordDecision, str, StatKey]] = {}
        self.stats: dict[str, Counter[StatKey]] = {r.id: Counter() for r in recipients}

    def _decision(self, recipient: Recipient, outside: str | None, present: tuple[CategorieDonnees, ...],
                  found: list[ConsentVersion], fallback: bool) -> tuple[RecordDecision, str, StatKey]:
        # Records without any consent share a handful of situations (same categories, in or out of perimeter, with
        # or without a NIR): their decision and its canonical audit text are computed once. Records with consents
        # are decided one by one, so this cache never grows with the file.
        key = (recipient.id, outside, present, fallback)
        cached = None if found else self._cache.get(key)
        if cached is None:
            if outside:
                decision = RecordDecision(False, {}, outside)
            else:
                decision = decide(recipient, present, found, self.today)
                if fallback:
                    decision = without_nir(recipient, decision)
            cached = (decision, canonical(decision.as_payload()), _stat_key(decision))
            if not found:
                self._cache[key] = cached
        return cached

    def decide(self, batch: list[Mapped]) -> Iterator[Decided]:
        """Each record of the batch for each recipient, in input order (consents looked up once per batch)."""
        found = self.consents.lookup(s for m in batch for s in (m.pivot.pseudonyme, *m.pivot.aliases))
        for mapped in batch:
            pivot = mapped.pivot
            outside = outside_perimeter(mapped.record, self.flow.perimetre)
            present = present_categories(mapped.record)
            consents_found = found.get(pivot.pseudonyme, [])
            if pivot.aliases:  # consents recorded under a previous key of the ring: the latest version wins
                consents_found = ConsentIndex.latest_versions(
                    consents_found + [v for alias in pivot.aliases for v in found.get(alias, [])])
            for recipient in self.recipients:
                decision, text, stat = self._decision(recipient, outside, present, consents_found, pivot.repli)
                self.stats[recipient.id][stat] += 1
                own = mapped
                if decision.livre and (stripped := without_household_fields(mapped.record, recipient.champs_foyer)) \
                        is not mapped.record:
                    own = Mapped(stripped, pivot, mapped.position)
                yield recipient, self.pseudonymiser.for_recipient(pivot, recipient.id), decision, text, own

    def fold_into(self, counts: dict[str, RecipientCounts]) -> None:
        """Add the decisions' statistics (withheld by reason, grounds by category) to the summary."""
        for rid, stats in self.stats.items():
            target = counts[rid]
            for (motif, grounds), n in stats.items():
                if motif is not None:
                    target.motifs[motif] += n
                for category, ground in grounds:
                    target.fondements.setdefault(category, Counter()).update({ground: n})

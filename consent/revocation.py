"""Propagate withdrawals: a deletion notice in the drop of every recipient that received data it may no longer hold.

A withdrawal (consent/fhir_import.py) names (recipient, category) pairs. For each, the hub re-decides with the
person's current consents and the flows' current policies: a category still covered (another consent, a legal
basis not open to objection) is not to be deleted. For the categories that lost their ground, the audit says
whether and in which files the recipient received them (the decisions are in the runs' segments,
spie_hub/audit/segments.py, read once per propagation for all its withdrawals); only then is a notice line written, under the pseudonym
that recipient knows the person by. Notices are audited before the file becomes visible, like deliveries.

Exactly once, whatever runs at the same time: one propagation at a time (its own lock, spie_hub/run/withdrawals.py);
the publication gate held exclusively for the whole propagation, so that no run is between its last staleness check
and its delivery row meanwhile (spie_hub/store/withdrawal_order.py); a notice line already audited for the same
withdrawal, recipient, pseudonym and file is never sent again (a withdrawal re-opened by recovery, when it finds a
delivery a killed run had placed without its row, sends only what is missing); a withdrawal is marked propagated
once. A notice names the person by pseudonym and the withdrawal by a reference of that recipient's own: no partner
identifier (a ``Consent.id``) leaves the consent registry, and nothing in one recipient's notice (reference, file
name token, version number) appears in another's, so that two colluding recipients cannot match their pseudonyms
through the notices of one withdrawal. The audit entry of each notice keeps both the hub's reference and the
recipient's, for the DPO.
"""

from __future__ import annotations

import datetime as dt
import hmac
import io
import json
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, select, update

from connectors.formats.reports import write_report
from connectors.transports.registry import open_transport
from consent.decision import ConsentIndex, decide, registry_authority
from schemas.categories import CategorieDonnees
from spie_hub.audit import segments
from spie_hub.audit.actions import record_action, remove_orphan_actions
from spie_hub.audit.log import AuditEvent, AuditLog, now
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import Pivot, Pseudonymiser
from spie_hub.registry import Flow, Recipient, consent_registry
from spie_hub.store import audit_log, deliveries, revocations
from spie_hub.store.withdrawal_order import PublicationGate

NOTICE_HEADER = ["Pseudonyme", "Catégories à supprimer", "Fichiers concernés", "Motif", "Référence du retrait",
                 "Date d'effet"]


@dataclass
class PropagationReport:
    retraits: int = 0
    avis: int = 0
    fichiers: list[str] = field(default_factory=list)
    #: (recipient, category) pairs of a withdrawal the hub could not read: said, never a crash.
    paires_ignorees: int = 0


#: A partner id as the registry spells them; anything else in a withdrawal's pairs ("*", empty) means "any".
_PARTNER_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ANY = {"*", "toutes", "tous"}


def _pair_list(raw: object) -> list[object]:
    try:
        pairs = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return [None]  # unreadable: counted as one odd pair
    return list(pairs) if isinstance(pairs, list) else [None]


def withdrawal_concerns(raw_pairs: object, recipients: set[str]) -> bool:
    """Whether a withdrawal (its stored pairs) may take something away from one of ``recipients``. Conservative:
    a pair the hub cannot read, or that names no recipient in particular, concerns everyone."""
    for pair in _pair_list(raw_pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str):
            return True
        if pair[0] in recipients or not _PARTNER_ID.fullmatch(pair[0]) or pair[0] in _ANY:
            return True
    return False


def _by_recipient(raw_pairs: object, known: dict[str, dict[str, Recipient]]) -> tuple[dict[str, set[CategorieDonnees]], int]:
    """The withdrawal's categories per recipient the hub delivers to, and the number of pairs it could not read.
    A recipient no flow delivers to has received nothing from the hub: skipped, not an error. "*" (or "toutes") as
    recipient or category means every one."""
    wanted: dict[str, set[CategorieDonnees]] = defaultdict(set)
    odd = 0
    for pair in _pair_list(raw_pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            odd += 1
            continue
        rid, code = pair
        rids = sorted(known) if rid in _ANY else [rid] if rid in known else []
        if code in _ANY:
            categories = set(CategorieDonnees)
        else:
            try:
                categories = {CategorieDonnees(code)}
            except ValueError:
                odd += 1
                continue
        for one in rids:
            wanted[one] |= categories
    return wanted, odd


def _aliases(raw: object) -> tuple[str, ...]:
    try:
        aliases = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return ()
    return tuple(a for a in aliases if isinstance(a, str)) if isinstance(aliases, list) else ()


def _reason(fondement: str) -> str:
    """The kind of ground that is now missing, in words, without the consent reference a ground may carry (a
    partner's ``Consent.id`` never goes to a recipient)."""
    kind = fondement.split(":", 1)[0].strip()
    return {"opposition": "opposition de la personne", "refus exprimé": "refus exprimé par la personne",
            "consentement": "consentement retiré"}.get(kind, kind if ":" not in fondement else "retrait")


def notice_reference(secret: bytes, recipient: str, hub_ref: str) -> str:
    """The reference one recipient's notice gives a withdrawal: a keyed hash of the recipient and the hub's reference
    of the consent version (``c-…/vN``). Another recipient's notice of the same withdrawal carries another one, and no
    version number shows (a recipient would learn that versions it never saw, about others, exist)."""
    digest = hmac.digest(secret, f"avis|{recipient}|{hub_ref}".encode(), "sha256")
    return "r-" + digest.hex()[:16]


#: The audited action one propagation pass is (spie_hub/audit/actions.py): one log entry, its notices in a batch.
PROPAGATION_ACTION = "propagation-retraits"


class Received:
    """Who received what about the people of a batch of withdrawals, read from the runs' segments once for the whole
    batch (one lookup by pseudonym in each segment of a delivering run, never one per withdrawal and segment)."""

    def __init__(self, engine: Engine, home: HubHome, pseudonyms: Iterable[str]) -> None:
        wanted = sorted(set(pseudonyms))
        self.decisions: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        self.files: dict[tuple[str, str, str], str] = {}  # (run, recipient, flow) → delivered file
        self.noticed: dict[tuple[str, str, Any], set[str]] = defaultdict(set)  # (recipient, pseudonym, withdrawal)
        if not wanted:
            return
        with engine.connect() as connection:
            for d in connection.execute(select(deliveries.c.run_id, deliveries.c.recipient, deliveries.c.flow,
                                               deliveries.c.file_name)):
                self.files[(d.run_id, d.recipient, d.flow)] = d.file_name
        # Only the segments of runs that delivered something: a run that delivered nothing sent no one anything.
        delivering = {run for run, _, _ in self.files}
        for event in segments.find(home, wanted, runs=delivering):
            if event.event == "decision" and event.recipient and event.subject and event.run_id:
                self.decisions[(event.recipient, event.subject)].append((event.run_id, event.payload))
        # The notice lines earlier passes sent, from their committed batches (a notice line is never sent twice).
        with engine.connect() as connection:
            passes = set(connection.execute(select(audit_log.c.run_id).where(
                audit_log.c.event == segments.LOT_EVENT,
                audit_log.c.run_id.like(PROPAGATION_ACTION + "-%"))).scalars())
        for event in segments.find(home, wanted, runs=passes) if passes else ():
            if event.event == "avis-suppression" and event.recipient and event.subject:
                data = json.loads(event.payload)
                self.noticed[(event.recipient, event.subject, data.get("retrait"))].update(data.get("fichiers", []))

    def of(self, recipient: str, pseudonym: str, flow: str) -> dict[str, set[str]]:
        """Category → names of the files of ``flow`` in which ``recipient`` received it about this person."""
        received: dict[str, set[str]] = defaultdict(set)
        for run_id, text in self.decisions.get((recipient, pseudonym), []):
            file_name = self.files.get((run_id, recipient, flow))
            payload = json.loads(text)
            if payload.get("decision") != "livre" or file_name is None:
                continue
            for category, decision in payload.get("categories", {}).items():
                if decision.get("permis"):
                    received[category].add(file_name)
        return received


def _wanted_pseudonyms(pseudonymiser: Pseudonymiser, known: dict[str, dict[str, Recipient]],
                       pending: Iterable[Row[Any]]) -> set[str]:
    """Every pseudonym a recipient named by one of the withdrawals may hold one of its people under."""
    out: set[str] = set()
    for revocation in pending:
        aliases = _aliases(revocation.aliases)
        pivot = Pivot(Pivot.from_pseudonyme(revocation.subject).digest, revocation.subject, aliases=aliases)
        by_recipient, _ = _by_recipient(revocation.pairs, known)
        for rid in by_recipient:
            out.update(pseudonymiser.recipient_pseudonyms(pivot, rid))
    return out


def _recipients(flows: dict[str, Flow]) -> dict[str, dict[str, Recipient]]:
    """Recipient id → flow id → that flow's declaration of it (one recipient may receive several flows, each with
    its own policy: a category still covered in one flow is not to be deleted from that flow's files)."""
    known: dict[str, dict[str, Recipient]] = defaultdict(dict)
    for flow in flows.values():
        for recipient in flow.destinataires:
            known[recipient.id][flow.id] = recipient
    return dict(known)


def propagate_withdrawals(engine: Engine, home: HubHome, pseudonymiser: Pseudonymiser, flows: dict[str, Flow],
                          today: dt.date | None = None) -> PropagationReport:
    # Exclusive for the whole propagation: no run is between its last staleness check and its delivery row while
    # this reads who received what, nor while it marks withdrawals done (store/withdrawal_order.py).
    with PublicationGate(engine, home).exclusive():
        return _propagate(engine, home, pseudonymiser, flows, today or dt.date.today())


def _propagate(engine: Engine, home: HubHome, pseudonymiser: Pseudonymiser, flows: dict[str, Flow],
               today: dt.date) -> PropagationReport:
    known = _recipients(flows)
    plan_path = home.staging / PLAN_FILE
    plan = _read_plan(plan_path)
    if plan is not None and (plan["journalise"] or _audited(engine, plan)):
        return _carry_out(engine, home, known, plan, plan_path)  # an interrupted propagation, finished as planned
    report = PropagationReport()
    remove_orphan_actions(engine, home, PROPAGATION_ACTION)  # under the exclusive gate: no pass is being written
    with engine.connect() as connection:
        pending = connection.execute(select(revocations).where(revocations.c.propagated_at.is_(None))
                                     .order_by(revocations.c.id)).all()
    if not pending:
        # A pass with nothing to propagate is an action too: one entry, as a pass with withdrawals (the log's
        # size, which receipts carry, must not tell that someone withdrew).
        with engine.begin() as connection:
            record_action(AuditLog(engine), connection, home, PROPAGATION_ACTION, {"retraits": 0, "avis": 0}, [])
        return report
    lines: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    events: list[AuditEvent] = []
    token = uuid.uuid4().hex
    done: list[tuple[int, int]] = []
    index = ConsentIndex(engine, registry_authority(consent_registry()))
    received = Received(engine, home, _wanted_pseudonyms(pseudonymiser, known, pending))
    for revocation in pending:
        notices, odd = _plan_one(engine, pseudonymiser, index, known, revocation, today, lines, events, received)
        events.append(AuditEvent("retrait-propage", {"retrait": revocation.id, "consentement": revocation.consent_ref,
                                                      "avis": notices, "enregistre_le": revocation.recorded_at,
                                                      "propagation": token, "paires_ignorees": odd},
                                 subject=revocation.subject))
        done.append((revocation.id, notices))
        report.retraits += 1
        report.avis += notices
        report.paires_ignorees += odd
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    plan = {"jeton": token, "journalise": False, "sujet": pending[0].subject, "faits": done,
            "retraits": report.retraits, "avis": report.avis, "paires_ignorees": report.paires_ignorees,
            # Each recipient's file has a random token of its own: a shared one would tell two colluding
            # recipients that their notices come from one withdrawal (and so link the pseudonyms they list).
            "fichiers": {rid: {"nom": f"avis-suppression_{rid}_{stamp}_{uuid.uuid4().hex[:12]}.csv", "lignes": rows}
                         for rid, rows in sorted(lines.items())}}
    # A plan first (private), so that an interruption anywhere below is finished as planned, never done twice.
    _write_plan(plan_path, plan)
    # Write-ahead, as for deliveries: the notices are in the audit before any file is visible. One entry for the
    # whole pass, whatever the number of withdrawals and notices: each one's event is in the batch it names.
    with engine.begin() as connection:
        record_action(AuditLog(engine), connection, home, PROPAGATION_ACTION,
                      {"retraits": report.retraits, "avis": report.avis, "propagation": token}, events,
                      batch=_batch_of(plan))
    plan["journalise"] = True
    _write_plan(plan_path, plan)
    return _carry_out(engine, home, known, plan, plan_path)


def _plan_one(engine: Engine, pseudonymiser: Pseudonymiser, index: ConsentIndex, known: dict[str, dict[str, Recipient]],
              revocation: Row[Any], today: dt.date, lines: dict[str, list[tuple[Any, ...]]],
              events: list[AuditEvent], received_by: Received) -> tuple[int, int]:
    """The notice lines one withdrawal calls for (added to ``lines`` and ``events``): (lines, odd pairs)."""
    aliases = _aliases(revocation.aliases)
    looked_up = index.lookup([revocation.subject, *aliases])
    found = ConsentIndex.latest_versions(v for s in (revocation.subject, *aliases) for v in looked_up.get(s, []))
    pivot = Pivot(Pivot.from_pseudonyme(revocation.subject).digest, revocation.subject, aliases=aliases)
    by_recipient, odd = _by_recipient(revocation.pairs, known)
    notices = 0
    for rid, categories in sorted(by_recipient.items()):
        present = sorted(categories, key=lambda c: c.value)
        lost_by_flow: dict[str, set[str]] = {}
        reasons: set[str] = set()
        for flow_id, recipient in sorted(known[rid].items()):
            current = decide(recipient, present, found, today)
            lost_by_flow[flow_id] = {c.value for c in present if not current.categories[c].permis}
            reasons |= {_reason(current.categories[CategorieDonnees(c)].fondement) for c in lost_by_flow[flow_id]}
        # One line per pseudonym the recipient received data under (a key rotation gives it a new one).
        for pseudonym in pseudonymiser.recipient_pseudonyms(pivot, rid):
            already = received_by.noticed.get((rid, pseudonym, revocation.id), set())
            wanted: dict[str, set[str]] = defaultdict(set)  # category → files still to name
            for flow_id, lost in lost_by_flow.items():
                received = received_by.of(rid, pseudonym, flow_id)
                for category in lost:
                    wanted[category] |= received.get(category, set()) - already
            to_delete = sorted(c for c, f in wanted.items() if f)
            if not to_delete:
                continue
            files = sorted({f for c in to_delete for f in wanted[c]})
            reference = notice_reference(pseudonymiser.key.secret, rid, revocation.consent_ref)
            lines[rid].append((pseudonym, " | ".join(to_delete), " | ".join(files),
                               "retrait ou opposition de la personne : " + " ; ".join(sorted(reasons)),
                               reference, today.isoformat()))
            events.append(AuditEvent("avis-suppression", {"retrait": revocation.id, "consentement": revocation.consent_ref,
                                                           "reference_avis": reference,
                                                           "categories": to_delete, "fichiers": files},
                                     recipient=rid, subject=pseudonym))
            notices += 1
    return notices, odd


def reopen_withdrawals(engine: Engine, since: str) -> int:
    """Withdrawals propagated since ``since`` (a run's start) are propagated again: recovery found a delivery of
    that run recorded late (a killed run had placed the file, not its row), which their propagation could not see.
    Notice lines already sent are not sent again (``_noticed``). Returns how many were re-opened."""
    with engine.begin() as connection:
        result = connection.execute(update(revocations).where(
            revocations.c.propagated_at.is_not(None), revocations.c.propagated_at >= since)
            .values(propagated_at=None, notices=None))
    return int(result.rowcount or 0)


PLAN_FILE = "retraits-en-cours.json"


def _read_plan(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _write_plan(path: Path, plan: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def _batch_of(plan: dict[str, Any]) -> str:
    """The pass's audited action id, from its plan's token (found again after an interruption)."""
    return f"{PROPAGATION_ACTION}-{plan['jeton'][:16]}"


def _audited(engine: Engine, plan: dict[str, Any]) -> bool:
    """Whether the plan's audit entry was committed before an interruption (its id comes from the plan's token)."""
    with engine.connect() as connection:
        return connection.execute(select(audit_log.c.seq).where(audit_log.c.run_id == _batch_of(plan))).first() is not None


def _carry_out(engine: Engine, home: HubHome, known: dict[str, dict[str, Recipient]], plan: dict[str, Any],
               plan_path: Path) -> PropagationReport:
    """Write the planned notices (a notice already there, identical, is left as is) and mark the withdrawals done."""
    report = PropagationReport(retraits=plan["retraits"], avis=plan["avis"],
                               paires_ignorees=int(plan.get("paires_ignorees", 0)))
    for rid, notice in plan["fichiers"].items():
        if rid not in known:  # the registry changed between the interruption and now: the audit keeps the notice
            continue
        folder = open_transport(next(iter(known[rid].values())).transport, home)
        with folder.store(notice["nom"]) as raw:
            handle = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            write_report(handle, NOTICE_HEADER, [tuple(r) for r in notice["lignes"]])
            handle.flush()
            handle.detach()
        report.fichiers.append(folder.location(notice["nom"]))
    with engine.begin() as connection:
        for rev_id, notices in plan["faits"]:
            # Marked once: a withdrawal already marked (by an earlier pass of the same plan) keeps its first mark.
            connection.execute(update(revocations).where(revocations.c.id == rev_id,
                                                         revocations.c.propagated_at.is_(None))
                               .values(propagated_at=now(), notices=notices))
    plan_path.unlink(missing_ok=True)
    return report

"""Subject access (RGPD art. 15): every exchange about one person, found by recomputing pseudonyms.

The hub keeps no table from pseudonyms back to NIRs. Given a NIR, it recomputes the pivot pseudonym and each
recipient's pseudonym with every key of the ring, then reads the audit: the log's rows by their index on
``subject``, and the runs' per-record decisions in their segments (spie_hub/audit/segments.py), each through its
own index on the pseudonym — so a year of national runs is one indexed lookup per segment, never a scan, and never
a table of NIRs. A record a partner sent without a NIR was
pseudonymised from that partner's own identifiers (the fallback pivot, ``pivot.repli`` in the flow's mapping): the
NIR cannot find it, so the DPO may give those identifiers, flow by flow, exactly as the partner sent them.

The columns listed for a delivery are those of the output that flow delivered to that recipient (a recipient may
receive several flows, each with its own file), restricted to the categories permitted for that record: exactly
the columns of the delivered file that could carry something about the person (the others are empty in their row).

The search itself is a re-identification: it is audited (who asked, why, with which key, which flows were searched
by fallback identifiers — never the identifiers) before any result is read, and the NIR is never written anywhere.
Consents are shown under the hub's reference (``ConsentVersion.ref``), never the partner's ``Consent.id``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, select

from connectors.formats.registry import load_output, output_spec
from consent.decision import version_from_row
from consent.evidence import public_source
from schemas.categories import CHAMPS_FOYER
from spie_hub.audit import segments
from spie_hub.audit.log import AuditEvent, AuditLog
from spie_hub.core import home as hub_home
from spie_hub.core.errors import ConfigurationError, HubError
from spie_hub.core.nir import NirInvalide, normaliser_nir
from spie_hub.mapping.compiler import PARENT_PREFIX
from spie_hub.privacy.pseudonym import Pivot, Pseudonymiser
from spie_hub.registry import Flow
from spie_hub.store import audit_log, consents, deliveries, runs


@dataclass
class Exchange:
    date: str
    flux: str | None
    destinataire: str | None
    evenement: str
    decision: str | None = None
    fichier: str | None = None
    categories: dict[str, str] = field(default_factory=dict)  # category → ground
    champs: list[str] = field(default_factory=list)
    motif: str | None = None
    #: Line of the delivered file holding the person's row (1 is the header).
    ligne: int | None = None
    #: How the person was found: "nir" (NIR-based pivot) or "repli" (the partner's fallback identifiers).
    pivot: str = "nir"
    #: With ``proofs``: the file holding this event's proof, from its batch up to a signed head (spie_hub/audit/proofs.py).
    preuve: str | None = None


@dataclass
class AccessReport:
    pseudonyme_pivot: str | None
    cle: str
    consentements: list[dict[str, Any]] = field(default_factory=list)
    echanges: list[Exchange] = field(default_factory=list)
    #: What this search could not find, in the DPO's words (records without NIR, flows without fallback...).
    limites: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fallback_identifiers(flow: Flow) -> list[str]:
    """The partner fields a record without NIR is pseudonymised from, in order (``pivot.repli`` of the mapping)."""
    try:
        spec = yaml.safe_load((hub_home.MAPPINGS_DIR / f"{flow.mapping}.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        # Never read as "no fallback identifiers": the DPO would be told records without NIR were all rejected.
        raise ConfigurationError(f"Flux {flow.id} : mapping « {flow.mapping} » illisible ; identifiants de repli "
                                 "inconnus, recherche sans NIR impossible") from None
    parts = ((spec or {}).get("pivot") or {}).get("repli") or []
    # "foyer:" marks a field of the household element: the DPO asks the partner for the same value either way.
    return [str(p).removeprefix(PARENT_PREFIX) for p in parts]


def _household_field(spec: dict[str, Any]) -> str | None:
    """The household field (``CHAMPS_FOYER``) an output column reads, if any."""
    path = str(spec.get("champ", "")).split(".")
    for name, (block, attribute, system) in CHAMPS_FOYER.items():
        if path[:2] == [block, attribute] and (system is None or spec.get("identifiant") == system):
            return name
    return None


def _fields(flows: dict[str, Flow]) -> dict[tuple[str, str], list[tuple[str | None, str]]]:
    """(flow, recipient) → the columns of that flow's output for that recipient, in file order: (category, header).

    Keyed by flow as well: a recipient of two flows receives two different files (the Département gets the CAF
    file and the France Travail file), and a column belongs to the file that carries it. A household field the
    recipient does not declare (``champs_foyer``) is always empty in its file: not listed."""
    out: dict[tuple[str, str], list[tuple[str | None, str]]] = {}
    for flow in flows.values():
        for recipient in flow.destinataires:
            specs = {str(c.get("entete")): c for c in output_spec(recipient.sortie).get("colonnes", [])}
            declared = getattr(recipient, "champs_foyer", frozenset())
            out[(flow.id, recipient.id)] = [
                (column.category.value if column.category else None, column.entete)
                for column in load_output(recipient.sortie).columns
                if (household := _household_field(specs.get(column.entete, {}))) is None or household in declared]
    return out


def _fallback_pivots(pseudonymiser: Pseudonymiser, flows: dict[str, Flow], repli: dict[str, list[str]]) -> list[Pivot]:
    pivots = []
    for flow_id, parts in repli.items():
        flow = flows.get(flow_id)
        if flow is None:
            raise ConfigurationError(f"Flux inconnu dans les identifiants de repli (flux déclarés : "
                                     f"{', '.join(sorted(flows))})")
        expected = fallback_identifiers(flow)
        if not expected:
            raise HubError(f"Flux {flow_id} : son mapping ne déclare aucun identifiant de repli ; un enregistrement "
                           "reçu sans NIR y est rejeté, il n'y a rien à chercher")
        values = [p.strip() for p in parts]
        if len(values) != len(expected) or not all(values):
            # The count only: the values are identifying and must not be echoed.
            raise HubError(f"Flux {flow_id} : {len(expected)} identifiants de repli attendus, dans cet ordre : "
                           f"{' | '.join(expected)} ({len(values)} donné(s), ou un identifiant vide)")
        pivots.append(pseudonymiser.pivot_fallback(*values))
    return pivots


def _not_delivered(status: str | None) -> tuple[str, str]:
    if status in ("en-cours", "publication"):
        return "en-attente", "livraison en cours ou en attente (dépôt du destinataire indisponible) ; pas encore reçue"
    if status == "incomplete":
        return "non-livre", "exécution interrompue, données préparées perdues : rien n'a été reçu de cette exécution"
    if status in ("termine", "deja-livre"):
        return "non-livre", "ce fichier avait déjà été livré à ce destinataire par une autre exécution"
    if status is None:
        return "inconnu", ("l'exécution a été purgée (durée de conservation) : la livraison ne peut plus être "
                           "confirmée ni infirmée")
    return "non-livre", "exécution interrompue puis annulée : rien n'a été livré"


def _limits(flows: dict[str, Flow], nir_given: bool, repli: dict[str, list[str]]) -> list[str]:
    """What this search cannot find, said to the DPO rather than left as a silent gap."""
    notes = []
    for flow in sorted(flows.values(), key=lambda f: f.id):
        expected = fallback_identifiers(flow)
        if flow.id in repli:
            continue
        if expected:
            notes.append(f"Flux {flow.id} : un enregistrement reçu sans NIR n'est retrouvé qu'avec les identifiants "
                         f"de repli du partenaire, tels qu'il les a envoyés : {' | '.join(expected)}"
                         + (" (non fournis : non recherché)" if nir_given else " (non fournis)"))
        else:
            notes.append(f"Flux {flow.id} : un enregistrement reçu sans NIR y est rejeté (pas d'identifiant de repli).")
    if nir_given:
        notes.append("Un enregistrement reçu avec un NIR mal saisi par le partenaire ne peut être retrouvé par le "
                     "NIR exact de la personne.")
    if repli:
        notes.append("Les consentements et oppositions sont enregistrés sous le NIR : ils ne sont retrouvés qu'avec "
                     "le NIR, jamais par les identifiants de repli.")
    return notes


def subject_access(engine: Engine, pseudonymiser: Pseudonymiser, nir: str | None, flows: dict[str, Flow], *,
                   demandeur: str, motif: str, repli: dict[str, list[str]] | None = None,
                   home: hub_home.HubHome | None = None, proofs: Path | None = None) -> AccessReport:
    """Every exchange about one person, found by their NIR and/or, per flow, the partner's fallback identifiers.
    ``home``: where the runs' segments are (the environment's hub by default). ``proofs``: a folder where each
    event found in a batch gets its proof (inclusion in the batch, the batch in the signed log), for the person or
    an auditor to check with the hub's published key alone."""
    repli = repli or {}
    home = home or hub_home.HubHome.from_env()
    if not nir and not repli:
        raise HubError("Ni NIR ni identifiants de repli : il faut l'un ou l'autre pour retrouver une personne")
    pivot: Pivot | None = None
    if nir:
        try:
            pivot = pseudonymiser.pivot_from_nir(normaliser_nir(nir))
        except NirInvalide as error:
            reason = str(error)  # never the NIR itself: normaliser_nir names what is wrong, not the value
            raise HubError(reason if reason.startswith("NIR invalide") else f"NIR invalide : {reason}") from None
    fallbacks = _fallback_pivots(pseudonymiser, flows, repli)
    recipients = sorted({r.id for f in flows.values() for r in f.destinataires})
    # Under every key of the ring: old pseudonyms stay resolvable.
    nir_pivots = [pivot.pseudonyme, *pivot.aliases] if pivot else []
    fallback_pivots = [p for fb in fallbacks for p in (fb.pseudonyme, *fb.aliases)]
    found_by: dict[str, str] = {}
    for origin, candidates in (("nir", [pivot] if pivot else []), ("repli", fallbacks)):
        for candidate in candidates:
            for p in (candidate.pseudonyme, *candidate.aliases):
                found_by[p] = origin
            for rid in recipients:
                for p in pseudonymiser.recipient_pseudonyms(candidate, rid):
                    found_by[p] = origin
    subject = pivot.pseudonyme if pivot else fallbacks[0].pseudonyme
    AuditLog(engine).append([AuditEvent("acces-personne", {
        "demandeur": demandeur, "motif": motif, "cle": ",".join(pseudonymiser.kids),
        **({"repli": sorted(repli)} if repli else {})}, subject=subject)])
    report = AccessReport(pivot.pseudonyme if pivot else None, ",".join(pseudonymiser.kids),
                          limites=_limits(flows, pivot is not None, repli))
    columns = _fields(flows)
    with engine.connect() as connection:
        for row in connection.execute(select(consents).where(consents.c.subject.in_(nir_pivots))
                                      .order_by(consents.c.emetteur, consents.c.imported_at, consents.c.version)):
            report.consentements.append({
                # The hub's reference of the version, never the partner's Consent.id (it may be anything: a NIR).
                "reference": version_from_row(row).ref, "emetteur": row.emetteur, "version": row.version,
                "type": row.kind, "statut": row.status, "regles": json.loads(row.rules), "importe_le": row.imported_at,
                # Controlled values only: an older hub stored partners' free text there verbatim (a NIR, a name).
                "source": public_source(json.loads(row.source or "{}"), flows)})
        logged = connection.execute(select(audit_log).where(
            audit_log.c.subject.in_([*nir_pivots, *fallback_pivots, *found_by])).order_by(audit_log.c.seq)).all()
        # Only batches a log entry commits: a file left by an interrupted action (an import rolled back) is no
        # exchange, and must not be told to the person as one.
        committed = segments.committed_lots(engine)
        decided = [e for e in segments.find(home, [*nir_pivots, *fallback_pivots, *found_by],
                                            runs={segments.run_of(Path(p).name) for p in committed})
                   if e.path_rel in committed]
        # One history, in time order: the log's rows and the runs' per-record events (a segment's time is its
        # run's commit, just before the run's own rows).
        rows: list[Any] = sorted([*((r.ts, 1, r.seq, r) for r in logged), *((e.ts, 0, e.index, e) for e in decided)],
                                 key=lambda t: t[:3])
        rows = [r for *_, r in rows]
        run_ids = {r.run_id for r in rows if r.run_id}
        files = {(d.run_id, d.recipient): d.file_name for d in connection.execute(
            select(deliveries).where(deliveries.c.run_id.in_(run_ids)))}
        statuses = {r.run_id: r.status for r in connection.execute(
            select(runs.c.run_id, runs.c.status).where(runs.c.run_id.in_(run_ids)))}
    for row in rows:
        payload = json.loads(row.payload)
        exchange = Exchange(row.ts[:19], row.flow, row.recipient, row.event, pivot=found_by.get(row.subject, "nir"))
        if row.event == "decision":
            exchange.decision = payload.get("decision")
            exchange.motif = payload.get("motif")
            exchange.categories = {c: d["fondement"] for c, d in payload.get("categories", {}).items()}
            if exchange.decision == "livre" and (row.run_id, row.recipient) not in files:
                # Decided, not (yet) published: the run's state says why, in the person's words.
                exchange.decision, exchange.motif = _not_delivered(statuses.get(row.run_id))
            elif exchange.decision == "livre":
                exchange.fichier = files.get((row.run_id, row.recipient))
                exchange.ligne = payload.get("ligne") if isinstance(payload.get("ligne"), int) else None
                allowed = {c for c, d in payload.get("categories", {}).items() if d.get("permis")}
                spec = columns.get((row.flow or "", row.recipient or ""))
                if spec is None:
                    exchange.motif = "flux ou destinataire retiré du registre : colonnes livrées inconnues"
                else:
                    exchange.champs = [h for category, h in spec if category is None or category in allowed]
        elif row.event == "avis-suppression":
            exchange.categories = {c: "à supprimer" for c in payload.get("categories", [])}
            exchange.fichier = ", ".join(payload.get("fichiers", []))
            exchange.motif = f"retrait {payload.get('consentement')}"
        else:
            exchange.motif = payload.get("consentement") or payload.get("motif")
        if proofs is not None and isinstance(row, segments.SegmentEvent):
            exchange.preuve = _write_proof(engine, home, proofs, row, len(report.echanges) + 1)
        report.echanges.append(exchange)
    return report


def _write_proof(engine: Engine, home: hub_home.HubHome, folder: Path, event: segments.SegmentEvent, number: int) -> str | None:
    from spie_hub.audit.proofs import prove_decision

    try:
        proof = prove_decision(engine, home, event)
    except LookupError:
        return None  # the batch's entry was purged under retention: nothing left to prove it with
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"preuve-{number:04d}.json"
    path.write_text(json.dumps(proof, ensure_ascii=False, indent=1), encoding="utf-8")
    return path.name

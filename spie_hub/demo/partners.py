"""The demo's second part: every flow of the registry across the six partners, on the embedded default.

Each partner drops its sample files (the golden samples of ``tests/partners/<partenaire>/fixtures/``: real public
samples, or documented synthetic ones where none exists) in its inbox; each partner that collects consents sends a
FHIR Consent Bundle through its consent inbox (flow 8: the issuer is the inbox it came from); then every flow runs,
and the demo prints what each partner received and, for each recipient, what was withheld and why.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections import Counter
from pathlib import Path

from spie_hub.core.home import HubHome

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "partners"


def _drop_samples(home: HubHome, flows: dict) -> dict[str, list[str]]:
    """Copy each flow's samples into its inbox (local folders, the embedded default)."""
    dropped: dict[str, list[str]] = {}
    for flow in flows.values():
        folder = getattr(flow.transport, "dossier", None)
        samples = SAMPLES / flow.partenaire / "fixtures"
        if folder is None or not samples.is_dir():
            continue
        inbox = home.root / folder
        inbox.mkdir(parents=True, exist_ok=True)
        for sample in sorted(samples.iterdir()):
            if sample.is_file() and fnmatch.fnmatchcase(sample.name, flow.transport.motif):
                shutil.copyfile(sample, inbox / sample.name)
                dropped.setdefault(flow.id, []).append(sample.name)
    return dropped


def _nirs(flow_id: str, names: list[str], flows: dict) -> list[str]:
    """NIRs of a flow's samples, read through its own reader and mapping (for the demo's consents)."""
    from connectors.formats.base import InputFacts
    from spie_hub.mapping.compiler import load_mapping
    from spie_hub.privacy.keys import PseudonymisationKey
    from spie_hub.privacy.pseudonym import Pseudonymiser
    from spie_hub.run.decide import outside_perimeter
    from spie_hub.run.records import Mapped, read_records, reader_for

    flow = flows[flow_id]
    mapping = load_mapping(flow.mapping)
    found: list[str] = []
    for name in names:
        with (SAMPLES / flow.partenaire / "fixtures" / name).open("rb") as stream:
            for item in read_records(reader_for(flow.format, mapping), mapping,
                                     Pseudonymiser(PseudonymisationKey("demo", b"d" * 32)), stream, InputFacts(),
                                     {"partenaire": flow.partenaire, "format": flow.format}):
                if isinstance(item, Mapped) and item.record.identite and item.record.identite.nir \
                        and outside_perimeter(item.record, flow.perimetre) is None:
                    found.append(item.record.identite.nir)
    return found


def _send_consents(home: HubHome, flows: dict, dropped: dict[str, list[str]]) -> None:
    """Consents collected by partners during their diagnostics, each through its own consent inbox: the Département
    for Cap emploi (express consent for disability, first person only), Cap emploi and the missions locales for the
    Département's identity data."""
    from consent.fhir_build import bundle, consent
    from spie_hub.registry import consent_registry

    issuers = consent_registry().emetteurs
    plans = [
        ("departement-052", "departement-vers-cap-emploi", ["cap-emploi"], ["sante-handicap", "contact"], 1),
        ("cap-emploi", "cap-emploi-vers-departement", ["departement-052"], ["identite", "sante-handicap"], 2),
        ("missions-locales", "missions-locales-vers-departement", ["departement-052"], ["identite"], 1),
    ]
    for issuer, flow_id, recipients, categories, count in plans:
        if issuer not in issuers or flow_id not in dropped:
            continue
        nirs = _nirs(flow_id, dropped[flow_id], flows)[:count]
        box = home.root / issuers[issuer].boite.dossier  # type: ignore[attr-defined]
        box.mkdir(parents=True, exist_ok=True)
        resources = [consent(f"demo-{issuer}-{n}", nir, recipients=recipients, categories=categories,
                             explicit="sante-handicap" in categories, collected_by=issuer)
                     for n, nir in enumerate(nirs)]
        (box / f"consentements_{issuer}.json").write_text(json.dumps(bundle(resources), ensure_ascii=False),
                                                          encoding="utf-8")


def run_partners(home: HubHome, engine: object, skip: str) -> int:
    """Every flow but ``skip`` (already run by the first part) on its samples; returns the number of failed runs."""
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.registry import load_flows
    from spie_hub.run.consent_inbox import import_consent_inboxes
    from spie_hub.run.lifecycle import process_inbox

    flows = {k: v for k, v in load_flows().items() if k != skip}
    dropped = _drop_samples(home, flows)
    _send_consents(home, flows, dropped)
    report = import_consent_inboxes(home, engine, load_pseudonymiser(home))
    print("\n9. Consentements reçus des partenaires par leurs boîtes (flux 8, FHIR Consent) :")
    for item in report.fichiers:
        state = (f"{item.rapport.importes} importé(s), {len(item.rapport.erreurs)} erreur(s)" if item.rapport
                 else f"non importé : {item.motif}")
        print(f"   {item.emetteur} : {item.nom} — {state}")
    received: dict[str, list[str]] = {}
    withheld: dict[str, Counter[str]] = {}
    failures = 0
    print("\n10. Tous les flux du registre, sur les échantillons de chaque partenaire :")
    for flow in flows.values():
        summaries = process_inbox(flow, home)
        for summary in summaries:
            print(f"   {flow.id} : {summary.statut}, {summary.lus} lus, {summary.rejetes} rejetés")
            if summary.statut not in ("termine", "deja-livre"):
                failures += 1
            for rid, counts in summary.destinataires.items():
                if counts.fichier:
                    received.setdefault(rid, []).append(f"{Path(counts.fichier).name} ({counts.livres} enreg.)")
                withheld.setdefault(rid, Counter()).update(counts.motifs)
    print("\n11. Ce que chaque partenaire a reçu, et ce qui a été retenu (par motif) :")
    for rid in sorted(set(received) | set(withheld)):
        print(f"   {rid}")
        for name in received.get(rid, []):
            print(f"     reçu   : {name}")
        for reason, n in sorted(withheld.get(rid, Counter()).items()):
            print(f"     retenu : {n} — {reason}")
    returns = sorted({f.partenaire for f in flows.values()})
    print("   Accusés de traitement signés renvoyés aux émetteurs : "
          + ", ".join(f"{home.outbox / p / 'accuses'}" for p in returns))
    return failures

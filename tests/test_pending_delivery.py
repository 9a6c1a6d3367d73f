"""A delivery left pending by a broken drop is never sent as staged once a withdrawal arrived: decided again."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from helpers import people_of
from sqlalchemy import select

from consent.fhir_import import import_consents
from spie_hub.audit.chain import verify
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import get_flow
from spie_hub.run.lifecycle import pending_inputs, process_inbox_file
from spie_hub.store import audit_log, deliveries, open_store, runs

FLOW = "caf-vers-departement"
DEP, PLATFORM = "departement-052", "plateforme-insertion"
HEADER = "identifiant;nir;type;decision;statut;destinataires;categories;debut;fin\n"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _deliveries(drop: Path) -> list[Path]:
    return sorted(p for p in drop.iterdir() if p.suffix == ".csv" and not p.name.startswith("avis-suppression"))


def test_a_withdrawal_recorded_while_a_delivery_waits_for_its_drop_is_applied_before_it_goes_out(
        hub_home: Path, database_url: str, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    pseudonymiser = load_pseudonymiser(home)
    inbox = home.root / get_flow(FLOW).transport.dossier
    inbox.mkdir(parents=True, exist_ok=True)
    flux, bundle = inbox / "flux.xml", tmp_path / "consents.json"
    generate(flux, bundle, 150, seed=11)
    import_consents(bundle, engine, pseudonymiser, emetteur=DEP)
    people = {pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), DEP): p for p in people_of(flux)}

    dep_drop = home.outbox / DEP
    dep_drop.parent.mkdir(parents=True, exist_ok=True)
    dep_drop.write_text("un fichier à la place du dépôt")  # the Département's drop is broken
    pending = process_inbox_file(FLOW, pending_inputs(get_flow(FLOW), home)[0], home)
    assert pending.statut == "livraison-en-attente" and DEP in (pending.message or "")
    assert len(_deliveries(home.outbox / PLATFORM)) == 1  # the platform is not held back

    # While the Département's delivery waits, four people it would identify withdraw their consent.
    with engine.connect() as c:
        (run_id,) = c.execute(select(runs.c.run_id).where(runs.c.status == "publication")).one()
    staged = _rows(home.staging / run_id / f"{DEP}.livraison")
    chosen = [people[r["Pseudonyme"]] for r in staged if r["NIR"]][:4]
    assert len(chosen) == 4
    grants = {e["resource"]["subject"]["identifier"]["value"]: e["resource"]["id"]
              for e in json.loads(bundle.read_text())["entry"]}
    withdrawals = tmp_path / "retraits.csv"
    withdrawals.write_text(HEADER + "".join(
        f"{grants[p['NIR']]};{p['NIR']};consentement;accord;retire;{DEP};identite|contact;2025-01-01;2028-12-31\n"
        for p in chosen), encoding="utf-8")
    assert import_consents(withdrawals, engine, pseudonymiser, emetteur=DEP).retraits == 4

    dep_drop.unlink()  # repaired
    refs = pending_inputs(get_flow(FLOW), home)  # settles first: the pending delivery is decided again, not sent
    assert len(refs) == 1, "the input goes back to the inbox for a new decision"
    summary = process_inbox_file(FLOW, refs[0], home)
    assert summary.statut == "termine" and summary.destinataires[PLATFORM].deja_livre

    (dep_file,) = _deliveries(dep_drop)
    delivered = {r["Pseudonyme"]: r for r in _rows(dep_file)}
    for person in chosen:
        row = delivered[pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(person["NIR"]), DEP)]
        assert (row["NIR"], row["Nom"]) == ("", ""), "withdrawn identity delivered from a stale decision"
    assert len(_deliveries(home.outbox / PLATFORM)) == 1  # nothing twice
    with engine.connect() as c:
        cancelled = c.execute(select(audit_log.c.payload).where(audit_log.c.event == "livraison-annulee")).scalars().all()
        rows = c.execute(select(deliveries.c.recipient, deliveries.c.run_id)).all()
    assert len(cancelled) == 1 and json.loads(cancelled[0])["non_livres_a"] == [DEP]
    assert sorted(r.recipient for r in rows) == [DEP, PLATFORM] and len({r.run_id for r in rows}) == 2
    assert verify(engine).ok
    engine.dispose()

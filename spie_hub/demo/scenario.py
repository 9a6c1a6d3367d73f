"""``spie-hub demo``: synthetic data, consents, the flow run through Airflow on the embedded default."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from spie_hub.core.home import HubHome

FLOW_ID = "caf-vers-departement"
EMETTEUR = "departement-052"
REPO = Path(__file__).resolve().parents[2]


def configure_airflow(home: HubHome) -> None:
    """Point an embedded Airflow (SQLite) at the hub's DAG folder; must run before Airflow is imported."""
    airflow_home = home.root / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(airflow_home))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ["SPIE_HUB_HOME"] = str(home.root)


def run_in_airflow(home: HubHome) -> None:
    configure_airflow(home)
    import warnings

    warnings.filterwarnings("ignore")
    from airflow.utils import db

    db.initdb() if hasattr(db, "initdb") else db.upgradedb()
    from airflow.dag_processing.dagbag import DagBag

    from spie_hub.airflow.dags import dag_id
    from spie_hub.registry import get_flow

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"Erreur d'import des DAG : {bag.import_errors}")
    dag = bag.get_dag(dag_id(get_flow(FLOW_ID)))
    run = dag.test()
    if str(run.state) != "success":
        raise RuntimeError(f"Le DAG {dag.dag_id} s'est terminé en état {run.state}")


def run_demo(households: int = 1000, with_airflow: bool = True) -> int:
    from consent.fhir_import import import_consents
    from spie_hub.audit.chain import verify
    from spie_hub.audit.signing import generate_signing_key_file
    from spie_hub.demo.data import generate
    from spie_hub.privacy.keys import generate_key_file
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.registry import get_flow
    from spie_hub.store import deliveries, open_store, runs

    home = HubHome.from_env().ensure()
    key = generate_key_file(home.keys / "pseudonymisation.json", "demo1")
    signer = generate_signing_key_file(home.keys / "signature.json", "demosig1")
    print(f"1. Clés de démonstration : pseudonymisation {key.kid}, signature du journal {signer.kid} ({home.keys})")

    flow = get_flow(FLOW_ID)
    inbox = home.root / flow.transport.dossier
    inbox.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d%H%M%S")
    flux = inbox / f"NRSACGIM_RSABEM_{stamp}.xml"
    consents = home.root / "demo" / f"consentements_{stamp}.json"
    consents.parent.mkdir(parents=True, exist_ok=True)
    stats = generate(flux, consents, households, seed=int(stamp) % 100_000)
    print(f"2. Population synthétique : {stats.foyers} foyers, {stats.personnes} personnes "
          f"({stats.anomalies} NIR volontairement erronés) → {flux}")

    engine = open_store(home.database_url)
    report = import_consents(consents, engine, load_pseudonymiser(home), emetteur=EMETTEUR, home=home)
    print(f"3. Consentements FHIR importés : {report.importes} ({stats.consentements} accords, {stats.refus} refus), "
          f"erreurs : {len(report.erreurs)}")

    started = time.time()
    if with_airflow:
        print("4. Exécution du flux dans Airflow (SQLite embarqué, dag.test()) …")
        run_in_airflow(home)
    else:
        from spie_hub.run.claim import input_ref
        from spie_hub.run.lifecycle import process_inbox_file

        print("4. Exécution du flux (sans Airflow) …")
        process_inbox_file(flow, input_ref(flux.name), home)
    elapsed = time.time() - started

    from sqlalchemy import select

    with engine.connect() as connection:
        last = connection.execute(select(runs).where(runs.c.flow == FLOW_ID).order_by(runs.c.started_at.desc()).limit(1)).one()
    import json

    summary = json.loads(last.summary)
    print(f"\nRésumé de l'exécution {last.run_id} ({last.status}, {elapsed:.1f} s) :")
    print(f"  enregistrements lus : {summary['lus']}")
    print(f"  rejetés             : {summary['rejetes']}")
    for recipient in flow.destinataires:
        counts = summary.get(recipient.id, {})
        print(f"  {recipient.id} : livrés {counts.get('livres', 0)}, retenus {counts.get('retenus', 0)}")
    with engine.connect() as connection:
        delivered = connection.execute(select(deliveries).where(deliveries.c.run_id == last.run_id)).all()
    print("\nOù sont les sorties :")
    folders = {r.id: home.root / r.transport.dossier for r in flow.destinataires}
    for row in delivered:
        path = folders[row.recipient] / row.file_name
        print(f"  livraison {row.recipient} : {path} (+ manifeste .manifest.json)")
    print(f"  rejets émetteur   : {home.outbox / flow.partenaire / 'rejets'}")
    print(f"  quarantaine       : {home.quarantine}")
    print(f"  base et audit     : {home.database_url}")
    result = verify(engine)
    if result.ok:
        print(f"\n5. Journal d'audit intègre : {result.entries} entrées chaînées vérifiées.")
    else:
        print(f"\n5. Journal d'audit ALTÉRÉ à l'entrée n° {result.first_bad_seq} : {result.reason}", file=sys.stderr)
        return 1
    _withdraw_and_report(home, engine, consents, stamp)
    from spie_hub.demo.partners import run_partners

    failures = run_partners(home, engine, skip=FLOW_ID)
    return 1 if failures else 0


def _withdraw_and_report(home: HubHome, engine: object, consents: Path, stamp: str) -> None:
    import datetime as dt

    from consent.fhir_import import import_consents
    from consent.revocation import propagate_withdrawals
    from spie_hub.demo.data import write_withdrawals
    from spie_hub.dpo.report import write_report
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.registry import load_flows

    pseudonymiser = load_pseudonymiser(home)
    withdrawals = home.root / "demo" / f"retraits_{stamp}.csv"
    count = write_withdrawals(consents, withdrawals, 12)
    report = import_consents(withdrawals, engine, pseudonymiser, emetteur=EMETTEUR, home=home)  # type: ignore[arg-type]
    propagation = propagate_withdrawals(engine, home, pseudonymiser, load_flows())  # type: ignore[arg-type]
    print(f"6. {count} retraits de consentement importés (CSV du hub : {withdrawals}) : {report.retraits} enregistrés, "
          f"{propagation.avis} avis de suppression déposés chez les destinataires")
    for path in propagation.fichiers:
        print(f"   {path}")
    _export_and_verify(home, engine, stamp)
    today = dt.date.today()
    output = home.root / "rapports" / f"rapport-dpo_{today.isoformat()}.html"
    write_report(engine, today - dt.timedelta(days=30), today, output)  # type: ignore[arg-type]
    print(f"8. Rapport DPO (HTML autonome, s'ouvre hors ligne) : {output}")


def _export_and_verify(home: HubHome, engine: object, stamp: str) -> None:
    from spie_hub.audit.bundle import export_bundle, verify_bundle
    from spie_hub.audit.signing import load_hub_signer

    signer = load_hub_signer(home)
    published = home.root / "cles-publiques" / f"audit-{signer.kid}.pem"
    published.parent.mkdir(parents=True, exist_ok=True)
    published.write_text(signer.public_pem, encoding="utf-8")
    folder = home.root / "exports" / f"audit_{stamp}"
    export_bundle(engine, folder, signer, home=home)  # type: ignore[arg-type]
    result = verify_bundle(folder, [published]).result
    state = "intègre" if result.ok else f"ALTÉRÉ ({result.reason})"
    print(f"7. Journal exporté ({folder}) et vérifié hors ligne avec la clé publique {published.name} : {state}, "
          f"{result.entries} entrées, {result.checkpoints} têtes signées, lots de décisions compris")

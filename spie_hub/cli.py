"""``spie-hub``: the command line of the hub (messages in French).

Exit codes (``sysexits.h`` where one fits):
  0    success
  1    invalid input or failed check (an input quarantined or refused, an altered audit log)
  2    usage or configuration error (missing key, unknown flow, unreachable database)
  74   EX_IOERR: the hub could not read or write one of its folders (disk full, read-only, permission), a delivery
       waits for a recipient's broken drop, or ``reprise`` left something it could not settle
  75   EX_TEMPFAIL: try again later (a file still being written, the flow busy with another run)
  77   EX_NOPERM: the database refused the operation to the hub's role (a role restricted by `base durcir`)
  130  interrupted by SIGINT (Ctrl-C); 143 interrupted by SIGTERM. An interrupted run is rolled back, or completed
       at the next start if it was publishing.
No traceback is shown for an error of the hub or of the operating system.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from spie_hub.core.errors import ConfigurationError, HubError, RetriableError, StorageError
from spie_hub.core.home import HubHome, private_umask

VALIDATORS = {"caf-vrsb": "cnaf-vrsb0801"}
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _err(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr for long work; silent when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=None, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def cmd_validate(args: argparse.Namespace) -> int:
    from connectors.formats.cnaf_vrsb import validate_file

    path = Path(args.fichier)
    if not path.is_file():
        _err(f"Fichier introuvable : {path}")
        return 2
    entete, errors = validate_file(path)
    if errors:
        print(f"INVALIDE : {path.name}")
        for error in errors:
            print(f"  - {error}")
        return 1
    print(f"VALIDE : {path.name} ({entete.unites_lues} foyer(s), format {VALIDATORS[args.format]}, "
          f"date de référence {entete.date_reference})")
    for anomaly in entete.anomalies:
        print(f"  ! {anomaly}")
    return 0


def _store_and_key() -> tuple[HubHome, object, object]:
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    return home, open_store(home.database_url), load_pseudonymiser(home)


def _print_propagation(report: object) -> None:
    from consent.revocation import PropagationReport

    assert isinstance(report, PropagationReport)
    if report.retraits:
        print(f"Retraits propagés : {report.retraits} ; avis de suppression : {report.avis}")
        for path in report.fichiers:
            print(f"  avis déposé : {path}")
    if report.paires_ignorees:
        print(f"  {report.paires_ignorees} couple(s) destinataire/catégorie illisible(s) ignoré(s) (voir le journal, "
              "retrait-propage)")


def _print_consent_report(report: object, indent: str = "") -> None:
    from consent.fhir_import import ImportReport

    assert isinstance(report, ImportReport)
    print(f"{indent}Consentements importés : {report.importes} ; inchangés : {report.inchanges} ; retraits ou "
          f"oppositions : {report.retraits} ; restreints : {len(report.restrictions)} ; erreurs : {len(report.erreurs)}")
    for label, lines in (("restriction", report.restrictions), ("erreur", report.erreurs)):
        for line in lines[:50]:
            print(f"{indent}  - {label} : {line}")
        if len(lines) > 50:
            print(f"{indent}  … et {len(lines) - 50} autre(s)")


def cmd_consent_import(args: argparse.Namespace) -> int:
    """The operator's import of a file it holds (a migration): the issuer, when named, must be declared, and its
    authority applies; partners' files come through their consent inbox (``consent importer``)."""
    from consent.fhir_import import import_consents
    from spie_hub.registry import consent_registry
    from spie_hub.run.withdrawals import propagate

    issuer = None
    if args.emetteur != "hub":
        registry = consent_registry()
        issuer = registry.emetteurs.get(args.emetteur)
        if issuer is None:
            _err(f"Émetteur de consentements non déclaré : {args.emetteur} (section « consentements » de flows.yaml ; "
                 f"déclarés : {', '.join(sorted(registry.emetteurs)) or 'aucun'})")
            return 2
    home, engine, pseudonymiser = _store_and_key()
    report = import_consents(Path(args.fichier), engine, pseudonymiser, emetteur=args.emetteur,  # type: ignore[arg-type]
                             issuer=issuer, home=home)
    _print_consent_report(report)
    engine.dispose()  # type: ignore[attr-defined]
    _print_propagation(propagate(home))
    return 1 if report.erreurs else 0


def cmd_consent_inbox(args: argparse.Namespace) -> int:
    from spie_hub.run.consent_inbox import import_consent_inboxes
    from spie_hub.run.withdrawals import propagate

    home, engine, pseudonymiser = _store_and_key()
    report = import_consent_inboxes(home, engine, pseudonymiser, emetteur=args.emetteur)  # type: ignore[arg-type]
    if not report.fichiers:
        print("Aucun fichier en attente dans les boîtes de consentements.")
    for item in report.fichiers:
        print(f"{item.emetteur} : {item.nom}")
        if item.motif is not None:
            print(f"  non importé : {item.motif}")
        elif item.rapport is not None:
            _print_consent_report(item.rapport, "  ")
    engine.dispose()  # type: ignore[attr-defined]
    _print_propagation(propagate(home))
    return 1 if report.erreurs else 0


def cmd_consent_propagate(_args: argparse.Namespace) -> int:
    from spie_hub.run.withdrawals import propagate

    report = propagate(HubHome.from_env())
    if not report.retraits:
        print("Aucun retrait en attente de propagation.")
    _print_propagation(report)
    return 0


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"date attendue au format AAAA-MM-JJ : {text!r}") from None


def cmd_dpo_report(args: argparse.Namespace) -> int:
    from spie_hub.dpo.french import date_fr
    from spie_hub.dpo.report import write_report
    from spie_hub.store import open_store

    if args.au < args.du:
        _err("La date de fin (--au) précède la date de début (--du).")
        return 2
    output = Path(args.sortie)
    pdf = Path(args.pdf) if args.pdf else None
    if pdf is not None and pdf.resolve() == output.resolve():
        _err("--pdf et --sortie désignent le même fichier : le PDF remplacerait le rapport HTML.")
        return 2
    data = write_report(open_store(HubHome.from_env().database_url), args.du, args.au, output, flux=args.flux,
                        destinataire=args.destinataire, pdf=pdf)
    scope = "".join([f", flux {args.flux}" if args.flux else "", f", destinataire {args.destinataire}" if args.destinataire else ""])
    print(f"Rapport DPO du {date_fr(args.du)} au {date_fr(args.au)}{scope} écrit : {output.resolve()}")
    if pdf is not None:
        print(f"  PDF (impression du navigateur) : {pdf.resolve()}")
    print(f"  {data.runs} exécution(s), {data.lus} enregistrement(s) lus, {len(data.retraits)} retrait(s), refus ou "
          f"opposition(s) ; journal d'audit {'intègre' if data.audit.ok else 'ALTÉRÉ'}")
    return 0 if data.audit.ok else 1


def cmd_dpo_register(args: argparse.Namespace) -> int:
    from spie_hub.dpo.register import as_markdown

    text = as_markdown()
    if args.sortie:
        Path(args.sortie).write_text(text + "\n", encoding="utf-8")
        print(f"Registre des activités de traitement écrit : {Path(args.sortie).resolve()}")
    else:
        print(text)
    return 0


def _nir_on_the_command_line(value: str) -> str:
    # A NIR given as an argument lands in the shell history and the process list (`ps`): refused, never echoed.
    if value != "-":
        raise argparse.ArgumentTypeError("le NIR ne se donne jamais en argument (il resterait dans l'historique du "
                                         "shell et la liste des processus) : le fournir sur l'entrée standard")
    return value


def _read_person(stream: object) -> tuple[str | None, dict[str, list[str]]]:
    """What identifies the person, from standard input: a NIR line (``NIR`` or ``nir : NIR``) and, for records a
    partner sent without NIR, ``repli FLUX : id1 | id2 | …`` lines (that flow's fallback identifiers, in order)."""
    nir: str | None = None
    repli: dict[str, list[str]] = {}
    for number, raw in enumerate(stream, start=1):  # type: ignore[attr-defined]
        line = str(raw).strip()
        if not line or line.startswith("#"):
            continue
        head, sep, rest = line.partition(":")
        words = head.split()
        if sep and len(words) == 2 and words[0].lower() == "repli":
            if words[1] in repli:
                raise ValueError(f"ligne {number} : identifiants de repli d'un même flux donnés deux fois")
            repli[words[1]] = rest.split("|")
        elif sep and head.strip().lower() == "nir" or not sep:
            if nir is not None:
                raise ValueError(f"ligne {number} : un seul NIR par recherche")
            nir = rest.strip() if sep else line
        else:
            raise ValueError(f"ligne {number} : attendu « NIR », « nir : NIR » ou « repli FLUX : id1 | id2 | … »")
    return nir, repli


def cmd_dpo_person(args: argparse.Namespace) -> int:
    from spie_hub.dpo.subject_access import subject_access
    from spie_hub.registry import load_flows

    try:
        nir, repli = _read_person(sys.stdin)
    except ValueError as error:
        _err(f"Entrée standard : {error}.")
        return 2
    if not nir and not repli:
        _err("Aucun NIR lu sur l'entrée standard (ni identifiants de repli) : par exemple "
             "`spie-hub dpo personne < demande.txt`, le fichier contenant le NIR sur sa première ligne.")
        return 2
    flows = load_flows()
    unknown = sorted(set(repli) - set(flows))
    if unknown:
        # Never the text typed there: it may be an identifier put in the wrong place.
        _err(f"Flux inconnu dans {len(unknown)} ligne(s) « repli » de l'entrée standard (flux déclarés : "
             f"{', '.join(sorted(flows))})")
        return 2
    _home, engine, pseudonymiser = _store_and_key()
    report = subject_access(engine, pseudonymiser, nir, flows, demandeur=args.demandeur,  # type: ignore[arg-type]
                            motif=args.motif, repli=repli, home=_home,
                            proofs=Path(args.preuves) if args.preuves else None)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
        return 0
    found = f"pseudonyme pivot {report.pseudonyme_pivot}" if report.pseudonyme_pivot else "sans NIR"
    searched = f" ; identifiants de repli des flux {', '.join(sorted(repli))}" if repli else ""
    print(f"Personne : {found} (clé {report.cle}){searched}. Recherche journalisée.")
    print(f"Consentements et oppositions ({len(report.consentements)} version(s)) :")
    for c in report.consentements:
        rules = " ; ".join(f"{'autorise' if r['effet'] == 'permit' else 'refuse'} {', '.join(r['categories'])} "
                           f"à {', '.join(r['destinataires'])} ({r['debut'] or '…'} → {r['fin'] or '…'})" for r in c["regles"])
        print(f"  - {c['reference']} (émetteur {c['emetteur']}) [{c['type']}, {c['statut']}] : {rules}")
    print(f"Échanges et décisions ({len(report.echanges)}) :")
    states = {"livre": "LIVRÉ", "retenu": "retenu", "en-attente": "en attente", "non-livre": "non livré",
              "inconnu": "livraison non vérifiable"}
    for e in report.echanges:
        how = " (retrouvé par identifiants de repli)" if e.pivot == "repli" else ""
        if e.evenement == "decision":
            head = f"{e.date} {e.flux} → {e.destinataire} : {states.get(e.decision or '', e.decision)}{how}"
            grounds = ", ".join(f"{c} ({g})" for c, g in e.categories.items())
            print(f"  - {head} ; {grounds}" + (f" ; motif : {e.motif}" if e.motif else ""))
            if e.champs:
                line = f", ligne {e.ligne}" if e.ligne else ""
                print(f"      fichier {e.fichier}{line} ; colonnes transmises : {', '.join(e.champs)}")
            if e.preuve:
                print(f"      preuve : {Path(args.preuves) / e.preuve}")
        else:
            print(f"  - {e.date} {e.evenement}{how}" + (f" → {e.destinataire}" if e.destinataire else "")
                  + (f" : {e.motif}" if e.motif else "") + (f" ; {e.fichier}" if e.fichier else ""))
    if report.limites:
        print("Limites de cette recherche :")
        for note in report.limites:
            print(f"  - {note}")
    return 0


def cmd_db_harden(args: argparse.Namespace) -> int:
    from spie_hub.store import open_store
    from spie_hub.store.guards import harden_privileges

    engine = open_store(HubHome.from_env().database_url)
    if engine.dialect.name != "postgresql":
        _err("Durcissement des privilèges : PostgreSQL seulement (SQLite est protégé par ses déclencheurs).")
        return 2
    harden_privileges(engine, args.role)
    print(f"Rôle {args.role} : lecture et ajout seuls sur le journal d'audit ; purge par spie_audit_purge() uniquement.")
    return 0


def cmd_purge(_args: argparse.Namespace) -> int:
    from spie_hub.audit.signing import load_hub_signer
    from spie_hub.registry import load_flows, organisation
    from spie_hub.run.retention import AUDIT_RETENTION_DAYS, purge_all, store_retention
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    flows, settings = load_flows(), store_retention()  # a bad duration is refused before anything is removed
    engine = open_store(home.database_url)
    days = int(organisation().get("conservation_journal_jours", AUDIT_RETENTION_DAYS))
    try:
        reports, stored, dropped = purge_all(engine, home, flows, signer=load_hub_signer(home), audit_days=days,
                                             stores=settings)
    finally:
        engine.dispose()
    for report in reports:
        removed = " (flux retiré du registre)" if report.retire else ""
        print(f"Flux {report.flux}{removed} : {len(report.fichiers)} fichier(s) supprimé(s) au-delà de "
              f"{report.conservation_jours} jours" + (f" ; {len(report.refus)} dossier(s) refusé(s)" if report.refus else ""))
    print(f"Registre : {stored.consentements} version(s) de consentement (échues depuis plus de {settings.consentements} jours), "
          f"{stored.retraits} retrait(s) propagé(s) (plus de {settings.retraits} jours) ; "
          f"{stored.consentements_fichiers} fichier(s) de consentements archivé(s) (importés depuis plus de "
          f"{settings.consentements} jours)")
    print(f"Exécutions : {stored.executions} exécution(s) et {stored.livraisons} ligne(s) de livraison ; "
          f"{stored.preparations} dossier(s) de préparation laissé(s) par une exécution ; "
          f"{stored.exports} export(s) ou rapport(s)")
    print(f"Journal d'audit : {dropped} entrée(s) au-delà de {days} jours (purge annoncée au journal, coupée sur une tête signée)")
    for reason in stored.gardes:
        print(f"  conservé : {reason}")
    print("Chaque purge est inscrite au journal d'audit (effectifs seulement).")
    return 0


def print_summary(summary: object) -> None:
    from spie_hub.run.summary import RunSummary

    assert isinstance(summary, RunSummary)
    print(f"Flux {summary.flux} — exécution {summary.run_id} : {summary.statut}")
    print(f"  Enregistrements lus : {summary.lus}")
    print(f"  Rejetés             : {summary.rejetes}")
    for rid, counts in summary.destinataires.items():
        if counts.deja_livre:
            print(f"  {rid} : déjà livré lors d'une exécution précédente")
            continue
        print(f"  {rid} : livrés {counts.livres}, retenus {counts.retenus}")
        if counts.fichier:
            print(f"    fichier : {counts.fichier}")
    for line in filter(None, [summary.message, *summary.anomalies]):
        print(f"  ! {line}")
    if summary.rapport_rejets:
        print(f"  Rapport de rejets pour l'émetteur : {summary.rapport_rejets}")
    if summary.quarantaine:
        print(f"  Quarantaine : {summary.quarantaine}")


#: Statuses of an input that need someone (exit 1) and statuses worth trying again later (exit 75).
NEEDS_ACTION = ("quarantaine", "refuse")
TRY_LATER = ("en-attente",)


def run_exit_code(statuses: list[str]) -> int:
    """1 if any input was quarantined or refused (someone must act), else 74 if a delivery waits for a broken drop,
    else 75 if one must be retried, else 0."""
    if any(s in NEEDS_ACTION for s in statuses):
        return 1
    if "livraison-en-attente" in statuses:
        return EX_IOERR
    if any(s in TRY_LATER for s in statuses):
        return EX_TEMPFAIL
    return 0


def _print_run(summary: object, as_json: bool) -> None:
    from spie_hub.run.summary import RunSummary

    assert isinstance(summary, RunSummary)
    if as_json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False, indent=2))
    elif summary.statut in ("en-attente", "refuse", "absent"):  # nothing was run: say why
        print(f"Flux {summary.flux} — fichier {summary.reference} : {summary.statut}")
        if summary.message:
            print(f"  ! {summary.message}")
    else:
        print_summary(summary)
    if summary.statut == "livraison-en-attente":  # an error someone must see, on stderr too
        _err(f"Erreur : {summary.message}")


def cmd_run(args: argparse.Namespace) -> int:
    flow_id = args.flux_option or args.flux
    if not flow_id or (args.flux and args.flux_option and args.flux != args.flux_option):
        _err("Indiquer un flux : spie-hub run --flux FLUX [--input FICHIER] (liste : spie-hub flux).")
        return 2
    if args.input is None:
        return _run_inbox(flow_id, args.json)
    from spie_hub.run.lifecycle import run_flow

    path = Path(os.path.abspath(args.input))
    if not path.is_file():
        _err(f"Fichier d'entrée introuvable : {path}")
        return 2
    with progress_bar(f"Flux {flow_id}", path.stat().st_size) as advance:
        summary = run_flow(flow_id, path, progress=advance)
    _print_run(summary, args.json)
    if not args.json:
        if summary.statut in ("termine", "deja-livre"):
            archive = HubHome.from_env().root / "archive" / flow_id
            print(f"Fichier d'entrée laissé en place : {path} (le hub a archivé sa propre copie dans {archive})")
        else:
            print(f"Fichier d'entrée laissé en place : {path}")
    return run_exit_code([summary.statut])


def _run_inbox(flow_id: str, as_json: bool) -> int:
    """Every pending file of the flow's inbox, one after the other (``process_inbox``, printed as it goes)."""
    from spie_hub.registry import get_flow
    from spie_hub.run.lifecycle import pending_inputs, process_inbox_file

    flow = get_flow(flow_id)
    home = HubHome.from_env().ensure()
    refs = pending_inputs(flow, home)
    if not refs:
        if as_json:
            print("[]")
        else:
            where = getattr(flow.transport, "dossier", None)
            print(f"Flux {flow.id} : aucun fichier en attente dans la boîte de dépôt" + (f" ({where})." if where else "."))
        return 0
    summaries = []
    for ref in refs:
        summary = process_inbox_file(flow, ref, home)
        summaries.append(summary)
        if not as_json:
            _print_run(summary, False)
    if as_json:
        print(json.dumps([s.to_dict() for s in summaries], ensure_ascii=False, indent=2))
    else:
        archived = sum(s.statut in ("termine", "deja-livre") for s in summaries)
        print(f"{len(summaries)} fichier(s) de la boîte de dépôt traité(s) ; {archived} archivé(s) dans "
              f"{home.root / 'archive' / flow.id}")
    return run_exit_code([s.statut for s in summaries])


def cmd_recover(args: argparse.Namespace) -> int:
    """Settle what interruptions left, flow by flow, each under its lock (a flow running now is left to its run)."""
    import datetime as dt

    from spie_hub.audit.signing import load_hub_signer
    from spie_hub.privacy.pseudonym import load_pseudonymiser
    from spie_hub.registry import get_flow, load_flows
    from spie_hub.run.flow_run import RunContext
    from spie_hub.run.lock import FlowBusy, FlowLock
    from spie_hub.run.recovery import recover_flow
    from spie_hub.store import open_store

    flows = [get_flow(args.flux)] if args.flux else list(load_flows().values())
    home = HubHome.from_env().ensure()
    pseudonymiser, signer = load_pseudonymiser(home), load_hub_signer(home)
    engine = open_store(home.database_url)
    settled = busy = pending = 0
    try:
        for flow in flows:
            try:
                with FlowLock(engine, home, flow.id, wait=0) as lock:
                    report = recover_flow(RunContext(flow, home, engine, pseudonymiser, signer, lock, dt.date.today()))
            except FlowBusy:
                busy += 1
                print(f"Flux {flow.id} : exécution en cours ; elle reprendra elle-même ce qui reste.")
                continue
            if not report:
                continue
            settled += 1
            print(f"Flux {flow.id} :")
            print(f"  exécutions complétées : {len(report.completees)}"
                  + (f" ({', '.join(report.completees)})" if report.completees else ""))
            if report.incompletes:
                print(f"  exécutions incomplètes (livrées à une partie des destinataires, voir ci-dessous) : "
                      f"{len(report.incompletes)} ({', '.join(report.incompletes)})")
            print(f"  exécutions annulées : {len(report.annulees)}"
                  + (f" ({', '.join(report.annulees)})" if report.annulees else ""))
            print(f"  entrées restituées à la boîte de dépôt : {report.entrees_restituees}")
            print(f"  fichiers temporaires supprimés : {report.temporaires}")
            for line in report.lignes_lots():
                print(f"  {line}")
            for error in report.erreurs:
                print(f"  ! {error}")
            pending += len(report.erreurs)
    finally:
        engine.dispose()
    if not settled:
        print("Rien à reprendre." if not busy else "Rien à reprendre pour les autres flux.")
    if pending:
        _err(f"{pending} point(s) non réglé(s) : réparer le dépôt ou renvoyer le fichier indiqué, puis relancer la reprise.")
        return EX_IOERR
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from spie_hub.audit.chain import verify
    from spie_hub.store import open_store

    home = HubHome.from_env()
    result = verify(open_store(home.database_url), home=home, incremental=not args.complet)
    for note in result.notes:
        print(f"  ! {note}")
    if result.ok:
        scope = "" if args.complet else " (depuis la dernière vérification ; --complet pour tout relire)"
        print(f"Journal d'audit intègre : {result.entries} entrée(s) vérifiée(s){scope}, {result.checkpoints} tête(s) "
              f"signée(s) ; taille {result.size}, racine {(result.root or '-')[:16]}…")
        return 0
    print(f"Journal d'audit ALTÉRÉ à l'entrée n° {result.first_bad_seq} : {result.reason}")
    return 1


def cmd_audit_proof(args: argparse.Namespace) -> int:
    """Check one person's decision proof (spie-hub dpo personne --preuves) with the published key alone."""
    from spie_hub.audit.proofs import check_decision_proof
    from spie_hub.audit.signing import public_b64_from_pem

    try:
        proof = json.loads(Path(args.fichier).read_text(encoding="utf-8"))
        public = public_b64_from_pem(Path(args.cle_publique).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        _err(f"Lecture impossible : {error}")
        return 2
    head = proof.get("tete") if isinstance(proof, dict) and isinstance(proof.get("tete"), dict) else {}
    problems = check_decision_proof(proof, {str(head.get("cle", "")): public}) if isinstance(proof, dict) else [
        "preuve illisible"]
    if problems:
        for problem in problems:
            print(f"PREUVE INVALIDE : {problem}")
        return 1
    print(f"Preuve valide : décision inscrite dans le lot « {json.loads(proof['entree']['payload']).get('lot')} », "
          f"lui-même dans le journal signé (taille {head['taille']}, racine {str(head['racine'])[:16]}…).")
    return 0


def cmd_audit_seal(_args: argparse.Namespace) -> int:
    """Seal a log written by an earlier version (checked against its signed checkpoints first)."""
    from spie_hub.audit.chain import seal
    from spie_hub.audit.signing import load_hub_signer
    from spie_hub.store import open_store

    home = HubHome.from_env()
    head = seal(open_store(home.database_url), load_hub_signer(home))
    if head is None:
        print("Journal vide : rien à sceller.")
    else:
        print(f"Journal scellé : tête signée de taille {head.size}, racine {head.root[:16]}… (clé {head.kid}).")
    return 0


def cmd_audit_consistency(args: argparse.Namespace) -> int:
    """A consistency proof from a size a witness kept to the current signed head (what a partner asks for)."""
    from spie_hub.audit.heads import head_at, latest_head
    from spie_hub.audit.tree import consistency_proof
    from spie_hub.store import open_store

    engine = open_store(HubHome.from_env().database_url)
    with engine.connect() as connection:
        head = head_at(connection, args.vers) if args.vers else latest_head(connection)
        if args.vers and head is None:
            _err(f"Aucune tête signée de taille {args.vers} (celle d'un reçu : journal.tete.taille)")
            return 2
        if head is None or not 0 < args.depuis <= head.size:
            _err(f"Taille hors du journal : {args.depuis} (le journal signé a {head.size if head else 0} entrée(s))")
            return 2
        proof = [h.hex() for h in consistency_proof(connection, args.depuis, head.size)] if args.depuis < head.size else []
    document = json.dumps({"type": "spie-hub/preuve-de-coherence/v1", "depuis": args.depuis, "tete": head.as_json(),
                           "chemin": proof}, ensure_ascii=False, indent=2)
    if args.sortie:
        Path(args.sortie).write_text(document + "\n", encoding="utf-8")
        print(f"Preuve de cohérence de la taille {args.depuis} à {head.size} écrite : {args.sortie}")
    else:
        print(document)
    return 0


def cmd_keys_init(args: argparse.Namespace) -> int:
    from spie_hub.audit.signing import generate_signing_key_file
    from spie_hub.privacy.keys import generate_key_file

    home = HubHome.from_env().ensure()
    path = home.keys / "pseudonymisation.json"
    existed = path.exists()
    key = generate_key_file(path, args.kid)
    print(f"Clé de pseudonymisation {'existante' if existed else 'créée'} : identifiant {key.kid}, fichier {path}")
    signing_path = home.keys / "signature.json"
    existed = signing_path.exists()
    signer = generate_signing_key_file(signing_path, args.kid_signature)
    print(f"Clé de signature du journal {'existante' if existed else 'créée'} : identifiant {signer.kid}, fichier {signing_path}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from spie_hub.audit.log import AuditEvent, AuditLog
    from spie_hub.privacy.keys import key_source, rotate_hub_key
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    try:
        # Refused unless the key in service is the hub's own file: the audit never records a rotation that did not happen.
        ring = rotate_hub_key(engine, args.kid, home)
        AuditLog(engine).append([AuditEvent("rotation-cle", {
            "nouvelle": ring.current.kid, "conservees": [k.kid for k in ring.previous]})])
    finally:
        engine.dispose()
    print(f"Nouvelle clé de pseudonymisation actuelle : {ring.current.kid} ; clés conservées pour résoudre les anciens "
          f"pseudonymes : {', '.join(k.kid for k in ring.previous)} ({key_source(home).value})")
    return 0


def cmd_keys_retire(args: argparse.Namespace) -> int:
    from spie_hub.audit.log import AuditEvent, AuditLog
    from spie_hub.privacy.keys import retire_hub_key
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    try:
        # No forcing: retiring a key that something still depends on would make oppositions stop applying.
        retirement = retire_hub_key(engine, args.kid, home)
        AuditLog(engine).append([AuditEvent("retrait-cle", {"cle": args.kid})])
    finally:
        engine.dispose()
    print(f"Clé {args.kid} retirée : plus rien n'en dépend ; son identifiant ne sera jamais réutilisé. Trousseau : "
          f"{', '.join(k.kid for k in retirement.ring.keys)}")
    if retirement.still_in:
        print(f"À faire : enlevez « {args.kid}:… » de {retirement.still_in} (le hub ne la modifie pas).")
    return 0


def cmd_keys_rehome(args: argparse.Namespace) -> int:
    from spie_hub.audit.log import AuditEvent, AuditLog
    from spie_hub.privacy.pseudonym import load_pseudonymiser, rehome
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    try:
        pseudonymiser = load_pseudonymiser(home, engine)
        # NIRs on standard input only: never on the command line (ps, shell history), never printed back.
        report = rehome(engine, pseudonymiser, args.kid, sys.stdin)
        AuditLog(engine).append([AuditEvent("relogement-cle", {
            "cle": args.kid, "actuelle": pseudonymiser.kid, "personnes": report.personnes,
            "consentements": report.consentements, "retraits": report.retraits})])
    finally:
        engine.dispose()
    print(f"Relogé sous la clé {pseudonymiser.kid} : {report.personnes} personne(s), {report.consentements} version(s) "
          f"de consentement, {report.retraits} retrait(s)" + (f" ; {report.invalides} ligne(s) sans NIR valide ignorée(s)"
                                                                if report.invalides else "") + ".")
    return 0


def cmd_keys_publish(args: argparse.Namespace) -> int:
    from spie_hub.audit.signing import load_hub_signer

    home = HubHome.from_env().ensure()
    signer = load_hub_signer(home)
    out = Path(args.sortie)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(signer.public_pem, encoding="utf-8")
    out.chmod(0o644)  # a public key, meant to be read by anyone: the hub's private umask must not close it
    print(f"Clé publique de signature {signer.kid} (Ed25519) écrite : {out.resolve()} — à publier avec la documentation")
    return 0


def cmd_keys_hsm_generate(args: argparse.Namespace) -> int:
    from spie_hub.audit.hsm import ENV_MODULE, generate_keypair, pkcs11_config
    from spie_hub.audit.trust import fingerprint

    config = pkcs11_config(args.kid)
    if config is None:
        raise ConfigurationError(f"Aucun module PKCS#11 : définissez {ENV_MODULE} (et le jeton, le code PIN), voir docs/cles-hsm.md")
    signer = generate_keypair(config)
    print(f"Paire de clés Ed25519 « {signer.kid} » générée dans le jeton « {config.token} » : la clé privée n'en sortira "
          f"pas. Empreinte SHA-256 de la clé publique : {signer.kid}:{fingerprint(signer.public_b64)}")
    if args.sortie:
        out = Path(args.sortie)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(signer.public_pem, encoding="utf-8")
        out.chmod(0o644)  # a public key, meant to be read by anyone
        print(f"Clé publique écrite : {out.resolve()} — à publier (nom attendu par les vérificateurs : audit-{signer.kid}.pem)")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from spie_hub.audit.bundle import export_bundle
    from spie_hub.audit.signing import load_hub_signer
    from spie_hub.store import open_store

    home = HubHome.from_env().ensure()
    count = export_bundle(open_store(home.database_url), Path(args.sortie), load_hub_signer(home), home=home)
    print(f"Journal exporté : {count} entrée(s) dans {Path(args.sortie).resolve()} "
          "(vérification hors ligne : spie-hub audit verifier DOSSIER --cle-publique CLE.pem)")
    return 0


def cmd_audit_offline(args: argparse.Namespace) -> int:
    from spie_hub.audit.bundle import verify_bundle

    folder = Path(args.dossier)
    if not folder.is_dir():
        _err(f"Dossier introuvable : {folder}")
        return 2
    verdict = verify_bundle(folder, [Path(p) for p in args.cle_publique or []], [Path(p) for p in args.recu or []],
                            [Path(p) for p in args.tete_gardee or []])
    for note in verdict.notes:
        print(f"  ! {note}")
    result = verdict.result
    if result.ok:
        print(f"Journal intègre : {result.entries} entrée(s) (à partir du n° {result.first_seq}), "
              f"{result.checkpoints} tête(s) signée(s) vérifiée(s) ; taille {result.size}.")
        return 0
    where = f" à l'entrée n° {result.first_bad_seq}" if result.first_bad_seq else ""
    print(f"Journal ALTÉRÉ{where} : {result.reason}")
    return 1


class _PublishedKey(dict):
    """The one published key the partner was given, whatever key id a receipt or a head names (a head signed by
    another key then fails its signature, never finds a key it should not)."""

    def __init__(self, public: str) -> None:
        super().__init__()
        self.public = public

    def get(self, _kid: object, _default: object = None) -> str:  # type: ignore[override]
        return self.public

    def __getitem__(self, _kid: object) -> str:
        return self.public

    def __contains__(self, _kid: object) -> bool:
        return True


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    from spie_hub.audit.heads import TreeHead
    from spie_hub.audit.receipts import check_consistency_file, kept_head, verify_receipt
    from spie_hub.audit.signing import public_b64_from_pem

    path = Path(args.manifeste)
    try:
        receipt = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        keys = _PublishedKey(public_b64_from_pem(Path(args.cle_publique).read_text(encoding="utf-8")))
        kept = [(f"la tête gardée {Path(p).name}", kept_head(Path(p))) for p in args.tete_gardee or []]
        proof = json.loads(Path(args.coherence).read_text(encoding="utf-8")) if args.coherence else {}
    except (OSError, ValueError, RecursionError) as error:
        _err(f"Lecture impossible : {error}" if not isinstance(error, RecursionError) else
             "Lecture impossible : JSON trop imbriqué")
        return 2
    receipt = receipt if isinstance(receipt, dict) else {}
    proof = proof if isinstance(proof, dict) else {}
    journal = receipt.get("journal") if isinstance(receipt.get("journal"), dict) else {}
    coherence = journal.get("coherence") if isinstance(journal.get("coherence"), dict) else {}
    since = coherence.get("depuis") if isinstance(coherence.get("depuis"), dict) else {}
    head = journal.get("tete") if isinstance(journal.get("tete"), dict) else {}
    # A kept head the receipt's own consistency proof covers is checked by it, whatever --coherence says; the file
    # only supplies the proof for a kept head the receipt does not cover, and must end at this receipt's head.
    on_demand = [(o, h) for o, h in kept if proof.get("depuis") == h.size
                 and h.size not in (since.get("taille"), head.get("taille"))]
    problems = verify_receipt(path, keys, [k for k in kept if k not in on_demand])
    if on_demand and not problems:
        try:
            current = TreeHead.from_json(head)
        except ValueError as error:
            problems.append(str(error))
        else:
            for origin, old in on_demand:
                if problem := check_consistency_file(proof, current, old, keys):
                    problems.append(f"{origin} : {problem}")
    if problems:
        for problem in problems:
            print(f"REÇU INVALIDE : {problem}")
        return 1
    print(f"Reçu valide : {receipt['fichier']} ({receipt['enregistrements']} enregistrement(s)), signé par le hub "
          f"(clé {receipt['signature']['cle']}) ; livraison prouvée dans le journal signé (taille {head['taille']}, "
          f"racine {head['racine'][:16]}…)" + (f" ; le journal prolonge {len(kept)} tête(s) gardée(s)" if kept else "")
          + ". Gardez ce reçu : sa tête servira à vérifier les suivants.")
    return 0


def _where(options: object) -> str:
    kind = getattr(options, "type", "?")
    place = getattr(options, "dossier", None) or getattr(options, "ressource", None) or ""
    connection = getattr(options, "connexion", None)
    return f"{kind} {connection + ':' if connection else ''}{place}".strip()


def cmd_flows(args: argparse.Namespace) -> int:
    from spie_hub.registry import consent_registry, load_flows

    if getattr(args, "action", None) == "carte":
        from spie_hub.registry.flow_map import flow_map_svg

        svg = flow_map_svg(load_flows(), consent_registry())
        if args.sortie:
            Path(args.sortie).write_text(svg, encoding="utf-8")
            print(f"Carte des flux écrite : {args.sortie}")
        else:
            sys.stdout.write(svg)
        return 0
    for flow in load_flows().values():
        print(f"{flow.id} — {flow.titre}")
        print(f"  source : {flow.partenaire} ({flow.format}, mapping {flow.mapping}), dépôt {_where(flow.transport)}")
        for recipient in flow.destinataires:
            bases = ", ".join(f"{c.value} ({'base légale : ' + b.article if b.kind == 'legale' else 'consentement'})"
                              for c, b in recipient.politique.items())
            print(f"  → {recipient.id} ({recipient.libelle}) : {bases}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from spie_hub.store import open_store, runs

    engine = open_store(HubHome.from_env().database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(runs).order_by(runs.c.started_at.desc()).limit(args.nombre)).all()
    if not rows:
        print("Aucune exécution enregistrée.")
    for row in rows:
        summary = json.loads(row.summary or "{}")
        recipients = ", ".join(f"{rid} livrés {c['livres']} retenus {c['retenus']}"
                               for rid, c in summary.items() if isinstance(c, dict))
        print(f"{row.started_at[:19]}  {row.run_id}  {row.flow}  {row.status:<12} lus {summary.get('lus', 0)}, "
              f"rejetés {summary.get('rejetes', 0)}{'; ' + recipients if recipients else ''}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from spie_hub.demo.scenario import run_demo

    return run_demo(households=args.foyers, with_airflow=not args.sans_airflow)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spie-hub", description="Hub d'interopérabilité du SPIE")
    sub = parser.add_subparsers(dest="commande", required=True, metavar="COMMANDE")

    validate = sub.add_parser("validate", help="valider un fichier partenaire contre son schéma")
    validate.add_argument("format", choices=sorted(VALIDATORS), help="format du fichier")
    validate.add_argument("fichier")
    validate.set_defaults(func=cmd_validate)

    consent = sub.add_parser("consent", help="registre des consentements")
    consent_sub = consent.add_subparsers(dest="action", required=True, metavar="ACTION")
    inbox = consent_sub.add_parser("importer", help="importer les fichiers des boîtes de consentements des émetteurs "
                                   "déclarés (l'émetteur est la boîte d'arrivée)")
    inbox.add_argument("--emetteur", help="une seule boîte : celle de cet émetteur déclaré")
    inbox.set_defaults(func=cmd_consent_inbox)
    imp = consent_sub.add_parser("import", help="importer un fichier détenu par l'opérateur (migration) ; les "
                                 "partenaires passent par leur boîte (consent importer)")
    imp.add_argument("fichier")
    imp.add_argument("--emetteur", default="hub", help="émetteur déclaré dans flows.yaml (son autorité s'applique)")
    imp.set_defaults(func=cmd_consent_import)
    consent_sub.add_parser("propager", help="déposer les avis de suppression des retraits en attente").set_defaults(
        func=cmd_consent_propagate)

    dpo = sub.add_parser("dpo", help="outils du délégué à la protection des données")
    dpo_sub = dpo.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = dpo_sub.add_parser("rapport", help="rapport HTML autonome sur une période")
    report.add_argument("--du", type=_date, required=True, help="début de période (AAAA-MM-JJ)")
    report.add_argument("--au", type=_date, required=True, help="fin de période incluse (AAAA-MM-JJ)")
    report.add_argument("--sortie", required=True, help="fichier HTML à écrire")
    report.add_argument("--flux", help="seulement ce flux (identifiant du registre)")
    report.add_argument("--destinataire", help="seulement ce destinataire (identifiant du registre)")
    report.add_argument("--pdf", metavar="FICHIER", help="écrire aussi le rapport en PDF (impression par Chromium)")
    report.set_defaults(func=cmd_dpo_report)
    reg = dpo_sub.add_parser("registre", help="registre des activités de traitement (RGPD art. 30), en Markdown")
    reg.add_argument("--sortie", help="fichier à écrire (sinon : sortie standard)")
    reg.set_defaults(func=cmd_dpo_register)
    person = dpo_sub.add_parser("personne", help="droit d'accès : tous les échanges concernant une personne")
    person.add_argument("--nir", type=_nir_on_the_command_line, default="-",
                        help="« - » seulement (défaut) : le NIR est lu sur l'entrée standard, jamais en argument ; "
                             "lignes acceptées : « NIR », « nir : NIR », « repli FLUX : id1 | id2 | … »")
    person.add_argument("--demandeur", default=getpass.getuser(), help="qui fait la recherche (journalisé)")
    person.add_argument("--motif", default="demande d'accès (RGPD art. 15)", help="pourquoi (journalisé)")
    person.add_argument("--json", action="store_true")
    person.add_argument("--preuves", metavar="DOSSIER",
                        help="écrire la preuve de chaque décision (lot → journal signé), vérifiable avec la clé publiée")
    person.set_defaults(func=cmd_dpo_person)

    sub.add_parser("purger", aliases=["purge"], help="purger ce qui dépasse sa durée de conservation : fichiers des "
                   "flux, consentements, retraits, exécutions, exports, préparations, journal").set_defaults(func=cmd_purge)
    base = sub.add_parser("base", help="administration de la base (PostgreSQL)")
    base_sub = base.add_subparsers(dest="action", required=True, metavar="ACTION")
    harden = base_sub.add_parser("durcir", help="restreindre le rôle applicatif à l'ajout dans le journal (propriétaire de la base)")
    harden.add_argument("--role", required=True, help="rôle PostgreSQL utilisé par le hub")
    harden.set_defaults(func=cmd_db_harden)

    run = sub.add_parser("run", help="exécuter un flux : les fichiers de sa boîte de dépôt, ou un fichier (--input)")
    run.add_argument("flux", nargs="?", help=argparse.SUPPRESS)  # "spie-hub run FLUX", as before --flux
    run.add_argument("--flux", dest="flux_option", metavar="FLUX", help="flux déclaré (spie-hub flux)")
    run.add_argument("--input", help="fichier d'entrée, laissé en place (sinon : toute la boîte de dépôt du flux)")
    run.add_argument("--json", action="store_true", help="résumé en JSON")
    run.set_defaults(func=cmd_run)
    recover = sub.add_parser("reprise", help="régler ce qu'une interruption a laissé (fait aussi à chaque exécution)")
    recover.add_argument("--flux", help="un seul flux (sinon : tous)")
    recover.set_defaults(func=cmd_recover)

    audit = sub.add_parser("audit", help="journal d'audit")
    audit_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", aliases=["verifier-base"], help="vérifier le journal dans la base, avec les "
                                  "clés publiées (depuis la dernière vérification, ou --complet)")
    verify.add_argument("--complet", action="store_true", help="relire tout le journal, pas seulement la fin")
    verify.set_defaults(func=cmd_audit_verify)
    audit_sub.add_parser("sceller", help="sceller un journal d'une version antérieure (après vérification de ses "
                         "points de contrôle signés)").set_defaults(func=cmd_audit_seal)
    coherence = audit_sub.add_parser("coherence", help="preuve de cohérence depuis une taille gardée par un témoin")
    coherence.add_argument("--depuis", type=int, required=True, help="taille de la tête gardée")
    coherence.add_argument("--vers", type=int, help="taille de la tête d'arrivée : celle du reçu à vérifier "
                           "(défaut : la dernière tête)")
    coherence.add_argument("--sortie", help="fichier JSON à écrire (sinon : sortie standard)")
    coherence.set_defaults(func=cmd_audit_consistency)
    proof = audit_sub.add_parser("preuve", help="vérifier la preuve d'une décision (dpo personne --preuves)")
    proof.add_argument("fichier")
    proof.add_argument("--cle-publique", required=True, help="clé publique publiée du hub (PEM)")
    proof.set_defaults(func=cmd_audit_proof)
    export = audit_sub.add_parser("exporter", help="exporter le journal pour une vérification hors ligne")
    export.add_argument("--sortie", required=True, help="dossier à écrire")
    export.set_defaults(func=cmd_audit_export)
    offline = audit_sub.add_parser("verifier", help="vérifier hors ligne un export du journal (sans base)")
    offline.add_argument("dossier")
    offline.add_argument("--cle-publique", action="append", help="clé publique publiée du hub (PEM), répétable")
    offline.add_argument("--recu", action="append", help="manifeste signé reçu avec une livraison, répétable")
    offline.add_argument("--tete-gardee", action="append", help="tête du journal gardée (fichier ou reçu), répétable")
    offline.set_defaults(func=cmd_audit_offline)

    receipt = sub.add_parser("recu", help="reçus de livraison signés")
    receipt_sub = receipt.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = receipt_sub.add_parser("verifier", help="vérifier un manifeste signé et le fichier livré")
    check.add_argument("manifeste")
    check.add_argument("--cle-publique", required=True, help="clé publique publiée du hub (PEM)")
    check.add_argument("--tete-gardee", action="append", metavar="FICHIER",
                       help="un reçu précédent (ou une tête) gardé : le journal doit le prolonger ; répétable")
    check.add_argument("--coherence", metavar="FICHIER",
                       help="preuve de cohérence demandée au hub (spie-hub audit coherence --depuis TAILLE)")
    check.set_defaults(func=cmd_receipt_verify)

    keys = sub.add_parser("cles", help="clés de pseudonymisation")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = keys_sub.add_parser("init", help="créer une clé locale (démo, poste de développement)")
    init.add_argument("--kid", default="k1", help="identifiant de la clé de pseudonymisation")
    init.add_argument("--kid-signature", default="s1", help="identifiant de la clé de signature du journal")
    init.set_defaults(func=cmd_keys_init)
    rotate = keys_sub.add_parser("rotation", help="nouvelle clé de pseudonymisation actuelle (les anciennes sont conservées)")
    rotate.add_argument("--kid", required=True, help="identifiant de la nouvelle clé")
    rotate.set_defaults(func=cmd_keys_rotate)
    retire = keys_sub.add_parser("retirer", help="retirer une ancienne clé du trousseau, quand plus rien n'en dépend")
    retire.add_argument("--kid", required=True)
    # Kept so that old scripts get the explanation instead of a usage error; it no longer bypasses anything.
    retire.add_argument("--forcer", action="store_true", help=argparse.SUPPRESS)
    retire.set_defaults(func=cmd_keys_retire)
    rehome_cmd = keys_sub.add_parser("reloger", help="reloger sous la clé actuelle les consentements et retraits "
                                     "enregistrés sous une ancienne clé (NIR lus sur l'entrée standard, un par ligne)")
    rehome_cmd.add_argument("--kid", required=True, help="l'ancienne clé")
    rehome_cmd.set_defaults(func=cmd_keys_rehome)
    publish = keys_sub.add_parser("publier", help="écrire la clé publique de signature (PEM) à publier")
    publish.add_argument("--sortie", required=True)
    publish.set_defaults(func=cmd_keys_publish)
    hsm = keys_sub.add_parser("hsm-generer", help="générer la clé de signature du journal dans le jeton PKCS#11 configuré")
    hsm.add_argument("--kid", required=True, help="identifiant (étiquette) de la nouvelle clé, ex. s2")
    hsm.add_argument("--sortie", help="écrire la clé publique (PEM) dans ce fichier, ex. audit-s2.pem")
    hsm.set_defaults(func=cmd_keys_hsm_generate)

    flows = sub.add_parser("flux", help="lister les flux déclarés dans le registre, ou en dessiner la carte")
    flows.add_argument("action", nargs="?", choices=["liste", "carte"], default="liste",
                       help="« liste » (par défaut) ou « carte » (SVG généré depuis le registre)")
    flows.add_argument("--sortie", help="fichier SVG à écrire (sinon la sortie standard)")
    flows.set_defaults(func=cmd_flows)
    executions = sub.add_parser("executions", help="dernières exécutions des flux")
    executions.add_argument("-n", "--nombre", type=int, default=20)
    executions.set_defaults(func=cmd_runs)

    demo = sub.add_parser("demo", help="démonstration complète sur données synthétiques")
    demo.add_argument("--foyers", type=int, default=1000)
    demo.add_argument("--sans-airflow", action="store_true", help="exécuter le flux sans Airflow")
    demo.set_defaults(func=cmd_demo)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, Docker, Airflow), handled like Ctrl-C: an interrupted run rolls back."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated("SIGTERM")


def _by_sigterm(error: KeyboardInterrupt) -> bool:
    # During a run the life cycle's own handler raises its ``Interrupted`` (it is imported by then, or not at all).
    lifecycle = sys.modules.get("spie_hub.run.lifecycle")
    return isinstance(error, Terminated) or (lifecycle is not None and isinstance(error, lifecycle.Interrupted))


def _io_error(error: OSError) -> str:
    """The folder an OS error happened in and why, in French (a file's own name is not shown)."""
    if error.filename:
        return f"Erreur d'entrée-sortie : {StorageError.from_os(error, error.filename)}"
    return (f"Erreur d'entrée-sortie ({error.strerror or type(error).__name__}) dans le dossier du hub "
            f"{HubHome.from_env().root} ou un dossier de flux")


def _database_error(error: OperationalError) -> tuple[str, int]:
    home = HubHome.from_env()
    url = make_url(home.database_url)
    text = str(error.orig).lower()
    if url.get_backend_name() == "sqlite" and ("disk" in text or "readonly" in text or "unable to open" in text):
        folder = Path(url.database or "").parent
        return f"Erreur d'entrée-sortie : base SQLite du hub dans le dossier {folder} : {error.orig}", EX_IOERR
    return (f"Base de données injoignable ({url.render_as_string(hide_password=True)}, variable "
            f"SPIE_HUB_DATABASE_URL) : {type(error.orig).__name__}", 2)


def _sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)


def _refused_by_database(error: DBAPIError) -> str:
    """The database refused a statement. Never its text: SQLAlchemy's message carries the statement's parameters,
    which may be pseudonyms or a partner's values."""
    if _sqlstate(error) == "42501":
        return ("Droits insuffisants dans la base du hub pour cette opération (rôle restreint par 'spie-hub base "
                "durcir' ?) : lancez-la avec le rôle propriétaire, ou accordez le droit manquant.")
    code = _sqlstate(error)
    return f"Erreur : la base de données a refusé l'opération ({type(error.orig).__name__}{f', code {code}' if code else ''})."


#: 128 + SIGPIPE: what a shell reports for a command whose reader went away (``| head``).
EXIT_SIGPIPE = 128 + signal.SIGPIPE


def _reader_gone() -> int:
    """stdout's reader stopped reading: exit quietly with the conventional code, whatever is still buffered going
    nowhere (else Python reports the failed flush at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        if _stderr_gone():
            os.dup2(devnull, sys.stderr.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_SIGPIPE


def _stderr_gone() -> bool:
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    # Private by default: every file and folder the hub creates from here on is its own (0600 / 0700).
    private_umask()
    try:
        return _main(argv)
    except BrokenPipeError:  # output piped into a command that stopped reading (head, less)
        return _reader_gone()


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, usage error: flushed here, so that a gone reader is handled above
        sys.stdout.flush()
        return 0 if done.code is None else done.code if isinstance(done.code, int) else 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a reader gone after the last print is found here, not at exit
        return code
    except ConfigurationError as error:
        _err(f"Erreur de configuration : {error}")
        return 2
    except StorageError as error:
        _err(str(error))
        return EX_IOERR
    except RetriableError as error:
        _err(str(error))
        return EX_TEMPFAIL
    except HubError as error:
        _err(f"Erreur : {error}")
        return 1
    except OperationalError as error:
        message, code = _database_error(error)
        _err(message)
        return code
    except DBAPIError as error:
        _err(_refused_by_database(error))
        return EX_NOPERM if _sqlstate(error) == "42501" else 1
    except BrokenPipeError:
        raise  # handled by main: not an I/O error of the hub
    except OSError as error:
        _err(_io_error(error))
        return EX_IOERR
    except KeyboardInterrupt as error:
        _err("Interrompu.")
        return EXIT_SIGTERM if _by_sigterm(error) else EXIT_SIGINT
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

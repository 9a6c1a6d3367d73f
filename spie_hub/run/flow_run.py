"""The flow pipeline, plain Python: read → validate → map → pseudonymise → decide → write → deliver → audit.

Airflow and the CLI both call ``run_flow``. Records stream through in batches, so memory does not grow with the
input file. Every input record ends delivered, rejected (reason written back to the sender) or withheld
(decision recorded), for each recipient; a file that cannot be read at all is quarantined whole.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import shutil
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError
from sqlalchemy import Engine, insert, select, update

from connectors.formats import cnaf_vrsb, partner_csv
from connectors.formats.csv_output import CsvRowWriter, load_output, write_report
from connectors.transports.local import LocalFolder, printable_name
from consent.decision import ConsentIndex, ConsentVersion, RecordDecision, decide
from consent.revocation import propagate_withdrawals
from schemas.categories import CATEGORIE_DU_BLOC, CategorieDonnees
from schemas.spie_v1 import SCHEMA_VERSION, PersonneSPIE
from spie_hub.audit.chain import seal
from spie_hub.audit.log import AuditEvent, AuditLog, AuditSpool, canonical, now
from spie_hub.audit.receipts import sign_manifest
from spie_hub.audit.signing import load_signing_key
from spie_hub.core.errors import ConfigurationError, FatalInputError, RecordError
from spie_hub.core.home import HubHome
from spie_hub.core.registry import Condition, Flow, Recipient, get_flow, load_flows
from spie_hub.mapping.compiler import CompiledMapping, load_mapping
from spie_hub.privacy.disclosure import suppress
from spie_hub.privacy.keys import load_keyring
from spie_hub.privacy.pseudonym import Pivot, Pseudonymiser
from spie_hub.store import audit_head, deliveries, open_store, runs

log = logging.getLogger("spie_hub.run.flow_run")
BATCH = 1000
#: Above this size the XSD validation runs in a child process on the other core while the pipeline streams.
PARALLEL_VALIDATION_BYTES = 8 * 1024 * 1024
ProgressCallback = Callable[[int], None]


@dataclass
class RecipientCounts:
    livres: int = 0
    retenus: int = 0
    fichier: str | None = None
    deja_livre: bool = False
    #: withheld records by reason, and for each category the ground of each decision (for the DPO's report)
    motifs: Counter[str] = field(default_factory=Counter)
    fondements: dict[str, Counter[str]] = field(default_factory=dict)


StatKey = tuple[str | None, tuple[tuple[str, str], ...]]


def _ground(fondement: str) -> str:
    """The family of a decision's ground, without any consent reference (bounded set, for statistics)."""
    head = fondement.split(":", 1)[0]
    return {"refus exprimé": "refus"}.get(head, head if ":" in fondement else
                                          "hors-politique" if "hors politique" in fondement else "sans-consentement")


def _stat_key(decision: RecordDecision) -> StatKey:
    return (None if decision.livre else decision.motif,
            tuple((c.value, _ground(d.fondement)) for c, d in decision.categories.items()))


@dataclass
class RunSummary:
    run_id: str
    flux: str
    statut: str  # "termine" | "deja-livre" | "quarantaine"
    lus: int = 0
    rejetes: int = 0
    destinataires: dict[str, RecipientCounts] = field(default_factory=dict)
    rapport_rejets: str | None = None
    quarantaine: str | None = None
    message: str | None = None
    anomalies: list[str] = field(default_factory=list)

    def accounted(self) -> bool:
        """read = delivered + withheld + rejected, for every recipient."""
        return all(c.deja_livre or c.livres + c.retenus + self.rejetes == self.lus for c in self.destinataires.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _readable(error: ValidationError) -> str:
    # Field locations and messages only: pydantic's own str() would echo the input value (an identifier).
    return " ; ".join(f"{'.'.join(str(p) for p in e['loc'])} : {e['msg']}" for e in error.errors(include_input=False))


def _present_categories(record: PersonneSPIE) -> tuple[CategorieDonnees, ...]:
    seen: list[CategorieDonnees] = []
    for block, category in CATEGORIE_DU_BLOC.items():
        if getattr(record, block) and category not in seen:
            seen.append(category)
    return tuple(seen)


def _outside_perimeter(record: PersonneSPIE, perimetre: tuple[Condition, ...]) -> str | None:
    for condition in perimetre:
        value: Any = record
        for part in condition.champ.split("."):
            value = getattr(value, part, None) if value is not None else None
        if hasattr(value, "value"):
            value = value.value
        if value != condition.egal:
            return f"hors périmètre du flux : {condition.libelle} (non)"
    return None


def to_record(mapping: CompiledMapping, pseudonymiser: Pseudonymiser, element: Any, parent: Any,
              provenance: dict[str, Any]) -> tuple[PersonneSPIE, Pivot]:
    """Map one partner record to the shared schema with its pivot pseudonym; ``RecordError`` if it cannot be."""
    data = mapping.map(element, parent)
    nir = (data.get("identite") or {}).get("nir")
    if nir is not None:
        pivot = pseudonymiser.pivot_from_nir(nir)
    elif (parts := mapping.fallback_parts(element, parent)) is not None:
        pivot = pseudonymiser.pivot_fallback(*parts)
    else:
        raise RecordError("ni NIR ni identifiants de repli (organisme, matricule, rôle, naissance, prénom)")
    data["pseudonyme"] = pivot.pseudonyme
    data["provenance"] = provenance
    try:
        return PersonneSPIE.model_validate(data), pivot
    except ValidationError as error:
        raise RecordError(_readable(error)) from None


class _SeenPivots:
    """Which people a file already had, on disk so memory stays flat: keyed pivot digests only, never an identifier,
    in the run's staging folder (deleted with it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS vus (cle BLOB PRIMARY KEY, position TEXT) WITHOUT ROWID")

    def add(self, digest: bytes, position: str) -> str | None:
        """Record the person; return the position where they were first seen if already there."""
        row = self.db.execute("SELECT position FROM vus WHERE cle = ?", (digest[:16],)).fetchone()
        if row is not None:
            return str(row[0])
        self.db.execute("INSERT INTO vus VALUES (?, ?)", (digest[:16], position))
        return None

    def close(self) -> None:
        self.db.close()


class _ProgressReader(io.RawIOBase):
    """File wrapper reporting bytes read, for progress bars on long files (a raw stream: lxml and io both read it)."""

    def __init__(self, handle: IO[bytes], callback: ProgressCallback | None) -> None:
        super().__init__()
        self.handle, self.callback = handle, callback

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)  # type: ignore[attr-defined]
        if self.callback is not None and count:
            self.callback(count)
        return count

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


class FlowRun:
    def __init__(self, flow: Flow, home: HubHome, engine: Engine, input_path: Path) -> None:
        self.flow, self.home, self.engine, self.input_path = flow, home, engine, input_path
        self.run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.audit = AuditLog(engine)
        ring = load_keyring(home)
        self.pseudonymiser = Pseudonymiser(ring)
        self.signer = load_signing_key(home, ring.current)
        self.mapping: CompiledMapping = load_mapping(flow.mapping)
        self.consents = ConsentIndex(engine)
        self.today = dt.date.today()
        self.parallel_validation_bytes = PARALLEL_VALIDATION_BYTES
        self.staging = home.staging / self.run_id
        self.spool = AuditSpool(self.staging / "audit.spool", self.run_id, flow.id)
        self._decisions: dict[tuple[Any, ...], tuple[RecordDecision, str, StatKey]] = {}  # see _decision
        self._stats: dict[str, Counter[StatKey]] = {}
        self.rejections: list[tuple[str, int | None, str]] = []
        self.summary = RunSummary(self.run_id, flow.id, "en-cours")

    # -- helpers -------------------------------------------------------------------------------------------
    def _event(self, event: str, payload: dict[str, Any], recipient: str | None = None, subject: str | None = None) -> None:
        self.spool.add(event, payload, recipient, subject)

    def _reject(self, position: str, line: int | None, reason: str) -> None:
        self.summary.rejetes += 1
        self.rejections.append((position, line, reason))
        self._event("rejet", {"position": position, "ligne": line, "motif": reason})

    # -- stages ----------------------------------------------------------------------------------------------
    def _to_record(self, element: Any, foyer: Any, position: str) -> tuple[PersonneSPIE, Pivot]:
        provenance = {"partenaire": self.flow.partenaire, "format": self.flow.format,
                      "date_reference": self.reference_date, "position": position}
        return to_record(self.mapping, self.pseudonymiser, element, foyer, provenance)

    def _decision(self, recipient: Recipient, outside: str | None, present: tuple[CategorieDonnees, ...],
                  found: list[ConsentVersion]) -> tuple[RecordDecision, str, StatKey]:
        # Records without any consent share a handful of situations (same categories, in or out of perimeter):
        # their decision and its canonical audit text are computed once. Records with consents are decided one by
        # one, so this cache never grows with the file.
        key = (recipient.id, outside, present)
        cached = None if found else self._decisions.get(key)
        if cached is None:
            decision = RecordDecision(False, {}, outside) if outside else decide(recipient, present, found, self.today)
            cached = (decision, canonical(decision.as_payload()), _stat_key(decision))
            if not found:
                self._decisions[key] = cached
        return cached

    def _decide_batch(self, batch: list[tuple[PersonneSPIE, Pivot, str]], writers: dict[str, CsvRowWriter]) -> None:
        found = self.consents.lookup(s for _, p, _ in batch for s in (p.pseudonyme, *p.aliases))
        for record, pivot, position in batch:
            outside = _outside_perimeter(record, self.flow.perimetre)
            present = _present_categories(record)
            consents_found = found.get(pivot.pseudonyme, [])
            if pivot.aliases:  # consents recorded under a previous key of the ring: the latest version wins
                consents_found = ConsentIndex.latest_versions(
                    consents_found + [v for alias in pivot.aliases for v in found.get(alias, [])])
            for recipient in self.active:
                pseudonym = self.pseudonymiser.for_recipient(pivot, recipient.id)
                counts = self.summary.destinataires[recipient.id]
                decision, text, stat = self._decision(recipient, outside, present, consents_found)
                self._stats[recipient.id][stat] += 1
                if decision.livre:
                    writers[recipient.id].write(record, pseudonym, decision.permises)
                    counts.livres += 1
                    where = f',"ligne":{counts.livres + 1},"position":"{position}"}}'  # line 1 is the header
                else:
                    counts.retenus += 1
                    where = f',"position":"{position}"}}'
                self.spool.add("decision", text[:-1] + where, recipient.id, pseudonym)

    def _stream(self, writers: dict[str, CsvRowWriter], progress: ProgressCallback | None) -> cnaf_vrsb.EnTeteFlux:
        entete = cnaf_vrsb.EnTeteFlux()
        background = None
        if self.mapping.record_tag and self.input_path.stat().st_size >= self.parallel_validation_bytes:
            background = cnaf_vrsb.BackgroundValidation(self.input_path)
        try:
            self._stream_records(writers, progress, entete, validate=background is None)
        except BaseException:
            if background is not None:
                background.cancel()
            raise
        if background is not None and (errors := background.result()):
            raise FatalInputError(errors[0])
        return entete

    def _parents(self, raw: IO[bytes], entete: cnaf_vrsb.EnTeteFlux, validate: bool) -> Iterator[Any]:
        """The partner file's units, streamed: CNAF foyers (XML), or CSV rows (one record each)."""
        if self.mapping.record_tag:
            return cnaf_vrsb.read_foyers(raw, entete, validate=validate)  # type: ignore[arg-type]
        return partner_csv.read_rows(raw, entete, self.mapping.columns)  # type: ignore[arg-type]

    def _stream_records(self, writers: dict[str, CsvRowWriter], progress: ProgressCallback | None,
                        entete: cnaf_vrsb.EnTeteFlux, *, validate: bool) -> None:
        batch: list[tuple[PersonneSPIE, Pivot, str]] = []
        seen = _SeenPivots(self.staging / "vus.sqlite3") if self.mapping.unique_key else None
        with self.input_path.open("rb") as raw, ExitStack() as cleanup:
            if seen is not None:
                cleanup.callback(seen.close)
            for parent in self._parents(_ProgressReader(raw, progress), entete, validate):  # type: ignore[arg-type]
                self.reference_date = entete.date_reference
                if isinstance(parent, partner_csv.CsvRow):
                    if parent.problem is not None:
                        self.summary.lus += 1
                        self._reject(f"ligne {parent.line}", parent.line, parent.problem)
                        continue
                    units: list[tuple[Any, str, int | None]] = [(parent.values, f"ligne {parent.line}", parent.line)]
                    parent = parent.values
                else:
                    units = [(element, f"foyer {entete.foyers_lus}, personne {index}", element.sourceline)
                             for index, element in enumerate(self.mapping.records(parent), start=1)]
                for element, position, line in units:
                    self.summary.lus += 1
                    try:
                        record, pivot = self._to_record(element, parent, position)
                        if seen is not None and (first := seen.add(pivot.digest, position)) is not None:
                            raise RecordError(f"doublon : même personne qu'en {first}")
                    except RecordError as error:
                        self._reject(position, line, str(error))
                        continue
                    batch.append((record, pivot, position))
                    if len(batch) >= BATCH:
                        self._decide_batch(batch, writers)
                        batch = []
        if batch:
            self._decide_batch(batch, writers)

    # -- run -----------------------------------------------------------------------------------------------
    def _already_delivered(self, input_sha: str) -> set[str]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(deliveries.c.recipient).where(
                    deliveries.c.flow == self.flow.id, deliveries.c.input_sha256 == input_sha
                )
            )
            return {r.recipient for r in rows}

    def _output_name(self, recipient: Recipient, input_sha: str) -> str:
        day = (self.reference_date or self.today.isoformat()).replace("-", "")
        return f"{self.flow.id}_{recipient.id}_{day}_{input_sha[:12]}.csv"

    def execute(self, progress: ProgressCallback | None = None) -> RunSummary:
        if not self.input_path.is_file():
            raise ConfigurationError(f"Fichier d'entrée introuvable : {self.input_path}")
        input_sha = sha256_file(self.input_path)
        self.reference_date: str | None = None
        done = self._already_delivered(input_sha)
        self.active = [r for r in self.flow.destinataires if r.id not in done]
        self._stats = {r.id: Counter() for r in self.active}
        for recipient in self.flow.destinataires:
            self.summary.destinataires[recipient.id] = RecipientCounts(deja_livre=recipient.id in done)
        with self.engine.begin() as connection:
            connection.execute(insert(runs).values(
                run_id=self.run_id, flow=self.flow.id, input_name=printable_name(self.input_path.name),
                input_sha256=input_sha, started_at=now(), status="en-cours", summary="{}",
            ))
        self.audit.append([AuditEvent("execution-debut", {
            "fichier_sha256": input_sha, "octets": self.input_path.stat().st_size, "format": self.flow.format,
            "partenaire": self.flow.partenaire, "version_schema": SCHEMA_VERSION}, self.run_id, self.flow.id)])
        # Withdrawals recorded since the last run are propagated first: their notices precede new deliveries.
        propagate_withdrawals(self.engine, self.home, self.pseudonymiser, load_flows(), self.today)
        if not self.active:
            self.summary.statut = "deja-livre"
            self.summary.message = "Ce fichier a déjà été livré à tous les destinataires : aucune nouvelle livraison."
            return self._finish()
        self.staging.mkdir(parents=True, exist_ok=True)
        try:
            with ExitStack() as stack:
                writers = {
                    r.id: load_output(r.sortie).open_writer(stack.enter_context(
                        open(self.staging / f"{r.id}.csv", "w", encoding="utf-8-sig", newline="")))
                    for r in self.active
                }
                entete = self._stream(writers, progress)
        except FatalInputError as error:
            return self._quarantine(error, input_sha)
        self.summary.anomalies = entete.anomalies
        self._fold_stats()
        staged = [self._prepare(recipient, input_sha) for recipient in self.active]
        # Write-ahead: the decisions and deliveries enter the audit before any file becomes visible, so nothing
        # can leave without its trail (a crash in between leaves an audited delivery that a rerun completes).
        self.spool.commit(self.audit)
        with self.engine.connect() as connection:
            seq, digest = connection.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
        for recipient, name, manifest in staged:
            manifest["journal"] = {"entree": seq, "empreinte": digest}
            self._publish(recipient, name, sign_manifest(manifest, self.signer), input_sha)
        self._write_rejections(input_sha)
        self._write_acknowledgement(input_sha)
        self.summary.statut = "termine"
        return self._finish()

    def _prepare(self, recipient: Recipient, input_sha: str) -> tuple[Recipient, str, dict[str, Any]]:
        staged = self.staging / f"{recipient.id}.csv"
        name = self._output_name(recipient, input_sha)
        counts = self.summary.destinataires[recipient.id]
        manifest = {
            "fichier": name, "sha256": sha256_file(staged), "octets": staged.stat().st_size,
            "enregistrements": counts.livres, "version_schema": SCHEMA_VERSION, "flux": self.flow.id,
            "destinataire": recipient.id, "execution": self.run_id, "genere_le": now(),
            "format": recipient.sortie, "encodage": "UTF-8 avec BOM", "separateur": ";",
        }
        self._event("livraison", {"fichier": name, "sha256": manifest["sha256"], "enregistrements": counts.livres,
                                  "retenus": counts.retenus, "version_schema": SCHEMA_VERSION}, recipient.id)
        return recipient, name, manifest

    def _publish(self, recipient: Recipient, name: str, manifest: dict[str, Any], input_sha: str) -> None:
        folder = LocalFolder(self.home.root / recipient.transport.dossier)
        published = folder.publish(self.staging / f"{recipient.id}.csv", name)
        with folder.store_file(name.removesuffix(".csv") + ".manifest.json", encoding="utf-8") as handle:
            json.dump(manifest, handle, ensure_ascii=False, indent=2)
        with self.engine.begin() as connection:
            connection.execute(insert(deliveries).values(
                flow=self.flow.id, recipient=recipient.id, input_sha256=input_sha, run_id=self.run_id,
                file_name=name, file_sha256=manifest["sha256"], records=manifest["enregistrements"],
                delivered_at=now(),
            ))
        self.summary.destinataires[recipient.id].fichier = str(published)

    def _fold_stats(self) -> None:
        for rid, stats in self._stats.items():
            counts = self.summary.destinataires[rid]
            for (motif, grounds), n in stats.items():
                if motif is not None:
                    counts.motifs[motif] += n
                for category, ground in grounds:
                    counts.fondements.setdefault(category, Counter())[ground] += n

    def _write_acknowledgement(self, input_sha: str) -> None:
        """The sender's processing receipt: its own counts exact, the recipients' with small cells suppressed."""
        seuil = self.flow.seuil_petits_effectifs
        recipients = {rid: suppress({"livres": c.livres, "retenus": c.retenus}, seuil)
                      for rid, c in self.summary.destinataires.items() if not c.deja_livre}
        receipt = {"flux": self.flow.id, "fichier_sha256": input_sha, "execution": self.run_id, "traite_le": now(),
                   "enregistrements_lus": self.summary.lus, "enregistrements_rejetes": self.summary.rejetes,
                   "destinataires": recipients, "seuil_petits_effectifs": seuil,
                   "note": f"Effectifs de 1 à {seuil - 1} masqués (et un effectif complémentaire) pour ne révéler "
                           "aucune personne dont les données ont été retenues."}
        folder = LocalFolder(self.home.outbox / self.flow.partenaire / "accuses")
        with folder.store_file(f"{self.flow.id}_{input_sha[:12]}_accuse.json", encoding="utf-8") as handle:
            json.dump(receipt, handle, ensure_ascii=False, indent=2)

    def _write_rejections(self, input_sha: str) -> None:
        if not self.rejections:
            return
        folder = LocalFolder(self.home.outbox / self.flow.partenaire / "rejets")
        name = f"{self.flow.id}_{input_sha[:12]}_rejets.csv"
        with folder.store_file(name, encoding="utf-8-sig", newline="") as handle:
            write_report(handle, ["Position dans le fichier", "Ligne", "Motif du rejet"], self.rejections)
        self.summary.rapport_rejets = str(folder.path(name))

    def _quarantine(self, error: FatalInputError, input_sha: str) -> RunSummary:
        self.spool.reset()
        folder = self.home.quarantine / self.run_id
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.input_path, folder / "fichier-recu")
        report = (
            f"Fichier mis en quarantaine le {now()}\nFlux : {self.flow.id}\nEmpreinte SHA-256 : {input_sha}\n"
            f"Motif : {error}\nAucun enregistrement de ce fichier n'a été livré.\n"
        )
        (folder / "rapport.txt").write_text(report, encoding="utf-8")
        notice = LocalFolder(self.home.outbox / self.flow.partenaire / "rejets")
        with notice.store_file(f"{self.flow.id}_{input_sha[:12]}_fichier-rejete.txt", encoding="utf-8") as handle:
            handle.write(
                "Votre fichier a été rejeté en entier et n'a pas été traité.\n"
                f"Empreinte SHA-256 du fichier reçu : {input_sha}\nMotif : {error}\n"
                "Merci de corriger le fichier et de le déposer à nouveau.\n"
            )
        # Records parsed before the error are rejected with the file: none was delivered.
        self.summary.rejetes = self.summary.lus
        self.summary.statut = "quarantaine"
        self.summary.quarantaine = str(folder)
        self.summary.message = str(error)
        self.summary.rapport_rejets = str(notice.path(f"{self.flow.id}_{input_sha[:12]}_fichier-rejete.txt"))
        for counts in self.summary.destinataires.values():
            counts.livres = counts.retenus = 0
        self._event("fichier-quarantaine", {"fichier_sha256": input_sha, "motif": str(error),
                                            "element": error.element, "enregistrements_rejetes": self.summary.lus})
        return self._finish()

    def _finish(self) -> RunSummary:
        counts = {rid: {"livres": c.livres, "retenus": c.retenus, "deja_livre": c.deja_livre,
                        "motifs": dict(c.motifs), "fondements": {k: dict(v) for k, v in c.fondements.items()}}
                  for rid, c in self.summary.destinataires.items()}
        self._event("execution-fin", {"statut": self.summary.statut, "lus": self.summary.lus,
                                      "rejetes": self.summary.rejetes, "destinataires": counts,
                                      "anomalies": self.summary.anomalies})
        self.spool.commit(self.audit)
        self.spool.close()
        seal(self.engine, self.signer)  # a signed checkpoint at the end of every run
        shutil.rmtree(self.staging, ignore_errors=True)
        with self.engine.begin() as connection:
            connection.execute(update(runs).where(runs.c.run_id == self.run_id).values(
                finished_at=now(), status=self.summary.statut, summary=json.dumps(counts | {
                    "lus": self.summary.lus, "rejetes": self.summary.rejetes, "anomalies": self.summary.anomalies}),
            ))
        log.info("Flux %s, exécution %s : %s ; lus %d, rejetés %d, %s", self.flow.id, self.run_id, self.summary.statut,
                 self.summary.lus, self.summary.rejetes,
                 ", ".join(f"{rid} livrés {c['livres']} retenus {c['retenus']}" for rid, c in counts.items()))
        return self.summary


def run_flow(flow_id: str, input_path: Path, home: HubHome | None = None, *,
             progress: ProgressCallback | None = None) -> RunSummary:
    home = (home or HubHome.from_env()).ensure()
    flow = get_flow(flow_id)
    engine = open_store(home.database_url)
    try:
        return FlowRun(flow, home, engine, input_path).execute(progress)
    finally:
        engine.dispose()

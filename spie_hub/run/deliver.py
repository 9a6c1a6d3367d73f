"""Stage 3, deliver: every name the hub gives and every file it writes for a partner, through a Transport.

A delivery is staged privately, audited (write-ahead), then published: the signed manifest first, then the file,
each stored atomically and never over a different file of the same name, then the delivery row. A recipient
therefore never sees a file without its manifest nor a temporary; a run interrupted during publication is
completed by the next start from its staging (``spie_hub/run/recovery.py``).

Each recipient's rows are written in an order of its own (``ShuffledRows``): a keyed hash of the pseudonym it knows
the person by, sorted through a file in the run's private staging (sorted runs, merged), so memory stays flat with
the file size.
Nothing a recipient or a sender receives depends on what another recipient was sent (docs/divulgation.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import io
import json
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from connectors.formats.base import OutputFormat, RecordWriter
from connectors.formats.dictionary import dictionary_csv, dictionary_name
from connectors.formats.registry import load_output
from connectors.formats.reports import write_report
from connectors.transports.base import FileExists, Transport, sha256_stream
from connectors.transports.local import LocalFolder
from connectors.transports.registry import open_transport
from consent.decision import RecordDecision
from schemas.categories import CategorieDonnees
from schemas.spie_v1 import SCHEMA_VERSION, PersonneSPIE
from spie_hub.audit.log import now
from spie_hub.audit.spool import AuditSpool
from spie_hub.core.errors import ConfigurationError, HubError, StorageError
from spie_hub.core.failpoints import failpoint
from spie_hub.core.home import HubHome
from spie_hub.privacy.disclosure import row_order_key, row_sort_key
from spie_hub.registry import Flow, Recipient
from spie_hub.run.records import Mapped
from spie_hub.run.summary import RunSummary
from spie_hub.store import deliveries

REJECTION_HEADER = ["Position dans le fichier", "Ligne", "Motif du rejet"]


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return sha256_stream(handle)


def staged_file(staging: Path, recipient_id: str) -> Path:
    """A recipient's delivery as staged in the run's private folder, until it is published."""
    return staging / f"{recipient_id}.livraison"


def archive_name(run_id: str) -> str:
    """The archived input's name. Opaque: a partner's file name can hold anything (a NIR, a right-to-left override,
    255 bytes); the run row and the audit tie the copy to its run, the hash to its content."""
    return f"{run_id}_entree"


def recipient_transport(recipient: Recipient, home: HubHome) -> Transport:
    return open_transport(recipient.transport, home)


def sender_returns(flow: Flow, home: HubHome) -> Transport:
    """Where the sender gets its rejection reports and processing receipts back (``source.retour``)."""
    if flow.retour is None:  # only a Flow built by hand lacks it: the registry always sets one
        raise ConfigurationError(f"Flux {flow.id} : transport de retour vers l'émetteur (source.retour) absent")
    return open_transport(flow.retour, home)


def hub_folder(home: HubHome, folder: str) -> LocalFolder:
    """One of the hub's own folders (archive, quarantine), never a partner's."""
    return LocalFolder(home.root, folder)


@dataclass(frozen=True)
class Names:
    """Every name a run gives: deterministic from the flow, the recipient, the reference date and the input hash,
    so that a completed or re-run delivery lands under the same name, never under a second one."""

    flow: Flow
    input_sha: str

    @property
    def short(self) -> str:
        return self.input_sha[:12]

    def delivery(self, recipient: Recipient, reference_day: str, extension: str, sequence: int) -> str:
        """``<flux>_<destinataire>_<AAAAMMJJ>_<séquence>_<empreinte>``: the sequence numbers the recipient's files of
        the day in delivery order; the input's hash keeps a re-run of the same input under the same name."""
        return f"{self.flow.id}_{recipient.id}_{reference_day.replace('-', '')}_{sequence:03d}_{self.short}{extension}"

    @staticmethod
    def manifest(delivery_name: str) -> str:
        return delivery_name.rsplit(".", 1)[0] + ".manifest.json"

    def rejections(self) -> str:
        return f"{self.flow.id}_{self.short}_rejets.csv"

    def acknowledgement(self) -> str:
        return f"{self.flow.id}_{self.short}_accuse.json"

    def refusal_notice(self) -> str:
        return f"{self.flow.id}_{self.short}_fichier-rejete.txt"


@contextmanager
def text_store(transport: Transport, name: str, *, encoding: str = "utf-8", newline: str | None = None) -> Iterator[io.TextIOWrapper]:
    """A text handle on an atomic store (reports, notices, receipts)."""
    with transport.store(name, replace=True) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, newline=newline)
        yield text
        text.flush()
        text.detach()


def store_json(transport: Transport, name: str, document: dict[str, Any], *, replace: bool = True) -> None:
    with transport.store(name, replace=replace) as raw:
        raw.write(json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8"))


def copy_into(transport: Transport, name: str, source: Path, *, replace: bool = False) -> None:
    if not source.is_file():  # a missing source is its own error, not the target folder's
        raise StorageError(f"Fichier préparé introuvable dans {source.parent} (déjà publié ou reprise entre-temps)")
    transport.store_file(name, source, replace=replace)


class _Capture(io.RawIOBase):
    """A write-only stream that keeps what was written to it since the last ``take``."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


_FRAME = struct.Struct(">16sQII")  # sort key, arrival number, row length, note length


class _Run:
    """One sorted run inside the sort file, read back through its own small buffer (``os.pread``: one descriptor
    for all runs, however many)."""

    CHUNK = 16 * 1024

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.offset, self.end = fd, start, end
        self.buffer = b""

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            wanted = min(max(self.CHUNK, size - len(self.buffer)), self.end - self.offset)  # never into the next run
            chunk = os.pread(self.fd, wanted, self.offset) if wanted > 0 else b""
            if not chunk:
                raise OSError(errno.EIO, "fichier de tri tronqué")
            self.offset += len(chunk)
            self.buffer += chunk
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def __iter__(self) -> Iterator[tuple[bytes, int, bytes, bytes]]:
        while self.offset < self.end or self.buffer:
            key, number, row_length, note_length = _FRAME.unpack(self._take(_FRAME.size))
            yield key, number, self._take(row_length), self._take(note_length)


class ShuffledRows(RecordWriter):
    """One recipient's file with its rows in an order of its own: by ``row_sort_key(order_key, pseudonym)``.

    Why: rows in input order let two recipients line their files up and link their pseudonyms, and a gap in one of
    them points at the person withheld from it. The key depends on the flow, the recipient and the input only, so the
    order reveals nothing about other recipients and a re-run of the same input is byte-identical.

    The output format's writer renders each record as today, into a capture. Rows are kept in memory up to
    ``BUFFER_BYTES``, then sorted by (sort key, arrival number) and appended as one sorted run to a sort file in the
    run's private staging; ``close`` writes header, the runs merged in key order, and trailer to ``target``. Memory
    stays flat with the file size (one buffer, a small read buffer per run), nothing goes to ``/tmp``. (A SQLite
    table keyed by the sort key was measured 5 times slower: random inserts.) A format's writer must emit each
    record's bytes during its ``write`` call (the CSV writer and any line-per-record writer do); one that buffered
    across records is refused rather than shuffled wrongly.
    """

    #: Measured (benchmarks/bench_caf_flow.py, 20,000 households, two recipients): 4 MiB added 17 MB of peak RSS,
    #: Python objects weighing about twice their bytes; 2 MiB halves it. A 2-million-row delivery makes about
    #: 500 runs, 16 KiB of read buffer each at the merge.
    BUFFER_BYTES = 2 * 1024 * 1024

    def __init__(self, output: OutputFormat, target: BinaryIO, order_key: bytes, scratch: Path,
                 on_row: Callable[[int, str], None] | None = None) -> None:
        """``on_row(line, note)`` is called on close for each row written with a note, with the line the row ends
        up on (the decision's audit entry names it: the DPO finds the person's row in the delivered file)."""
        self.output, self.target, self.order_key, self.scratch, self.on_row = output, target, order_key, scratch, on_row
        self._capture = _Capture()
        self._inner = output.open(self._capture)  # type: ignore[arg-type]  # a raw binary stream
        self._head = self._capture.take()
        self._pending: list[tuple[bytes, int, bytes, bytes]] = []
        self._pending_bytes = 0
        self._count = 0
        self._runs: list[tuple[int, int]] = []
        scratch.unlink(missing_ok=True)  # a leftover of an interrupted attempt is never merged in
        self._file: BinaryIO | None = open(scratch, "w+b")  # noqa: SIM115 - closed by discard(), on close or failure

    def write(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> None:
        self.write_noted(record, pseudonym, allowed, None)

    def write_noted(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees],
                    note: str | None) -> None:
        self._inner.write(record, pseudonym, allowed)
        row = self._capture.take()
        if not row:
            raise ConfigurationError(f"Format de sortie {self.output.name!r} : son écriture ne rend pas chaque "
                                     "enregistrement à son appel ; l'ordre propre à chaque destinataire est impossible")
        encoded = note.encode("utf-8") if note is not None else b""
        self._pending.append((row_sort_key(self.order_key, pseudonym), self._count, row, encoded))
        self._count += 1
        self._pending_bytes += len(row) + len(encoded) + 200  # with the weight of the tuple and its objects
        if self._pending_bytes >= self.BUFFER_BYTES:
            self._spill()

    def _spill(self) -> None:
        if not self._pending or self._file is None:
            return
        self._pending.sort()
        start = self._file.seek(0, os.SEEK_END)
        self._file.write(b"".join(_FRAME.pack(k, n, len(r), len(m)) + r + m for k, n, r, m in self._pending))
        self._runs.append((start, self._file.tell()))
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        """Write the whole file to ``target`` (the stream itself stays open) and remove the sort file."""
        self._inner.close()
        tail = self._capture.take()
        assert self._file is not None
        self.target.write(self._head)
        line = self._head.count(b"\n")  # the header's lines (one for a CSV): rows are numbered after them
        if self._runs:
            self._spill()
            self._file.flush()
            rows = heapq.merge(*(_Run(self._file.fileno(), start, end) for start, end in self._runs))
        else:  # everything fit in the buffer: no need to read it back
            self._pending.sort()
            rows = iter(self._pending)
        for _key, _number, row, note in rows:
            self.target.write(row)
            line += 1
            if note and self.on_row is not None:
                self.on_row(line, note.decode("utf-8"))
        self.target.write(tail)
        self.discard()

    def discard(self) -> None:
        """Drop the sort file (people's rows in clear): on close, and when the run fails."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending.clear()
        self.scratch.unlink(missing_ok=True)


def shuffled_writer(output: OutputFormat, target: BinaryIO, secret: bytes, flow_id: str, recipient_id: str,
                    input_sha256: str, scratch: Path, on_row: Callable[[int, str], None] | None = None) -> ShuffledRows:
    """The writer of one recipient's delivery of one input, as the run uses it (also for the golden files)."""
    return ShuffledRows(output, target, row_order_key(secret, flow_id, recipient_id, input_sha256), scratch, on_row)


class StagedDeliveries:
    """The recipients' files of one run, written in its private staging folder while records stream."""

    def __init__(self, flow: Flow, recipients: list[Recipient], staging: Path, spool: AuditSpool,
                 summary: RunSummary, order_secret: bytes, input_sha256: str) -> None:
        self.flow, self.recipients, self.staging, self.spool, self.summary = flow, recipients, staging, spool, summary
        self.order_secret, self.input_sha256 = order_secret, input_sha256
        self.outputs: dict[str, OutputFormat] = {r.id: load_output(r.sortie) for r in recipients}
        self._stack = ExitStack()
        self.writers: dict[str, ShuffledRows] = {}
        self.handles: list[BinaryIO] = []
        self.rejections: list[tuple[str, int | None, str]] = []

    def staged(self, recipient: Recipient) -> Path:
        return staged_file(self.staging, recipient.id)

    def __enter__(self) -> StagedDeliveries:
        try:
            for recipient in self.recipients:
                handle: BinaryIO = self._stack.enter_context(open(self.staged(recipient), "wb"))
                self.handles.append(handle)
                writer = shuffled_writer(self.outputs[recipient.id], handle, self.order_secret, self.flow.id,
                                         recipient.id, self.input_sha256, self.staging / f"{recipient.id}.ordre.tri",
                                         self._decision_audit(recipient.id))
                self._stack.callback(writer.discard)
                self.writers[recipient.id] = writer
        except OSError as error:
            self._stack.close()
            raise StorageError.from_os(error, self.staging) from None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                for writer in self.writers.values():
                    writer.close()
                for handle in self.handles:  # durable before the audit says "delivered" (they are linked, not copied)
                    handle.flush()
                    os.fsync(handle.fileno())
        finally:
            self._stack.close()

    def reject(self, position: str, line: int | None, reason: str) -> None:
        self.summary.rejetes += 1
        self.rejections.append((position, line, reason))
        self.spool.add("rejet", {"position": position, "ligne": line, "motif": reason})

    def accept(self, recipient: Recipient, pseudonym: str, decision: RecordDecision, text: str, mapped: Mapped) -> None:
        counts = self.summary.destinataires[recipient.id]
        where = f',"position":"{mapped.position}"'
        if decision.livre:
            # Its audit entry waits for the row's line in the delivered file, known once the rows are ordered.
            self.writers[recipient.id].write_noted(mapped.record, pseudonym, decision.permises,
                                                   json.dumps([pseudonym, text[:-1] + where]))
            counts.livres += 1
        else:
            counts.retenus += 1
            self.spool.add("decision", text[:-1] + where + "}", recipient.id, pseudonym)

    def _decision_audit(self, recipient_id: str) -> Callable[[int, str], None]:
        def audit(line: int, note: str) -> None:
            pseudonym, text = json.loads(note)
            self.spool.add("decision", text + f',"ligne":{line}}}', recipient_id, pseudonym)
        return audit

    def manifests(self, names: Names, run_id: str, day: str, sequences: dict[str, int]) -> dict[str, dict[str, Any]]:
        """The unsigned manifest of each staged file and its data dictionary (staged beside it); their "livraison"
        events go to the spool."""
        out = {}
        for recipient in self.recipients:
            staged = self.staged(recipient)
            output = self.outputs[recipient.id]
            name = names.delivery(recipient, day, output.extension, sequences.get(recipient.id, 1))
            counts = self.summary.destinataires[recipient.id]
            dictionary = dictionary_csv(output.dictionary(), recipient.sortie)
            manifest = {
                **output.media(),  # first: a format's facts never override the manifest's own keys
                "fichier": name, "sha256": sha256_file(staged), "octets": staged.stat().st_size,
                "enregistrements": counts.livres, "version_schema": SCHEMA_VERSION, "flux": self.flow.id,
                "destinataire": recipient.id, "execution": run_id, "genere_le": now(),
                "format": recipient.sortie,
                # The data dictionary travels inside the signed manifest: never a file that could be missing, stale or
                # half-written in a drop; its name and hash change when the output spec does.
                "dictionnaire": {"nom": dictionary_name(recipient.sortie, dictionary).removesuffix(".csv"),
                                 "sha256": hashlib.sha256(dictionary).hexdigest(),
                                 "champs": [asdict(e) for e in output.dictionary()]},
            }
            # The recipient receives this entry with its receipt (inclusion proof): only what it already knows. Its
            # withheld count stays in the run's "execution-fin" entry, which no partner receives.
            self.spool.add("livraison", {"fichier": name, "sha256": manifest["sha256"], "enregistrements": counts.livres,
                                         "version_schema": SCHEMA_VERSION}, recipient.id)
            out[recipient.id] = manifest
        return out


def staged_manifest(staging: Path, recipient_id: str) -> Path:
    return staging / f"{recipient_id}.manifest.json"


def next_sequence(engine: Engine, flow: Flow, recipient: Recipient, day: str) -> int:
    """The sequence of the recipient's next file of ``day`` for this flow: one more than its files of that day."""
    prefix = f"{flow.id}_{recipient.id}_{day.replace('-', '')}_"
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(deliveries).where(
            deliveries.c.flow == flow.id, deliveries.c.recipient == recipient.id,
            deliveries.c.file_name.startswith(prefix, autoescape=True))).scalar_one()
    return int(count) + 1


def publish(engine: Engine, home: HubHome, flow: Flow, recipient: Recipient, staging: Path, run_id: str,
            input_sha: str) -> str:
    """Publish one recipient's staged delivery (idempotent: a completed step is a no-op); return its URI.

    Order: manifest, then file, each atomic and never over a different file; then the delivery row, unique per
    (flow, recipient, input) — the last guard against a second publication."""
    with engine.connect() as connection:
        done = connection.execute(select(deliveries.c.run_id, deliveries.c.file_name).where(
            deliveries.c.flow == flow.id, deliveries.c.recipient == recipient.id,
            deliveries.c.input_sha256 == input_sha)).first()
    transport = recipient_transport(recipient, home)
    if done is not None:
        # Already delivered (by this run before a crash, or by another): never again — the recipient may have
        # taken its files away since, as an SFTP get-then-delete does.
        return transport.location(done.file_name)
    manifest = json.loads(staged_manifest(staging, recipient.id).read_text(encoding="utf-8"))
    name = manifest["fichier"]
    try:
        store_json(transport, Names.manifest(name), manifest, replace=False)
    except FileExists:
        if not _same_delivery(transport, Names.manifest(name), manifest):
            raise
        # The hub's own manifest of the same bytes, from an attempt whose state was lost: brought up to date.
        store_json(transport, Names.manifest(name), manifest, replace=True)
    failpoint("entre-manifeste-et-fichier")
    try:
        copy_into(transport, name, staged_file(staging, recipient.id))
    except BaseException:
        # A manifest never stays alone in a drop that could not take its file (full, read-only meanwhile).
        with contextlib.suppress(HubError, OSError):
            if not transport.exists(name):
                transport.delete(Names.manifest(name))
        raise
    failpoint("avant-ligne-livraison")
    try:
        with engine.begin() as connection:
            connection.execute(insert(deliveries).values(
                flow=flow.id, recipient=recipient.id, input_sha256=input_sha, run_id=run_id, file_name=name,
                file_sha256=manifest["sha256"], records=manifest["enregistrements"], delivered_at=now()))
    except IntegrityError:
        with engine.connect() as connection:
            owner = connection.execute(select(deliveries.c.run_id).where(
                deliveries.c.flow == flow.id, deliveries.c.recipient == recipient.id,
                deliveries.c.input_sha256 == input_sha)).scalar()
        if owner != run_id:
            raise
    # Published and recorded: the staged copy (people's data in clear) is not kept for anything.
    staged_file(staging, recipient.id).unlink(missing_ok=True)
    return transport.location(name)


def _same_delivery(transport: Transport, manifest_name: str, manifest: dict[str, Any]) -> bool:
    """True when the file under ``manifest_name`` is a hub manifest describing the same delivery (same file name and
    SHA-256): only its run, time and signature differ."""
    try:
        with transport.open(manifest_name) as handle:
            existing = json.loads(handle.read(1 << 20))
    except (HubError, OSError, ValueError):
        return False
    return isinstance(existing, dict) and (existing.get("fichier"), existing.get("sha256")) == (
        manifest["fichier"], manifest["sha256"])


def write_rejections(transport: Transport, names: Names, rejections: list[tuple[str, int | None, str]]) -> str | None:
    if not rejections:
        return None
    with text_store(transport.child("rejets"), names.rejections(), encoding="utf-8-sig", newline="") as handle:
        write_report(handle, REJECTION_HEADER, rejections)
    return transport.child("rejets").location(names.rejections())


#: At most this many rejections are listed in an acknowledgement (all of them are in the rejection report).
ACK_REJECTIONS_LISTED = 1000
ACK_NOTE = ("Le nombre d'enregistrements livrés ou retenus pour chaque destinataire n'est pas communiqué : il révélerait "
            "les personnes qui se sont opposées ou n'ont pas consenti. Les enregistrements rejetés et leurs motifs "
            "figurent ci-dessous et dans le rapport de rejets.")


def acknowledgement(names: Names, flow: Flow, run_id: str, received_name: str, *, read: int,
                    rejections: list[tuple[str, int | None, str]], refusal: str | None = None,
                    element: str | None = None) -> dict[str, Any]:
    """The sender's processing receipt, to be signed: its own file (name and hash), accepted or refused, and what it
    already knows: records read and rejected with their line or element and a French reason. No count of delivered
    or withheld records, exact or banded: a sender that knows its file would difference them across recipients and
    across padded files to learn who objected. No per-recipient status either (docs/divulgation.md)."""
    status = "rejete" if refusal is not None else ("accepte-avec-rejets" if rejections else "accepte")
    document: dict[str, Any] = {
        "flux": flow.id, "fichier_recu": received_name, "fichier_sha256": names.input_sha, "execution": run_id,
        "traite_le": now(), "statut": status, "enregistrements_lus": read,
        "enregistrements_rejetes": read if refusal is not None else len(rejections),
        "destinataires": sorted(r.id for r in flow.destinataires)}
    if refusal is not None:
        document |= {"motif": refusal, "element": element,
                     "note": "Le fichier a été rejeté en entier : aucun enregistrement n'a été transmis."}
    else:
        document |= {"rejets": [{"position": p, "ligne": line, "motif": reason}
                                for p, line, reason in rejections[:ACK_REJECTIONS_LISTED]],
                     "rejets_tous_listes": len(rejections) <= ACK_REJECTIONS_LISTED, "note": ACK_NOTE}
    return document


def staged_acknowledgement(staging: Path) -> Path:
    return staging / "accuse.json"


def write_acknowledgement(transport: Transport, names: Names, document: dict[str, Any]) -> str:
    """Store the signed acknowledgement in the sender's ``accuses/`` folder (replacing the one of an earlier attempt
    at the same input)."""
    store_json(transport.child("accuses"), names.acknowledgement(), document)
    return transport.child("accuses").location(names.acknowledgement())


def write_refusal_notice(transport: Transport, names: Names, reason: str) -> str:
    folder = transport.child("rejets")
    with text_store(folder, names.refusal_notice()) as handle:
        handle.write("Votre fichier a été rejeté en entier et n'a pas été traité.\n"
                     f"Empreinte SHA-256 du fichier reçu : {names.input_sha}\nMotif : {reason}\n"
                     "Merci de corriger le fichier et de le déposer à nouveau.\n")
    return folder.location(names.refusal_notice())

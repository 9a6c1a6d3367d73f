"""Batches ("lots") of a run's per-record events: one segment file per run, its leaves under their own Merkle tree.

A run's per-record events (``decision`` per record and recipient, ``rejet`` per rejected record) are not rows of the
audit log: a national run makes millions of them. They go, in the order the run's spool held them, to one segment
``$SPIE_HUB_HOME/audit/lots/AAAA/MM/JJ/<run_id>.sqlite3`` (day of the commit, UTC), and the log gets ONE ``lot`` row
naming the segment, its number of leaves and the root of their RFC 9162 tree (design10.md). One person's decision
is then proven by: its leaf → inclusion path in the segment → the segment root in the ``lot`` row → that row's hash
→ the log's inclusion path → a signed tree head.

Leaf ``i`` of a segment is the UTF-8 of the canonical JSON array ``[run_id, event, flow, recipient, subject,
payload]`` (``payload`` is the canonical JSON text exactly as the spool held it), hashed with
``spie_hub.audit.merkle``.

Why an SQLite file per segment (and not a flat file with a sidecar index):
- one person is found without scanning: an index on ``subject`` (the pseudonym, never a NIR) inside each segment,
  and the day folders bound the segments a period opens; the caller computes the person's pseudonyms with the key
  ring, as subject access already does;
- written streaming (rows inserted by batches of ``BATCH``, the index built once at the end by SQLite's external
  sorter): Python memory stays flat in the number of leaves;
- leaf ``i`` is row ``idx = i`` (the rowid): reading one 4096-leaf chunk for an inclusion proof is a range read;
- the perfect subtrees of ``2^CHUNK_LEVEL`` leaves and above are stored at write time (table ``nodes``), so an
  inclusion proof in an 8 M-leaf segment reads one chunk of leaves and about 11 stored nodes;
- a standard, documented format any auditor can open with the ``sqlite3`` tool, without the hub.

Nothing in a segment is trusted by itself: its own ``meta`` (root, counts) only helps to say *where* a change is;
what proves is the root in the ``lot`` row of the hash-chained, signed log. A segment is written under a hidden
temporary name, fsync'd, made read-only (0400: the hub's home is private to its user, a group bit would be taken
away again by ``HubHome.ensure``) and renamed into place *before* its ``lot`` row is committed; a crash in between
leaves an orphan that the next recovery pass removes (``remove_orphans``) and says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from spie_hub.audit import merkle
from spie_hub.core.home import HubHome
from spie_hub.store import audit_log

#: Where the segments live, relative to the hub's home.
LOTS = "audit/lots"
SUFFIX = ".sqlite3"
FORMAT = "spie-lot-1"
#: Perfect subtrees of 2^12 = 4096 leaves and above are stored: a proof reads at most one chunk of leaves.
CHUNK_LEVEL = 12
CHUNK = 1 << CHUNK_LEVEL
#: Rows inserted per statement while writing (memory flat: this many rows at most are held).
BATCH = 5000
#: SQLite's default limit of host parameters is 999 on older builds: lookups by pseudonym go by this many.
_IN_CHUNK = 500
#: The log row that commits a segment, and the one retention writes when it deletes segments.
LOT_EVENT, PURGE_EVENT = "lot", "purge-lots"
#: Per-record events that go to a segment; every other event stays a row of the log.
RECORD_EVENTS = frozenset({"decision", "rejet"})

_LEAF = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REL = re.compile(r"^audit/lots/(\d{4})/(\d{2})/(\d{2})/([A-Za-z0-9][A-Za-z0-9._-]{0,99})\.sqlite3$")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE leaves (idx INTEGER PRIMARY KEY, run_id TEXT, event TEXT NOT NULL, flow TEXT, recipient TEXT,
                     subject TEXT, payload TEXT NOT NULL);
CREATE TABLE nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx))
    WITHOUT ROWID;
"""


def leaf_bytes(run_id: str | None, event: str, flow: str | None, recipient: str | None, subject: str | None,
               payload: str) -> bytes:
    """The leaf input of one per-record event (design10.md)."""
    return _LEAF.encode([run_id, event, flow, recipient, subject, payload]).encode("utf-8")


@dataclass(frozen=True)
class SegmentRef:
    """What the ``lot`` row says of a segment: the proof's anchor."""

    path_rel: str
    leaves: int
    root_hex: str
    counts: dict[str, int] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The ``lot`` row's payload."""
        return {"lot": self.path_rel, "feuilles": self.leaves, "racine": self.root_hex, "evenements": dict(self.counts)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | str) -> SegmentRef:
        data = json.loads(payload) if isinstance(payload, str) else payload
        return cls(str(data["lot"]), int(data["feuilles"]), str(data["racine"]),
                   {str(k): int(v) for k, v in dict(data.get("evenements") or {}).items()})


@dataclass(frozen=True)
class SegmentEvent:
    run_id: str | None
    event: str
    flow: str | None
    recipient: str | None
    subject: str | None
    payload: str
    #: When the segment was sealed (UTC, ISO 8601): the time of the run's commit, like the ``lot`` row's.
    ts: str
    index: int
    path_rel: str

    def leaf(self) -> bytes:
        return leaf_bytes(self.run_id, self.event, self.flow, self.recipient, self.subject, self.payload)


def lots_root(home: HubHome | Path) -> Path:
    return (home.root if isinstance(home, HubHome) else home) / LOTS


def resolve(home: HubHome | Path, path_rel: str) -> Path:
    """The file a ``lot`` row names; a name that is not a segment's (``..``, an absolute path) is refused, so that a
    rewritten log cannot make the hub read or delete anything else."""
    if not _REL.match(path_rel):
        raise ValueError(f"nom de lot invalide : {path_rel!r}")
    return (home.root if isinstance(home, HubHome) else home) / path_rel


def run_of(name: str) -> str:
    """The run a segment file (or its temporary) belongs to, from its name."""
    return name.lstrip(".").split(".", 1)[0]


def _rel_of(home: HubHome | Path, path: Path) -> str:
    return path.relative_to(home.root if isinstance(home, HubHome) else home).as_posix()


# -- writing -----------------------------------------------------------------------------------------------------------
class SegmentWriter:
    """Streams one run's per-record events into a new segment; ``seal`` makes it durable and read-only."""

    def __init__(self, home: HubHome | Path, run_id: str, flow: str | None, when: dt.datetime | None = None) -> None:
        if not _NAME.match(run_id):
            raise ValueError("identifiant d'exécution impropre à un nom de lot")
        self.home, self.run_id, self.flow = home, run_id, flow
        self.when = (when or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
        folder = lots_root(home) / self.when.strftime("%Y/%m/%d")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / f"{run_id}{SUFFIX}"
        n = 1
        while self.path.exists():  # a second commit of per-record events by one run never replaces the first
            n += 1
            self.path = folder / f"{run_id}.{n}{SUFFIX}"
        fd, name = tempfile.mkstemp(prefix=f".{run_id}.", suffix=".tmp", dir=folder)
        os.close(fd)
        self.temporary = Path(name)
        self.db = sqlite3.connect(self.temporary, isolation_level=None)
        # No journal, no sync while writing: the file is fsync'd once whole, and an interrupted write is a temporary
        # nobody reads (removed with the orphans).
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.executescript(_SCHEMA)
        self.db.execute("BEGIN")
        self.tree = merkle.TreeBuilder(on_node=self._node)
        self.rows: list[tuple[int, str | None, str, str | None, str | None, str | None, str]] = []
        self.nodes: list[tuple[int, int, bytes]] = []
        self.counts: dict[str, int] = {}

    def _node(self, level: int, index: int, digest: bytes) -> None:
        if level >= CHUNK_LEVEL:
            self.nodes.append((level, index, digest))

    def add(self, event: str, recipient: str | None, subject: str | None, payload: str,
            run_id: str | None = None, flow: str | None = None) -> None:
        run_id = self.run_id if run_id is None else run_id
        flow = self.flow if flow is None else flow
        index = self.tree.size
        self.tree.add(leaf_bytes(run_id, event, flow, recipient, subject, payload))
        self.rows.append((index, run_id, event, flow, recipient, subject, payload))
        self.counts[event] = self.counts.get(event, 0) + 1
        if len(self.rows) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT INTO leaves VALUES (?, ?, ?, ?, ?, ?, ?)", self.rows)
        self.db.executemany("INSERT INTO nodes VALUES (?, ?, ?)", self.nodes)
        self.rows, self.nodes = [], []

    @property
    def size(self) -> int:
        return self.tree.size

    def seal(self) -> SegmentRef:
        """Index, fsync, make read-only, rename into place; the ``SegmentRef`` the ``lot`` row will carry."""
        self._flush()
        root = self.tree.root()
        counts = {"decision": self.counts.get("decision", 0), "rejet": self.counts.get("rejet", 0)} | self.counts
        meta = {"format": FORMAT, "run_id": self.run_id, "flow": self.flow or "", "ts": self.when.isoformat(timespec="microseconds"),
                "feuilles": str(self.tree.size), "racine": root.hex(), "evenements": json.dumps(counts, sort_keys=True),
                "niveau_blocs": str(CHUNK_LEVEL)}
        self.db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        self.db.execute("CREATE INDEX ix_leaves_subject ON leaves (subject)")
        self.db.execute("COMMIT")
        self.db.close()
        fd = os.open(self.temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.fchmod(fd, 0o400)
        finally:
            os.close(fd)
        os.replace(self.temporary, self.path)
        _fsync_dir(self.path.parent)
        return SegmentRef(_rel_of(self.home, self.path), self.tree.size, root.hex(), counts)

    def discard(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        self.temporary.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_segment(home: HubHome | Path, run_id: str, flow: str | None,
                  events: Iterable[tuple[str, str | None, str | None, str]], when: dt.datetime | None = None) -> SegmentRef:
    """One segment from ``(event, recipient, subject, payload)`` tuples (tests, benchmarks)."""
    writer = SegmentWriter(home, run_id, flow, when)
    try:
        for event, recipient, subject, payload in events:
            writer.add(event, recipient, subject, payload)
        return writer.seal()
    except BaseException:
        writer.discard()
        raise


# -- reading -----------------------------------------------------------------------------------------------------------
def _open(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(path)
    return sqlite3.connect(_uri(path), uri=True)


def _uri(path: Path) -> str:
    """A read-only SQLite URI (the path quoted: a home under a name with '?', '#' or '%' stays that path)."""
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"


def _meta(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM meta").fetchall())


def segment_files(home: HubHome | Path, since: dt.date | None = None, until: dt.date | None = None) -> Iterator[Path]:
    """Segment files whose day folder lies in ``[since, until]``, by day (temporaries excluded)."""
    root = lots_root(home)
    if not root.is_dir():
        return
    for year in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        if (since and int(year.name) < since.year) or (until and int(year.name) > until.year):
            continue
        for month in sorted(p for p in year.iterdir() if p.is_dir() and p.name.isdigit()):
            for day in sorted(p for p in month.iterdir() if p.is_dir() and p.name.isdigit()):
                try:
                    date = dt.date(int(year.name), int(month.name), int(day.name))
                except ValueError:
                    continue
                if (since and date < since) or (until and date > until):
                    continue
                yield from sorted(p for p in day.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))


def _segments(home: HubHome | Path, since: dt.date | None, until: dt.date | None,
              runs: Iterable[str] | None) -> Iterator[tuple[Path, sqlite3.Connection, str]]:
    """Open segments of the period (and of ``runs`` only, when given), in commit order; (path, connection, ts)."""
    wanted = set(runs) if runs is not None else None
    by_day: dict[Path, list[tuple[str, Path, sqlite3.Connection]]] = {}
    for path in segment_files(home, since, until):
        if wanted is not None and run_of(path.name) not in wanted:
            continue
        by_day.setdefault(path.parent, [])
        try:
            db = _open(path)
            ts = _meta(db).get("ts", "")
        except (OSError, sqlite3.Error):
            continue  # a damaged segment is verify_segment's to report; readers see what is readable
        by_day[path.parent].append((ts, path, db))
    for day in sorted(by_day):
        for ts, path, db in sorted(by_day[day], key=lambda t: (t[0], t[1].name)):
            try:
                yield path, db, ts
            finally:
                db.close()


_COLUMNS = "idx, run_id, event, flow, recipient, subject, payload"


def _event(row: tuple[Any, ...], ts: str, rel: str) -> SegmentEvent:
    idx, run_id, event, flow, recipient, subject, payload = row
    return SegmentEvent(run_id, event, flow, recipient, subject, payload, ts, int(idx), rel)


def find(home: HubHome | Path, subjects: list[str], since: dt.date | None = None, until: dt.date | None = None, *,
         runs: Iterable[str] | None = None) -> Iterator[SegmentEvent]:
    """The per-record events under any of ``subjects`` (pseudonyms), segment by segment in commit order, leaves in
    order. Each segment is opened once and read through its index on ``subject``: never a scan of its leaves.
    ``runs`` restricts to those runs' segments (by file name, nothing opened for the others)."""
    unique = sorted(set(subjects))
    if not unique:
        return
    for path, db, ts in _segments(home, since, until, runs):
        rel = _rel_of(home, path)
        rows: list[tuple[Any, ...]] = []
        try:
            for start in range(0, len(unique), _IN_CHUNK):
                part = unique[start:start + _IN_CHUNK]
                rows += db.execute(f"SELECT {_COLUMNS} FROM leaves WHERE subject IN ({','.join('?' * len(part))})",
                                   part).fetchall()
        except sqlite3.Error:
            continue
        for row in sorted(rows, key=lambda r: r[0]):
            yield _event(row, ts, rel)


def iter_events(home: HubHome | Path, since: dt.date | None = None, until: dt.date | None = None, *,
                event: str | None = None, flow: str | None = None, recipient: str | None = None,
                runs: Iterable[str] | None = None) -> Iterator[SegmentEvent]:
    """Every per-record event of the period (streamed), optionally of one event kind, flow or recipient."""
    where, params = [], []
    for column, value in (("event", event), ("flow", flow), ("recipient", recipient)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    for path, db, ts in _segments(home, since, until, runs):
        rel = _rel_of(home, path)
        for row in db.execute(f"SELECT {_COLUMNS} FROM leaves{clause} ORDER BY idx", params):
            yield _event(row, ts, rel)


def distinct_subjects(home: HubHome | Path, since: dt.date | None, until: dt.date | None, *, event: str = "decision",
                      flow: str | None = None, recipient: str | None = None) -> dict[str, int]:
    """Recipient → number of distinct pseudonyms with an ``event`` in the period, counted on disk (a scratch SQLite
    table, never a Python set of millions of pseudonyms). The period is on the segment's time (its commit)."""
    conditions, params = ["event = ?", "recipient IS NOT NULL"], [event]
    if flow is not None:
        conditions.append("flow = ?")
        params.append(flow)
    if recipient is not None:
        conditions.append("recipient = ?")
        params.append(recipient)
    with tempfile.TemporaryDirectory(prefix="spie-personnes-") as scratch:
        # Opened as a URI itself, so that the segments are attached by read-only URIs whatever SQLite's build default.
        db = sqlite3.connect(f"file:{urllib.parse.quote(str(Path(scratch) / 'personnes.sqlite3'))}", uri=True,
                             isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("CREATE TABLE people (recipient TEXT, subject TEXT, PRIMARY KEY (recipient, subject)) WITHOUT ROWID")
            for path, segment, ts in _segments(home, since, until, None):
                segment.close()
                if since and ts[:10] < since.isoformat() or until and ts[:10] > until.isoformat():
                    continue
                db.execute("ATTACH DATABASE ? AS seg", (_uri(path),))
                try:
                    db.execute("INSERT OR IGNORE INTO people SELECT DISTINCT recipient, subject FROM seg.leaves "
                               f"WHERE {' AND '.join(conditions)}", params)
                finally:
                    db.execute("DETACH DATABASE seg")
            return {r: int(n) for r, n in db.execute("SELECT recipient, count(*) FROM people GROUP BY recipient")}
        finally:
            db.close()


def count_subject_prefix(home: HubHome | Path, prefix: str) -> int:
    """Leaves whose pseudonym starts with ``prefix`` (e.g. a key's ``kid.``), through each segment's index."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    total = 0
    for _path, db, _ts in _segments(home, None, None, None):
        try:
            total += int(db.execute("SELECT count(*) FROM leaves WHERE subject >= ? AND subject < ?",
                                    (prefix, upper)).fetchone()[0])
        except sqlite3.Error:
            continue
    return total


def segment_info(home: HubHome | Path, path: Path) -> dict[str, str]:
    """A segment's own ``meta`` (run, flow, ts, root, leaves): informative only, the ``lot`` row is what proves."""
    db = _open(path)
    try:
        return _meta(db)
    finally:
        db.close()


# -- proofs ------------------------------------------------------------------------------------------------------------
class _Nodes:
    """``NodeSource`` over a segment file: stored nodes from ``CHUNK_LEVEL`` up, leaves of one chunk below it."""

    def __init__(self, db: sqlite3.Connection, size: int) -> None:
        self.db, self.size = db, size
        self.chunks: dict[int, list[bytes]] = {}

    def chunk(self, number: int) -> list[bytes]:
        if number not in self.chunks:
            start = number * CHUNK
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                                   (start, min(start + CHUNK, self.size))).fetchall()
            hashes = [merkle.leaf_hash(leaf_bytes(*row[1:])) for row in rows]
            if [row[0] for row in rows] != list(range(start, start + len(rows))) or len(rows) != min(CHUNK, self.size - start):
                raise LookupError(f"feuilles manquantes dans le bloc {number}")
            self.chunks[number] = hashes
        return self.chunks[number]

    def __call__(self, level: int, index: int) -> bytes:
        if level >= CHUNK_LEVEL:
            row = self.db.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
            if row is None:
                raise LookupError(f"nœud ({level}, {index}) absent du lot")
            return bytes(row[0])
        start = index << level
        hashes = self.chunk(start >> CHUNK_LEVEL)
        offset = start - (start >> CHUNK_LEVEL) * CHUNK
        return merkle.root_from_leaf_hashes(hashes[offset:offset + (1 << level)])


def inclusion_proof(home: HubHome | Path, ref: SegmentRef, leaf_index: int) -> list[bytes]:
    """PATH(leaf_index, segment) of RFC 9162: verifies with ``merkle.verify_inclusion`` up to ``ref.root_hex``.
    Reads one chunk of leaves and the stored nodes above it, whatever the segment's size."""
    db = _open(resolve(home, ref.path_rel))
    try:
        return merkle.inclusion_path(_Nodes(db, ref.leaves), leaf_index, ref.leaves)
    finally:
        db.close()


def leaf_digest(event: SegmentEvent) -> bytes:
    return merkle.leaf_hash(event.leaf())


# -- verification ------------------------------------------------------------------------------------------------------
def verify_segment(home: HubHome | Path, ref: SegmentRef) -> str | None:
    """Recompute a segment's root from its leaves (streaming) and compare it with the ``lot`` row's; None when it
    matches, else what does not, in French (missing file, missing or changed leaf, truncation)."""
    try:
        path = resolve(home, ref.path_rel)
    except ValueError as error:
        return str(error)
    if not path.is_file():
        return f"lot {ref.path_rel} absent (fichier supprimé ou déplacé)"
    try:
        db = _open(path)
    except (OSError, sqlite3.Error) as error:
        return f"lot {ref.path_rel} illisible ({type(error).__name__})"
    try:
        return _verify(db, ref)
    except sqlite3.Error as error:
        return f"lot {ref.path_rel} illisible ou tronqué : {error}"
    finally:
        db.close()


def _verify(db: sqlite3.Connection, ref: SegmentRef) -> str | None:
    first_bad_chunk: list[int] = []

    def check(level: int, index: int, digest: bytes) -> None:
        # The segment's own chunk nodes say which chunk changed (they were written with the leaves).
        if level == CHUNK_LEVEL and not first_bad_chunk:
            row = db.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
            if row is not None and bytes(row[0]) != digest:
                first_bad_chunk.append(index)

    tree = merkle.TreeBuilder(on_node=check)
    counts: dict[str, int] = {}
    for row in db.execute(f"SELECT {_COLUMNS} FROM leaves ORDER BY idx"):
        if row[0] != tree.size:
            return f"lot {ref.path_rel} : feuille {tree.size} manquante (la suivante est la {row[0]})"
        tree.add(leaf_bytes(*row[1:]))
        counts[row[2]] = counts.get(row[2], 0) + 1
    if tree.size < ref.leaves:
        return f"lot {ref.path_rel} tronqué : {tree.size} feuille(s) au lieu de {ref.leaves}"
    if tree.size > ref.leaves:
        return f"lot {ref.path_rel} : {tree.size} feuille(s) au lieu de {ref.leaves} (feuilles ajoutées)"
    if tree.root().hex() != ref.root_hex:
        where = (f" (première différence dans les feuilles {first_bad_chunk[0] * CHUNK} à "
                 f"{min((first_bad_chunk[0] + 1) * CHUNK, tree.size) - 1})") if first_bad_chunk else ""
        return f"lot {ref.path_rel} : feuille modifiée, la racine recalculée ne correspond pas à celle du journal{where}"
    for name, n in ref.counts.items():
        if counts.get(name, 0) != n:
            return f"lot {ref.path_rel} : {counts.get(name, 0)} événement(s) « {name} » au lieu de {n}"
    return None


# -- what the log says of segments ----------------------------------------------------------------------------------
def committed_lots(engine: Engine, flow: str | None = None) -> dict[str, SegmentRef]:
    """Relative path → ``SegmentRef`` of every ``lot`` row still in the log (of ``flow`` when given)."""
    query = select(audit_log.c.payload).where(audit_log.c.event == LOT_EVENT)
    if flow is not None:
        query = query.where(audit_log.c.flow == flow)
    out: dict[str, SegmentRef] = {}
    with engine.connect() as connection:
        for payload in connection.execute(query).scalars():
            try:
                ref = SegmentRef.from_payload(payload)
            except (ValueError, KeyError, TypeError):
                continue  # not a lot row this version wrote: verify says so, not the readers
            out[ref.path_rel] = ref
    return out


def segment_purged(home: HubHome | Path, engine: Engine, path_rel: str) -> bool:
    """Whether a ``purge-lots`` entry of the log names this segment (deleted by retention, legitimately) and the file
    is indeed gone: a missing segment that no purge names is a deletion ``audit verify`` must report."""
    with engine.connect() as connection:
        payloads = connection.execute(select(audit_log.c.payload).where(audit_log.c.event == PURGE_EVENT)).scalars().all()
    for payload in payloads:
        try:
            lots = json.loads(payload).get("lots", [])
        except ValueError:
            continue
        if any(isinstance(lot, dict) and lot.get("lot") == path_rel for lot in lots):
            try:
                return not resolve(home, path_rel).exists()
            except ValueError:
                return False
    return False


# -- orphans -----------------------------------------------------------------------------------------------------------
def remove_orphans(home: HubHome | Path, committed: Callable[[str], bool], runs: set[str],
                   log_starts: str | None = None) -> list[str]:
    """Remove the segments of ``runs`` that no ``lot`` row names (``committed(path_rel)`` is False: a crash between
    the file and its row), and the temporaries an interrupted write left. Returns their relative paths.
    Only ``runs`` (dead runs of a flow whose lock the caller holds): a live run's segment waits for its row. Only a
    segment sealed after ``log_starts`` (the time of the log's oldest remaining row): an older one may have lost its
    ``lot`` row to the audit's own retention, and is retention's to purge, never an orphan."""
    removed: list[str] = []
    root = lots_root(home)
    if not root.is_dir() or not runs:
        return removed
    for day in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        for path in sorted(day.iterdir()):
            name = path.name
            if not (name.startswith(".") and name.endswith(".tmp")) and not name.endswith(SUFFIX):
                continue
            run_id = run_of(name)
            if run_id not in runs:
                continue
            rel = _rel_of(home, path)
            if name.endswith(SUFFIX):
                if committed(rel):
                    continue
                try:
                    sealed = segment_info(home, path).get("ts", "")
                except (OSError, sqlite3.Error):
                    continue  # damaged, not orphaned: verify_segment's to report
                if log_starts is None or not sealed or sealed <= log_starts:
                    continue
            path.unlink(missing_ok=True)
            removed.append(rel)
        _remove_empty_day(day, root)
    return removed


def _remove_empty_day(day: Path, root: Path) -> None:
    """A day folder (then its month, its year) that holds nothing more goes with its last segment."""
    folder = day
    while folder != root and folder.is_dir():
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def remove_segment(home: HubHome | Path, path_rel: str) -> bool:
    """Delete one segment (retention) and its day folder once empty."""
    path = resolve(home, path_rel)
    if not path.exists():
        return False
    path.unlink()
    _remove_empty_day(path.parent, lots_root(home))
    return True

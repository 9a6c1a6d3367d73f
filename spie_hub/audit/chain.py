"""Verify the audit log against its signed tree heads: one checker for the database and the offline bundle.

What each check catches, and where it says so (entry number or tree size):

* an edited entry: its SHA-256 no longer matches; recomputed with every later hash, the tree root at the next
  signed head no longer matches; re-signed with the hub's own key as well, the head a witness kept (a partner's
  receipt, the DPO's export, the hub's last verification) no longer matches: the witness check;
* a deleted, inserted or reordered entry: a gap or repeat in the numbering, a broken ``prev_hash`` link;
* a truncated log: a signed head attests more entries than remain; an entry after the last head: unsealed tail
  (every append is sealed in its own transaction, so this is never legitimate);
* a node of the stored tree that does not match the entries (the proofs the hub hands out would be false);
* a purged head: allowed only down to the anchor, whose stored subtrees must give the root of the signed head at
  the anchor's size;
* heads are checked with the *published* keys only (spie_hub/audit/trust.py), never with a key the database holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from spie_hub.audit import merkle
from spie_hub.audit.heads import Signer, TreeHead
from spie_hub.audit.log import AuditLog, entry_hash
from spie_hub.audit.tree import StoredNodes, entry_leaf, frontier_keys
from spie_hub.store import GENESIS_HASH, audit_anchor, audit_head, audit_heads, audit_keys, audit_log

#: A ``lot`` entry's payload, and whether a ``purge-lots`` entry names it → None, or what is wrong with its batch
#: (spie_hub/audit/segments.py). A purged batch may be absent; present, it must still verify.
LotCheck = Callable[[dict[str, Any], bool], str | None]


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None
    checkpoints: int = 0  # signed tree heads verified
    first_seq: int = 1
    size: int = 0
    root: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Anchor:
    """Where verification starts: entries up to ``seq`` are purged (or verified earlier); ``hash`` is the chain hash
    of entry ``seq``; ``frontier`` the perfect subtrees of the first ``seq`` leaves (largest first)."""

    seq: int = 0
    hash: str = GENESIS_HASH
    frontier: tuple[bytes, ...] = ()
    #: A retention purge's anchor (a ``purge-journal`` entry must announce it), not a verification's starting point.
    purged: bool = True

    def root(self) -> bytes:
        return merkle.TreeBuilder(self.seq, self.frontier).root()


@dataclass
class LogChecker:
    heads: Sequence[TreeHead]
    trusted: Mapping[str, str]
    anchor: Anchor = field(default_factory=Anchor)
    #: Heads held by others (receipts, an export, the last verification), their signatures already checked.
    witnesses: Sequence[tuple[str, TreeHead]] = ()
    nodes: Callable[[list[tuple[int, int]]], dict[tuple[int, int], bytes]] | None = None
    check_lot: LotCheck | None = None
    #: Checks a witness head older than the anchor against the kept subtrees of the purged prefix (None: say so).
    below_anchor: Callable[[TreeHead], str | None] | None = None
    #: No history may be purged younger than this: days between a ``lot`` entry and the ``purge-lots`` entry naming
    #: its batch, and between the signed head at the purge anchor and the ``purge-journal`` entry announcing it.
    min_lot_age_days: int = 0
    #: The verifier's present: no entry may be dated after it (plus a tolerance for clocks).
    now: Any = None
    _lots: list[tuple[int, Any, str]] = field(default_factory=list, init=False)
    _purged: dict[str, str] = field(default_factory=dict, init=False)
    _computed: list[tuple[int, int, bytes]] = field(default_factory=list, init=False)

    def run(self, entries: Iterable[Mapping[str, Any]], head_row: tuple[int, str] | None = None) -> VerifyResult:
        heads = sorted(self.heads, key=lambda h: h.size)
        for head in heads:
            if problem := head.verify(self.trusted):
                return VerifyResult(False, 0, head.size or None, problem)
        by_size: dict[int, TreeHead] = {}
        for head in heads:
            if head.size in by_size and by_size[head.size].root != head.root:
                return VerifyResult(False, 0, head.size, f"deux têtes signées de taille {head.size} aux racines différentes "
                                                         "(le hub a montré des journaux divergents)")
            by_size[head.size] = head
        roots: dict[int, bytes] = {}
        witnessed = {h.size for _, h in self.witnesses}
        anchor = self.anchor
        builder = merkle.TreeBuilder(anchor.seq, anchor.frontier, on_node=self._collect)
        announced = anchor.seq == 0 or not anchor.purged
        last_ts = ""
        if anchor.seq:
            root = builder.root()
            if anchor.seq in by_size and by_size[anchor.seq].root != root.hex():
                return self._fail(0, anchor.seq, "les sous-arbres conservés à l'ancre ne donnent plus la racine signée "
                                                 f"à la taille {anchor.seq} (journal réécrit avant l'ancre)")
            roots[anchor.seq] = root
        expected_seq, expected_prev, count = anchor.seq + 1, anchor.hash, 0
        last_hash = anchor.hash
        for row in entries:
            seq = row["seq"]
            if seq != expected_seq:
                if count == 0 and seq > expected_seq:
                    return self._fail(0, expected_seq, f"entrées n° {expected_seq} à {seq - 1} absentes sans ancre de "
                                                       "purge qui les couvre (début du journal supprimé)")
                if seq > expected_seq:
                    return self._fail(count, expected_seq, f"entrée n° {expected_seq} absente à sa place (supprimée ou déplacée)"
                                      if seq == expected_seq + 1 else f"entrées n° {expected_seq} à {seq - 1} absentes (supprimées)")
                return self._fail(count, seq, f"entrée n° {seq} dupliquée ou déplacée (ordre rompu)")
            if row["prev_hash"] != expected_prev:
                return self._fail(count, seq, "chaînage rompu (entrée supprimée, insérée ou déplacée)")
            if entry_hash(dict(row)) != row["hash"]:
                return self._fail(count, seq, "contenu modifié (empreinte SHA-256 différente)")
            # Never dated before the entry it follows (the database refuses it too), nor after the verifier's
            # present: a backdated or forward-dated entry would let a purge's age check pass on minutes-old history.
            try:
                when = _instant(row["ts"])
            except (TypeError, ValueError, OverflowError):
                return self._fail(count, seq, "horodatage illisible")
            if when < _instant(last_ts):
                return self._fail(count, seq, "entrée datée avant la précédente (horodatage antidaté)")
            if when > self._present():
                return self._fail(count, seq, "entrée datée dans le futur (horodatage avancé)")
            last_ts = row["ts"]
            if not announced and row["event"] == "purge-journal" and _announces(row["payload"], anchor):
                announced = True
                if problem := self._purge_age(by_size.get(anchor.seq), when):
                    return self._fail(count, seq, problem)
            builder.add(entry_leaf(row["hash"]))
            if seq in by_size and by_size[seq].root != builder.root().hex():
                return self._fail(count, seq, f"ne correspond plus à la tête signée de taille {seq} (journal réécrit)")
            if seq in by_size and by_size[seq].ts != row["ts"]:
                return self._fail(count, seq, f"tête signée de taille {seq} datée autrement que sa dernière entrée")
            if seq in witnessed:
                roots[seq] = builder.root()
            if row["event"] in ("lot", "purge-lots"):
                self._note_lot(seq, row["event"], row["payload"], row["ts"])
            if len(self._computed) >= 20_000 and (problem := self._compare_nodes()):
                return self._fail(count, seq, problem)
            expected_seq, expected_prev, last_hash, count = seq + 1, row["hash"], row["hash"], count + 1
        last = expected_seq - 1
        if not announced:
            return self._fail(count, anchor.seq, f"ancre de purge à l'entrée n° {anchor.seq} qu'aucune entrée "
                                                 "« purge-journal » n'annonce (début du journal supprimé ou ancre déplacée)")
        beyond = [h.size for h in heads if h.size > last]
        if beyond:
            return self._fail(count, last + 1, f"journal tronqué : une tête signée atteste {max(beyond)} entrée(s), "
                                               f"le journal s'arrête à l'entrée n° {last}")
        sealed = max((h.size for h in heads), default=0)
        if last > sealed:
            return self._fail(count, sealed + 1, f"entrées n° {sealed + 1} à {last} sans tête signée (fin du journal "
                                                 "non scellée : ajoutée hors du hub, ou têtes supprimées)")
        if problem := self._compare_nodes():
            return self._fail(count, last, problem)
        if problem := self._check_lots():
            return self._fail(count, *problem)
        if head_row is not None and head_row != (last, last_hash) and not (last == 0 and head_row[0] == 0):
            if head_row[0] > last:
                return self._fail(count, last + 1, f"entrées n° {last + 1} à {head_row[0]} absentes (fin du journal supprimée)")
            return self._fail(count, head_row[0], "tête de chaîne incohérente avec le journal")
        for origin, witness in self.witnesses:
            if witness.size > last:
                return self._fail(count, last + 1, f"{origin} atteste une tête de {witness.size} entrée(s) ; le journal "
                                                   f"n'en a plus que {last} (tronqué)")
            got = roots.get(witness.size)
            if got is None:  # before the anchor: against the subtrees kept for the purged prefix
                problem = self.below_anchor(witness) if self.below_anchor is not None else (
                    "ne peut être vérifiée sans les sous-arbres de la partie purgée")
                if problem:
                    return self._fail(count, witness.size, f"la tête de taille {witness.size} que {origin} a gardée "
                                                           f"(antérieure à la purge) : {problem}")
                continue
            if got.hex() != witness.root:
                return self._fail(count, witness.size, f"ne correspond plus à la tête de taille {witness.size} que "
                                                       f"{origin} a gardée (journal réécrit avant cette tête, puis "
                                                       "re-signé)")
        final = builder.root().hex() if last else None
        return VerifyResult(True, count, checkpoints=len([h for h in heads if h.size >= anchor.seq]),
                            first_seq=anchor.seq + 1, size=last, root=final)

    def _present(self) -> Any:
        import datetime as dt

        return (self.now or dt.datetime.now(dt.timezone.utc)) + dt.timedelta(hours=1)

    def _purge_age(self, head: TreeHead | None, announced_at: Any) -> str | None:
        """The purged history's age, from signed data that outlives the purge: the head at the anchor, against the
        entry announcing the purge."""
        import datetime as dt

        if head is None:
            return f"aucune tête signée à l'ancre de purge (taille {self.anchor.seq})"
        try:
            age = announced_at - _instant(head.ts)
        except (TypeError, ValueError, OverflowError):
            return "horodatage illisible de la tête à l'ancre de purge"
        if age < dt.timedelta(days=self.min_lot_age_days):
            return (f"journal purgé jusqu'à l'entrée n° {self.anchor.seq} alors qu'elle avait moins de "
                    f"{self.min_lot_age_days} jours (purge anticipée)")
        return None

    def _note_lot(self, seq: int, event: str, payload: str, ts: str) -> None:
        """Batches are checked once the walk is over: a ``purge-lots`` entry later in the log may say that a batch's
        file was removed under retention (then its absence is no tampering)."""
        import json

        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if event == "lot":
            self._lots.append((seq, data, ts))
        elif isinstance(data, dict):
            for lot in data.get("lots") or []:
                if isinstance(lot, dict):
                    self._purged.setdefault(str(lot.get("lot")), ts)

    def _check_lots(self) -> tuple[int, str] | None:
        import datetime as dt

        for seq, data, ts in self._lots:
            if not isinstance(data, dict):
                return seq, "entrée « lot » illisible"
            purged_at = self._purged.get(str(data.get("lot")))
            if purged_at is not None and _instant(purged_at) - _instant(ts) < dt.timedelta(days=self.min_lot_age_days):
                return seq, (f"lot {data.get('lot')} déclaré purgé avant sa durée de conservation minimale "
                             f"({self.min_lot_age_days} jours)")
            if self.check_lot is not None and (problem := self.check_lot(data, purged_at is not None)):
                return seq, problem
        return None

    def _collect(self, level: int, index: int, digest: bytes) -> None:
        self._computed.append((level, index, digest))

    def _compare_nodes(self) -> str | None:
        computed, self._computed = self._computed, []
        if self.nodes is None or not computed:
            return None
        stored = self.nodes([(lv, i) for lv, i, _ in computed])
        for level, index, digest in computed:
            if stored.get((level, index)) != digest:
                first = index << level
                return (f"arbre du journal stocké faux (nœud niveau {level} couvrant l'entrée n° {first + 1}) : les "
                        "preuves remises aux partenaires ne se vérifieraient pas")
        return None

    @staticmethod
    def _fail(count: int, seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, count, seq, reason)


def _instant(ts: str) -> Any:
    """An entry's time for comparison (any ISO 8601 form the log holds); the empty string is the beginning."""
    import datetime as dt

    if not ts:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    value = dt.datetime.fromisoformat(ts)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _announces(payload: str, anchor: Anchor) -> bool:
    import json

    try:
        data = json.loads(payload)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("jusqua") == anchor.seq and data.get("ancre") == anchor.hash


def nodes_below_anchor(nodes: merkle.NodeSource, anchor: Anchor) -> Callable[[TreeHead], str | None]:
    """A witness head older than the anchor is checked against the kept subtrees: their root at its size must be its
    root, and a consistency proof from them must lead to the anchor's root (which the entries after it continue)."""
    def check(witness: TreeHead) -> str | None:
        try:
            if merkle.root(nodes, witness.size).hex() != witness.root:
                return "les sous-arbres conservés ne donnent plus sa racine (journal réécrit avant elle)"
            proof = merkle.consistency_path(nodes, witness.size, anchor.seq)
        except LookupError:
            return "sous-arbres de la partie purgée absents"
        if not merkle.verify_consistency(witness.size, anchor.seq, bytes.fromhex(witness.root), anchor.root(), proof):
            return "la partie purgée ne la prolonge plus (journal réécrit avant elle)"
        return None
    return check


# -- the store ----------------------------------------------------------------------------------------------------

def store_heads(engine: Engine) -> list[TreeHead]:
    with engine.connect() as connection:
        return [TreeHead.from_row(r) for r in connection.execute(select(audit_heads).order_by(audit_heads.c.size))]


def store_keys(engine: Engine) -> dict[str, str]:
    """The public keys the store records (for the DPO's information; never a trust anchor)."""
    with engine.connect() as connection:
        return {r.kid: r.public_b64 for r in connection.execute(select(audit_keys))}


def store_anchor(engine: Engine) -> Anchor:
    with engine.connect() as connection:
        row = connection.execute(select(audit_anchor.c.seq, audit_anchor.c.hash)).one()
        if not row.seq:
            return Anchor()
        nodes = StoredNodes(connection)
        keys = frontier_keys(row.seq)
        nodes.prefetch(keys)
        return Anchor(row.seq, row.hash or "", tuple(nodes(lv, i) for lv, i in keys))


class _CachedNodes:
    """A ``merkle.NodeSource`` over the store (one read per node, cached)."""

    def __init__(self, read: Callable[[list[tuple[int, int]]], dict[tuple[int, int], bytes]]) -> None:
        self.read, self.cache = read, {}  # type: ignore[var-annotated]

    def __call__(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self.cache:
            self.cache.update(self.read([key]))
        if key not in self.cache:
            raise LookupError(key)
        return self.cache[key]


#: The youngest history a purge may remove, as the VERIFIER holds it (never read from the store or the export it
#: verifies, which whoever purges controls): ``SPIE_HUB_AUDIT_MIN_AGE_DAYS``, 365 by default.
ENV_MIN_AGE = "SPIE_HUB_AUDIT_MIN_AGE_DAYS"


def verifier_min_age() -> int:
    import os

    value = os.environ.get(ENV_MIN_AGE, "")
    return int(value) if value.isdigit() else 365


def _stored_nodes(engine: Engine) -> Callable[[list[tuple[int, int]]], dict[tuple[int, int], bytes]]:
    def read(keys: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        with engine.connect() as connection:
            nodes = StoredNodes(connection)
            nodes.prefetch(keys)
            return nodes.cache
    return read


def default_trust(home: Any = None, signer: Signer | None = None, engine: Engine | None = None) -> tuple[dict[str, str], list[str]]:
    """The keys verification believes, and notes to print: the published keys and configured fingerprints
    (spie_hub/audit/trust.py; a key the store records is admitted only if they admit it); with neither, the hub's
    own current key, said as such. Never a key merely because the database holds it."""
    from spie_hub.audit import trust
    from spie_hub.core.errors import ConfigurationError
    from spie_hub.core.home import HubHome

    home = home or HubHome.from_env()
    if signer is None:
        try:
            from spie_hub.audit.signing import load_signing_key

            signer = load_signing_key(home)  # its public half only: no need of the pseudonymisation key to verify
        except ConfigurationError:
            signer = None  # verifying needs no private key when published keys are configured
    anchor = trust.anchor_for_store(home, signer)
    keys = anchor.admitted(store_keys(engine)) if engine is not None else dict(anchor.keys)
    return keys, [anchor.note] if anchor.note else []


def verify_store(engine: Engine, trusted: Mapping[str, str], batch: int = 10_000, check_lot: LotCheck | None = None,
                 since: Anchor | None = None, witnesses: Sequence[tuple[str, TreeHead]] = ()) -> VerifyResult:
    """Walk the log from the purge anchor (or from ``since``, a head verified earlier) against the signed heads.

    Other processes may append meanwhile: the heads are read first, the walk stops at the last of them (an append
    commits its entries, nodes and head together, so everything up to it is there), and the end of the log is then
    checked in one statement (one snapshot): no entry beyond the last head, the head row on the last entry."""
    purge = store_anchor(engine)
    anchor = since if since is not None and since.seq > purge.seq else purge
    heads = [h for h in store_heads(engine) if h.size >= anchor.seq]
    sealed = max((h.size for h in heads), default=anchor.seq)
    read = _stored_nodes(engine)
    checker = LogChecker(heads, trusted, anchor, witnesses, read, check_lot, nodes_below_anchor(_CachedNodes(read), purge),
                         verifier_min_age())
    with engine.connect() as connection:
        left = connection.execute(select(audit_log.c.seq).where(audit_log.c.seq <= purge.seq).limit(1)).scalar()
        if left is not None:
            return VerifyResult(False, 0, left, f"entrée n° {left} encore présente sous l'ancre de purge (n° "
                                                f"{purge.seq}) : ancre déplacée, ces entrées ne seraient plus vérifiées")
        if not heads and connection.execute(select(audit_log.c.seq).limit(1)).scalar() is not None:
            return VerifyResult(False, 0, None, "journal d'une version antérieure du hub, pas encore scellé : "
                                                "`spie-hub audit sceller` le vérifie contre ses points de contrôle "
                                                "signés, puis le scelle")
        result = connection.execution_options(stream_results=True, yield_per=batch).execute(
            select(audit_log).where(audit_log.c.seq > anchor.seq, audit_log.c.seq <= sealed).order_by(audit_log.c.seq))
        verdict = checker.run(result.mappings())  # type: ignore[arg-type]
    if not verdict.ok:
        return verdict
    with engine.connect() as connection:
        last, signed, head_seq, head_hash = connection.execute(select(
            select(func.max(audit_log.c.seq)).scalar_subquery(), select(func.max(audit_heads.c.size)).scalar_subquery(),
            select(audit_head.c.seq).scalar_subquery(), select(audit_head.c.hash).scalar_subquery())).one()
        last, signed = last or 0, signed or 0
        if last > signed:
            return VerifyResult(False, verdict.entries, signed + 1, f"entrées n° {signed + 1} à {last} sans tête signée "
                                "(fin du journal non scellée : ajoutée hors du hub, ou têtes supprimées)")
        if signed > last:
            return VerifyResult(False, verdict.entries, last + 1, f"journal tronqué : une tête signée atteste {signed} "
                                f"entrée(s), le journal s'arrête à l'entrée n° {last}")
        if head_seq != last:
            return VerifyResult(False, verdict.entries, min(head_seq, last) + 1, "tête de chaîne incohérente avec le "
                                f"journal (n° {head_seq}, dernière entrée n° {last} : fin du journal supprimée ?)")
        if head_seq == verdict.size and verdict.size and head_hash != connection.execute(
                select(audit_log.c.hash).where(audit_log.c.seq == head_seq)).scalar():
            return VerifyResult(False, verdict.entries, head_seq, "tête de chaîne incohérente avec le journal")
    return verdict


def lot_check(home: Any) -> LotCheck:
    """The check of a ``lot`` entry: its batch's file recomputes to the root the entry holds (spie_hub/audit/segments.py).
    ``home``: the hub's home, or an export folder holding ``audit/lots``."""
    from spie_hub.audit import segments

    def check(payload: dict[str, Any], purged: bool) -> str | None:
        try:
            ref = segments.SegmentRef.from_payload(payload)
        except (KeyError, TypeError, ValueError):
            return "entrée « lot » incomplète"
        if purged:
            try:
                if not segments.resolve(home, ref.path_rel).exists():
                    return None  # removed under retention, as a later entry says
            except ValueError as error:
                return str(error)
        return segments.verify_segment(home, ref)  # present, even if said purged: it must still be what it was
    return check


STATE_FILE = "derniere-verification.json"


def verify(engine: Engine, batch: int = 10_000, *, home: Any = None, trusted: Mapping[str, str] | None = None,
           incremental: bool = False) -> VerifyResult:
    """Verify the store's log with the published keys. ``incremental``: from the last head this hub verified
    (``$SPIE_HUB_HOME/audit/derniere-verification.json``), whose root must still be what the stored tree gives at
    its size: what the end of a DAG run does instead of re-reading the whole log."""
    import json

    from spie_hub.core.home import HubHome

    home = home or HubHome.from_env()
    notes: list[str] = []
    if trusted is None:
        trusted, notes = default_trust(home, engine=engine)
    state = Path(home.root) / "audit" / STATE_FILE
    since: Anchor | None = None
    witnesses: list[tuple[str, TreeHead]] = []
    if state.is_file():
        try:
            kept = json.loads(state.read_text(encoding="utf-8"))
            head = TreeHead.from_json(kept["tete"])
            if head.verify(trusted) is None:
                witnesses.append(("la dernière vérification du hub", head))
                if incremental and head.size:
                    with engine.connect() as connection:
                        nodes = StoredNodes(connection)
                        keys = frontier_keys(head.size)
                        nodes.prefetch(keys)
                        frontier = tuple(nodes(lv, i) for lv, i in keys)
                    since = Anchor(head.size, str(kept["empreinte"]), frontier, purged=False)
                    if since.root().hex() != head.root:
                        return VerifyResult(False, 0, head.size, "l'arbre stocké ne donne plus la racine de la tête "
                                                                 "vérifiée la dernière fois (journal réécrit avant elle)")
        except (OSError, ValueError, KeyError, TypeError):
            notes.append("état de la dernière vérification illisible : vérification complète")
            since = None
    result = verify_store(engine, trusted, batch, lot_check(home), since, witnesses if since is None else ())
    if result.ok:
        from spie_hub.audit.heads import check_stamps

        if problem := check_stamps(engine, home, since.seq if since else 0):
            result = VerifyResult(False, result.entries, None, problem)
    if result.ok:
        _remember(engine, state, result.size)
    return VerifyResult(**{**result.__dict__, "notes": tuple(notes) + result.notes})


def _remember(engine: Engine, state: Path, size: int) -> None:
    """Keep the head this verification reached (never a later one an append committed meanwhile: unchecked)."""
    import json
    import os
    import tempfile

    from spie_hub.audit.heads import head_at

    with engine.connect() as connection:
        head = head_at(connection, size)
        digest = connection.execute(select(audit_log.c.hash).where(audit_log.c.seq == size)).scalar()
    if head is None or digest is None:
        return
    state.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".verification-", suffix=".tmp", dir=state.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"tete": head.as_json(), "empreinte": digest}, handle)
    os.replace(temporary, state)  # two verifications at once: each renames its own file, the last one stays


def ensure_signer(engine: Engine, signer: Signer) -> None:
    """Refuse a signing key whose secret changed behind an identifier the audit already knows (checked before a run
    touches its input, and again at every append)."""
    from spie_hub.audit.heads import record_signer

    with engine.connect() as connection:
        record_signer(connection, signer)
        connection.rollback()  # a check, not a write: the key is recorded with the first head it signs


def seal(engine: Engine, signer: Signer) -> TreeHead | None:
    """The latest signed head, after making sure the log's current size has one (every append signs its own; a
    store from before the tree gets its tree and head here, once checked against its signed checkpoints)."""
    return AuditLog(engine, signer).seal()

"""Per-run staging of audit events: kept on disk until the run commits them (a quarantined file leaves no trace).

At commit, the per-record events (``decision``, ``rejet``) become the run's segment (spie_hub/audit/segments.py),
committed to the log by ONE ``lot`` row; every other event is a row of the log. The segment file is durable and in
place before that transaction: a crash in between leaves an orphan segment, which recovery removes and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from spie_hub.audit import segments
from spie_hub.audit.log import AuditLog, canonical
from spie_hub.core.failpoints import failpoint
from spie_hub.core.home import HubHome


class AuditSpool:
    """Events staged on disk until their run commits them to the chain in one go.

    A file quarantined half-way then leaves no "livre" decision behind, and memory stays flat whatever the number of
    records. Lines are tab-separated; canonical JSON never holds a raw tab or newline.
    """

    def __init__(self, path: Path, run_id: str, flow: str, home: HubHome | None = None) -> None:
        """``home``: where the run's batch of per-record events is kept once committed (``audit/lots``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.run_id, self.flow, self.home = path, run_id, flow, home
        self.handle: IO[str] = open(path, "w+", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def add(self, event: str, payload: dict[str, Any] | str, recipient: str | None = None, subject: str | None = None) -> None:
        text = payload if isinstance(payload, str) else canonical(payload)
        self.handle.write(f"{event}\t{recipient or ''}\t{subject or ''}\t{text}\n")

    def commit(self, log: AuditLog) -> None:
        """Write the per-record events to the run's segment, then append its ``lot`` row and every other event to
        the log in one transaction, then empty the spool. No segment, no ``lot`` row, when there is none."""
        self.handle.seek(0)
        rows: list[tuple[str | None, str, str | None, str | None, str | None, str]] = []
        writer: segments.SegmentWriter | None = None
        lot_at = 0
        try:
            for line in self.handle:
                event, recipient, subject, payload = line.rstrip("\n").split("\t", 3)
                if event in segments.RECORD_EVENTS:
                    if writer is None:
                        if self.home is None:
                            raise ValueError("spool sans dossier du hub : impossible d'écrire le lot de la décision")
                        writer = segments.SegmentWriter(self.home, self.run_id, self.flow)
                        lot_at = len(rows)  # the lot row takes the place of its first per-record event
                    writer.add(event, recipient or None, subject or None, payload)
                else:
                    rows.append((self.run_id, event, self.flow, recipient or None, subject or None, payload))
            if writer is not None:
                ref = writer.seal()
                writer = None
                rows.insert(lot_at, (self.run_id, segments.LOT_EVENT, self.flow, None, None, canonical(ref.payload())))
                # Durable and read-only in its place, its row not yet committed: killed here, it is an orphan that the
                # next recovery pass removes (and says so).
                failpoint("journal-lot")
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        log.append_rows(rows)
        self.reset()

    def reset(self) -> None:
        """Forget every staged event (the run's records were not delivered)."""
        self.handle.seek(0)
        self.handle.truncate()

    def close(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


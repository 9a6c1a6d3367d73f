"""Per-run staging of audit events: kept on disk until the run commits them (a quarantined file leaves no trace)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

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

    def commit(self, log: AuditLog, batch: int = 5000) -> None:
        """Append every staged event to the chain, then empty the spool."""
        self.handle.seek(0)
        chunk: list[tuple[str | None, str, str | None, str | None, str | None, str]] = []
        for line in self.handle:
            event, recipient, subject, payload = line.rstrip("\n").split("\t", 3)
            chunk.append((self.run_id, event, self.flow, recipient or None, subject or None, payload))
            if len(chunk) >= batch:
                log.append_rows(chunk)
                failpoint("journal-lot")
                chunk = []
        log.append_rows(chunk)
        self.reset()

    def reset(self) -> None:
        """Forget every staged event (the run's records were not delivered)."""
        self.handle.seek(0)
        self.handle.truncate()

    def close(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


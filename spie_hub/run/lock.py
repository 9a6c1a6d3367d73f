"""One run at a time per flow, whatever runs it (two schedulers, two workers, the CLI beside the DAG).

The lock lives with the store and dies with its holder, so a crash never leaves it taken:
- PostgreSQL: a session advisory lock on a connection held for the whole run (released by the server when the
  connection ends, process killed included);
- SQLite (one machine by construction): an ``flock`` on a file beside the database, released by the kernel.
Before publishing, the run checks it still holds the lock (a PostgreSQL restart drops it): if not, it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, text

from spie_hub.core.errors import RetriableError, StorageError
from spie_hub.core.home import HubHome

#: How long a run waits for another run of the same flow before giving up (retried later by the orchestrator).
DEFAULT_WAIT_SECONDS = float(os.environ.get("SPIE_HUB_LOCK_WAIT", "600"))


class FlowBusy(RetriableError):
    """Another run of the flow holds the lock."""


class FlowLock:
    def __init__(self, engine: Engine, home: HubHome, flow_id: str, *, wait: float | None = None) -> None:
        self.engine, self.home, self.flow_id = engine, home, flow_id
        self.wait = DEFAULT_WAIT_SECONDS if wait is None else wait
        self._connection: Any = None
        self._fd: int | None = None
        digest = hashlib.sha256(f"spie-hub:flux:{flow_id}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)

    def _try(self) -> bool:
        if self.engine.dialect.name == "postgresql":
            if self._connection is None:
                self._connection = self.engine.connect()
            got = bool(self._connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar())
            self._connection.commit()
            return got
        if self._fd is None:
            folder = self.home.root / "verrous"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(folder / f"{self.flow_id}.verrou", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError as error:
                raise StorageError.from_os(error, folder) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        delay = 0.05
        while not self._try():
            if time.monotonic() >= deadline:
                self.release()
                raise FlowBusy(f"Une autre exécution du flux {self.flow_id} est en cours ; nouvel essai plus tard.")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def still_held(self) -> bool:
        """False when the lock was lost (the PostgreSQL connection holding it is gone)."""
        if self.engine.dialect.name != "postgresql":
            return self._fd is not None
        try:
            # A session keeps its advisory lock as long as it lives: a live connection is a held lock.
            return bool(self._connection.execute(text("SELECT 1")).scalar())
        except Exception:  # noqa: BLE001 - any failure of the connection means the lock is gone
            return False

    def ensure_held(self, *, publishing: bool = False) -> None:
        if not self.still_held():
            if publishing:
                raise RetriableError(f"Verrou du flux {self.flow_id} perdu (base redémarrée ?) pendant la publication : "
                                     "elle est interrompue et sera terminée au prochain démarrage, à l'identique.")
            raise RetriableError(f"Verrou du flux {self.flow_id} perdu (base redémarrée ?) : rien n'est publié, "
                                 "l'exécution reprendra au prochain démarrage.")

    def release(self) -> None:
        if self._connection is not None:
            # The server releases the lock with the connection anyway: failures here change nothing.
            with contextlib.suppress(Exception):
                self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._connection.commit()
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FlowLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

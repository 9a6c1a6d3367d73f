"""What orders a withdrawal against the runs that may still deliver data it takes away.

Two guarantees, whatever the interleaving of a consent import, a run and a withdrawal propagation:

1. **A run knows which withdrawals its decisions may not have seen.** Before it decides, a run takes the *mark*:
   the highest withdrawal id once every import recording a withdrawal has committed (PostgreSQL: ``LOCK TABLE
   revocations IN SHARE MODE`` waits for them and holds new ones back for the instant of the read; SQLite has one
   writer at a time, so ids are committed in order). Every withdrawal above the mark was recorded after the run
   started reading consents: its decisions are stale for it. A time stamp cannot do this: a withdrawal's time is
   taken when the import inserts it, and its batch may commit seconds later, after a run started deciding.
2. **A propagation never runs between a run's last staleness check and its delivery row.** The run holds the
   *publication gate* shared from the check of one recipient until that recipient's delivery is recorded; the
   propagation holds it exclusively while it reads what is pending and who received what. So either the
   withdrawal is committed before the check (the run decides again, nothing stale goes out) or the propagation
   sees the delivery row (a deletion notice goes out).

The gate lives with the store and dies with its holder, like the flow lock: a PostgreSQL session advisory lock
(shared or exclusive), or an ``flock`` beside the SQLite database (one machine by construction).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError

from spie_hub.core.errors import RetriableError, StorageError
from spie_hub.core.home import HubHome
from spie_hub.store import revocations

#: "SPIEHUB" + 2: the publication gate (the store's creation is + 1).
_GATE_KEY = 0x5350_4945_4855_4202
#: How long a run or a propagation waits for the gate before giving up (to be retried later).
DEFAULT_GATE_WAIT_SECONDS = float(os.environ.get("SPIE_HUB_LOCK_WAIT", "600"))


class GateBusy(RetriableError):
    """The publication gate stayed taken longer than the wait allowed."""


def withdrawal_mark(engine: Engine) -> int:
    """The highest withdrawal id recorded, every import that was recording one being committed (0 when none)."""
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                # SHARE conflicts with the ROW EXCLUSIVE lock an INSERT holds until its commit: this waits for
                # imports in flight, and one that starts later draws its id from the sequence after this read.
                # Bounded: an import transaction left open must not hold a run (and its flow lock) for ever.
                connection.execute(text(f"SET LOCAL lock_timeout = {int(DEFAULT_GATE_WAIT_SECONDS * 1000)}"))
                connection.execute(text("LOCK TABLE revocations IN SHARE MODE"))
            return int(connection.execute(select(func.coalesce(func.max(revocations.c.id), 0))).scalar() or 0)
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise GateBusy("Un import de consentements tient la table des retraits depuis trop longtemps : l'exécution "
                       "n'a rien décidé et reprendra au prochain passage.") from None


class PublicationGate:
    """Shared by a publishing run (one recipient at a time), exclusive for a withdrawal propagation's planning."""

    def __init__(self, engine: Engine, home: HubHome, *, wait: float | None = None) -> None:
        self.engine, self.home = engine, home
        self.wait = DEFAULT_GATE_WAIT_SECONDS if wait is None else wait

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._held(exclusive=False):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._held(exclusive=True):
            yield

    @contextlib.contextmanager
    def _held(self, *, exclusive: bool) -> Iterator[None]:
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as connection:
                suffix = "" if exclusive else "_shared"
                self._poll(lambda: bool(connection.execute(
                    text(f"SELECT pg_try_advisory_lock{suffix}(:k)"), {"k": _GATE_KEY}).scalar()), exclusive)
                connection.commit()
                try:
                    yield
                finally:
                    try:
                        connection.execute(text(f"SELECT pg_advisory_unlock{suffix}(:k)"), {"k": _GATE_KEY})
                        connection.commit()
                    except Exception:  # noqa: BLE001 - never back to the pool holding it: the session is closed
                        connection.invalidate()
            return
        folder = self.home.root / "verrous"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / "publication.retraits.verrou", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise StorageError.from_os(error, folder) from None
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            self._poll(lambda: _try_flock(fd, mode), exclusive)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _poll(self, attempt: Any, exclusive: bool) -> None:
        deadline = time.monotonic() + self.wait
        delay = 0.02
        while not attempt():
            if time.monotonic() >= deadline:
                if exclusive:
                    raise GateBusy("Une livraison est en cours de publication : les retraits restent en attente et "
                                   "seront propagés au prochain passage.")
                raise GateBusy("Une propagation des retraits est en cours depuis trop longtemps : la livraison reste "
                               "préparée et sera terminée au prochain passage.")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False

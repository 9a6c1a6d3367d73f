"""SIGTERM turned into ``Interrupted``, remembered so that it cannot be lost.

Python runs a signal handler between bytecodes of the main thread: when that happens inside a finaliser (``__del__``,
a weakref callback, the garbage collector), the exception the handler raises is printed as "ignored" and dropped,
and the run would go on to publish as if no one had asked it to stop. The handler therefore also records the
request, and the run checks it at its point of no return (``raise_if_interrupted`` before publication).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """SIGTERM (what Airflow, systemd and Docker send), handled like SIGINT."""


_requested = threading.Event()


def raise_if_interrupted() -> None:
    """Raise ``Interrupted`` if a SIGTERM arrived while a run held its input, even one whose exception was dropped."""
    if _requested.is_set():
        raise Interrupted("SIGTERM")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``Interrupted`` while a run holds its input, so that it rolls back instead of dying."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _requested.clear()

    def handler(signum: int, frame: FrameType | None) -> None:
        _requested.set()
        raise Interrupted("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _requested.clear()

"""Named instants where a crash can be injected, for the crash harness (tests/test_crash.py).

``SPIE_HUB_FAILPOINT=<name>[:<n>]`` makes the process send itself ``SPIE_HUB_FAILPOINT_SIGNAL`` (KILL by default;
TERM, INT) the n-th time (first by default) it reaches ``failpoint(name)``. Unset — always in production — a
failpoint costs one comparison. The variable is read when the process starts. The pattern is FoundationDB's and TiKV's "fail points".
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}
#: Read once: a failpoint sits on the per-record path, where reading os.environ each time cost 10 µs a record.
_WANTED = os.environ.get("SPIE_HUB_FAILPOINT", "")


def failpoint(name: str) -> None:
    wanted = _WANTED
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        sig = getattr(signal, "SIG" + os.environ.get("SPIE_HUB_FAILPOINT_SIGNAL", "KILL").upper())
        os.kill(os.getpid(), sig)

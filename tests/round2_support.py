"""Helpers of the second round of attacks (tests/test_attack_round2.py).

Run as a script, ``python tests/round2_support.py propager <point>`` is ``spie-hub consent propager`` in a fresh
process that SIGKILLs itself at ``<point>`` of the withdrawal propagation (consent/revocation.py). The hub's own code
runs unchanged; the test only wraps, in this process, the functions the propagation calls by name:

- ``plan-ecrit``: the plan written (``journalise`` false), before its audit entries;
- ``journal-ecrit``: the audit entries appended, before the plan says so;
- ``plan-journalise``: the plan rewritten with ``journalise`` true, before any notice;
- ``premier-avis``: the first notice file placed in its drop, before the next one;
- ``avis-deposes``: every notice placed, before the withdrawals are marked propagated;
- ``retraits-marques``: the withdrawals marked, before the plan file is removed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

POINTS = ("plan-ecrit", "journal-ecrit", "plan-journalise", "premier-avis", "avis-deposes", "retraits-marques")


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    import contextlib
    import pathlib

    from consent import revocation

    if point in ("plan-ecrit", "plan-journalise"):
        original_write = revocation._write_plan

        def write_plan(path: Path, plan: dict[str, Any]) -> None:
            original_write(path, plan)
            if bool(plan["journalise"]) == (point == "plan-journalise"):
                _die()

        revocation._write_plan = write_plan  # type: ignore[assignment]
    elif point == "journal-ecrit":
        # The pass's entry committed, the plan not yet marked as audited: killed when it is about to be.
        original_write = revocation._write_plan

        def write_plan_after_audit(path: Path, plan: dict[str, Any]) -> None:
            if plan["journalise"]:
                _die()
            original_write(path, plan)

        revocation._write_plan = write_plan_after_audit  # type: ignore[assignment]
    elif point == "premier-avis":
        original_open = revocation.open_transport

        def open_transport(spec: Any, home: Any) -> Any:
            transport = original_open(spec, home)
            store = transport.store

            @contextlib.contextmanager
            def killing_store(name: str, **kwargs: Any) -> Any:
                with store(name, **kwargs) as handle:
                    yield handle
                _die()  # the first notice is in its drop

            transport.store = killing_store  # type: ignore[method-assign]
            return transport

        revocation.open_transport = open_transport  # type: ignore[assignment]
    elif point == "avis-deposes":
        def update(*_args: Any, **_kwargs: Any) -> Any:  # the first marking of a withdrawal
            _die()

        revocation.update = update  # type: ignore[assignment]
    elif point == "retraits-marques":
        original_unlink = pathlib.Path.unlink

        def unlink(self: Path, missing_ok: bool = False) -> None:
            if self.name == revocation.PLAN_FILE:
                _die()
            original_unlink(self, missing_ok=missing_ok)

        pathlib.Path.unlink = unlink  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "propager":
        raise SystemExit("usage: round2_support.py propager <point>")
    _install(sys.argv[2])
    from spie_hub.cli import main

    sys.exit(main(["consent", "propager"]))

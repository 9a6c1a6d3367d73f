"""A SIGTERM is never lost, even when it lands in a finaliser whose exceptions Python drops."""

from __future__ import annotations

import gc
import os
import signal

import pytest

from spie_hub.run.interrupt import Interrupted, raise_if_interrupted, sigterm_as_interrupt


class _SignalsItselfWhenCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_swallowed_inside_a_finaliser_still_stops_the_run_at_its_point_of_no_return() -> None:
    with sigterm_as_interrupt():
        gc.disable()
        try:
            holder = _SignalsItselfWhenCollected()
            del holder  # the handler's exception is raised in __del__ and printed as "ignored"
        except Interrupted:
            pass  # delivered after the finaliser on this interpreter: the request must be remembered all the same
        finally:
            gc.enable()
        with pytest.raises(Interrupted):
            raise_if_interrupted()


def test_no_sigterm_means_no_interruption_and_the_request_does_not_outlive_the_run() -> None:
    with sigterm_as_interrupt():
        raise_if_interrupted()
    with pytest.raises(Interrupted), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    raise_if_interrupted()  # the previous run's request was cleared with it

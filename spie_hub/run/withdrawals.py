"""Withdrawal propagation as its own step (DAG task ``propager_retraits`` upstream of the flow runs, CLI
``spie-hub consent propager``): deletion notices for every withdrawal recorded since the last propagation."""

from __future__ import annotations

import datetime as dt

from consent.revocation import PropagationReport, propagate_withdrawals
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import load_flows
from spie_hub.run.lock import FlowLock
from spie_hub.store import open_store


def propagate(home: HubHome | None = None, today: dt.date | None = None) -> PropagationReport:
    home = (home or HubHome.from_env()).ensure()
    pseudonymiser = load_pseudonymiser(home)
    engine = open_store(home.database_url)
    try:
        # One propagation at a time (every flow's DAG starts with it): two would read the same pending withdrawals
        # and write their notices twice.
        with FlowLock(engine, home, "retraits"):
            return propagate_withdrawals(engine, home, pseudonymiser, load_flows(), today)
    finally:
        engine.dispose()

"""One DAG per flow of the declarative registry (flows.yaml). No I/O beyond reading that file at parse time."""

from spie_hub.orchestration import build_dag, dag_id
from spie_hub.registry import load_flows

for _flow in load_flows().values():
    globals()[dag_id(_flow)] = build_dag(_flow)

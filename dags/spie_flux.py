"""One DAG per flow of the declarative registry (flows.yaml), plus the retention purge. No I/O beyond reading
that file at parse time."""

# Airflow's safe-mode discovery only parses files that mention both "airflow" and "dag" in lower case: this
# line is that marker (the DAG objects themselves are built by spie_hub.airflow.dags.build_dag).
from spie_hub.airflow.dags import PURGE_DAG_ID, build_dag, build_purge_dag, dag_id
from spie_hub.registry import load_flows

for _flow in load_flows().values():
    globals()[dag_id(_flow)] = build_dag(_flow)
globals()[PURGE_DAG_ID] = build_purge_dag()

"""The flow registry (``flows.yaml``) as validated data: flows, their transports, formats and recipients."""

from spie_hub.registry.flows import Base, Condition, Flow, Recipient, clear_cache, get_flow, load_flows, organisation

__all__ = ["Base", "Condition", "Flow", "Recipient", "clear_cache", "get_flow", "load_flows", "organisation"]

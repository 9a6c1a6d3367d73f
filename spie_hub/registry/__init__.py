"""The flow registry (``flows.yaml``) as validated data: flows, their transports, formats and recipients."""

from spie_hub.registry.flows import (
    Base,
    Condition,
    ConsentIssuer,
    ConsentRegistry,
    Flow,
    Recipient,
    clear_cache,
    consent_registry,
    get_flow,
    load_flows,
    organisation,
)

__all__ = ["Base", "Condition", "ConsentIssuer", "ConsentRegistry", "Flow", "Recipient", "clear_cache", "consent_registry",
           "get_flow", "load_flows", "organisation"]

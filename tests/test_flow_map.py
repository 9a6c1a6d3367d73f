"""The map of flows is drawn from the registry: the picture in the docs is the registry's, never a drawing that drifts."""

from __future__ import annotations

from conftest import REPO
from lxml import etree

from spie_hub.core.home import REGISTRY_PATH
from spie_hub.registry import consent_registry, load_flows
from spie_hub.registry.flow_map import flow_map_svg

MAP = REPO / "docs" / "carte-des-flux.svg"


def test_the_published_map_is_the_one_the_registry_draws_today() -> None:
    svg = flow_map_svg(load_flows(REGISTRY_PATH), consent_registry(REGISTRY_PATH))
    assert MAP.read_text(encoding="utf-8") == svg, "carte périmée : spie-hub flux carte --sortie docs/carte-des-flux.svg"


def test_the_map_is_well_formed_svg_naming_every_flow_and_every_recipient() -> None:
    flows = load_flows(REGISTRY_PATH)
    root = etree.fromstring(flow_map_svg(flows, consent_registry(REGISTRY_PATH)).encode())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(root.itertext())
    for flow in flows.values():
        assert flow.id in text
    assert "Consentements" in text

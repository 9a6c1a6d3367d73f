"""Builders shared by the tests: FHIR consents and hub stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lxml import etree

from consent.fhir_import import CATEGORY_SYSTEM, INS_NIR, PARTNER_SYSTEM


def consent_resource(cid: str, nir: str, *, decision: str = "permit", status: str = "active",
                     grantees: tuple[str, ...] = ("departement-052",), categories: tuple[str, ...] = ("identite",),
                     start: str = "2020-01-01", end: str = "2099-12-31") -> dict[str, Any]:
    return {
        "resourceType": "Consent", "id": cid, "status": status, "decision": decision, "date": "2025-01-01",
        "subject": {"identifier": {"system": INS_NIR, "value": nir}},
        "grantee": [{"identifier": {"system": PARTNER_SYSTEM, "value": g}} for g in grantees],
        "period": {"start": start, "end": end},
        "provision": [{"code": [{"coding": [{"system": CATEGORY_SYSTEM, "code": c}]} for c in categories]}],
    }


def write_bundle(path: Path, *resources: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in resources]}), encoding="utf-8")
    return path


def people_of(flux: Path) -> list[dict[str, str]]:
    """The synthetic population as written in the flux (identities to hunt for in every output)."""
    people = []
    for _, foyer in etree.iterparse(str(flux), tag="InfosFoyerRSA"):
        for person in foyer.iterfind("Personne"):
            people.append({k: person.findtext(f"Identification/{k}") for k in ("NIR", "NOM", "PRENOM", "DTNAI")})
        foyer.clear()
    return people

"""Build the hub's own FHIR R5 ``Consent`` resources (the profile documented in docs/consentement.md).

R5 reads a Consent as a base ``decision`` plus ``provision`` exceptions to it. The hub's profile follows that:

* accord (opt-in): ``decision = deny`` (nothing is shared by default) and one provision per grant naming the
  recipients (``actor``, role IRCP) and the data categories (``code``) that *are* shared;
* refus or opposition (opt-out): ``decision = permit`` with provisions naming what is *not* shared, or
  ``decision = deny`` without provisions to refuse everything to the ``grantee`` organisations.

A permit covering the special category ``sante-handicap`` (RGPD art. 9) needs the explicit-consent marker: a
``category`` coding ``EXPLICIT_SYSTEM#EXPLICIT_CODE`` (``explicit=True``); the import drops that category otherwise.

CSV imports, the demo generator and the tests all build their resources here, so every Consent the hub writes
goes through ``fhir.resources`` validation and parses back to the same rules (see tests/test_consent_fhir.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir.resources.consent import Consent

INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
PARTNER_SYSTEM = "https://spie-hub.example.fr/partenaires"
CATEGORY_SYSTEM = "https://spie-hub.example.fr/CodeSystem/categorie-donnees"
KIND_SYSTEM = "https://spie-hub.example.fr/CodeSystem/type-consentement"
PURPOSE_SYSTEM = "https://spie-hub.example.fr/CodeSystem/finalite"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
KINDS = ("consentement", "opposition")
#: The explicit-consent marker (RGPD art. 9.2.a): a ``Consent.category`` coding of this system and code, set when the
#: person gave an express consent for special categories. Without it a permit never covers ``sante-handicap``.
EXPLICIT_SYSTEM = "https://spie-hub.example.fr/CodeSystem/recueil"
EXPLICIT_CODE = "consentement-expres"


def _organisation(partner: str) -> dict[str, Any]:
    return {"identifier": {"system": PARTNER_SYSTEM, "value": partner}}


def provision(recipients: Iterable[str], categories: Iterable[str], purpose: str | None = None,
              period: tuple[str | None, str | None] | None = None) -> dict[str, Any]:
    """One exception to the base decision: these categories, to these recipients (actor role IRCP)."""
    rule: dict[str, Any] = {
        "actor": [{"role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]}, "reference": _organisation(r)}
                  for r in recipients],
        "action": [{"coding": [{"system": CONSENT_ACTION, "code": "disclose"}]}],
        "code": [{"coding": [{"system": CATEGORY_SYSTEM, "code": c}]} for c in categories],
    }
    if purpose:
        rule["purpose"] = [{"system": PURPOSE_SYSTEM, "code": purpose}]
    if period and any(period):
        rule["period"] = {k: v for k, v in zip(("start", "end"), period, strict=True) if v}
    return rule


def consent(cid: str, nir: str, *, grant: bool = True, kind: str = "consentement", status: str = "active",
            recipients: Iterable[str] = ("departement-052",), categories: Iterable[str] = ("identite",),
            start: str | None = "2020-01-01", end: str | None = "2099-12-31", date: str | None = "2025-01-15",
            controller: str | None = None, collected_by: str | None = None, method: str | None = None,
            regulatory_basis: str | None = None, purpose: str | None = None, blanket: bool = False,
            explicit: bool = False) -> dict[str, Any]:
    """A hub Consent as a JSON-ready dict (validated by ``fhir.resources``).

    ``grant`` says what the person decided about ``categories`` for ``recipients``; ``blanket`` (refusals only)
    refuses every category to the recipients (every recipient when none is named), as a base ``deny`` without
    provisions. ``explicit`` marks an express consent (RGPD art. 9), required for ``sante-handicap``.
    """
    recipients, categories = list(recipients), list(categories)
    resource: dict[str, Any] = {
        "resourceType": "Consent", "id": cid, "status": status,
        "category": [{"coding": [{"system": KIND_SYSTEM, "code": kind}]}],
        "subject": {"identifier": {"system": INS_NIR, "value": nir}},
    }
    if date:
        resource["date"] = date
    if explicit:
        resource["category"].append({"coding": [{"system": EXPLICIT_SYSTEM, "code": EXPLICIT_CODE}]})
    if recipients:
        resource["grantee"] = [_organisation(r) for r in recipients]
    if start or end:
        resource["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if controller:
        resource["controller"] = [{"identifier": {"system": PARTNER_SYSTEM, "value": controller}}]
    if regulatory_basis:
        resource["regulatoryBasis"] = [{"text": regulatory_basis}]
    if collected_by or method:
        # Who collected the decision and how: kept as the consent's proof reference (EDPB 05/2020 §5.1).
        resource["sourceReference"] = [{"display": " ; ".join(x for x in (collected_by, method) if x)}]
    if blanket:
        if grant:
            raise ValueError("un accord doit nommer ses catégories (consentement spécifique, RGPD art. 4.11)")
        resource["decision"] = "deny"
    else:
        resource["decision"] = "deny" if grant else "permit"
        resource["provision"] = [provision(recipients, categories, purpose)]
    Consent.model_validate(resource)
    return resource


def bundle(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}

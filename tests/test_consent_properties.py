"""Property-based: for random populations, consents, revocations and policies, no field reaches a recipient
without a permit covering it, and a revocation takes effect on the next run.

The oracle below reads the FHIR R5 resources and the policy on its own (it shares no code with the hub's
decision), and the checks run on the delivered CSV files of the real pipeline.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import people_of, write_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.formats.registry import load_output
from connectors.transports.local import LocalFolderOptions
from consent.decision import ConsentVersion, Rule, decide
from consent.fhir_build import consent
from consent.fhir_import import import_consents
from schemas.categories import CategorieDonnees as C
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import REGISTRY_PATH, HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.keys import load_key
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import Base, Recipient, load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

RECIPIENTS = ("departement-052", "plateforme-insertion")
CATEGORIES = ("identite", "contact", "droits-rsa")
TODAY = dt.date.today()

# -- decide() alone, over every category ----------------------------------------------------------------------

bases = st.sampled_from(["legale", "legale-opposable", "consentement", None])
periods = st.sampled_from([(None, None), ("2000-01-01", "2001-01-01"), ("2000-01-01", "2999-01-01"), ("2999-01-01", None)])
rules = st.builds(lambda effect, rs, cs, p: Rule(effect, frozenset(rs), frozenset(cs), *p),
                  st.sampled_from(["permit", "deny"]), st.sets(st.sampled_from(["r", "autre"]), min_size=1),
                  st.sets(st.sampled_from([c.value for c in C]), min_size=1), periods)
versions = st.builds(lambda i, status, rs: ConsentVersion(f"c{i}", 1, status, "deny", tuple(rs)),
                     st.integers(0, 99), st.sampled_from(["active", "inactive", "draft"]), st.lists(rules, min_size=1, max_size=3))


def _active(found: list[ConsentVersion], effect: str, category: str) -> bool:
    return any(v.status == "active" and r.effect == effect and "r" in r.recipients and category in r.categories
               and (r.start is None or r.start[:10] <= TODAY.isoformat()) and (r.end is None or TODAY.isoformat() <= r.end[:10])
               for v in found for r in v.rules)


@given(st.dictionaries(st.sampled_from(list(C)), bases), st.lists(versions, max_size=4), st.sets(st.sampled_from(list(C))))
def test_a_category_is_permitted_only_by_a_legal_basis_or_an_active_permit_and_never_past_a_refusal(policy, found, present) -> None:
    politique = {}
    for category, base in policy.items():
        if base is None or (base.startswith("legale") and category.categorie_particuliere):
            continue
        politique[category] = Base("consentement") if base == "consentement" else Base("legale", "art. X", base.endswith("opposable"))
    recipient = Recipient("r", "r", "csv_departement", LocalFolderOptions(type="dossier-local", dossier="x"), politique, ())
    decision = decide(recipient, present, found, TODAY)
    for category in present:
        base = politique.get(category)
        denied = _active(found, "deny", category.value)
        if base is None:
            expected = False
        elif base.kind == "legale":
            expected = not (base.opposable and denied)
        else:
            expected = not denied and _active(found, "permit", category.value)
        assert decision.categories[category].permis is expected
        if category.categorie_particuliere and decision.categories[category].permis:
            assert decision.categories[category].fondement.startswith("consentement:")


@given(st.sampled_from([c for c in C if c.categorie_particuliere]), st.booleans())
def test_a_legal_basis_never_covers_a_special_category(category, opposable) -> None:
    data = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8"))
    recipient = data["flux"]["caf-vers-departement"]["destinataires"]["departement-052"]
    recipient["politique"][category.value] = {"base": "legale", "article": "art. X", "opposable": opposable}
    with tempfile.TemporaryDirectory(prefix="spie-prop-") as tmp:
        path = Path(tmp) / "flows.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        with pytest.raises(ConfigurationError, match="catégorie particulière"):
            load_flows(path)


# -- the real pipeline: random population, consents, policy, then revocations --------------------------------

def _oracle(resources: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], str]]:
    """NIR → {(recipient, category): "permit"|"deny"} from active, in-period R5 resources (deny wins)."""
    out: dict[str, dict[tuple[str, str], str]] = {}
    latest = {r["id"]: r for r in resources}  # later resources with the same id are new versions
    for r in latest.values():
        if r["status"] != "active":
            continue
        start, end = r.get("period", {}).get("start"), r.get("period", {}).get("end")
        if (start and start > TODAY.isoformat()) or (end and end < TODAY.isoformat()):
            continue
        pairs = out.setdefault(r["subject"]["identifier"]["value"], {})
        provisions = r.get("provision") or []
        if not provisions:  # a blanket refusal to the grantees
            for g in r["grantee"]:
                for c in CATEGORIES:
                    pairs[(g["identifier"]["value"], c)] = "deny"
            continue
        effect = "permit" if r["decision"] == "deny" else "deny"
        for p in provisions:
            for a in p["actor"]:
                for code in p["code"]:
                    key = (a["reference"]["identifier"]["value"], code["coding"][0]["code"])
                    if pairs.get(key) != "deny":
                        pairs[key] = effect
    return out


def _allowed(policy: dict[str, dict[str, str]], oracle: dict[str, dict[tuple[str, str], str]], nir: str, rid: str, cat: str) -> bool:
    base = policy[rid].get(cat)
    said = oracle.get(nir, {}).get((rid, cat))
    if base is None:
        return False
    if base.startswith("legale"):
        return not (base == "legale-opposable" and said == "deny")
    return said == "permit"


def _random_consents(rng: random.Random, people: list[dict[str, str]], rate: float) -> list[dict[str, Any]]:
    resources = []
    for i, person in enumerate(people):
        if not person["NIR"] or person["NIR"][3:5] == "13" or rng.random() > rate:
            continue
        recipients = rng.sample(RECIPIENTS, rng.randint(1, 2))
        categories = rng.sample(CATEGORIES, rng.randint(1, 3))
        start, end = rng.choice([("2020-01-01", "2999-01-01"), ("2020-01-01", "2021-01-01"), ("2999-01-01", None)])
        blanket = rng.random() < 0.1
        resources.append(consent(f"p{i}", person["NIR"], grant=not blanket and rng.random() < 0.75, blanket=blanket,
                                 status=rng.choice(["active"] * 4 + ["inactive"]), recipients=recipients,
                                 categories=[] if blanket else categories, start=start, end=end,
                                 kind="opposition" if blanket else "consentement"))
    return resources


def _registry(path: Path, policy: dict[str, dict[str, str]]) -> None:
    data = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8"))
    flow = data["flux"]["caf-vers-departement"]
    for rid, spec in flow["destinataires"].items():
        spec["politique"] = {c: {"base": "consentement"} if b == "consentement" else
                             {"base": "legale", "article": "art. test", "opposable": b == "legale-opposable"}
                             for c, b in policy[rid].items()}
        spec["categories_requises"] = [c for c in spec.get("categories_requises", []) if c in policy[rid]]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


@contextmanager
def _hub(policy: dict[str, dict[str, str]]) -> Iterator[HubHome]:
    saved = {k: os.environ.get(k) for k in ("SPIE_HUB_HOME", "SPIE_HUB_FLOWS", "SPIE_HUB_PSEUDO_KEY", "SPIE_HUB_SIGNING_KEY",
                                            "SPIE_HUB_DATABASE_URL")}
    with tempfile.TemporaryDirectory(prefix="spie-prop-") as tmp:
        os.environ.update({"SPIE_HUB_HOME": f"{tmp}/hub", "SPIE_HUB_FLOWS": f"{tmp}/flows.yaml",
                           "SPIE_HUB_PSEUDO_KEY": "t1:" + base64.b64encode(b"p" * 32).decode(),
                           "SPIE_HUB_SIGNING_KEY": "s1:" + base64.b64encode(b"q" * 32).decode()})
        os.environ.pop("SPIE_HUB_DATABASE_URL", None)
        _registry(Path(tmp) / "flows.yaml", policy)
        try:
            yield HubHome.from_env().ensure()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _check_outputs(summary: Any, policy, oracle, by_pseudonym: dict[str, dict[str, str]]) -> int:
    """Every non-empty cell of every delivered file is allowed; returns how many consent-based cells were seen."""
    seen = 0
    for rid, counts in summary.destinataires.items():
        columns = {c.entete: c.category for c in load_output("csv_departement" if rid == RECIPIENTS[0] else "csv_plateforme").columns}
        with open(counts.fichier, encoding="utf-8-sig", newline="") as handle:
            for row in csv.DictReader(handle, delimiter=";"):
                nir = by_pseudonym[rid][row["Pseudonyme"]]["NIR"]
                for header, value in row.items():
                    category = columns[header]
                    if value and category is not None:
                        assert _allowed(policy, oracle, nir, rid, category.value), (rid, header)
                        seen += policy[rid].get(category.value) == "consentement"
    return seen


policies = st.fixed_dictionaries({rid: st.fixed_dictionaries({}, optional={c: bases.filter(bool) for c in CATEGORIES})
                                  for rid in RECIPIENTS})


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, seed=st.integers(0, 10_000), rate=st.floats(0.2, 0.9), revoke=st.floats(0.2, 1.0))
def test_no_field_reaches_a_recipient_without_a_permit_and_revocations_apply_on_the_next_run(policy, seed, rate, revoke) -> None:
    rng = random.Random(seed)
    with _hub(policy) as home:
        first, second = home.root / "f1.xml", home.root / "f2.xml"
        generate(first, home.root / "demo.json", 25, seed=seed, anomaly_rate=0.02)
        generate(second, home.root / "demo.json", 25, seed=seed, anomaly_rate=0.02, reference=dt.date(2026, 11, 30))
        people = people_of(first)
        resources = _random_consents(rng, people, rate)
        engine = open_store(home.database_url)
        pseudonymiser = Pseudonymiser(load_key(home))
        import_consents(write_bundle(home.root / "c.json", *resources), engine, pseudonymiser, emetteur="e")
        by_pseudonym = {rid: {pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), rid): p
                              for p in people if p["NIR"] and p["NIR"][3:5] != "13"} for rid in RECIPIENTS}
        summary = run_flow("caf-vers-departement", first, home)
        assert summary.accounted()
        _check_outputs(summary, policy, _oracle(resources), by_pseudonym)

        grants = [r for r in resources if r["status"] == "active" and r["decision"] == "deny" and r.get("provision")]
        revoked = [dict(r, status="inactive") for r in grants if rng.random() < revoke]
        import_consents(write_bundle(home.root / "r.json", *revoked), engine, pseudonymiser, emetteur="e")
        after = _oracle(resources + revoked)
        summary = run_flow("caf-vers-departement", second, home)
        assert summary.statut == "termine" and summary.accounted()
        _check_outputs(summary, policy, after, by_pseudonym)
        engine.dispose()


# -- the import itself: resources of every shape, from issuers with and without authority ------------------------
#
# The oracle reads the raw JSON resources (sharing no code with the import): a (recipient, category) pair may be
# permitted only when the last resource of some (issuer, id) is an active, non-opposition base-deny Consent with a
# provision that fully covers it: every criterion it states matches, the issuer may grant it, a special category
# carries the explicit-consent marker, the period (partial dates read as whole months or years) holds today.

import calendar  # noqa: E402 - the section's own imports
import tempfile as _tempfile  # noqa: E402

from consent.decision import ConsentIndex as _Index  # noqa: E402
from consent.decision import permitted_pairs  # noqa: E402
from consent.fhir_build import (  # noqa: E402
    CATEGORY_SYSTEM,
    CONSENT_ACTION,
    EXPLICIT_CODE,
    EXPLICIT_SYSTEM,
    KIND_SYSTEM,
    PARTICIPATION,
    PARTNER_SYSTEM,
    PURPOSE_SYSTEM,
)
from consent.fhir_import import import_resources  # noqa: E402
from spie_hub.privacy.keys import PseudonymisationKey  # noqa: E402
from spie_hub.registry import consent_registry  # noqa: E402

PROP_NIR = "2820251108030"
PROP_DAY = dt.date(2026, 11, 21)
PROP_KEY = Pseudonymiser(PseudonymisationKey("t1", b"p" * 32))
HUB_PURPOSES = {"accompagnement-insertion", "insertion"}
ISSUERS = ("departement-052", "france-travail", "partenaire-non-declare")
ALL_CATS = [c.value for c in C]


def _org(rid: str, how: str) -> dict[str, Any]:
    if how == "reference":
        return {"reference": f"Organization/{rid}"}
    if how == "praticien":
        return {"reference": "Practitioner/42"}
    if how == "systeme-inconnu":
        return {"identifier": {"system": "urn:annuaire-inconnu", "value": rid}}
    return {"identifier": {"system": PARTNER_SYSTEM, "value": rid}}


def _coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


dates = st.sampled_from([None, None, None, "2026", "2026-11", "2026-10", "2026-12", "2025-01-01", "2026-11-21", "2026-11-20",
                         "2026-11-20T23:30:00-05:00", "2026-11-21T00:30:00+02:00", "2099-12-31"])
period_st = st.one_of(st.none(), st.none(), st.builds(lambda s, e: {k: v for k, v in (("start", s), ("end", e)) if v}, dates, dates))
actor_st = st.builds(
    lambda rid, how, role: {**({"role": _coded(PARTICIPATION, role)} if role else {}), "reference": _org(rid, how)},
    st.sampled_from(RECIPIENTS),
    st.sampled_from(["identifiant", "identifiant", "identifiant", "reference", "praticien", "systeme-inconnu"]),
    st.sampled_from([None, None, "IRCP", "IRCP", "PRCP", "AUT"]))
provision_st = st.builds(
    lambda actors, action, purpose, codes, period, data_period, nested: {k: v for k, v in {
        "actor": actors or None,
        "action": [_coded(CONSENT_ACTION, action)] if action else None,
        "purpose": [{"system": PURPOSE_SYSTEM, "code": purpose}] if purpose else None,
        "code": [_coded(CATEGORY_SYSTEM, c) for c in codes] or None,
        "period": period,
        "dataPeriod": {"start": "2020-01-01"} if data_period else None,
        "provision": [{"code": [_coded(CATEGORY_SYSTEM, "identite")]}] if nested else None,
    }.items() if v is not None},
    st.lists(actor_st, max_size=2), st.sampled_from([None, None, None, "disclose", "disclose", "access"]),
    st.sampled_from([None, None, None, "accompagnement-insertion", "accompagnement-insertion", "prospection"]),
    st.lists(st.sampled_from(["identite", "contact", "sante-handicap", "droits-rsa", "inconnue"]), min_size=1,
             max_size=3, unique=True), period_st,
    st.sampled_from([False] * 5 + [True]), st.sampled_from([False] * 5 + [True]))
resource_st = st.builds(
    lambda cid, issuer, status, decision, kinds, explicit, grantees, provisions, period: (issuer, {k: v for k, v in {
        "resourceType": "Consent", "id": cid, "status": status, "decision": decision,
        "category": ([_coded(KIND_SYSTEM, k) for k in kinds] + ([_coded(EXPLICIT_SYSTEM, EXPLICIT_CODE)] if explicit else []))
        or None,
        "subject": {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": PROP_NIR}},
        "grantee": [_org(rid, how) for rid, how in grantees] or None,
        "provision": provisions or None,
        "period": period,
    }.items() if v is not None}),
    st.sampled_from(["a", "b", "c"]), st.sampled_from(ISSUERS),
    st.sampled_from(["active"] * 5 + ["inactive", "entered-in-error", "draft"]),
    st.sampled_from(["deny"] * 5 + ["permit", None]),
    st.sampled_from([[], [], ["consentement"], ["consentement"], ["opposition"], ["consentement", "opposition"]]),
    st.booleans(),
    st.lists(st.tuples(st.sampled_from(RECIPIENTS), st.sampled_from(["identifiant", "reference", "praticien"])),
             max_size=2),
    st.lists(provision_st, min_size=1, max_size=2) | st.just([]), period_st)


def _range(text: str | None, *, end: bool) -> dt.date | None:
    if text is None:
        return None
    if "T" in text:
        moment = dt.datetime.fromisoformat(text)
        from zoneinfo import ZoneInfo

        return moment.astimezone(ZoneInfo("Europe/Paris")).date()
    parts = [int(p) for p in text.split("-")]
    if len(parts) == 3:
        return dt.date(*parts)
    year, month = parts[0], parts[1] if len(parts) == 2 else (12 if end else 1)
    return dt.date(year, month, calendar.monthrange(year, month)[1] if end else 1)


def _holds(period: dict[str, str] | None) -> bool:
    period = period or {}
    start, end = _range(period.get("start"), end=False), _range(period.get("end"), end=True)
    return (start is None or start <= PROP_DAY) and (end is None or end >= PROP_DAY)


def _recipient_of(actor: dict[str, Any]) -> str | None:
    ref, role = actor["reference"], actor.get("role")
    if role and role["coding"][0]["code"] not in ("IRCP", "PRCP"):
        return None
    if ref.get("reference", "").startswith("Organization/"):
        return ref["reference"].split("/", 1)[1]
    ident = ref.get("identifier", {})
    return ident.get("value") if ident.get("system") == PARTNER_SYSTEM else None


def _justified(issuer: str, r: dict[str, Any], authority: dict[str, Any]) -> set[tuple[str, str]]:
    """What one resource, the last of its (issuer, id), may grant on PROP_DAY."""
    kinds = {c["coding"][0]["code"] for c in r.get("category", []) if c["coding"][0]["system"] == KIND_SYSTEM}
    if r["status"] != "active" or r.get("decision") != "deny" or "opposition" in kinds:
        return set()
    explicit = any(c["coding"][0] == {"system": EXPLICIT_SYSTEM, "code": EXPLICIT_CODE} for c in r.get("category", []))
    grantees = {g["identifier"]["value"] if "identifier" in g and g["identifier"]["system"] == PARTNER_SYSTEM else
                g.get("reference", "").removeprefix("Organization/") for g in r.get("grantee", [])}
    out: set[tuple[str, str]] = set()
    for p in r.get("provision", []):
        if p.get("provision") or p.get("dataPeriod"):
            continue
        if "action" in p and not any(a["coding"][0]["code"] == "disclose" for a in p["action"]):
            continue
        if "purpose" in p and not any(x["code"] in HUB_PURPOSES for x in p["purpose"]):
            continue
        if not _holds(p.get("period") or r.get("period")):
            continue
        recipients = {_recipient_of(a) for a in p["actor"]} - {None} if "actor" in p else grantees
        for rid in recipients:
            for code in (c["coding"][0]["code"] for c in p.get("code", [])):
                if code == "sante-handicap" and not explicit:
                    continue
                declared = authority.get(issuer)
                if declared is not None and not declared.may_permit(rid, code):
                    continue
                out.add((rid, code))
    return out


def _import_all(engine, sequence: list[tuple[str, dict[str, Any]]]) -> None:
    for issuer, resource in sequence:
        import_resources([("entrée 1", resource)], engine, PROP_KEY, emetteur=issuer, today=PROP_DAY)


def _permitted(engine) -> set[tuple[str, str]]:
    pivot = PROP_KEY.pivot_from_nir(PROP_NIR).pseudonyme
    return permitted_pairs(_Index(engine).lookup([pivot]).get(pivot, []), PROP_DAY)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(resource_st, min_size=1, max_size=6), withdrawal=st.sampled_from(
    ["nue", "sans-decision", "imbriquee", "saisie-erronee", "refus-general", "opposition"]))
def test_no_pair_is_permitted_without_a_permit_that_fully_covers_it_and_every_withdrawal_shape_ends_it(
        sequence, withdrawal) -> None:
    authority = consent_registry().emetteurs
    with _tempfile.TemporaryDirectory(prefix="spie-prop-") as tmp:
        engine = open_store(f"sqlite:///{tmp}/hub.sqlite3")
        _import_all(engine, sequence)
        last: dict[tuple[str, str], dict[str, Any]] = {}
        for issuer, resource in sequence:
            last[(issuer, resource["id"])] = resource
        justified = set().union(*(_justified(i, r, authority) for (i, _), r in last.items()))
        permitted = _permitted(engine)
        assert permitted <= justified, permitted - justified

        # Then each issuer takes every consent back, in one of the shapes partners use: nothing stays permitted.
        takebacks = []
        for issuer, cid in last:
            base = {"resourceType": "Consent", "id": cid,
                    "subject": {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": PROP_NIR}}}
            if withdrawal == "nue":
                takebacks.append((issuer, base | {"status": "inactive", "decision": "deny"}))
            elif withdrawal == "sans-decision":
                takebacks.append((issuer, base | {"status": "inactive"}))
            elif withdrawal == "imbriquee":
                takebacks.append((issuer, base | {"status": "inactive", "decision": "deny", "provision": [
                    {"provision": [{"code": [_coded(CATEGORY_SYSTEM, "identite")]}]}]}))
            elif withdrawal == "saisie-erronee":
                takebacks.append((issuer, base | {"status": "entered-in-error", "decision": "permit"}))
            elif withdrawal == "refus-general":
                takebacks.append((issuer, base | {"id": f"{cid}-refus", "status": "active", "decision": "deny"}))
            else:
                takebacks.append((issuer, base | {"id": f"{cid}-opp", "status": "active", "decision": "permit",
                                                  "category": [_coded(KIND_SYSTEM, "opposition")]}))
        _import_all(engine, takebacks)
        if withdrawal == "opposition":
            # An opposition naming nobody blocks every recipient of its issuer (every recipient for an issuer the
            # registry does not declare): a permit may survive only for a recipient none of them reaches.
            reach = set().union(*(authority[i].destinataires if i in authority else set(RECIPIENTS) for i, _ in last))
            assert not {p for p in _permitted(engine) if p[0] in reach}
        else:
            assert _permitted(engine) == set()
        engine.dispose()

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

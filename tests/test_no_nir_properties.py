"""Property-based: a record without a NIR never delivers a category under consent or under an opposable legal
basis, whatever the policy, the person's consents (recorded under their NIR) and the categories present; only a
legal basis that is not open to objection still applies.

Two levels: the decision alone over every category, then the real pipeline on a synthetic population whose NIRs are
removed for some people who had granted everything to everyone.
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
from spie_hub.core.home import REGISTRY_PATH, HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.keys import load_key
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import Base, Recipient
from spie_hub.run.decide import SANS_NIR, without_nir
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

TODAY = dt.date.today()
RECIPIENTS = ("departement-052", "plateforme-insertion")
CATEGORIES = ("identite", "contact", "droits-rsa")
bases = st.sampled_from(["legale", "legale-opposable", "consentement"])
rules = st.builds(lambda effect, cs: Rule(effect, frozenset({"r"}), frozenset(cs), None, None),
                  st.sampled_from(["permit", "deny"]), st.sets(st.sampled_from([c.value for c in C]), min_size=1))
versions = st.builds(lambda i, rs: ConsentVersion(f"c{i}", 1, "active", "deny", tuple(rs)),
                     st.integers(0, 99), st.lists(rules, min_size=1, max_size=3))


def _base(category: C, name: str) -> Base | None:
    if name.startswith("legale") and category.categorie_particuliere:
        return None  # the registry refuses it
    return Base("consentement") if name == "consentement" else Base("legale", "art. X", name == "legale-opposable")


@given(st.dictionaries(st.sampled_from(list(C)), bases), st.lists(versions, max_size=4),
       st.sets(st.sampled_from(list(C))), st.sets(st.sampled_from(list(C)), max_size=2))
def test_without_nir_only_a_legal_basis_closed_to_objection_permits_a_category(policy, found, present, required) -> None:
    politique = {c: b for c, name in policy.items() if (b := _base(c, name)) is not None}
    recipient = Recipient("r", "r", "csv_departement", LocalFolderOptions(type="dossier-local", dossier="x"), politique,
                          tuple(required))
    before = decide(recipient, present, found, TODAY)
    after = without_nir(recipient, before)
    for category in present:
        base = politique.get(category)
        verdict = after.categories[category]
        if verdict.permis:
            assert base is not None and base.kind == "legale" and not base.opposable
            assert before.categories[category].permis  # never widens
        elif base is not None and (base.kind == "consentement" or base.opposable):
            assert verdict.fondement == SANS_NIR  # a ground the DPO can count
    assert after.livre == all(c in after.categories and after.categories[c].permis for c in required)
    if not after.livre and any(after.categories.get(c) and after.categories[c].fondement == SANS_NIR for c in required):
        assert after.motif == SANS_NIR


# -- the real pipeline --------------------------------------------------------------------------------------------

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
    names = ("SPIE_HUB_HOME", "SPIE_HUB_FLOWS", "SPIE_HUB_PSEUDO_KEY", "SPIE_HUB_SIGNING_KEY", "SPIE_HUB_DATABASE_URL")
    saved = {k: os.environ.get(k) for k in names}
    with tempfile.TemporaryDirectory(prefix="spie-sans-nir-") as tmp:
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


def _closed_to_objection(policy: dict[str, dict[str, str]], rid: str, category: str) -> bool:
    return policy[rid].get(category) == "legale"


policies = st.fixed_dictionaries({rid: st.fixed_dictionaries({}, optional={c: bases for c in CATEGORIES})
                                  for rid in RECIPIENTS})


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, seed=st.integers(0, 10_000), rate=st.floats(0.2, 0.8))
def test_records_without_nir_never_deliver_consent_or_opposable_categories(policy, seed, rate) -> None:
    rng = random.Random(seed)
    with _hub(policy) as home:
        flux = home.root / "f.xml"
        generate(flux, home.root / "demo.json", 25, seed=seed, anomaly_rate=0.0)
        people = [p for p in people_of(flux) if p["NIR"]]
        stripped = [p for p in people if rng.random() < rate]
        text = flux.read_bytes()
        for person in stripped:
            text = text.replace(f"<NIR>{person['NIR']}</NIR>".encode(), b"<NIR/>")
        flux.write_bytes(text)
        # Everyone stripped had granted every category to every recipient, and also objected: neither can be seen.
        resources: list[dict[str, Any]] = []
        for i, person in enumerate(stripped):
            resources.append(consent(f"g{i}", person["NIR"], grant=True, recipients=list(RECIPIENTS),
                                     categories=list(CATEGORIES), start="2020-01-01", end="2999-01-01"))
        engine = open_store(home.database_url)
        pseudonymiser = Pseudonymiser(load_key(home))
        if resources:
            import_consents(write_bundle(home.root / "c.json", *resources), engine, pseudonymiser, emetteur="e")
        with_nir = {rid: {pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), rid)
                          for p in people if p not in stripped} for rid in RECIPIENTS}
        summary = run_flow("caf-vers-departement", flux, home)
        assert summary.accounted()
        fallback_rows = 0
        for rid, counts in summary.destinataires.items():
            if counts.fichier is None:
                continue
            columns = {c.entete: c.category for c in load_output(
                "csv_departement" if rid == RECIPIENTS[0] else "csv_plateforme").columns}
            with open(counts.fichier, encoding="utf-8-sig", newline="") as handle:
                for row in csv.DictReader(handle, delimiter=";"):
                    if row["Pseudonyme"] in with_nir[rid]:
                        continue
                    fallback_rows += 1
                    for header, value in row.items():
                        category = columns[header]
                        if value and category is not None:
                            assert _closed_to_objection(policy, rid, category.value), (rid, header)
        engine.dispose()

"""One golden harness for every partner format: each sample under ``tests/partners/<partenaire>/fixtures/`` goes
through the hub's own code, and what comes out is pinned under ``tests/partners/<partenaire>/golden/``.

For each sample, the flows of the registry that would take it (``source.partenaire`` is the folder's name and the
file name matches the source's ``motif``):

* records: the run's own read loop (``spie_hub.run.records.read_records`` with ``reader_for(flow.format, mapping)``)
  with a fixed test key gives the shared records, pinned as JSON (``<sample>.json``; rejected records, if any, in
  ``<sample>.rejets.json``);
* writers: each recipient's output format (``load_output(sortie)``, through the run's keyed row order
  ``spie_hub.run.deliver.shuffled_writer``) writes the records the flow hands that recipient (inside the flow's
  perimeter, with the categories it requires), once with every category allowed (``….tout.csv``) and once with
  only the categories the recipient has on a legal basis (``….legal.csv``): the bytes of the file a recipient
  receives, pinned;
* the whole run (``run_flow``): without any consent, each recipient's delivered file is byte for byte the
  ``legal`` golden file; with every person consenting to every category, it is the ``tout`` golden file.

``UPDATE_GOLDEN=1`` rewrites the golden files from what the code produces now (review the diff before committing).
Adding a partner sample is adding a file under its ``fixtures/`` folder and running once with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from connectors.formats.base import InputFacts
from connectors.formats.registry import load_output
from consent.fhir_build import consent
from consent.fhir_import import import_resources
from schemas.categories import CategorieDonnees
from spie_hub.core.home import REGISTRY_PATH, HubHome
from spie_hub.mapping.compiler import load_mapping
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import Flow, Recipient, load_flows
from spie_hub.run.decide import outside_perimeter, present_categories, without_household_fields
from spie_hub.run.deliver import shuffled_writer
from spie_hub.run.lifecycle import run_flow
from spie_hub.run.records import Mapped, Rejected, SeenPivots, read_records, reader_for
from spie_hub.store import open_store

PARTNERS = Path(__file__).resolve().parent
#: XML outputs date their header (``date_generation``): a fixed date keeps golden files reproducible.
os.environ.setdefault("SOURCE_DATE_EPOCH", "1763186400")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1" or os.environ.get("SPIE_HUB_UPDATE_GOLDEN") == "1"
TEST_KEY = PseudonymisationKey("golden", b"g" * 32)
#: The same key as the hub's environment variable, for the full runs (pseudonyms must match the golden files).
TEST_KEY_ENV = "golden:" + base64.b64encode(b"g" * 32).decode()
EVERY_CATEGORY = frozenset(CategorieDonnees)
VARIANTS = ("tout", "legal")


# -- the cases, found on disk ----------------------------------------------------------------------------------------

@cache
def registry() -> dict[str, Flow]:
    return load_flows(REGISTRY_PATH)


@dataclass(frozen=True)
class Case:
    partner: str
    fixture: Path

    @property
    def id(self) -> str:
        return f"{self.partner}/{self.fixture.name}"

    @property
    def golden(self) -> Path:
        return PARTNERS / self.partner / "golden"

    @property
    def flows(self) -> list[Flow]:
        """The flows that would take this file from their inbox."""
        return [f for f in registry().values()
                if f.partenaire == self.partner and fnmatch.fnmatchcase(self.fixture.name, getattr(f.transport, "motif", "*"))]

    def records_golden(self) -> Path:
        return self.golden / f"{self.fixture.name}.json"

    def rejections_golden(self) -> Path:
        return self.golden / f"{self.fixture.name}.rejets.json"

    def delivery_golden(self, flow: Flow, recipient: Recipient, variant: str) -> Path:
        extension = load_output(recipient.sortie).extension
        return self.golden / f"{self.fixture.name}.{flow.id}.{recipient.id}.{variant}{extension}"


def cases() -> list[Case]:
    return [Case(folder.name, sample)
            for folder in sorted(PARTNERS.iterdir()) if (folder / "fixtures").is_dir()
            for sample in sorted((folder / "fixtures").iterdir()) if sample.is_file() and not sample.name.startswith(".")]


CASES = cases()
RUNS = [(case, flow.id, variant) for case in CASES for flow in case.flows for variant in VARIANTS]


# -- the hub's code, as the run calls it -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Read:
    mapped: list[Mapped]
    rejected: list[Rejected]
    facts: InputFacts


@cache
def read(fixture: Path, flow_id: str) -> Read:
    """The sample through the run's records stage (reader from the format registry, the flow's mapping)."""
    flow = registry()[flow_id]
    mapping = load_mapping(flow.mapping)
    facts = InputFacts()
    with tempfile.TemporaryDirectory() as scratch, fixture.open("rb") as stream:
        seen = SeenPivots(Path(scratch) / "vus.sqlite3") if mapping.unique_key else None
        try:
            items = list(read_records(reader_for(flow.format, mapping), mapping, Pseudonymiser(TEST_KEY), stream, facts,
                                      {"partenaire": flow.partenaire, "format": flow.format}, seen=seen))
        finally:
            if seen is not None:
                seen.close()
    return Read([i for i in items if isinstance(i, Mapped)], [i for i in items if isinstance(i, Rejected)], facts)


def policy_categories(recipient: Recipient) -> frozenset[CategorieDonnees]:
    """Every category the recipient's policy names (legal basis or consent): the most it can ever receive."""
    return frozenset(recipient.politique)


def legal_categories(recipient: Recipient) -> frozenset[CategorieDonnees]:
    return frozenset(c for c, base in recipient.politique.items() if base.kind == "legale")


def handed_to(flow: Flow, recipient: Recipient, mapped: Mapped, allowed: frozenset[CategorieDonnees]) -> bool:
    """Whether the flow delivers this record to the recipient when ``allowed`` are its permitted categories: inside
    the perimeter, with every category the recipient requires present and allowed."""
    permitted = set(present_categories(mapped.record)) & allowed
    return outside_perimeter(mapped.record, flow.perimetre) is None and set(recipient.categories_requises) <= permitted


def write_delivery(case: Case, flow: Flow, recipient: Recipient, variant: str) -> bytes:
    """The recipient's file, written by its output format exactly as the run's delivery stage calls it: through the
    run's own keyed row order for this recipient and this input (spie_hub/run/deliver.py, docs/divulgation.md)."""
    allowed = policy_categories(recipient) if variant == "tout" else legal_categories(recipient)
    pseudonymiser = Pseudonymiser(TEST_KEY)
    stream = io.BytesIO()
    input_sha = hashlib.sha256(case.fixture.read_bytes()).hexdigest()
    with tempfile.TemporaryDirectory() as scratch:
        writer = shuffled_writer(load_output(recipient.sortie), stream, TEST_KEY.secret, flow.id, recipient.id, input_sha,
                                 Path(scratch) / "ordre.sqlite3")
        for mapped in read(case.fixture, flow.id).mapped:
            if handed_to(flow, recipient, mapped, allowed):
                # As the run: household fields go only to a recipient that declares them (champs_foyer).
                writer.write(without_household_fields(mapped.record, recipient.champs_foyer),
                             pseudonymiser.for_recipient(mapped.pivot, recipient.id), allowed)
        writer.close()
    return stream.getvalue()


# -- golden files ---------------------------------------------------------------------------------------------------

def _json(document: Any) -> bytes:
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def check_golden(golden: Path, actual: bytes | None) -> None:
    """``actual`` must be the golden file's bytes (``None``: no golden file). ``UPDATE_GOLDEN=1`` rewrites it."""
    if UPDATE:
        if actual is None:
            golden.unlink(missing_ok=True)
        else:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes(actual)
    if actual is None:
        assert not golden.exists(), f"{golden.name} : fichier doré en trop (UPDATE_GOLDEN=1 pour le supprimer)"
        return
    assert golden.exists(), f"{golden} absent : lancer avec UPDATE_GOLDEN=1 puis relire le diff"
    expected = golden.read_bytes()
    if golden.suffix == ".json":
        assert json.loads(actual) == json.loads(expected)  # a readable diff first
    else:
        assert actual.decode("utf-8", "replace").splitlines() == expected.decode("utf-8", "replace").splitlines()
    assert actual == expected


# -- the tests ------------------------------------------------------------------------------------------------------

def test_every_flow_of_the_registry_has_a_partner_sample() -> None:
    covered = {flow.id for case in CASES for flow in case.flows}
    missing = sorted(set(registry()) - covered)
    assert not missing, f"flux sans échantillon dans tests/partners/<partenaire>/fixtures/ : {', '.join(missing)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_sample_maps_to_its_golden_shared_records(case: Case) -> None:
    assert case.flows, f"{case.id} : aucun flux du registre ne prend ce fichier (partenaire ou motif)"
    first = case.flows[0]
    assert {(f.format, f.mapping) for f in case.flows} == {(first.format, first.mapping)}, "un fichier, une lecture"
    result = read(case.fixture, first.id)
    check_golden(case.records_golden(), _json([m.record.model_dump(mode="json") for m in result.mapped]))
    rejected = [{"position": r.position, "ligne": r.line, "motif": r.reason} for r in result.rejected]
    check_golden(case.rejections_golden(), _json(rejected) if rejected else None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_recipient_file_is_written_as_its_golden_file(case: Case) -> None:
    for flow in case.flows:
        for recipient in flow.destinataires:
            for variant in VARIANTS:
                check_golden(case.delivery_golden(flow, recipient, variant), write_delivery(case, flow, recipient, variant))


def test_no_golden_file_is_left_without_its_sample() -> None:
    expected = {case.records_golden() for case in CASES} | {case.rejections_golden() for case in CASES} | {
        case.delivery_golden(flow, recipient, variant)
        for case in CASES for flow in case.flows for recipient in flow.destinataires for variant in VARIANTS}
    orphans = sorted(p for folder in PARTNERS.glob("*/golden") for p in folder.iterdir() if p not in expected)
    if UPDATE:
        for orphan in orphans:
            orphan.unlink()
        return
    assert not orphans, f"fichiers dorés sans échantillon ni flux : {[str(p.relative_to(PARTNERS)) for p in orphans]}"


def consentable_nirs(case: Case, flow: Flow) -> list[str]:
    return [m.record.identite.nir for m in read(case.fixture, flow.id).mapped if m.record.identite and m.record.identite.nir]


def _consent_to_everything(home: HubHome, case: Case, flow: Flow) -> None:
    """Every person of the sample consents to every consent-based category, for every recipient of the flow."""
    categories = sorted({c.value for r in flow.destinataires for c, base in r.politique.items() if base.kind == "consentement"})
    nirs = consentable_nirs(case, flow)
    if not categories or not nirs:
        return
    engine = open_store(home.database_url)
    try:
        report = import_resources(
            ((f"golden-{n}", consent(f"golden-{n}", nir, recipients=[r.id for r in flow.destinataires], categories=categories,
                                                # Express consent (RGPD art. 9) whenever health or disability is asked.
                                                explicit="sante-handicap" in categories))
             # Recorded as the operator's own migration (the "hub" issuer): a partner's grants would count only
             # within the authority the registry gives it (consent/decision.py, registry_authority).
             for n, nir in enumerate(nirs)), engine, Pseudonymiser(TEST_KEY), emetteur="hub")
    finally:
        engine.dispose()
    assert report.importes == len(nirs) and not report.erreurs


@pytest.mark.parametrize(("case", "flow_id", "variant"), RUNS, ids=lambda v: getattr(v, "id", v))
def test_the_run_delivers_the_golden_file_to_each_recipient(case: Case, flow_id: str, variant: str, hub_home: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``legal``: no consent at all, so each recipient gets its legally based columns; ``tout``: everyone
    consented to everything, so each recipient gets every column its output spec has."""
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", TEST_KEY_ENV)
    monkeypatch.delenv("SPIE_HUB_FLOWS", raising=False)
    flow = registry()[flow_id]
    home = HubHome.from_env().ensure()
    if variant == "tout":
        _consent_to_everything(home, case, flow)
    summary = run_flow(flow.id, case.fixture, home)
    assert summary.statut == "termine", summary.message
    # A sample without any NIR (France Travail's extract) can carry no consent: everyone gets the legal file.
    expected = variant if consentable_nirs(case, flow) else "legal"
    for recipient in flow.destinataires:
        delivered = Path(summary.destinataires[recipient.id].fichier or "")
        assert delivered.parent == home.root / recipient.transport.dossier  # type: ignore[attr-defined]
        assert delivered.read_bytes() == case.delivery_golden(flow, recipient, expected).read_bytes(), recipient.id


#: Older tests still read these samples at their first place (tests/conftest.py's CAF_FIXTURES,
#: tests/hostile/corpus.py's FT_SAMPLE): the copies must not drift apart until those tests read tests/partners/.
OLDER_COPIES = {"caf-msa": "caf_msa", "france-travail": "france_travail"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_sample_still_kept_at_its_first_place_is_the_same_file(case: Case) -> None:
    older = PARTNERS.parent / "fixtures" / OLDER_COPIES.get(case.partner, case.partner) / case.fixture.name
    if not older.exists():
        pytest.skip("plus de copie dans tests/fixtures/")
    assert older.read_bytes() == case.fixture.read_bytes()

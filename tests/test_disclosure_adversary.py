"""A curious sender and a curious recipient, with everything they receive over several runs and padded files, cannot
tell whether a chosen person was withheld from another recipient (docs/divulgation.md).

Two worlds play the same story on two hubs with the same keys: the same consents, the same files (a first file, the
same file padded with one more household, the same file without the chosen person's household), a withdrawal by
another person between the runs and its deletion notice. They differ in one fact: in the world "retenu", the chosen
person X objected to the platform, so X's rows were withheld from it. What the sender (CAF/MSA: its return folder)
and the other recipient (the Département: its drop) received must be the same bytes in both worlds, once the values
that are fresh in every run (times, run ids, signatures, the audit head's hash) are relabelled in order of first
appearance; those values differ between two runs of a single world too.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import people_of
from lxml import etree

from consent.fhir_build import consent
from consent.fhir_import import import_resources
from consent.revocation import propagate_withdrawals
from spie_hub.audit.receipts import ACKNOWLEDGEMENT_TYPE, document_valid, receipt_valid
from spie_hub.audit.signing import load_hub_signer
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import load_flows
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

FLOW = "caf-vers-departement"
DEP, PLATFORM, SENDER = "departement-052", "plateforme-insertion", "caf-msa"
HOUSEHOLDS, SEED = 40, 7
#: Values fresh in every run, relabelled: run ids, ISO times, compact times in notice names.
RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")
ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00")
STAMP = re.compile(r"(?<=_)\d{8}T\d{6}(?=_)")
#: The token ending a deletion notice's name: random, fresh in every propagation (it once was the first pending
#: withdrawal's row id, a counter of everyone's withdrawals). Anything else there is compared as it is.
NOTICE_TOKEN = re.compile(r"(?<=_)[0-9a-f]{12}(?=\.csv$)")
FRESH_KEYS = {"execution", "genere_le", "traite_le", "point_de_controle", "valeur",
              # The audit head and entry a receipt carries (docs/divulgation.md): hashes, times and signatures are
              # fresh; their sizes and positions (``taille``, ``index``, ``seq``, the path's length) are compared.
              "racine", "enonce", "horodatage", "signature", "hash", "prev_hash", "ts", "run_id", "sha256", "sel"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _without_household(source: Path, target: Path, nir: str) -> None:
    tree = etree.parse(str(source))
    [household] = [f for f in tree.iter("InfosFoyerRSA") if any(p.findtext("Identification/NIR") == nir
                                                                 for p in f.iterfind("Personne"))]
    household.getparent().remove(household)
    tree.write(str(target), xml_declaration=True, encoding="windows-1252")


class Labels:
    """Fresh values relabelled by order of first appearance (the same value keeps its label)."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, kind: str, value: str) -> str:
        return self.seen.setdefault(value, f"<{kind}-{sum(v.startswith('<' + kind) for v in self.seen.values()) + 1}>")


def _relabel(document: Any, labels: Labels, public: dict[str, str]) -> Any:
    if isinstance(document, dict):
        if isinstance(document.get("signature"), dict):  # a signed receipt: checked, then its fresh signature relabelled
            assert receipt_valid(document, public) or document_valid(document, public, ACKNOWLEDGEMENT_TYPE), \
                "reçu ou accusé signé invalide"
        return {k: labels(k, v) if k in FRESH_KEYS and isinstance(v, str)
                else [labels("noeud", h) for h in v] if k == "chemin"
                else _relabel(json.loads(v), labels, public) if k == "payload" and isinstance(v, str)
                else _relabel(v, labels, public)
                for k, v in document.items()}
    if isinstance(document, list):
        return [_relabel(v, labels, public) for v in document]
    return document


def observe(folder: Path, public: dict[str, str]) -> dict[str, bytes]:
    """Everything a party finds in its folder, fresh values relabelled (times, run ids, a notice's random token)."""
    labels = Labels()
    seen: dict[str, bytes] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = STAMP.sub(lambda m: labels("horodatage", m.group()), str(path.relative_to(folder)))
        if name.startswith("avis-suppression_"):
            name = NOTICE_TOKEN.sub(lambda m: labels("jeton", m.group()), name)
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_relabel(json.loads(data), labels, public), ensure_ascii=False, indent=1).encode()
        else:
            text = data.decode("utf-8-sig")
            text = RUN_ID.sub(lambda m: labels("execution", m.group()), ISO_TIME.sub(lambda m: labels("heure", m.group()), text))
            data = text.encode()
        seen[name] = data
    return seen


def play(root: Path, files: dict[str, Path], x_nir: str, y_nir: str, x_objects: bool) -> HubHome:
    """The story on a hub of its own: consents, three runs, a withdrawal in between and its propagation."""
    home = HubHome(root).ensure()
    engine = open_store(home.database_url)
    pseudonymiser = load_pseudonymiser(home)
    try:
        entries = [("y", consent("y-1", y_nir, recipients=[DEP], categories=["identite", "contact"]))]
        if x_objects:  # the one fact the two worlds differ by
            entries.append(("x", consent("x-1", x_nir, grant=False, kind="opposition", recipients=[PLATFORM],
                                         categories=["droits-rsa", "identite", "contact"])))
        report = import_resources(entries, engine, pseudonymiser, emetteur=DEP)
        assert not report.erreurs, report.erreurs
        propagate_withdrawals(engine, home, pseudonymiser, load_flows())  # the DAG's first task, before any run
        assert run_flow(FLOW, files["premier"], home).statut == "termine"
        withdrawal = consent("y-1", y_nir, recipients=[DEP], categories=["identite", "contact"], status="inactive")
        assert not import_resources([("y", withdrawal)], engine, pseudonymiser, emetteur=DEP).erreurs
        assert propagate_withdrawals(engine, home, pseudonymiser, load_flows()).avis == 1
        assert run_flow(FLOW, files["rembourre"], home).statut == "termine"
        assert run_flow(FLOW, files["sans-foyer"], home).statut == "termine"
    finally:
        engine.dispose()
    return home


@pytest.fixture
def worlds(hub_home: Path, tmp_path: Path) -> dict[str, Any]:
    files = {"premier": tmp_path / "premier.xml", "rembourre": tmp_path / "rembourre.xml",
             "sans-foyer": tmp_path / "sans-foyer.xml"}
    generate(files["premier"], None, HOUSEHOLDS, seed=SEED, anomaly_rate=0)
    generate(files["rembourre"], None, HOUSEHOLDS + 1, seed=SEED, anomaly_rate=0, reference=dt.date(2026, 11, 30))
    # X and Y: two adults of the perimeter, delivered to both recipients when nobody objects (a scouting run).
    scout = HubHome(tmp_path / "eclaireur").ensure()
    first = run_flow(FLOW, files["premier"], scout)
    pseudonymiser = load_pseudonymiser(scout)
    by_platform = {r["Pseudonyme"] for r in _rows(Path(first.destinataires[PLATFORM].fichier))}
    candidates = [p["NIR"] for p in people_of(files["premier"]) if p["NIR"] and pseudonymiser.for_recipient(
        pseudonymiser.pivot_from_nir(p["NIR"]), PLATFORM) in by_platform]
    x_nir, y_nir = candidates[3], candidates[-2]
    _without_household(files["premier"], files["sans-foyer"], x_nir)
    homes = {world: play(tmp_path / world, files, x_nir, y_nir, world == "retenu") for world in ("non-retenu", "retenu")}
    signer = load_hub_signer(homes["retenu"])
    return {"homes": homes, "x": x_nir, "public": {signer.kid: signer.public_b64}}


def _x_rows(home: HubHome, folder: Path, recipient: str, nir: str) -> int:
    pseudonymiser = load_pseudonymiser(home)
    pseudonym = pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(nir), recipient)
    return sum(r.get("Pseudonyme") == pseudonym for p in folder.glob(f"{FLOW}_*.csv") for r in _rows(p))


def test_the_worlds_differ_only_in_what_the_platform_received_about_x(worlds) -> None:
    homes, x = worlds["homes"], worlds["x"]
    platform = {w: _x_rows(h, h.outbox / PLATFORM, PLATFORM, x) for w, h in homes.items()}
    assert platform == {"non-retenu": 2, "retenu": 0}  # first and padded files; the third has no X
    department = {w: _x_rows(h, h.outbox / DEP, DEP, x) for w, h in homes.items()}
    assert department == {"non-retenu": 2, "retenu": 2}


@pytest.mark.parametrize("party", [SENDER, DEP])
def test_a_curious_party_receives_the_same_bytes_whether_or_not_x_was_withheld_from_another(worlds, party) -> None:
    homes, public = worlds["homes"], worlds["public"]
    seen = {w: observe(h.outbox / party, public) for w, h in homes.items()}
    assert seen["non-retenu"].keys() == seen["retenu"].keys()
    for name in seen["retenu"]:
        assert seen["non-retenu"][name] == seen["retenu"][name], f"{party} : {name} diffère selon que X est retenu ou non"
    kinds = {Path(n).name.split("_")[0] for n in seen["retenu"]}
    if party == DEP:  # what was compared: deliveries of three files, their receipts, a deletion notice
        assert sum(n.endswith(".csv") and n.startswith(FLOW) for n in seen["retenu"]) == 3
        assert sum(n.endswith(".manifest.json") for n in seen["retenu"]) == 3 and "avis-suppression" in kinds
    else:
        assert sum(n.endswith("_accuse.json") for n in seen["retenu"]) == 3


def test_a_deletion_notice_name_counts_no_one_elses_withdrawals(worlds) -> None:
    homes, public = worlds["homes"], worlds["public"]
    names = {w: sorted(n for n in observe(h.outbox / DEP, public) if n.startswith("avis-suppression_"))
             for w, h in homes.items()}
    assert names["non-retenu"] == names["retenu"]

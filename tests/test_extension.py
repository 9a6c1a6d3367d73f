"""Adding a flow with a new transport type and a new format is registration and configuration, never an edit of the
run: from this test only, a toy reader (``toy-jsonl``), a toy output format (``toy-json``) and a toy transport type
(``memoire``, the in-memory transport of tests/support) are registered, a mapping, an output spec and a flows.yaml
naming them are written in a temporary folder, and the hub's real life cycle (``spie_hub.run.lifecycle``) takes the
partner's file from the toy inbox and delivers through the toy transport, with its signed manifest and its audit.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pytest
import yaml
from support.memory_transport import MemoryTransport

from connectors.formats.base import BadRecord, InputFacts, OutputFormat, PartnerRecord, Reader, RecordWriter
from connectors.formats.dictionary import DictionaryEntry, entry
from connectors.formats.registry import register_output, register_reader, unregister
from connectors.transports.registry import register_transport, unregister_transport
from schemas.categories import CATEGORIE_DU_BLOC, CategorieDonnees
from schemas.spie_v1 import PersonneSPIE
from spie_hub.audit import segments
from spie_hub.audit.chain import store_keys, verify
from spie_hub.audit.receipts import receipt_valid
from spie_hub.core import home as home_module
from spie_hub.core.errors import ConfigurationError, FatalInputError
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.registry import clear_cache, get_flow, load_flows
from spie_hub.run.lifecycle import pending_inputs, process_inbox_file
from spie_hub.store import audit_log, open_store

REPO = Path(__file__).resolve().parent.parent
FLOW_ID = "toy-vers-departement"
RECIPIENT = "departement-052"
SPACE = "toy"


# -- a toy inbound format: one JSON object per line ---------------------------------------------------------------

class ToyJsonlReader(Reader):
    format: ClassVar[str] = "toy-jsonl"

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        buffered = io.BufferedReader(stream) if isinstance(stream, io.RawIOBase) else stream  # type: ignore[arg-type]
        empty = True
        for number, raw in enumerate(buffered, start=1):
            if not raw.strip():
                continue
            empty = False
            facts.unites_lues += 1
            try:
                item = json.loads(raw)
            except ValueError:
                yield BadRecord(f"ligne {number}", number, "JSON illisible")
                continue
            if not isinstance(item, dict):
                yield BadRecord(f"ligne {number}", number, "objet JSON attendu")
                continue
            values = {str(k): str(v) for k, v in item.items() if v is not None}
            yield PartnerRecord(values, values, f"ligne {number}", number)
        if empty:
            raise FatalInputError("fichier vide")


# -- a toy outbound format: JSON Lines, one object per person, only the permitted blocks ---------------------------

class ToyJsonWriter(RecordWriter):
    def __init__(self, output: ToyJsonOutput, stream: BinaryIO) -> None:
        self.output, self.stream = output, stream

    def write(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> None:
        dump = record.model_dump(mode="json", exclude_defaults=True)
        line = {"pseudonyme": pseudonym} | {block: dump[block] for block in self.output.blocks
                                             if block in dump and CATEGORIE_DU_BLOC[block] in allowed}
        self.stream.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")

    def close(self) -> None:
        self.stream.flush()


class ToyJsonOutput(OutputFormat):
    format: ClassVar[str] = "toy-json"
    extension: ClassVar[str] = ".jsonl"

    def __init__(self, name: str, blocks: tuple[str, ...]) -> None:
        self.name, self.blocks = name, blocks

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ToyJsonOutput:  # what load_output calls (not in the ABC)
        return cls(spec["sortie"], tuple(spec["blocs"]))

    def open(self, stream: BinaryIO) -> ToyJsonWriter:
        return ToyJsonWriter(self, stream)

    def media(self) -> dict[str, str]:
        return {"encodage": "UTF-8", "type_media": "application/jsonl"}

    def dictionary(self) -> list[DictionaryEntry]:
        return [entry(block, block) for block in self.blocks]


# -- its configuration: a mapping, an output spec, a registry ------------------------------------------------------

MAPPING = {
    "mapping": "toy-jsonl",
    "format": "toy-jsonl",
    "lecture": "csv",  # the compiler's "columns of a row" reading: a dict per record, which is what the reader gives
    "version_schema": "1.1.0",
    "colonnes": ["nir", "nom", "prenom", "naissance", "commune", "ville"],
    "cle_unique": ["pivot"],
    "pivot": {"nir": "nir", "repli": ["nom", "prenom", "naissance"]},
    "champs": {
        "identite.nir": {"chemin": "nir", "transformation": "nir"},
        "identite.nom": "nom",
        "identite.prenoms": {"chemins": ["prenom"], "transformation": "liste"},
        "identite.date_naissance": {"chemin": "naissance", "transformation": "date"},
        "identite.commune_insee": "commune",
        "contact.commune": "ville",
    },
}
OUTPUT = {"sortie": "toy_json", "format": "toy-json", "blocs": ["identite", "contact"]}
REGISTRY = {"flux": {FLOW_ID: {
    "titre": "Flux jouet",
    "finalite": "Montrer qu'un flux s'ajoute sans toucher au code du run",
    "source": {
        "partenaire": "partenaire-jouet",
        "format": "toy-jsonl",
        "mapping": "toy_jsonl",
        "transport": {"type": "memoire", "espace": SPACE, "dossier": "depot", "motif": "*.jsonl"},
        "retour": {"type": "memoire", "espace": SPACE, "dossier": "retours"},
    },
    "perimetre": [{"champ": "identite.commune_insee", "egal": "52121", "libelle": "résidant à Chaumont"}],
    "destinataires": {RECIPIENT: {
        "libelle": "Département (jouet)",
        "sortie": "toy_json",
        "transport": {"type": "memoire", "espace": SPACE, "dossier": f"livraisons/{RECIPIENT}"},
        "categories_requises": ["identite"],
        "politique": {"identite": {"base": "legale", "article": "Article de test"}, "contact": {"base": "consentement"}},
    }},
}}}
PEOPLE = [
    {"nir": "2820275328515", "nom": "DUPONT", "prenom": "MARIE", "naissance": "1982-02-01", "commune": "52121", "ville": "CHAUMONT"},
    {"nir": "2900799663881", "nom": "N'DIAYE", "prenom": "AMINATA", "naissance": "1990-07-14", "commune": "52448", "ville": "SAINT-DIZIER"},
    {"nir": "1751275906229", "nom": "LEFÈVRE", "prenom": "JÉRÔME", "naissance": "1975-12-18", "commune": "52121", "ville": "CHAUMONT"},
]
DROP = ("\n".join(json.dumps(p, ensure_ascii=False) for p in PEOPLE) + '\n{"nir": "2980310637570", "nom": \n').encode("utf-8")


@pytest.fixture
def toy(tmp_path: Path, hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubHome]:
    """The toy format, output and transport registered, their configuration written; the hub home to run in."""
    mappings = tmp_path / "mappings"
    (mappings / "sorties").mkdir(parents=True)
    (mappings / "toy_jsonl.yaml").write_text(yaml.safe_dump(MAPPING, allow_unicode=True), encoding="utf-8")
    (mappings / "sorties" / "toy_json.yaml").write_text(yaml.safe_dump(OUTPUT, allow_unicode=True), encoding="utf-8")
    registry = tmp_path / "flows.yaml"
    registry.write_text(yaml.safe_dump(REGISTRY, allow_unicode=True), encoding="utf-8")
    monkeypatch.setattr(home_module, "MAPPINGS_DIR", mappings)
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(registry))
    register_reader(ToyJsonlReader)
    register_output(ToyJsonOutput)
    register_transport(MemoryTransport)
    MemoryTransport.reset_shared()
    clear_cache()
    try:
        yield HubHome.from_env().ensure()
    finally:
        unregister("toy-jsonl")
        unregister("toy-json")
        unregister_transport("memoire")
        MemoryTransport.reset_shared()
        clear_cache()


def _space(folder: str) -> MemoryTransport:
    return MemoryTransport.shared(SPACE, folder)


def test_a_flow_with_a_new_format_and_transport_runs_through_the_real_life_cycle(toy: HubHome) -> None:
    inbox, outbox, returns = _space("depot"), _space(f"livraisons/{RECIPIENT}"), _space("retours")
    inbox.put("depot_202611.jsonl", DROP)
    flow = get_flow(FLOW_ID)
    [ref] = pending_inputs(flow, toy)

    summary = process_inbox_file(FLOW_ID, ref, toy)

    assert summary.statut == "termine", summary.message
    counts = summary.destinataires[RECIPIENT]
    assert (summary.lus, summary.rejetes, counts.livres, counts.retenus) == (4, 1, 2, 1)
    assert inbox.list() == []  # taken from the toy inbox
    # Delivered through the toy transport: the file and its signed manifest, nothing in a local folder.
    [delivered] = [n for n in outbox.names() if n.endswith(".jsonl")]
    assert outbox.names() == sorted([delivered, delivered.removesuffix(".jsonl") + ".manifest.json"])
    assert counts.fichier == outbox.location(delivered) == f"memoire://{SPACE}/livraisons/{RECIPIENT}/{delivered}"
    assert not (toy.root / "livraisons").exists() and not (toy.outbox / RECIPIENT).exists()
    data = outbox.read(delivered)
    manifest = json.loads(outbox.read(delivered.removesuffix(".jsonl") + ".manifest.json"))
    assert manifest["fichier"] == delivered and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert (manifest["enregistrements"], manifest["format"], manifest["type_media"]) == (2, "toy_json", "application/jsonl")
    # What was delivered: the people of the perimeter, under the recipient's pseudonym, identity only (legal
    # basis); their contact block (consent basis, no consent) withheld.
    pseudonymiser = load_pseudonymiser(toy)
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    expected = [p for p in PEOPLE if p["commune"] == "52121"]
    assert [r["pseudonyme"] for r in rows] == [
        pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["nir"]), RECIPIENT) for p in expected]
    assert [r["identite"]["nom"] for r in rows] == [p["nom"] for p in expected]
    assert all("contact" not in r for r in rows)
    # The sender's returns went through the toy transport too: the rejection report and the receipt.
    [report] = returns.child("rejets").names()
    assert "ligne 4;4;JSON illisible" in returns.child("rejets").read(report).decode("utf-8-sig")
    [receipt] = returns.child("accuses").names()
    assert json.loads(returns.child("accuses").read(receipt))["enregistrements_lus"] == 4
    # The audit holds, and the manifest is signed by the hub's key.
    engine = open_store(toy.database_url)
    try:
        result = verify(engine)
        assert result.ok, result.reason
        assert receipt_valid(manifest, store_keys(engine))
        with engine.connect() as connection:
            events = [r.event for r in connection.execute(audit_log.select())]
    finally:
        engine.dispose()
    # The per-record events are the run's segment under the hub's home, committed by one "lot" row.
    records = [e.event for e in segments.iter_events(toy)]
    assert events.count("livraison") == 1 and events.count("lot") == 1 and "decision" not in events
    assert records.count("rejet") == 1 and records.count("decision") == 3


def test_the_same_drop_again_is_recognised_and_nothing_is_delivered_twice(toy: HubHome) -> None:
    inbox, outbox = _space("depot"), _space(f"livraisons/{RECIPIENT}")
    inbox.put("depot_202611.jsonl", DROP)
    first = process_inbox_file(FLOW_ID, pending_inputs(get_flow(FLOW_ID), toy)[0], toy)
    delivered = outbox.all_files()
    inbox.put("depot_202611-bis.jsonl", DROP)
    second = process_inbox_file(FLOW_ID, pending_inputs(get_flow(FLOW_ID), toy)[0], toy)
    assert (first.statut, second.statut) == ("termine", "deja-livre")
    assert outbox.all_files() == delivered


def test_without_its_registration_the_toy_flow_is_refused_by_the_registry(toy: HubHome) -> None:
    unregister_transport("memoire")
    clear_cache()
    with pytest.raises(ConfigurationError, match="type de transport inconnu « memoire »"):
        load_flows()


def test_the_run_names_no_toy_format_or_transport() -> None:
    """What makes the flows above work is registration: the run's code knows none of these names."""
    for path in (REPO / "spie_hub" / "run").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in ("toy-jsonl", "toy-json", "memoire", "MemoryTransport", "support.memory_transport"):
            assert name not in text, f"{path.name} mentionne {name}"

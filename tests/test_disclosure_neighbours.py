"""A receipt's inclusion path holds its neighbours' leaves: the other recipient's delivery entry, even when every
field of it is predictable (a header-only file: everyone withheld from it), cannot be confirmed by hashing a guess,
for every entry carries a random salt (atk-partner finding 4)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helpers import people_of

from consent.fhir_build import consent
from consent.fhir_import import import_resources
from spie_hub.audit import merkle
from spie_hub.audit.log import entry_hash
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

DEP, PLATFORM = "departement-052", "plateforme-insertion"


def test_a_recipient_cannot_confirm_from_its_receipt_that_the_other_got_an_empty_file(hub_home, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    engine = open_store(home.database_url)
    flux = tmp_path / "f.xml"
    generate(flux, None, 1, seed=3)
    import_resources([(f"e{i}", consent(f"opp-{i}", p["NIR"], grant=False, kind="opposition", blanket=True,
                                        recipients=[PLATFORM])) for i, p in enumerate(people_of(flux)) if p["NIR"]],
                     engine, load_pseudonymiser(home), emetteur="hub", home=home)
    summary = run_flow("caf-vers-departement", flux, home)
    engine.dispose()
    platform_file = Path(summary.destinataires[PLATFORM].fichier)
    delivered = Path(summary.destinataires[DEP].fichier)
    receipt = json.loads(delivered.with_name(delivered.name.removesuffix(".csv") + ".manifest.json").read_text())
    journal, own = receipt["journal"], receipt["journal"]["entree"]
    own_payload = json.loads(own["payload"])
    assert len(own_payload["sel"]) == 32  # its own entry's salt: the recipient sees it, and only it
    empty_sha = hashlib.sha256(platform_file.read_bytes()).hexdigest()
    # Every field the Département can predict: the neighbouring entry follows its own, same run and time.
    guess = {"seq": own["seq"] + 1, "ts": own["ts"], "run_id": own["run_id"], "event": "livraison", "flow": own["flow"],
             "recipient": PLATFORM, "subject": None, "prev_hash": own["hash"],
             "payload": json.dumps({"enregistrements": 0, "fichier": own_payload["fichier"].replace(DEP, PLATFORM),
                                    "sha256": empty_sha, "version_schema": own_payload["version_schema"]},
                                   sort_keys=True, separators=(",", ":"), ensure_ascii=False)}
    leaf = merkle.leaf_hash(bytes.fromhex(entry_hash(guess))).hex()
    assert leaf not in journal["inclusion"]["chemin"]

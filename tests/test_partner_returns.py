"""What partners receive besides the data: a stable name, a signed manifest carrying its data dictionary and the
key's fingerprint, and, for every inbound file, a signed acknowledgement back to its sender naming its own file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import CAF_FIXTURES

from spie_hub.audit.receipts import ACKNOWLEDGEMENT_TYPE, document_valid, receipt_valid
from spie_hub.audit.signing import load_signing_key
from spie_hub.audit.trust import fingerprint
from spie_hub.core.home import HubHome
from spie_hub.run.lifecycle import run_flow

FLOW = "caf-vers-departement"


def _keys(home: HubHome) -> dict[str, str]:
    signer = load_signing_key(home)
    return {signer.kid: signer.public_b64}


def _acknowledgements(home: HubHome) -> list[dict]:
    folder = home.root / "outbox" / "caf-msa" / "accuses"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def test_the_sender_gets_a_signed_acknowledgement_naming_its_own_file_and_each_rejected_line(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    sample = tmp_path / "NRSACGIM_RSABEM_20261031_A0407584.RCV"
    text = (CAF_FIXTURES / "RSABEM.xml").read_text(encoding="windows-1252")
    # One household with an RSA state no code list knows: its members are rejected, the others go.
    first = text.index("<ETATDOSRSA>")
    text = text[:first] + "<ETATDOSRSA>9" + text[text.index("</ETATDOSRSA>", first):]
    sample.write_text(text, encoding="windows-1252")
    summary = run_flow(FLOW, sample, home)
    assert summary.statut == "termine" and summary.rejetes >= 1
    [ack] = _acknowledgements(home)
    assert document_valid(ack, _keys(home), ACKNOWLEDGEMENT_TYPE)
    assert ack["fichier_recu"] == sample.name and ack["statut"] == "accepte-avec-rejets"
    assert ack["enregistrements_lus"] == summary.lus and ack["enregistrements_rejetes"] == summary.rejetes
    assert len(ack["rejets"]) == summary.rejetes and ack["rejets_tous_listes"] is True
    rejection = ack["rejets"][0]
    assert rejection["position"] and rejection["motif"]
    # Nothing about who was delivered or withheld.
    assert not {"livres", "retenus", "enregistrements_livres"} & set(ack)


def test_an_acknowledgement_altered_by_anyone_no_longer_verifies(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    sample = tmp_path / "RSABEM.xml"
    shutil.copy(CAF_FIXTURES / "RSABEM.xml", sample)
    run_flow(FLOW, sample, home)
    [ack] = _acknowledgements(home)
    assert ack["statut"] == "accepte" and ack["rejets"] == []
    forged = dict(ack, statut="rejete")
    assert not document_valid(forged, _keys(home), ACKNOWLEDGEMENT_TYPE)
    assert not document_valid(ack, _keys(home), "spie-hub/recu-de-livraison/v2")


def test_a_refused_file_gets_a_signed_rejection_acknowledgement_with_a_french_reason(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    sample = tmp_path / "flux-tronque.xml"
    sample.write_bytes((CAF_FIXTURES / "RSABEM.xml").read_bytes()[:700])
    summary = run_flow(FLOW, sample, home)
    assert summary.statut == "quarantaine"
    [ack] = _acknowledgements(home)
    assert document_valid(ack, _keys(home), ACKNOWLEDGEMENT_TYPE)
    assert ack["statut"] == "rejete" and ack["fichier_recu"] == "flux-tronque.xml" and ack["motif"]
    assert "Traceback" not in ack["motif"]


def test_each_manifest_carries_its_data_dictionary_the_key_fingerprint_and_a_sequenced_name(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    first, second = tmp_path / "a.xml", tmp_path / "b.xml"
    shutil.copy(CAF_FIXTURES / "RSABEM.xml", first)
    # Another input of the same day (same reference date): one byte more, another file for the recipient.
    second.write_bytes((CAF_FIXTURES / "RSABEM.xml").read_bytes() + b"\n")
    run_flow(FLOW, first, home)
    run_flow(FLOW, second, home)
    drop = home.root / "outbox" / "departement-052"
    manifests = sorted(drop.glob("*.manifest.json"))
    assert [m.name.split("_")[3] for m in manifests] == ["001", "002"]
    signer = load_signing_key(home)
    for path in manifests:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        assert receipt_valid(manifest, {signer.kid: signer.public_b64})
        assert manifest["cle_signature"] == {"identifiant": signer.kid, "empreinte_sha256": fingerprint(signer.public_b64)}
        dictionary = manifest["dictionnaire"]
        assert dictionary["nom"].startswith("dictionnaire_csv_departement_")
        fields = {f["nom"]: f for f in dictionary["champs"]}
        assert fields["NIR"]["categorie"] == "identite" and fields["NIR"]["champ"] == "identite.nir"
        assert "2 = Droit ouvert et versable" in fields["État du droit RSA"]["valeurs"]
        header = (drop / manifest["fichier"]).read_text(encoding="utf-8-sig").splitlines()[0].split(";")
        assert header == [f["nom"] for f in dictionary["champs"]]

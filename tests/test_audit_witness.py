"""Partners are witnesses: a recipient keeps the head of each receipt; an operator with full access to the database
and to the signing function rewrites, deletes or truncates history before it, and re-signs everything; the
partner's next receipt check fails and says what no longer matches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_attacks import delete_and_resign, rewrite_and_resign, truncate_and_resign

from spie_hub.audit.signing import load_hub_signer
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

FLOW, DEP = "caf-vers-departement", "departement-052"


def _deliver(home: HubHome, tmp_path: Path, seed: int, kept: Path) -> Path:
    """Run the CAF flow on a fresh file; the Département keeps a copy of its receipt (what a partner does)."""
    flux = tmp_path / f"flux-{seed}.xml"
    generate(flux, None, 15, seed=seed)
    summary = run_flow(FLOW, flux, home)
    assert summary.statut == "termine", summary.message
    delivered = Path(summary.destinataires[DEP].fichier)
    manifest = delivered.with_name(delivered.name.removesuffix(".csv") + ".manifest.json")
    kept.mkdir(parents=True, exist_ok=True)
    copy = kept / f"recu-{seed}.json"
    copy.write_bytes(manifest.read_bytes())
    return manifest


@pytest.fixture
def published(hub_home: Path, tmp_path: Path) -> Path:
    key = tmp_path / "audit-s1.pem"
    HubHome.from_env().ensure()
    assert main(["cles", "publier", "--sortie", str(key)]) == 0
    return key


def test_each_receipt_proves_its_delivery_and_extends_the_previous_one(hub_home, tmp_path, published, capsys) -> None:
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    first = _deliver(home, tmp_path, 1, kept)
    second = _deliver(home, tmp_path, 2, kept)
    receipt = json.loads(second.read_text(encoding="utf-8"))
    journal = receipt["journal"]
    assert set(journal) == {"tete", "entree", "inclusion", "coherence"}
    assert journal["coherence"]["depuis"] == json.loads(first.read_text(encoding="utf-8"))["journal"]["tete"]
    assert "retenus" not in journal["entree"]["payload"], "the recipient learns nothing about withheld people"
    assert main(["recu", "verifier", str(second), "--cle-publique", str(published),
                 "--tete-gardee", str(kept / "recu-1.json")]) == 0
    assert "prolonge 1 tête(s) gardée(s)" in capsys.readouterr().out


def _attack(kind: str, engine, signer, size: int) -> None:
    if kind == "reecriture":
        rewrite_and_resign(engine, signer, 2, '{"note":"réécrit par l\'exploitant"}')
    elif kind == "suppression":
        delete_and_resign(engine, signer, 2)
    else:
        truncate_and_resign(engine, signer, size - 2)


@pytest.mark.parametrize("kind", ["reecriture", "suppression", "troncature"])
def test_a_history_rewritten_and_re_signed_by_the_operator_fails_the_partners_next_check(
        hub_home, tmp_path, published, capsys, kind: str) -> None:
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    _deliver(home, tmp_path, 1, kept)
    held = json.loads((kept / "recu-1.json").read_text(encoding="utf-8"))["journal"]["tete"]
    engine = open_store(home.database_url)
    _attack(kind, engine, load_hub_signer(home), held["taille"])
    engine.dispose()
    later = _deliver(home, tmp_path, 2, kept)
    capsys.readouterr()
    code = main(["recu", "verifier", str(later), "--cle-publique", str(published), "--tete-gardee", str(kept / "recu-1.json")])
    out = capsys.readouterr().out
    assert code == 1, out
    if kind == "troncature":  # the previous delivery's entry is gone: the receipt cannot link to the kept head
        assert "aucune preuve de cohérence depuis la taille" in out
        proof = tmp_path / "coherence.json"
        target = json.loads(later.read_text(encoding="utf-8"))["journal"]["tete"]["taille"]
        asked = main(["audit", "coherence", "--depuis", str(held["taille"]), "--vers", str(target), "--sortie", str(proof)])
        if asked == 0:
            assert main(["recu", "verifier", str(later), "--cle-publique", str(published),
                         "--tete-gardee", str(kept / "recu-1.json"), "--coherence", str(proof)]) == 1
            assert "ne prolonge plus la tête de taille" in capsys.readouterr().out
        else:
            assert "Taille hors du journal" in capsys.readouterr().err
    else:
        assert f"la tête de taille {held['taille']} que le hub présente n'est plus celle que vous avez gardée" in out


def test_the_hubs_own_verification_is_a_witness_too(hub_home, tmp_path, published, capsys) -> None:
    home = HubHome.from_env()
    _deliver(home, tmp_path, 1, tmp_path / "d")
    assert main(["audit", "verify"]) == 0
    engine = open_store(home.database_url)
    rewrite_and_resign(engine, load_hub_signer(home), 1, '{"note":"réécrit"}')
    engine.dispose()
    capsys.readouterr()
    assert main(["audit", "verify", "--complet"]) == 1
    assert "la dernière vérification du hub" in capsys.readouterr().out


def test_one_persons_decision_is_checked_offline_down_to_its_batch(hub_home, tmp_path, published) -> None:
    """The export carries the runs' batch files: a decision changed in one is caught offline, at its lot entry."""
    import sqlite3

    from spie_hub.audit.bundle import export_bundle, verify_bundle

    home = HubHome.from_env()
    _deliver(home, tmp_path, 1, tmp_path / "d")
    engine = open_store(home.database_url)
    folder = tmp_path / "export"
    export_bundle(engine, folder, load_hub_signer(home), home=home)
    engine.dispose()
    assert verify_bundle(folder, [published]).result.ok
    [lot] = list((folder / "audit" / "lots").rglob("*.sqlite3"))
    lot.chmod(0o600)
    with sqlite3.connect(lot) as db:
        db.execute("UPDATE leaves SET payload = replace(payload, 'retenu', 'livre') WHERE idx = "
                   "(SELECT min(idx) FROM leaves WHERE payload LIKE '%retenu%')")
    result = verify_bundle(folder, [published]).result
    assert not result.ok and "racine recalculée ne correspond pas" in result.reason


def test_one_persons_decision_is_proven_from_its_batch_up_to_a_signed_head(hub_home, tmp_path) -> None:
    """Found by pseudonym (never a table of NIRs), a decision's proof verifies with the published key alone; a
    proof whose decision was changed (withheld said delivered) does not."""
    from helpers import people_of

    from spie_hub.audit import segments
    from spie_hub.audit.proofs import check_decision_proof, prove_decision
    from spie_hub.privacy.pseudonym import load_pseudonymiser

    home = HubHome.from_env()
    flux = tmp_path / "flux.xml"
    generate(flux, None, 15, seed=3)
    assert run_flow(FLOW, flux, home).statut == "termine"
    _deliver(home, tmp_path, 4, tmp_path / "d")  # a later run: the proof goes up to a later head
    pseudonymiser = load_pseudonymiser(home)
    found = next(hits for p in people_of(flux) if p["NIR"] and (hits := list(segments.find(
        home, [pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), DEP)]))))
    assert all(e.event == "decision" for e in found)
    signer = load_hub_signer(home)
    engine = open_store(home.database_url)
    proof = prove_decision(engine, home, found[0])
    engine.dispose()
    trusted = {signer.kid: signer.public_b64}
    assert check_decision_proof(json.loads(json.dumps(proof)), trusted) == []
    forged = json.loads(json.dumps(proof))
    forged["feuille"][5] = forged["feuille"][5].replace("retenu", "livre") if "retenu" in forged["feuille"][5] \
        else forged["feuille"][5].replace("livre", "retenu")
    assert check_decision_proof(forged, trusted) == ["la décision n'est pas dans le lot que l'entrée engage (preuve "
                                                     "d'inclusion fausse)"]


def test_the_dpo_hands_a_person_proofs_of_their_decisions_checkable_with_the_published_key(
        hub_home, tmp_path, published, capsys, monkeypatch) -> None:
    import io

    from helpers import people_of

    home = HubHome.from_env()
    flux = tmp_path / "flux.xml"
    generate(flux, None, 15, seed=5)
    assert run_flow(FLOW, flux, home).statut == "termine"
    proofs = tmp_path / "preuves"
    for person in people_of(flux):
        if not person["NIR"]:
            continue
        monkeypatch.setattr("sys.stdin", io.StringIO(person["NIR"] + "\n"))
        assert main(["dpo", "personne", "--preuves", str(proofs)]) == 0
        if list(proofs.glob("preuve-*.json")):
            break
    out = capsys.readouterr().out
    files = sorted(proofs.glob("preuve-*.json"))
    assert files and "preuve :" in out
    for path in files:
        assert person["NIR"] not in path.read_text(encoding="utf-8")
        assert main(["audit", "preuve", str(path), "--cle-publique", str(published)]) == 0
    forged = json.loads(files[0].read_text(encoding="utf-8"))
    forged["lot"]["chemin"] = forged["lot"]["chemin"][:-1] if forged["lot"]["chemin"] else ["00" * 32]
    files[0].write_text(json.dumps(forged), encoding="utf-8")
    capsys.readouterr()
    assert main(["audit", "preuve", str(files[0]), "--cle-publique", str(published)]) == 1
    assert "PREUVE INVALIDE" in capsys.readouterr().out

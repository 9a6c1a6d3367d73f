"""The partner's consistency check cannot be passed with a proof that ends anywhere but at the receipt's own head (atk-operator finding 1).

The operator rewrites history before the head a partner kept (re-signed with the hub's key), then answers the
partner's `spie-hub audit coherence --depuis N` with a "proof" whose target head IS the partner's own kept head
(size N, empty path). `recu verifier --coherence` and docs/verifier-recu.sh only check kept -> proof target, never
proof target -> the receipt's head, so the rewritten log passes."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from audit_attacks import rewrite_and_resign
from test_audit_witness import _deliver, published  # noqa: F401, F811 - a fixture

from spie_hub.audit.receipts import sign_manifest
from spie_hub.audit.signing import load_hub_signer
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def _forged_proof(kept_receipt: Path, out: Path) -> Path:
    held = json.loads(kept_receipt.read_text(encoding="utf-8"))["journal"]["tete"]
    out.write_text(json.dumps({"type": "spie-hub/preuve-de-coherence/v1", "depuis": held["taille"], "tete": held,
                               "chemin": []}), encoding="utf-8")
    return out


def _setup(tmp_path: Path):
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    _deliver(home, tmp_path, 1, kept)
    engine = open_store(home.database_url)
    rewrite_and_resign(engine, load_hub_signer(home), 2, '{"note":"réécrit par l\'exploitant"}')
    engine.dispose()
    later = _deliver(home, tmp_path, 2, kept)
    return home, kept, later


def test_the_python_verifier_refuses_a_proof_that_ends_at_the_kept_head_itself(hub_home, tmp_path, published, capsys) -> None:  # noqa: F811
    home, kept, later = _setup(tmp_path)
    # sanity: without the forged proof the partner catches it
    assert main(["recu", "verifier", str(later), "--cle-publique", str(published),
                 "--tete-gardee", str(kept / "recu-1.json")]) == 1
    proof = _forged_proof(kept / "recu-1.json", tmp_path / "coherence.json")
    capsys.readouterr()
    code = main(["recu", "verifier", str(later), "--cle-publique", str(published),
                 "--tete-gardee", str(kept / "recu-1.json"), "--coherence", str(proof)])
    out = capsys.readouterr().out
    print(out)
    assert code == 1, "rewritten history passed the partner's check: " + out


def test_the_openssl_script_refuses_a_proof_that_ends_at_the_kept_head_itself(hub_home, tmp_path, published) -> None:  # noqa: F811
    home, kept, later = _setup(tmp_path)
    # the script compares the receipt's own coherence.depuis first: the operator re-signs the manifest without it
    receipt = json.loads(later.read_text(encoding="utf-8"))
    receipt.pop("signature")
    receipt["journal"].pop("coherence", None)
    later.write_text(json.dumps(sign_manifest(receipt, load_hub_signer(home))), encoding="utf-8")
    proof = _forged_proof(kept / "recu-1.json", tmp_path / "coherence.json")
    run = subprocess.run(["sh", str(ROOT / "docs" / "verifier-recu.sh"), "--tete-gardee", str(kept / "recu-1.json"),
                          "--coherence", str(proof), str(later), str(published)], capture_output=True, text=True)
    print(run.stdout, run.stderr)
    assert run.returncode == 1, "rewritten history passed verifier-recu.sh: " + run.stdout

"""A partner verifies a delivery receipt with ``sh``, ``awk`` and ``openssl`` alone (docs/verifier-recu.sh).

The receipts are real: the hub runs the CAF flow and the Département keeps its manifests, as in
tests/test_audit_witness.py. The script runs with a PATH holding only awk, openssl, mkdir and rm, so it cannot lean
on Python, jq or xxd. Tampered receipts are re-signed with the hub's own key where the point is that the check
behind the manifest's signature holds by itself (the hub lying about its log)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from audit_attacks import delete_and_resign, rewrite_and_resign, truncate_and_resign
from test_audit_witness import _deliver

from spie_hub.audit.receipts import sign_manifest
from spie_hub.audit.signing import SigningKey, load_hub_signer
from spie_hub.cli import main
from spie_hub.core.home import HubHome
from spie_hub.store import open_store

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "verifier-recu.sh"
TOOLS = ("awk", "openssl", "mkdir", "rm")


@pytest.fixture
def published(hub_home: Path, tmp_path: Path) -> Path:
    key = tmp_path / "audit-s1.pem"
    HubHome.from_env().ensure()
    assert main(["cles", "publier", "--sortie", str(key)]) == 0
    return key


@pytest.fixture
def bare_path(tmp_path: Path) -> Path:
    """A PATH with the script's tools and nothing else."""
    tools = tmp_path / "outils"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} est requis par docs/verifier-recu.sh"
        (tools / tool).symlink_to(found)
    return tools


def _script(bare_path: Path, *args: Path | str) -> subprocess.CompletedProcess[str]:
    scratch = bare_path.parent / "tmp-script"
    scratch.mkdir(exist_ok=True)
    return subprocess.run(["/bin/sh", str(SCRIPT), *map(str, args)], env={"PATH": str(bare_path), "TMPDIR": str(scratch)},
                          capture_output=True, text=True, timeout=120, check=False)


def _delivered(manifest: Path) -> Path:
    return manifest.with_name(json.loads(manifest.read_text(encoding="utf-8"))["fichier"])


def _copy(manifest: Path, where: Path) -> Path:
    """The receipt and its file in a folder of their own (what the partner received)."""
    where.mkdir(parents=True)
    shutil.copy(_delivered(manifest), where)
    return Path(shutil.copy(manifest, where))


def _rewrite(manifest: Path, change: Any, signer: Any | None = None) -> None:
    """Change the receipt; with ``signer``, re-sign it as the hub would (same writer as the hub: indent=2)."""
    receipt = json.loads(manifest.read_text(encoding="utf-8"))
    change(receipt)
    if signer is not None:
        receipt = sign_manifest({k: v for k, v in receipt.items() if k not in ("signature", "type")}, signer)
    manifest.write_text(json.dumps(receipt, ensure_ascii=False, indent=2), encoding="utf-8")


def test_a_real_receipt_verifies_with_sh_awk_and_openssl_alone(hub_home, tmp_path, published, bare_path) -> None:
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    _deliver(home, tmp_path, 1, kept)
    second = _deliver(home, tmp_path, 2, kept)
    result = _script(bare_path, second, published)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("reçu valide : "), result.stdout
    head = json.loads(second.read_text(encoding="utf-8"))["journal"]["tete"]
    assert f"taille {head['taille']}, racine {head['racine']}" in result.stdout
    with_kept = _script(bare_path, "--tete-gardee", kept / "recu-1.json", second, published)
    assert with_kept.returncode == 0, with_kept.stderr
    assert "le journal prolonge la tête gardée" in with_kept.stdout
    assert main(["recu", "verifier", str(second), "--cle-publique", str(published),
                 "--tete-gardee", str(kept / "recu-1.json")]) == 0, "the hub's own tool agrees"


def test_a_changed_byte_in_the_delivered_file_is_refused(hub_home, tmp_path, published, bare_path) -> None:
    manifest = _copy(_deliver(HubHome.from_env(), tmp_path, 1, tmp_path / "k"), tmp_path / "recu")
    data = _delivered(manifest)
    content = bytearray(data.read_bytes())
    content[-2] ^= 0x01
    data.write_bytes(bytes(content))
    result = _script(bare_path, manifest, published)
    assert result.returncode == 1
    assert "ne correspond pas au manifeste signé (SHA-256 différent)" in result.stderr


def test_a_changed_inclusion_hash_is_refused_even_when_the_hub_re_signs_the_manifest(
        hub_home, tmp_path, published, bare_path) -> None:
    home = HubHome.from_env()
    _deliver(home, tmp_path, 1, tmp_path / "k")
    original = _deliver(home, tmp_path, 2, tmp_path / "k")

    def flip(receipt: dict[str, Any]) -> None:
        first = receipt["journal"]["inclusion"]["chemin"][0]
        receipt["journal"]["inclusion"]["chemin"][0] = ("0" if first[0] != "0" else "1") + first[1:]

    as_received = _copy(original, tmp_path / "modifie")
    _rewrite(as_received, flip)
    result = _script(bare_path, as_received, published)
    assert result.returncode == 1
    assert "signature du manifeste invalide" in result.stderr
    re_signed = _copy(original, tmp_path / "re-signe")
    _rewrite(re_signed, flip, load_hub_signer(home))
    result = _script(bare_path, re_signed, published)
    assert result.returncode == 1
    assert "preuve d'inclusion fausse pour la tête de taille" in result.stderr


def test_a_receipt_whose_entry_was_changed_is_refused_by_the_chain_hash(hub_home, tmp_path, published, bare_path) -> None:
    home = HubHome.from_env()
    manifest = _copy(_deliver(home, tmp_path, 1, tmp_path / "k"), tmp_path / "recu")

    def other_run(receipt: dict[str, Any]) -> None:
        receipt["journal"]["entree"]["run_id"] = "20260101T000000-00000000"

    _rewrite(manifest, other_run, load_hub_signer(home))
    result = _script(bare_path, manifest, published)
    assert result.returncode == 1
    assert "ne correspond pas à son empreinte (modifiée)" in result.stderr


def test_a_head_signed_by_another_key_is_refused(hub_home, tmp_path, published, bare_path) -> None:
    home = HubHome.from_env()
    manifest = _copy(_deliver(home, tmp_path, 1, tmp_path / "k"), tmp_path / "recu")
    intruder = SigningKey("s1", b"i" * 32)

    def forge(receipt: dict[str, Any]) -> None:
        head = receipt["journal"]["tete"]
        head["signature"] = intruder.sign(head["enonce"].encode())

    _rewrite(manifest, forge, load_hub_signer(home))
    result = _script(bare_path, manifest, published)
    assert result.returncode == 1
    assert "signature de la tête du journal invalide" in result.stderr


def test_receipts_of_a_hub_signing_with_another_key_are_refused(hub_home, tmp_path, published, bare_path, monkeypatch) -> None:
    monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(b"o" * 32).decode())
    other = tmp_path / "autre-hub"
    monkeypatch.setenv("SPIE_HUB_HOME", str(other))
    manifest = _deliver(HubHome.from_env(), tmp_path, 1, tmp_path / "k")
    result = _script(bare_path, manifest, published)
    assert result.returncode == 1
    assert "signature du manifeste invalide" in result.stderr


def test_a_statement_that_does_not_match_its_head_is_refused(hub_home, tmp_path, published, bare_path) -> None:
    """The signed bytes are the statement: a head whose size or root differ from it proves nothing."""
    home = HubHome.from_env()
    _deliver(home, tmp_path, 1, tmp_path / "k")
    manifest = _copy(_deliver(home, tmp_path, 2, tmp_path / "k"), tmp_path / "recu")
    previous = json.loads((tmp_path / "k" / "recu-1.json").read_text(encoding="utf-8"))["journal"]["tete"]

    def older_statement(receipt: dict[str, Any]) -> None:
        receipt["journal"]["tete"] |= {"enonce": previous["enonce"], "signature": previous["signature"]}

    _rewrite(manifest, older_statement, load_hub_signer(home))
    result = _script(bare_path, manifest, published)
    assert result.returncode == 1
    assert "ne sont pas celles de son énoncé signé" in result.stderr


def test_a_consistency_proof_that_does_not_hold_is_refused(hub_home, tmp_path, published, bare_path) -> None:
    home = HubHome.from_env()
    _deliver(home, tmp_path, 1, tmp_path / "k")
    manifest = _copy(_deliver(home, tmp_path, 2, tmp_path / "k"), tmp_path / "recu")

    def break_proof(receipt: dict[str, Any]) -> None:
        receipt["journal"]["coherence"]["chemin"][-1] = "ab" * 32

    _rewrite(manifest, break_proof, load_hub_signer(home))
    result = _script(bare_path, manifest, published)
    assert result.returncode == 1
    assert "ne prolonge plus la tête de taille" in result.stderr


def test_the_manifest_signature_is_reproduced_for_accents_escapes_and_emoji(hub_home, tmp_path, published, bare_path) -> None:
    """The script rebuilds the canonical JSON the hub signs: non-ASCII text, escaped quotes, backslashes, control
    characters, nested keys out of order must give the same bytes as Python's json.dumps."""
    home = HubHome.from_env()
    manifest = _copy(_deliver(home, tmp_path, 1, tmp_path / "k"), tmp_path / "recu")

    def annotate(receipt: dict[str, Any]) -> None:
        receipt["zz_note"] = {"été": "« guillemets » \"cités\" \\ barre\n ligne\t\u0001 😀", "b": [1, -2.5, True, None, {}],
                              "a b": "", "a": "x"}

    _rewrite(manifest, annotate, load_hub_signer(home))
    result = _script(bare_path, manifest, published)
    assert result.returncode == 0, result.stderr
    assert main(["recu", "verifier", str(manifest), "--cle-publique", str(published)]) == 0


def _attack(kind: str, engine: Any, signer: Any, size: int) -> None:
    if kind == "reecriture":
        rewrite_and_resign(engine, signer, 2, '{"note":"réécrit par l\'exploitant"}')
    elif kind == "suppression":
        delete_and_resign(engine, signer, 2)
    else:
        truncate_and_resign(engine, signer, size - 2)


@pytest.mark.parametrize("kind", ["reecriture", "suppression", "troncature"])
def test_a_history_rewritten_and_re_signed_fails_against_the_kept_older_receipt(
        hub_home, tmp_path, published, bare_path, capsys, kind: str) -> None:
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    _deliver(home, tmp_path, 1, kept)
    held = json.loads((kept / "recu-1.json").read_text(encoding="utf-8"))["journal"]["tete"]
    engine = open_store(home.database_url)
    _attack(kind, engine, load_hub_signer(home), held["taille"])
    engine.dispose()
    later = _deliver(home, tmp_path, 2, kept)
    alone = _script(bare_path, later, published)
    assert alone.returncode == 0, "without a kept head the re-signed log is self-consistent: " + alone.stderr
    result = _script(bare_path, "--tete-gardee", kept / "recu-1.json", later, published)
    assert result.returncode == 1
    if kind != "troncature":
        assert f"la tête de taille {held['taille']} que le hub présente n'est plus celle que vous avez gardée" in result.stderr
        return
    assert f"aucune preuve de cohérence depuis la taille {held['taille']}" in result.stderr
    assert f"spie-hub audit coherence --depuis {held['taille']}" in result.stderr
    proof = tmp_path / "coherence.json"
    capsys.readouterr()
    target = json.loads(later.read_text(encoding="utf-8"))["journal"]["tete"]["taille"]
    if main(["audit", "coherence", "--depuis", str(held["taille"]), "--vers", str(target), "--sortie", str(proof)]) != 0:
        assert "Taille hors du journal" in capsys.readouterr().err  # the cut log is shorter than the kept head
        return
    result = _script(bare_path, "--tete-gardee", kept / "recu-1.json", "--coherence", proof, later, published)
    assert result.returncode == 1
    assert "ne prolonge plus la tête de taille" in result.stderr


def test_an_older_kept_head_is_checked_with_a_consistency_proof_asked_of_the_hub(
        hub_home, tmp_path, published, bare_path) -> None:
    home = HubHome.from_env()
    kept = tmp_path / "departement"
    _deliver(home, tmp_path, 1, kept)
    _deliver(home, tmp_path, 2, kept)
    third = _deliver(home, tmp_path, 3, kept)
    size = json.loads((kept / "recu-1.json").read_text(encoding="utf-8"))["journal"]["tete"]["taille"]
    result = _script(bare_path, "--tete-gardee", kept / "recu-1.json", third, published)
    assert result.returncode == 1
    assert f"spie-hub audit coherence --depuis {size}" in result.stderr
    proof = tmp_path / "coherence.json"
    target = json.loads(third.read_text(encoding="utf-8"))["journal"]["tete"]["taille"]
    assert main(["audit", "coherence", "--depuis", str(size), "--vers", str(target), "--sortie", str(proof)]) == 0
    result = _script(bare_path, "--tete-gardee", kept / "recu-1.json", "--coherence", proof, third, published)
    assert result.returncode == 0, result.stderr
    assert f"le journal prolonge la tête gardée (taille {size})" in result.stdout
    head_only = tmp_path / "tete.json"
    head_only.write_text(json.dumps(json.loads((kept / "recu-2.json").read_text(encoding="utf-8"))["journal"]["tete"]),
                         encoding="utf-8")
    result = _script(bare_path, "--tete-gardee", head_only, third, published)
    assert result.returncode == 0, "a bare head file kept by the partner works too: " + result.stderr

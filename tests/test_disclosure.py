"""What counts, receipts and row order reveal (docs/divulgation.md): each case observed on the landed code."""

from __future__ import annotations

import base64
import csv
import json
import tracemalloc
from pathlib import Path

import pytest
from helpers import people_of

from connectors.formats.registry import load_output
from spie_hub.audit import segments
from spie_hub.audit.bundle import ENTRIES, HEADS, export_bundle, verify_bundle
from spie_hub.audit.signing import load_hub_signer
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.privacy.disclosure import suppress
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.run.lifecycle import run_flow
from spie_hub.store import open_store

FLOW = "caf-vers-departement"
DEP, PLATFORM = "departement-052", "plateforme-insertion"


def _rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _manifest(delivered: str | Path) -> dict:
    path = Path(delivered)
    return json.loads(path.with_name(path.name.removesuffix(".csv") + ".manifest.json").read_text(encoding="utf-8"))


@pytest.fixture
def one_run(hub_home: Path, tmp_path: Path):
    home = HubHome.from_env().ensure()
    flux = tmp_path / "flux.xml"
    generate(flux, None, 60, seed=21, anomaly_rate=0)
    summary = run_flow(FLOW, flux, home)
    assert summary.statut == "termine", summary.message
    return home, flux, summary


# -- small cells: never a false statement -----------------------------------------------------------------------------

def test_the_complementary_hidden_cell_states_no_false_value() -> None:
    # Observed: 57 printed as "< 11". A hidden complement is shown as what it is.
    assert suppress({"livres": 57, "retenus": 3}, 11) == {"livres": "≥ 11", "retenus": "< 11"}
    assert suppress({"a": 2, "b": 5, "c": 50}, 11) == {"a": "< 11", "b": "< 11", "c": 50}
    assert suppress({"livres": 40, "retenus": 12}, 11) == {"livres": 40, "retenus": 12}


def test_a_lone_small_cell_beside_zeros_hides_the_whole_group() -> None:
    # Zero beside a single small cell lets the known total give it away: every cell is "< 11", true of each.
    assert suppress({"livres": 0, "retenus": 3}, 11) == {"livres": "< 11", "retenus": "< 11"}
    assert suppress({"livres": 120, "retenus": 0}, 11) == {"livres": 120, "retenus": 0}


# -- the sender's acknowledgement -------------------------------------------------------------------------------------

def test_the_senders_acknowledgement_carries_no_count_for_any_recipient(one_run) -> None:
    home, _, summary = one_run
    [path] = (home.outbox / "caf-msa" / "accuses").glob("*_accuse.json")
    receipt = json.loads(path.read_text(encoding="utf-8"))
    assert (receipt["enregistrements_lus"], receipt["enregistrements_rejetes"]) == (summary.lus, summary.rejetes)
    assert receipt["destinataires"] == [DEP, PLATFORM]  # the registry's, with nothing about what each received
    # Nothing that counts what a recipient was sent or not, exact, masked or banded: the only numbers are the
    # sender's own, and no value anywhere is a masked count.
    numbers = [v for v in receipt.values() if isinstance(v, int) and not isinstance(v, bool)]
    assert sorted(numbers) == sorted([summary.lus, summary.rejetes])


# -- delivery receipts ------------------------------------------------------------------------------------------------

def test_a_receipt_tells_the_size_of_the_log_which_counts_actions_never_people(hub_home: Path, tmp_path: Path) -> None:
    """The receipt's head and inclusion proof carry the log's size and the delivery's index: the log has one entry
    per action (decisions are batched), so two files of different sizes, with different rejections and withheld
    people, give the same numbers."""
    seen = []
    for households, anomalies in ((30, 0.0), (70, 0.2)):
        home = HubHome(tmp_path / f"hub-{households}").ensure()
        flux = tmp_path / f"flux-{households}.xml"
        generate(flux, None, households, seed=21, anomaly_rate=anomalies)
        summary = run_flow(FLOW, flux, home)
        assert summary.statut == "termine", summary.message
        for recipient in (DEP, PLATFORM):
            manifest = _manifest(summary.destinataires[recipient].fichier)
            integers = {k: v for k, v in manifest.items() if isinstance(v, int)}
            assert set(integers) == {"enregistrements", "octets"}
            journal = manifest["journal"]
            seen.append((recipient, journal["tete"]["taille"], journal["inclusion"]["index"],
                         len(journal["inclusion"]["chemin"])))
    assert seen[:2] == seen[2:]


def test_the_offline_verifier_catches_a_truncation_with_a_receipt(one_run, tmp_path: Path) -> None:
    home, _, summary = one_run
    receipt = Path(summary.destinataires[DEP].fichier)
    receipt = receipt.with_name(receipt.name.removesuffix(".csv") + ".manifest.json")
    engine = open_store(home.database_url)
    try:
        folder = tmp_path / "export"
        signer = load_hub_signer(home)
        export_bundle(engine, folder, signer)
    finally:
        engine.dispose()
    key = tmp_path / "cle.pem"
    key.write_text(signer.public_pem, encoding="utf-8")
    assert verify_bundle(folder, [key], [receipt]).result.ok
    attested = _manifest(summary.destinataires[DEP].fichier)["journal"]["entree"]["seq"]
    heads = [line for line in (folder / HEADS).read_text(encoding="utf-8").splitlines(keepends=True)
             if json.loads(line)["taille"] < attested]
    (folder / HEADS).write_text("".join(heads), encoding="utf-8")  # the heads that would show the cut
    cut = json.loads(heads[-1])["taille"]  # cut at a head boundary, before the delivery: self-consistent
    lines = (folder / ENTRIES).read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / ENTRIES).write_text("".join(lines[:cut]), encoding="utf-8")
    assert verify_bundle(folder, [key]).result.ok  # without the receipt, a cut at a head boundary is invisible
    result = verify_bundle(folder, [key], [receipt]).result
    assert not result.ok and "tronqué" in (result.reason or "")


# -- row order --------------------------------------------------------------------------------------------------------

def _people_by_row(home: HubHome, flux: Path, delivered: str, recipient: str) -> list[str]:
    pseudonymiser = load_pseudonymiser(home)
    nir_of = {pseudonymiser.for_recipient(pseudonymiser.pivot_from_nir(p["NIR"]), recipient): p["NIR"]
              for p in people_of(flux) if p["NIR"]}
    return [nir_of[r["Pseudonyme"]] for r in _rows(delivered)]


def test_two_recipients_cannot_line_their_files_up_by_row_order(one_run) -> None:
    home, flux, summary = one_run
    dep = _people_by_row(home, flux, summary.destinataires[DEP].fichier, DEP)
    platform = _people_by_row(home, flux, summary.destinataires[PLATFORM].fichier, PLATFORM)
    assert set(dep) == set(platform) and len(dep) > 40  # the same people went to both: the files could be linked
    aligned = sum(a == b for a, b in zip(dep, platform, strict=True))
    assert aligned <= len(dep) // 10, f"{aligned} lignes sur {len(dep)} désignent la même personne au même rang"
    in_input = [p["NIR"] for p in people_of(flux) if p["NIR"] in set(dep)]
    assert dep != in_input and platform != in_input


def test_a_new_run_of_the_same_input_gives_byte_identical_files(one_run, tmp_path: Path, monkeypatch) -> None:
    home, flux, summary = one_run
    monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path / "autre-hub"))
    again = run_flow(FLOW, flux, HubHome.from_env().ensure())
    for rid in (DEP, PLATFORM):
        assert Path(again.destinataires[rid].fichier).read_bytes() == Path(summary.destinataires[rid].fichier).read_bytes()


def test_a_padded_input_gives_another_order(one_run, tmp_path: Path) -> None:
    home, flux, summary = one_run
    padded = tmp_path / "rembourre.xml"
    generate(padded, None, 61, seed=21, anomaly_rate=0)  # the same 60 households and one more
    second = run_flow(FLOW, padded, home)
    before = _people_by_row(home, flux, summary.destinataires[DEP].fichier, DEP)
    after = [n for n in _people_by_row(home, padded, second.destinataires[DEP].fichier, DEP) if n in set(before)]
    assert after != before


def test_the_audit_names_the_line_each_delivered_row_ends_up_on(one_run) -> None:
    home, _, summary = one_run
    decisions = [(e.recipient, e.subject, e.payload) for e in segments.iter_events(home, event="decision")]
    files = {rid: Path(c.fichier).read_text(encoding="utf-8-sig").splitlines() for rid, c in summary.destinataires.items()}
    delivered = [(r, s, json.loads(p)) for r, s, p in decisions if json.loads(p)["decision"] == "livre"]
    assert len(delivered) == sum(c.livres for c in summary.destinataires.values())
    for rid, pseudonym, payload in delivered:
        assert files[rid][payload["ligne"] - 1].split(";")[0] == pseudonym


def test_the_sort_goes_through_a_file_and_python_memory_stays_flat(tmp_path: Path, monkeypatch) -> None:
    from schemas.categories import CategorieDonnees
    from spie_hub.privacy.disclosure import row_sort_key
    from spie_hub.run.deliver import ShuffledRows

    monkeypatch.setattr(ShuffledRows, "BUFFER_BYTES", 256 * 1024)  # many sorted runs to merge, on a small file
    output = load_output("csv_plateforme")

    class Row:  # what the CSV output reads: a record whose blocks are all empty, only the pseudonym varies
        def __getattr__(self, name: str) -> None:
            return None

    rows, scratch, key = 40_000, tmp_path / "ordre.tri", b"k" * 32
    delivered, noted = tmp_path / "livraison.csv", {}
    target = delivered.open("wb")
    tracemalloc.start()
    writer = ShuffledRows(output, target, key, scratch, on_row=lambda line, note: noted.setdefault(note, line))
    for n in range(rows):
        writer.write_noted(Row(), f"t1.{n:032x}" + "x" * 200, frozenset(CategorieDonnees),  # type: ignore[arg-type]
                           str(n) if n % 7 == 0 else None)
    assert scratch.exists() and scratch.stat().st_size > 8_000_000  # the rows went to the file
    writer.close()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    target.close()
    assert not scratch.exists()
    lines = delivered.read_text(encoding="utf-8-sig").splitlines()
    assert len(lines) == rows + 1 and lines[0].startswith("Pseudonyme;")
    pseudonyms = [line.split(";")[0] for line in lines[1:]]
    assert pseudonyms == sorted(pseudonyms, key=lambda p: row_sort_key(key, p)) != sorted(pseudonyms)
    assert all(pseudonyms[line - 2] == f"t1.{int(n):032x}" + "x" * 200 for n, line in noted.items())
    assert len(noted) == len(range(0, rows, 7))
    # Rows held in a list would be over 9 MB: the writer stays within its buffer and a small read buffer per run.
    assert peak < 3 * 1024 * 1024, peak


def test_no_sort_file_is_left_in_the_home_after_a_run(one_run) -> None:
    home, _, _ = one_run
    assert not list(home.root.rglob("*.ordre.tri"))


def test_the_order_comes_from_the_hubs_secret(one_run, tmp_path: Path, monkeypatch) -> None:
    # A keyed hash: without the hub's secret nobody predicts where a pseudonym's row goes.
    _, flux, summary = one_run
    monkeypatch.setenv("SPIE_HUB_HOME", str(tmp_path / "autre"))
    monkeypatch.setenv("SPIE_HUB_PSEUDO_KEY", "t1:" + base64.b64encode(b"z" * 32).decode())
    second = run_flow(FLOW, flux, HubHome.from_env().ensure())
    first_order = [r["NIR"] for r in _rows(summary.destinataires[PLATFORM].fichier)]
    second_order = [r["NIR"] for r in _rows(second.destinataires[PLATFORM].fichier)]
    assert sorted(first_order) == sorted(second_order) and first_order != second_order

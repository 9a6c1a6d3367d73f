"""A consent import killed after writing its batch file and before its entry commits: the consents are rolled back,
the person's subject access never shows the events of that import, and the next import removes the orphan even
when the killed import was the store's first action. A full disk under the batch is said in French."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import people_of

from spie_hub.audit import segments
from spie_hub.core.home import HubHome
from spie_hub.demo.data import generate
from spie_hub.store import open_store

REPO = Path(__file__).resolve().parent.parent
SPIE = str(Path(sys.executable).parent / "spie-hub")


def _spie(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPIE, *args], env=dict(os.environ, **env), input=stdin, capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_a_killed_first_import_leaves_nothing_a_person_is_told_and_the_next_import_removes_it(hub_home, tmp_path) -> None:
    home = HubHome.from_env().ensure()
    flux, bundle = tmp_path / "f.xml", tmp_path / "c.json"
    generate(flux, bundle, 20, seed=42)
    killed = _spie("consent", "import", str(bundle), "--emetteur", "departement-052",
                   SPIE_HUB_FAILPOINT="consentements-journal")
    assert killed.returncode != 0
    files = list(segments.segment_files(home))
    assert len(files) == 1 and files[0].name.startswith("import-consentements-")
    nir = next(p["NIR"] for p in people_of(flux) if p["NIR"])
    access = _spie("dpo", "personne", "--json", stdin=nir + "\n")
    assert access.returncode == 0, access.stderr
    report = json.loads(access.stdout)
    assert not report["consentements"] and not [e for e in report["echanges"] if e["evenement"].startswith("consentement")]
    again = _spie("consent", "import", str(bundle), "--emetteur", "departement-052")
    assert again.returncode == 0, again.stderr
    engine = open_store(home.database_url)
    committed = segments.committed_lots(engine)
    engine.dispose()
    assert [segments._rel_of(home, f) for f in segments.segment_files(home)] == list(committed)
    assert _spie("audit", "verify", "--complet").returncode == 0


def test_a_full_disk_under_an_import_batch_is_said_in_french(hub_home, tmp_path, monkeypatch) -> None:
    from consent.fhir_import import import_consents
    from spie_hub.core.errors import StorageError
    from spie_hub.privacy.pseudonym import load_pseudonymiser

    home = HubHome.from_env().ensure()
    bundle = tmp_path / "c.json"
    generate(tmp_path / "f.xml", bundle, 5, seed=43)

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments, "write_segment", full)
    engine = open_store(home.database_url)
    try:
        import_consents(bundle, engine, load_pseudonymiser(home), emetteur="departement-052", home=home)
    except StorageError as error:
        assert "disque plein" in str(error) and "/audit" in str(error)
    else:
        raise AssertionError("a full disk must stop the import")
    finally:
        engine.dispose()

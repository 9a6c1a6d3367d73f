"""A signing key whose secret changed behind an identifier the audit knows is refused before a run touches its
input: otherwise every checkpoint and receipt it signs fails against the published key, for good."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from spie_hub.cli import main
from spie_hub.demo.data import generate


def test_a_new_secret_under_a_known_signing_key_id_is_refused_and_nothing_moves(
        hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    inbox = hub_home / "inbox" / "caf-msa"
    inbox.mkdir(parents=True)
    generate(inbox / "premier.xml", None, 10, seed=3)
    assert main(["run", "--flux", "caf-vers-departement"]) == 0
    assert main(["audit", "verify"]) == 0
    monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(b"z" * 32).decode())
    generate(inbox / "second.xml", None, 10, seed=4)
    outbox = sorted(p.name for p in (hub_home / "outbox").rglob("*"))
    capsys.readouterr()
    assert main(["run", "--flux", "caf-vers-departement"]) == 2
    err = capsys.readouterr().err
    assert "clé de signature « s1 »" in err and "Traceback" not in err
    assert (inbox / "second.xml").exists(), "the input stays in the inbox"
    assert sorted(p.name for p in (hub_home / "outbox").rglob("*")) == outbox, "nothing delivered"
    assert main(["audit", "exporter", "--sortie", str(tmp_path / "export")]) == 2
    monkeypatch.setenv("SPIE_HUB_SIGNING_KEY", "s1:" + base64.b64encode(b"s" * 32).decode())
    assert main(["audit", "verify"]) == 0, "the journal the swapped key never signed stays intact"
    assert main(["run", "--flux", "caf-vers-departement"]) == 0

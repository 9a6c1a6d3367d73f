"""A consent file whose import fails while its inbox cannot take it back is never lost: the hub's private copy stays
until a later pass gives it back."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from helpers import consent_resource, write_bundle

from connectors.transports.local import LocalFolder
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import load_pseudonymiser
from spie_hub.run import consent_inbox
from spie_hub.store import open_store

NIR = "2730799404078"


def test_a_failed_import_into_a_full_inbox_keeps_the_file_for_the_next_pass(hub_home: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    home = HubHome.from_env().ensure()
    engine, pseudonymiser = open_store(home.database_url), load_pseudonymiser(home)
    inbox = home.root / "inbox" / "consentements" / "departement-052"
    inbox.mkdir(parents=True)
    original = write_bundle(inbox / "retraits.json", consent_resource("c1", NIR, status="inactive")).read_bytes()

    def store_failed(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("base perdue pendant l'import")

    def inbox_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:  # undone alone: the hub's environment (keys, home) stays
        patch.setattr(consent_inbox, "import_consents", store_failed)
        patch.setattr(LocalFolder, "store_file", inbox_full)
        with pytest.raises(RuntimeError):
            consent_inbox.import_consent_inboxes(home, engine, pseudonymiser)
    kept = [p for p in (home.staging / "consentements").rglob("*") if p.is_file() and p.read_bytes() == original]
    assert kept, "the only copy of the partner's file was removed"
    report = consent_inbox.import_consent_inboxes(home, engine, pseudonymiser)
    assert [f for f in report.fichiers if f.rapport is not None and f.rapport.importes + f.rapport.retraits >= 0]
    assert not [p for p in (home.staging / "consentements").rglob("*") if p.is_file() and p.read_bytes() == original]
    archived = list((home.root / "archive" / "consentements" / "departement-052").iterdir())
    assert len(archived) == 1 and archived[0].read_bytes() == original

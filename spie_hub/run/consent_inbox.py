"""Consent files from partners' consent inboxes: the issuer is the inbox a file came through, never a free string.

Each declared issuer (``consentements.emetteurs`` in flows.yaml) has its inbox. A file there is claimed as flow
inputs are (``run/claim.py``: regular file only, stable, copied once into a private folder and hashed while
copied, taken from the inbox only if unchanged), imported from that private copy with the issuer's authority, then
archived under an opaque name (the partner's file name may hold anything). A file of another type is refused and
left in place; a claim lost to a concurrent import is skipped (exactly one import takes a file). A file claimed by
an import that was killed is given back to its inbox by the next pass (its private folder is locked while alive).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from connectors.transports.base import printable_name
from connectors.transports.registry import open_transport
from consent.fhir_import import ImportReport, import_consents
from spie_hub.core.errors import ConfigurationError, HubError
from spie_hub.core.failpoints import failpoint
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import ConsentIssuer, ConsentRegistry, consent_registry
from spie_hub.run.claim import INPUT_NAME, Gone, NotReady, Refused, claim_from

SUFFIXES = (".json", ".csv")
LOCK_NAME = ".verrou"


@dataclass
class InboxFile:
    emetteur: str
    nom: str  # printable name, for the operator only
    rapport: ImportReport | None = None
    motif: str | None = None  # why the file was not imported (left in the inbox)
    archive: str | None = None


@dataclass
class InboxReport:
    fichiers: list[InboxFile] = field(default_factory=list)

    @property
    def erreurs(self) -> bool:
        return any(f.motif is not None or (f.rapport is not None and f.rapport.erreurs) for f in self.fichiers)


def _issuers(registry: ConsentRegistry, emetteur: str | None) -> list[ConsentIssuer]:
    if emetteur is None:
        return list(registry.emetteurs.values())
    if emetteur not in registry.emetteurs:
        declared = ", ".join(sorted(registry.emetteurs)) or "aucun"
        raise ConfigurationError(f"Émetteur de consentements non déclaré : {emetteur} (section « consentements » de "
                                 f"flows.yaml ; déclarés : {declared})")
    return [registry.emetteurs[emetteur]]


def _archive(home: HubHome, issuer: str, copy: Path, sha256: str, suffix: str) -> Path:
    folder = home.root / "archive" / "consentements" / issuer
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / f"{stamp}_{sha256[:16]}{suffix}"
    os.replace(copy, target)
    return target


def _give_back(transport: object, name: str, copy: Path, suffix: str) -> bool:
    """Put the file back in the issuer's inbox; False when it could not be (a full or read-only inbox, both names
    taken): the private copy must then be kept for the next pass, never removed with the only copy of the file."""
    from connectors.transports.base import FileExists

    for candidate in (name, f"{Path(name).stem}.repris-{uuid.uuid4().hex[:8]}{suffix}"):
        try:
            transport.store_file(candidate, copy)  # type: ignore[attr-defined]
            return True
        except FileExists:
            continue
        except (HubError, OSError):
            return False
    return False


@contextmanager
def _held(private: Path) -> Iterator[None]:
    """The private folder of one file being imported, locked for as long as its process lives (a killed process
    releases it): another pass never takes back a file still being imported."""
    private.mkdir(parents=True, mode=0o700)
    fd = os.open(private / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _recover(home: HubHome, registry: ConsentRegistry) -> list[str]:
    """Files a killed import had claimed (taken from the inbox, copied, not archived): given back to their inbox
    under a new name, so this pass imports them (what was committed is recognised as unchanged)."""
    root = home.staging / "consentements"
    recovered: list[str] = []
    if not root.is_dir():
        return recovered
    for private in sorted(root.iterdir()):
        issuer_id, _, rest = private.name.partition("_")
        suffix = "." + rest.partition("_")[0]
        issuer = registry.emetteurs.get(issuer_id)
        if issuer is None or suffix not in SUFFIXES or not private.is_dir() or private.is_symlink():
            continue
        try:
            fd = os.open(private / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # being created by a live import, or not ours
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live import holds it
            copies = [p for p in (private / f"{INPUT_NAME}{suffix}", private / INPUT_NAME) if p.is_file()
                      and not p.is_symlink()]
            if copies:
                name = f"repris-{uuid.uuid4().hex[:12]}{suffix}"
                if not _give_back(open_transport(issuer.boite, home), name, copies[0], suffix):
                    continue  # kept for the next pass
                recovered.append(name)
            shutil.rmtree(private, ignore_errors=True)
        finally:
            os.close(fd)
    return recovered


def import_consent_inboxes(home: HubHome, engine: object, pseudonymiser: Pseudonymiser, *,
                           emetteur: str | None = None, registry: ConsentRegistry | None = None,
                           today: dt.date | None = None) -> InboxReport:
    """Import every file waiting in the consent inbox of each declared issuer (or of ``emetteur`` only)."""
    registry = registry if registry is not None else consent_registry()
    report = InboxReport()
    _recover(home, registry)
    for issuer in _issuers(registry, emetteur):
        transport = open_transport(issuer.boite, home)
        for entry in transport.list(issuer.boite.motif):
            item = InboxFile(issuer.id, printable_name(entry.name))
            report.fichiers.append(item)
            suffix = Path(entry.name).suffix.lower()
            if suffix not in SUFFIXES:
                item.motif = "type de fichier non pris en charge (.json FHIR ou .csv du hub attendu) : laissé en place"
                continue
            private = home.staging / "consentements" / f"{issuer.id}_{suffix[1:]}_{uuid.uuid4().hex}"
            with _held(private):
                try:
                    claimed = claim_from(transport, entry.name, private, stability=issuer.boite.stabilite_secondes)
                except (NotReady, Gone, Refused) as error:
                    item.motif = str(error)
                    shutil.rmtree(private, ignore_errors=True)
                    continue
                failpoint("consentements-boite")  # claimed, not yet imported: the next pass gives it back
                copy = claimed.path.with_suffix(suffix)
                settled = False
                try:
                    os.replace(claimed.path, copy)
                    item.rapport = import_consents(copy, engine, pseudonymiser,  # type: ignore[arg-type]
                                                   emetteur=issuer.id, issuer=issuer, registry=registry, today=today,
                                                   home=home)
                    item.archive = str(_archive(home, issuer.id, copy, claimed.sha256, suffix))
                    settled = True
                except BaseException:
                    # Interrupted or the store failed: the file goes back to the inbox (re-importing what was
                    # already committed changes nothing: same versions are recognised), never lost with the copy;
                    # if the inbox cannot take it, the private copy stays for the next pass (_recover).
                    settled = _give_back(transport, entry.name, copy if copy.exists() else claimed.path, suffix)
                    raise
                finally:
                    if settled:
                        shutil.rmtree(private, ignore_errors=True)
    return report

"""Consent files from partners' consent inboxes: the issuer is the inbox a file came through, never a free string.

Each declared issuer (``consentements.emetteurs`` in flows.yaml) has its inbox. A file there is claimed as flow
inputs are (``run/claim.py``: regular file only, stable, copied once into a private folder and hashed while
copied, taken from the inbox only if unchanged), imported from that private copy with the issuer's authority, then
archived under an opaque name (the partner's file name may hold anything). A file of another type is refused and
left in place; a claim lost to a concurrent import is skipped (exactly one import takes a file).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from connectors.transports.base import printable_name
from connectors.transports.registry import open_transport
from consent.fhir_import import ImportReport, import_consents
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import ConsentIssuer, ConsentRegistry, consent_registry
from spie_hub.run.claim import Gone, NotReady, Refused, claim_from

SUFFIXES = (".json", ".csv")


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


def _give_back(transport: object, name: str, copy: Path, suffix: str) -> None:
    from connectors.transports.base import FileExists

    for candidate in (name, f"{Path(name).stem}.repris-{uuid.uuid4().hex[:8]}{suffix}"):
        try:
            transport.store_file(candidate, copy)  # type: ignore[attr-defined]
            return
        except FileExists:
            continue


def import_consent_inboxes(home: HubHome, engine: object, pseudonymiser: Pseudonymiser, *,
                           emetteur: str | None = None, registry: ConsentRegistry | None = None,
                           today: dt.date | None = None) -> InboxReport:
    """Import every file waiting in the consent inbox of each declared issuer (or of ``emetteur`` only)."""
    registry = registry if registry is not None else consent_registry()
    report = InboxReport()
    for issuer in _issuers(registry, emetteur):
        transport = open_transport(issuer.boite, home)
        for entry in transport.list(issuer.boite.motif):
            item = InboxFile(issuer.id, printable_name(entry.name))
            report.fichiers.append(item)
            suffix = Path(entry.name).suffix.lower()
            if suffix not in SUFFIXES:
                item.motif = "type de fichier non pris en charge (.json FHIR ou .csv du hub attendu) : laissé en place"
                continue
            private = home.staging / "consentements" / uuid.uuid4().hex
            try:
                claimed = claim_from(transport, entry.name, private, stability=issuer.boite.stabilite_secondes)
            except (NotReady, Gone) as error:
                item.motif = str(error)
                shutil.rmtree(private, ignore_errors=True)
                continue
            except Refused as error:
                item.motif = str(error)
                shutil.rmtree(private, ignore_errors=True)
                continue
            copy = claimed.path.with_suffix(suffix)
            try:
                os.replace(claimed.path, copy)
                item.rapport = import_consents(copy, engine, pseudonymiser, emetteur=issuer.id,  # type: ignore[arg-type]
                                               issuer=issuer, registry=registry, today=today)
                item.archive = str(_archive(home, issuer.id, copy, claimed.sha256, suffix))
            except BaseException:
                # Interrupted or the store failed: the file goes back to the inbox (re-importing what was already
                # committed changes nothing: same versions are recognised), never lost with the private copy.
                _give_back(transport, entry.name, copy if copy.exists() else claimed.path, suffix)
                raise
            finally:
                shutil.rmtree(private, ignore_errors=True)
    return report

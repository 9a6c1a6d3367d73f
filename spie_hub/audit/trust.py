"""The trust anchor of every verification in the hub: the published public keys, never a key the database holds.

A key stored in the database (``audit_keys``) or carried by a bundle is only a claim: whoever rewrites the log can
swap it for his own and re-sign. Verification trusts only what the operator configured outside the store:

- ``SPIE_HUB_AUDIT_PUBLIC_KEYS``: the published PEM files, one or more paths separated by ``:``, each a file or a
  directory of ``*.pem``. A file is named ``audit-<kid>.pem`` (``kid``: the key id signatures carry). The name is
  the convention, not a sidecar file: one file to publish, copy and compare, and a PEM has no field of its own for
  an id. A ``.pem`` not so named is refused rather than guessed.
- ``SPIE_HUB_AUDIT_KEY_FINGERPRINTS``: ``kid:sha256hex`` pairs separated by commas, the SHA-256 of the raw 32-byte
  public key (``fingerprint``), as ``spie-hub cles hsm-generer`` prints it. A key found elsewhere (the
  ``audit_keys`` table, a bundle, the signer) is admitted only if its fingerprint is listed under its kid.

With neither configured, the anchor falls back to the public key of the hub's current signer, said in a note: an
operator who can make the hub sign can also re-sign a rewritten log, so that anchor proves less (but it is still
never the database's copy of a key). Both settings are read from the environment, then from the Airflow Variable
of the same name in lower case inside a task.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from spie_hub.audit.signing import Signer, public_b64_from_pem
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome
from spie_hub.privacy.keys import secret_from_airflow

ENV_PUBLIC_KEYS = "SPIE_HUB_AUDIT_PUBLIC_KEYS"
ENV_FINGERPRINTS = "SPIE_HUB_AUDIT_KEY_FINGERPRINTS"
PEM_NAME = re.compile(r"^audit-([a-z0-9-]{1,16})\.pem$")
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def _setting(env: str) -> str | None:
    return os.environ.get(env) or secret_from_airflow(env.lower())


def fingerprint(public_b64: str) -> str:
    """SHA-256 (hex) of the raw 32-byte Ed25519 public key: what a partner compares by telephone or in a letter."""
    try:
        raw = base64.b64decode(public_b64, validate=True)
    except (ValueError, binascii.Error):
        raise ConfigurationError("Clé publique illisible (base64 attendu)") from None
    if len(raw) != 32:
        raise ConfigurationError("Clé publique Ed25519 : 32 octets attendus")
    return hashlib.sha256(raw).hexdigest()


def _pem_files(value: str) -> list[Path]:
    files: list[Path] = []
    for part in (p for p in value.split(":") if p.strip()):
        path = Path(part.strip()).expanduser()
        if path.is_dir():
            files.extend(sorted(path.glob("*.pem")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigurationError(f"{ENV_PUBLIC_KEYS} : {path} n'existe pas (fichier audit-<kid>.pem ou dossier "
                                     "de clés publiques publiées)")
    return files


def _read_published(value: str) -> dict[str, tuple[str, Path]]:
    keys: dict[str, tuple[str, Path]] = {}
    for path in _pem_files(value):
        match = PEM_NAME.match(path.name)
        if not match:
            raise ConfigurationError(f"{ENV_PUBLIC_KEYS} : {path.name} ne suit pas le nom audit-<kid>.pem (kid : 1 à 16 "
                                     "caractères parmi a-z, 0-9 et '-') ; renommez-le d'après l'identifiant de la clé")
        try:
            public_b64 = public_b64_from_pem(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ConfigurationError):
            raise ConfigurationError(f"{ENV_PUBLIC_KEYS} : {path} n'est pas une clé publique Ed25519 (PEM) lisible") from None
        kid = match.group(1)
        if kid in keys and keys[kid][0] != public_b64:
            raise ConfigurationError(f"{ENV_PUBLIC_KEYS} : deux clés publiques différentes pour l'identifiant {kid} "
                                     f"({keys[kid][1]} et {path})")
        keys[kid] = (public_b64, path)
    if not keys:
        raise ConfigurationError(f"{ENV_PUBLIC_KEYS} est défini mais ne désigne aucune clé publique (*.pem)")
    return keys


def published_keys(home: HubHome | None = None) -> dict[str, str]:
    """kid → public key (raw, base64) of the configured published PEM files; empty when none is configured. Each
    is checked against its fingerprint when fingerprints are configured too."""
    del home  # the published keys live outside the hub's home by design; the parameter keeps call sites uniform
    value = _setting(ENV_PUBLIC_KEYS)
    if not value:
        return {}
    pinned = pinned_fingerprints()
    keys = {}
    for kid, (public_b64, path) in _read_published(value).items():
        if kid in pinned and pinned[kid] != fingerprint(public_b64):
            raise ConfigurationError(f"{path} : son empreinte ne correspond pas à celle de {kid} dans {ENV_FINGERPRINTS} "
                                     "(l'une des deux est fausse : vérifiez auprès de l'émetteur de la clé)")
        keys[kid] = public_b64
    return keys


def pinned_fingerprints() -> dict[str, str]:
    """kid → SHA-256 hex of the raw public key, from ``SPIE_HUB_AUDIT_KEY_FINGERPRINTS``; empty when not set."""
    value = _setting(ENV_FINGERPRINTS)
    pinned: dict[str, str] = {}
    for item in (i.strip() for i in (value or "").split(",") if i.strip()):
        kid, sep, digest = item.partition(":")
        digest = digest.strip().lower().replace(":", "")
        if not sep or not PEM_NAME.match(f"audit-{kid.strip()}.pem") or not FINGERPRINT.match(digest):
            raise ConfigurationError(f"{ENV_FINGERPRINTS} : « {item[:40]} » illisible (attendu : kid:empreinte SHA-256 en "
                                     "hexadécimal, 64 caractères, séparés par des virgules)")
        if pinned.get(kid.strip(), digest) != digest:
            raise ConfigurationError(f"{ENV_FINGERPRINTS} : deux empreintes pour l'identifiant {kid.strip()}")
        pinned[kid.strip()] = digest
    return pinned


@dataclass(frozen=True)
class TrustAnchor:
    """The keys a verification may trust (kid → public key, base64), how they were chosen, and the note a command
    prints when the anchor is weaker than published keys (None otherwise)."""

    keys: dict[str, str]
    origin: str
    note: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)

    def admits(self, kid: str, public_b64: str) -> bool:
        """Whether a key found elsewhere (the ``audit_keys`` table, a bundle) may be trusted under ``kid``: it is
        one of the anchor's keys, or its fingerprint is the one configured for that kid."""
        if kid in self.keys:
            return self.keys[kid] == public_b64
        try:
            return kid in self.fingerprints and self.fingerprints[kid] == fingerprint(public_b64)
        except ConfigurationError:
            return False

    def admitted(self, found: dict[str, str]) -> dict[str, str]:
        """The anchor's keys, plus those of ``found`` (kid → public key) that it admits."""
        return self.keys | {kid: key for kid, key in found.items() if kid not in self.keys and self.admits(kid, key)}


def anchor_for_store(home: HubHome | None, signer: Signer | None) -> TrustAnchor:
    """What a verification of the store (or of a bundle) may trust: the published keys, the keys whose fingerprint
    is configured (the current signer's among them), or, with neither configured, the current signer's key with a
    note saying the anchor is the hub's own key. Never the ``audit_keys`` table."""
    keys = published_keys(home)
    pinned = pinned_fingerprints()
    notes = []
    if keys or pinned:
        origin = " et ".join(name for name, used in ((ENV_PUBLIC_KEYS, keys), (ENV_FINGERPRINTS, pinned)) if used)
        anchor = TrustAnchor(dict(keys), origin, None, pinned)
        if signer is not None:
            if anchor.admits(signer.kid, signer.public_b64):
                anchor.keys.setdefault(signer.kid, signer.public_b64)
            else:
                notes.append(f"la clé de signature actuelle du hub ({signer.kid}) n'est ni publiée ni déclarée par "
                             f"son empreinte ({origin}) : ce qu'elle signe ne sera pas reconnu")
        root = (home or HubHome.from_env()).root.resolve()
        inside = [p for p in _published_paths() if p.resolve().is_relative_to(root)]
        if inside:
            notes.append(f"clé(s) publiée(s) conservée(s) dans le dossier du hub ({', '.join(p.name for p in inside)}) : "
                         "modifiables par son processus, elles prouvent moins qu'une copie tenue hors du hub")
        return TrustAnchor(anchor.keys, origin, ("Note : " + " ; ".join(notes) + ".") if notes else None, pinned)
    if signer is None:
        raise ConfigurationError(f"Aucune clé de confiance pour vérifier le journal : définissez {ENV_PUBLIC_KEYS} "
                                 f"(clés publiques publiées, audit-<kid>.pem) ou {ENV_FINGERPRINTS} (kid:empreinte).")
    return TrustAnchor(
        {signer.kid: signer.public_b64}, "clé de signature actuelle du hub",
        f"Note : ancre de confiance = la clé de signature actuelle du hub ({signer.kid}), faute de {ENV_PUBLIC_KEYS} "
        f"ou {ENV_FINGERPRINTS} : qui peut faire signer le hub peut aussi signer un journal réécrit ; configurez la "
        "clé publiée (ou son empreinte) pour une vérification qui ne repose pas sur le hub lui-même.")


def _published_paths() -> list[Path]:
    value = _setting(ENV_PUBLIC_KEYS)
    return _pem_files(value) if value else []

"""Claiming an input: the run reads one private, immutable copy of the file, taken once.

Only a regular file is taken (a link, a device, a pipe or a folder is refused, never followed or opened), and only
when it is stable: old enough (``stabilite_secondes`` of the source transport) and unchanged in size and time while
it was copied. The copy is hashed as it is written, in the run's private folder (mode 0600); every later step —
hash, validation (a child process included), mapping, quarantine copy, archive — reads those same bytes. The file
leaves the inbox only if it is still the one copied: a file replaced meanwhile stays for the next pass.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from connectors.transports.base import Transport, printable_name
from spie_hub.core.errors import FatalInputError, HubError, StorageError

INPUT_NAME = "entree"


def input_ref(name: str) -> str:
    """An opaque, stable reference to an inbox file (XComs, task labels, logs never carry the partner's name)."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class NotReady(HubError):
    """The file is still being written (too recent, or changed while it was read): left for the next pass."""


class Gone(HubError):
    """The file left the inbox before it could be taken (another run took it)."""


class Refused(FatalInputError):
    """Not a regular file (link, device, pipe, folder): refused without being read."""


@dataclass(frozen=True)
class ClaimedInput:
    path: Path  # the private copy
    sha256: str
    size: int
    name: str  # printable name, for the operator only
    ref: str


def _copy(stream: BinaryIO, destination: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    try:
        destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except OSError as error:
        destination.unlink(missing_ok=True)
        raise StorageError.from_os(error, destination.parent) from None
    return digest.hexdigest(), size


def claim_from(transport: Transport, name: str, private_dir: Path, *, stability: float = 0.0,
               now: float | None = None) -> ClaimedInput:
    """Take ``name`` from ``transport`` into ``private_dir``; ``Refused``, ``NotReady`` or the claimed input."""
    before = transport.stat(name)
    if before is None:
        raise Gone("Fichier absent de la boîte de dépôt (pris par une autre exécution ?)")
    if not before.regular:
        raise Refused("Lien symbolique ou fichier spécial refusé : seuls les fichiers ordinaires sont traités")
    if before.links > 1:  # a second name for a file elsewhere (a key, say): refused like a symbolic link
        raise Refused("Fichier à plusieurs liens physiques refusé : seuls les fichiers déposés une fois sont traités")
    # Whole-second times (SFTP) make a file look up to that much older than it is.
    if (now or time.time()) - before.mtime < stability + getattr(transport, "mtime_resolution", 0.0):
        raise NotReady(f"Fichier trop récent (modifié il y a moins de {stability:g} s) : repris au prochain passage")
    destination = private_dir / INPUT_NAME
    with transport.open(name) as stream:
        opened = transport.opened(name, stream) or before
        sha, size = _copy(stream, destination)
        read = transport.opened(name, stream) or before
    after = transport.stat(name)
    # Same entry listed, opened, read and still there (inode and change time included: a file renamed over or
    # rewritten in place with its size and time put back is not the file that was listed), and read whole.
    if not (before.same_file(opened) and before.same_file(read) and before.same_file(after)) or size != before.size:
        destination.unlink(missing_ok=True)
        raise NotReady("Fichier modifié pendant sa lecture (encore en cours d'écriture ?) : repris au prochain passage")
    if not transport.delete(name, expected=before):
        # Taken meanwhile (two flows on one inbox, two schedulers) or replaced: exactly one claim wins.
        destination.unlink(missing_ok=True)
        raise Gone("Fichier pris par une autre exécution ou remplacé pendant sa lecture : repris au prochain passage")
    return ClaimedInput(destination, sha, size, printable_name(name), input_ref(name))


def claim_path(path: Path, private_dir: Path) -> ClaimedInput:
    """Copy a file named on the command line (left where it is) into ``private_dir``, with the same checks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FatalInputError(f"Fichier d'entrée introuvable : {printable_name(str(path))}") from None
    except OSError as error:
        if error.errno == 40:  # ELOOP: a symbolic link
            raise Refused("Lien symbolique refusé : seuls les fichiers ordinaires sont traités") from None
        raise StorageError.from_os(error, path.parent) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise Refused("Fichier spécial refusé (périphérique, tube ou dossier) : seuls les fichiers ordinaires sont traités")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as stream:
        sha, size = _copy(stream, private_dir / INPUT_NAME)
        again = os.fstat(stream.fileno())
    if (again.st_size, again.st_mtime_ns, again.st_ctime_ns) != (info.st_size, info.st_mtime_ns, info.st_ctime_ns) \
            or size != info.st_size:
        (private_dir / INPUT_NAME).unlink(missing_ok=True)
        raise NotReady("Fichier modifié pendant sa lecture (encore en cours d'écriture ?) : relancer une fois complet")
    return ClaimedInput(private_dir / INPUT_NAME, sha, size, printable_name(path.name), input_ref(path.name))


"""What every transport offers the hub: list, open for reading, store atomically, move, delete, name a URI.

A transport is *where* files are (a local folder, an SFTP account, an HTTPS API landed as files); the format
(``connectors/formats``) is *how* their bytes read. The run only ever sees this interface, so adding a transport is
one class and one registry line (``connectors/transports/registry.py``), never an edit of the run.

Streams, not paths: ``open`` yields a binary stream and ``store`` a binary stream that becomes the named file
atomically when the block ends without error (and leaves nothing behind otherwise), whatever the transport.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spie_hub.core.errors import FatalInputError
from spie_hub.core.home import HubHome

#: Files the hub writes while it stores are named with this prefix (only on transports that cannot stage them
#: elsewhere): a crash may leave one, and ``clean_temporaries`` removes them at the next start.
TEMPORARY_PREFIX = ".spie-hub-tmp-"


def safe_name(name: str) -> str:
    """Refuse names that could escape the folder or confuse a partner's tools."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
            or name.startswith(TEMPORARY_PREFIX)):
        raise FatalInputError("Nom de fichier refusé (chemin, séparateur ou caractère de contrôle)")
    return name


def entry_name(name: str) -> str:
    """A name read from a listing (a partner may use control characters): only what would leave the folder is
    refused. Names the hub writes go through ``safe_name``."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise FatalInputError("Nom de fichier refusé (chemin ou séparateur)")
    return name


def sha256_stream(handle: BinaryIO) -> str:
    """SHA-256 of what is left to read in ``handle``, by 1 MiB chunks (memory flat with file size)."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def printable_name(name: str) -> str:
    """A received file's name as the hub stores and shows it: control characters (a newline could forge a log
    line, an escape sequence could drive a terminal) replaced by '?'."""
    # Control and format characters (a newline, an escape, a right-to-left override that reverses what is shown)
    return "".join("?" if unicodedata.category(ch) in _HIDDEN else ch for ch in name)[:255]


_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}


@dataclass(frozen=True)
class FileInfo:
    """One entry of a listing. ``regular`` is false for links, devices, pipes and folders: the hub never reads them."""

    name: str
    size: int
    mtime: float
    regular: bool = True
    #: What a partner cannot put back when it replaces or rewrites a file (device, inode, change time for a local
    #: folder); empty when the transport has nothing better than size and time.
    identity: str = ""
    #: Hard links to the same content (a second name for a key file is refused, like a symbolic link).
    links: int = 1

    def same_file(self, other: FileInfo | None) -> bool:
        return other is not None and (self.size, self.mtime, self.regular, self.identity) == (
            other.size, other.mtime, other.regular, other.identity)


class TransportOptions(BaseModel):
    """The options a transport accepts in ``flows.yaml`` (each transport extends it). Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    #: Inbound only: the shell pattern of the files a source takes.
    motif: str = "*"
    #: Inbound only: a file is taken once unchanged for this many seconds (a partner may still be writing it).
    stabilite_secondes: int = Field(default=0, ge=0)

    @field_validator("motif")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if "/" in value or "\\" in value or not value:
            raise ValueError("motif : un nom de fichier, sans dossier")
        return value


class FileExists(FatalInputError):
    """A store that would replace an existing file under the same name (deliveries are never replaced)."""


class Transport(ABC):
    """A place holding files, with named verbs (as Airflow's SFTP hook: list, retrieve, store)."""

    #: The ``type`` that selects this transport in ``flows.yaml``.
    type: ClassVar[str]
    #: Its options model, validated when the registry is loaded.
    Options: ClassVar[type[TransportOptions]] = TransportOptions

    @classmethod
    @abstractmethod
    def from_options(cls, options: TransportOptions, home: HubHome) -> Transport:
        """Build the transport from its validated ``flows.yaml`` block (and, for remote ones, its connection id)."""

    @abstractmethod
    def list(self, pattern: str = "*") -> list[FileInfo]:
        """Entries matching ``pattern`` (fnmatch), sorted by name; hidden names (``.…``) are never listed."""

    @abstractmethod
    def open(self, name: str) -> AbstractContextManager[BinaryIO]:
        """Read a regular file; a link or a special file is refused (``FatalInputError``), never followed."""

    def opened(self, name: str, stream: BinaryIO) -> FileInfo | None:
        """The entry a stream from ``open`` actually reads, when the transport can tell (else None)."""
        return None

    @abstractmethod
    def store(self, name: str, *, replace: bool = False) -> AbstractContextManager[BinaryIO]:
        """Write ``name`` atomically: visible whole when the block ends, absent if it raises. Without ``replace`` an
        existing different file under that name is an error (``FileExists``); an identical one is left as is."""

    def stat(self, name: str) -> FileInfo | None:
        """The entry ``name`` (without following a link), or None."""
        return next((entry for entry in self.list(name) if entry.name == name), None)

    @abstractmethod
    def delete(self, name: str, *, expected: FileInfo | None = None) -> bool:
        """Remove ``name``; with ``expected``, only if it is still that file (same size and time), so that a file
        replaced meanwhile is kept for the next pass. Returns whether something was removed."""

    def store_file(self, name: str, source: Path, *, replace: bool = False) -> None:
        """``store`` the content of a local file of the hub's (staged delivery, claimed input); a transport may do
        better than a copy (a local folder links it)."""
        import shutil

        with source.open("rb") as handle, self.store(name, replace=replace) as target:
            shutil.copyfileobj(handle, target, 1 << 20)

    def move(self, name: str, target: Transport, new_name: str | None = None) -> None:
        """Move ``name`` to ``target`` (another folder, another transport): stored there atomically first, then
        removed here, so that an interruption leaves a copy, never nothing. Transports may do better (a rename)."""
        import shutil

        with self.open(name) as source, target.store(new_name or name) as destination:
            shutil.copyfileobj(source, destination, 1 << 20)
        self.delete(name)

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def child(self, folder: str) -> Transport:
        """The same transport one folder down (a sender's ``rejets/`` or ``accuses/``)."""

    @abstractmethod
    def uri(self, name: str = "") -> str:
        """Where ``name`` lives, for people and lineage (never holding a secret)."""

    def location(self, name: str = "") -> str:
        """Where ``name`` lives, as shown to people (a path for a local folder); ``uri`` by default."""
        return self.uri(name)

    def clean_temporaries(self) -> list[str]:
        """Remove what an interrupted store left behind; return the names removed."""
        return []



_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


def confined_folder(value: str) -> str:
    """A folder given in ``flows.yaml``: relative, without ``..``, so that it stays inside ``SPIE_HUB_HOME``."""
    if not isinstance(value, str) or not _FOLDER.match(value) or any(part == ".." for part in value.split("/")):
        raise ValueError(f"dossier {value!r} refusé : chemin relatif à SPIE_HUB_HOME attendu, sans « .. » ni chemin absolu")
    return value

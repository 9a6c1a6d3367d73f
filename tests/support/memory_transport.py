"""An in-memory ``Transport`` for unit tests: files are bytes in a dict, folders are name prefixes.

It keeps the contract of ``connectors.transports.local.LocalFolder`` where the run relies on it:
- ``store`` is atomic: the file appears whole when the block ends without error, and nothing appears otherwise;
- without ``replace``, a store over an existing name leaves an identical file as it is (same time) and refuses a
  different one with ``FileExists``; with ``replace`` it overwrites;
- ``list`` is sorted and hides ``.…`` names and sub-folders (``child``), which ``stat`` shows as not regular;
- names the hub writes go through ``safe_name``, names it reads through ``entry_name``;
- an entry put with ``regular=False`` (standing for a link or a device) is listed as not regular and never opened;
- ``delete(expected=…)`` removes the entry only if it is still that file (size, time, kind).

``MemoryTransport.shared(space)`` gives one store per space name for the whole process, so that a transport built
by the registry (``from_options``) and the test that checks it see the same files; ``reset_shared`` forgets them.
"""

from __future__ import annotations

import fnmatch
import io
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

from pydantic import field_validator

from connectors.transports.base import (
    FileExists,
    FileInfo,
    Transport,
    TransportOptions,
    confined_folder,
    entry_name,
    safe_name,
)
from spie_hub.core.errors import FatalInputError, StorageError
from spie_hub.core.home import HubHome

# Strictly increasing modification times: two stores in the same clock tick still differ, as a partner's rewrite
# of a file would on a real file system with nanosecond times.
_CLOCK = itertools.count(1)


@dataclass
class MemoryFile:
    data: bytes
    mtime: float
    regular: bool = True


@dataclass
class MemoryStore:
    """The files of one space: full path (``folder/name``) → file."""

    files: dict[str, MemoryFile] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MemoryOptions(TransportOptions):
    """``{type: memoire, espace: …, dossier: …, motif: …}`` in ``flows.yaml``."""

    espace: str = "defaut"
    dossier: str = ""
    motif: str = "*"
    stabilite_secondes: int = 0

    @field_validator("dossier")
    @classmethod
    def _confined(cls, value: str) -> str:
        return confined_folder(value) if value else value


class MemoryTransport(Transport):
    type: ClassVar[str] = "memoire"
    Options: ClassVar[type[TransportOptions]] = MemoryOptions
    _SHARED: ClassVar[dict[str, MemoryStore]] = {}

    def __init__(self, store: MemoryStore | None = None, folder: str = "", *, space: str = "local") -> None:
        self.backing = store if store is not None else MemoryStore()
        self.folder = folder.strip("/")
        self.space = space

    # -- shared spaces (what ``from_options`` opens) -------------------------------------------------------------
    @classmethod
    def shared(cls, space: str = "defaut", folder: str = "") -> MemoryTransport:
        store = cls._SHARED.setdefault(space, MemoryStore())
        return cls(store, folder, space=space)

    @classmethod
    def reset_shared(cls) -> None:
        cls._SHARED.clear()

    @classmethod
    def from_options(cls, options: TransportOptions, home: HubHome) -> MemoryTransport:
        assert isinstance(options, MemoryOptions)
        return cls.shared(options.espace, options.dossier)

    # -- helpers for tests ------------------------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name

    def put(self, name: str, data: bytes, *, regular: bool = True) -> None:
        """Drop a file as a partner would (no hub check on the name; ``regular=False`` for a link or a device)."""
        with self.backing.lock:
            self.backing.files[self._key(entry_name(name))] = MemoryFile(bytes(data), float(next(_CLOCK)), regular)

    def read(self, name: str) -> bytes:
        return self.backing.files[self._key(name)].data

    def names(self) -> list[str]:
        """Every name in this folder (hidden ones included), sorted: what a test asserts on."""
        return sorted(key.removeprefix(self._key("")) for key in self.backing.files
                      if key.startswith(self._key("")) and "/" not in key.removeprefix(self._key("")))

    def all_files(self) -> dict[str, bytes]:
        """Every file of the space, sub-folders included, by full path."""
        return {key: f.data for key, f in sorted(self.backing.files.items())}

    # -- verbs --------------------------------------------------------------------------------------------------------
    def list(self, pattern: str = "*") -> list[FileInfo]:
        prefix = self._key("")
        entries = []
        with self.backing.lock:
            items = list(self.backing.files.items())
        for key, entry in items:
            if not key.startswith(prefix):
                continue
            name = key.removeprefix(prefix)
            if "/" not in name and not name.startswith(".") and fnmatch.fnmatchcase(name, pattern):
                entries.append(FileInfo(name, len(entry.data), entry.mtime, entry.regular))
        return sorted(entries, key=lambda e: e.name)

    def _is_folder(self, name: str) -> bool:
        prefix = self._key(name) + "/"
        return any(key.startswith(prefix) for key in self.backing.files)

    def stat(self, name: str) -> FileInfo | None:
        entry = self.backing.files.get(self._key(entry_name(name)))
        if entry is None:
            return FileInfo(name, 0, 0.0, False) if self._is_folder(name) else None
        return FileInfo(name, len(entry.data), entry.mtime, entry.regular)

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        entry = self.backing.files.get(self._key(entry_name(name)))
        if entry is None and not self._is_folder(name):
            raise StorageError(f"Fichier introuvable dans {self.uri()}")
        if entry is None or not entry.regular:
            raise FatalInputError("Lien symbolique ou fichier spécial refusé : seuls les fichiers ordinaires sont lus")
        with io.BytesIO(entry.data) as handle:
            yield handle

    @contextmanager
    def store(self, name: str, *, replace: bool = False) -> Iterator[BinaryIO]:
        key = self._key(safe_name(name))
        buffer = io.BytesIO()
        yield buffer  # an exception here leaves nothing behind: the buffer is simply dropped
        data = buffer.getvalue()
        with self.backing.lock:
            existing = self.backing.files.get(key)
            if existing is not None and not replace:
                if existing.data != data or not existing.regular:
                    raise FileExists(f"Un autre fichier porte déjà ce nom dans {self.uri()} : jamais remplacé")
                return  # an identical file is left as it is (as os.link + digest comparison does)
            self.backing.files[key] = MemoryFile(data, float(next(_CLOCK)))

    def delete(self, name: str, *, expected: FileInfo | None = None) -> bool:
        key = self._key(entry_name(name))
        with self.backing.lock:
            entry = self.backing.files.get(key)
            if entry is None:
                if self._is_folder(name):  # as unlink() on a folder
                    raise StorageError(f"Dossier {name!r} : suppression refusée dans {self.uri()}")
                return False
            if expected is not None and (len(entry.data), entry.mtime, entry.regular) != (
                    expected.size, expected.mtime, expected.regular):
                return False
            del self.backing.files[key]
            return True

    def exists(self, name: str) -> bool:
        return self._key(entry_name(name)) in self.backing.files or self._is_folder(name)

    def child(self, folder: str) -> MemoryTransport:
        return MemoryTransport(self.backing, f"{self.folder}/{confined_folder(folder)}".strip("/"), space=self.space)

    def uri(self, name: str = "") -> str:
        path = "/".join(p for p in (self.folder, name) if p)
        return f"memoire://{self.space}/{path}"

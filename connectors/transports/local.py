"""Local-folder transport: the embedded default for inboxes, drop folders and the hub's own folders.

Every folder is confined to ``SPIE_HUB_HOME``: the registry refuses absolute and ``..`` paths, and a folder that
resolves outside the home (a symlinked folder) is refused when used. Links and special files inside a folder are
listed as not regular and never opened (``O_NOFOLLOW``, ``O_NONBLOCK``, then ``fstat``).

A store is written in the hub's private staging area, flushed, then linked into the folder in one step: a partner
polling the folder never sees a half-written file or a ``.part``, and a delivery is never replaced under the same
name (``os.link`` fails if the name exists). Only when the folder sits on another file system is a hidden
temporary written beside the target, which ``clean_temporaries`` removes after a crash.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import socket
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, ClassVar

from pydantic import field_validator

from connectors.transports.base import (
    TEMPORARY_PREFIX,
    FileExists,
    FileInfo,
    Transport,
    TransportOptions,
    confined_folder,
    entry_name,
    safe_name,
    sha256_stream,
)
from spie_hub.core.errors import ConfigurationError, FatalInputError, StorageError
from spie_hub.core.failpoints import failpoint
from spie_hub.core.home import HubHome


class LocalFolderOptions(TransportOptions):
    dossier: str

    @field_validator("dossier")
    @classmethod
    def _confined(cls, value: str) -> str:
        return confined_folder(value)


def _info(name: str, info: os.stat_result) -> FileInfo:
    return FileInfo(name, info.st_size, info.st_mtime, stat.S_ISREG(info.st_mode),
                    f"{info.st_dev}:{info.st_ino}:{info.st_ctime_ns}", info.st_nlink)


def _digest(path: Path) -> str | None:
    """SHA-256 of a regular file, never following a link nor opening a pipe or a device (None for those)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return sha256_stream(handle)


class LocalFolder(Transport):
    type: ClassVar[str] = "dossier-local"
    Options: ClassVar[type[TransportOptions]] = LocalFolderOptions

    def __init__(self, home_root: Path, folder: str, *, scratch: Path | None = None) -> None:
        self.home_root = home_root.resolve()
        self.folder = folder.strip("/")
        self.root = self.home_root / self.folder if self.folder else self.home_root
        # Private, same file system as the home: where stores are written before they are linked into place.
        self.scratch = scratch or self.home_root / "staging" / ".stores"

    @classmethod
    def from_options(cls, options: TransportOptions, home: HubHome) -> LocalFolder:
        assert isinstance(options, LocalFolderOptions)
        return cls(home.root, options.dossier)

    # -- confinement -------------------------------------------------------------------------------------------
    def _folder(self, create: bool = False) -> Path:
        """The folder, walked down from the home one component at a time: a symbolic link anywhere below the home
        is refused (even one pointing inside it: another recipient's drop, ``keys/``), a file where a folder is
        expected too. Missing folders are created when ``create``."""
        current = self.home_root
        for part in (p for p in self.folder.split("/") if p):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    return self.root  # absent: nothing to list or read; created on the first store
                try:
                    os.mkdir(current, 0o755)
                except FileExistsError:
                    mode = os.lstat(current).st_mode
                except OSError as error:
                    raise StorageError.from_os(error, current.parent) from None
                else:
                    continue
            if stat.S_ISLNK(mode):
                raise ConfigurationError(f"Dossier {self.folder!r} : « {part} » est un lien symbolique, refusé "
                                         "(les dossiers du hub sont de vrais dossiers sous SPIE_HUB_HOME)")
            if not stat.S_ISDIR(mode):
                raise StorageError(f"Dossier {self.folder!r} : « {part} » n'est pas un dossier ; rien n'y est écrit")
        return self.root

    def path(self, name: str) -> Path:
        """An existing entry (read, stat, delete): any name a listing may return, but never a path."""
        return self._folder() / entry_name(name)

    # -- verbs ----------------------------------------------------------------------------------------------------
    def list(self, pattern: str = "*") -> list[FileInfo]:
        folder = self._folder()
        if not folder.is_dir():
            return []
        entries = []
        with os.scandir(folder) as scan:
            for entry in scan:
                if entry.name.startswith(".") or not fnmatch.fnmatchcase(entry.name, pattern):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    continue  # a folder is not a file of the flow (and is never removed by the hub)
                entries.append(_info(entry.name, info))
        return sorted(entries, key=lambda e: e.name)

    def stat(self, name: str) -> FileInfo | None:
        try:
            info = os.lstat(self.path(name))
        except FileNotFoundError:
            return None
        return _info(name, info)

    def opened(self, name: str, stream: BinaryIO) -> FileInfo:
        """The file a stream from ``open`` actually reads (to compare with a listing taken before)."""
        return _info(name, os.fstat(stream.fileno()))

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        path = self.path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise FatalInputError("Lien symbolique refusé : seuls les fichiers ordinaires sont lus") from None
            raise StorageError.from_os(error, path.parent) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FatalInputError("Fichier spécial refusé (périphérique, tube ou dossier) : seuls les fichiers ordinaires sont lus")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            yield handle

    @contextmanager
    def store(self, name: str, *, replace: bool = False) -> Iterator[BinaryIO]:
        final = self._folder(create=True) / safe_name(name)
        try:
            self.scratch.mkdir(parents=True, exist_ok=True)
            temporary = self.scratch / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"
            handle = open(temporary, "xb")  # noqa: SIM115 - closed below on every path
        except OSError as error:
            raise StorageError.from_os(error, self.scratch) from None
        try:
            yield handle  # type: ignore[misc]
            failpoint("ecriture-depot")
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            self._place(temporary, final, replace)
        except OSError as error:
            raise StorageError.from_os(error, final.parent) from None
        finally:
            handle.close()
            temporary.unlink(missing_ok=True)

    def store_file(self, name: str, source: Path, *, replace: bool = False) -> None:
        """A hub file placed by a hard link (no copy: a national file is hundreds of MB) when the source is on the
        same file system, through the same private temporary and the same no-replace rule as ``store``."""
        final = self._folder(create=True) / safe_name(name)
        try:
            self.scratch.mkdir(parents=True, exist_ok=True)
            temporary = self.scratch / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"
            os.link(source, temporary)
        except OSError as error:
            if error.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                return super().store_file(name, source, replace=replace)
            raise StorageError.from_os(error, source.parent) from None
        try:
            failpoint("ecriture-depot")
            self._place(temporary, final, replace)
        except OSError as error:
            raise StorageError.from_os(error, final.parent) from None
        finally:
            temporary.unlink(missing_ok=True)
        return None

    def _place(self, temporary: Path, final: Path, replace: bool) -> None:
        try:
            if replace:
                os.replace(temporary, final)
            else:
                os.link(temporary, final)
        except FileExistsError:
            if (existing := _digest(final)) is None or existing != _digest(temporary):
                raise FileExists(f"Un autre fichier porte déjà ce nom dans {self.location()} : jamais remplacé") from None
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            # Another file system: a hidden temporary beside the target, then one rename.
            beside = final.with_name(_temporary_name())
            with open(temporary, "rb") as source, open(beside, "xb") as target:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    target.write(chunk)
                target.flush()
                os.fsync(target.fileno())
            if not replace and os.path.lexists(final):
                beside.unlink()
                if (existing := _digest(final)) is None or existing != _digest(temporary):
                    raise FileExists(f"Un autre fichier porte déjà ce nom dans {self.uri()} : jamais remplacé") from None
                return
            os.replace(beside, final)
        self._sync_folder(final.parent)

    @staticmethod
    def _sync_folder(folder: Path) -> None:
        # The rename is durable only once the folder itself is flushed.
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, name: str, *, expected: FileInfo | None = None) -> bool:
        path = self.path(name)
        try:
            if expected is not None and not expected.same_file(self.stat(name)):
                return False
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as error:
            raise StorageError.from_os(error, self.root) from None

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name))

    def child(self, folder: str) -> LocalFolder:
        return LocalFolder(self.home_root, f"{self.folder}/{confined_folder(folder)}".strip("/"), scratch=self.scratch)

    def uri(self, name: str = "") -> str:
        return (self.root / name).as_uri() if name else self.root.as_uri()

    def remove_if_empty(self) -> None:
        """Remove the folder itself once emptied (a purged quarantine entry)."""
        with contextlib.suppress(OSError):
            self._folder().rmdir()

    def location(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)

    def clean_temporaries(self) -> list[str]:
        folder = self._folder()
        removed: list[str] = []
        for path in folder.glob(f"{TEMPORARY_PREFIX}*") if folder.is_dir() else []:
            if path.is_dir() and not path.is_symlink():
                continue  # not one of ours (the hub's temporaries are files): left alone
            # Only a temporary whose writer is dead: a drop shared by two flows may hold another run's live one.
            host, _, rest = path.name.removeprefix(TEMPORARY_PREFIX).partition("-")
            pid = rest.partition("-")[0]
            if host != _HOST or not pid.isdigit() or _alive(int(pid)):
                continue
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # hashed: a host name says nothing to a partner


def _temporary_name() -> str:
    """A temporary beside a target: host and process in its name, so that only a dead writer's is ever removed."""
    return f"{TEMPORARY_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_scratch(scratch: Path) -> list[str]:
    """Remove the private temporaries of stores whose process died (their name starts with its pid)."""
    removed = []
    for path in scratch.glob("*.tmp") if scratch.is_dir() else []:
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed

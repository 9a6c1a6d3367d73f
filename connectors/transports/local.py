"""Local-folder transport: the embedded default for inboxes, drop folders and the hub's own folders.

Every folder is confined to ``SPIE_HUB_HOME``: the registry refuses absolute and ``..`` paths, and a folder that
resolves outside the home (a symlinked folder) is refused when used. Links and special files inside a folder are
listed as not regular and never opened (``O_NOFOLLOW``, ``O_NONBLOCK``, then ``fstat``).

A store is written in the hub's private staging area, flushed, then linked into the folder in one step: a partner
polling the folder never sees a half-written file or a ``.part``, and a delivery is never replaced under the same
name (``os.link`` fails if the name exists). Only when the folder sits on another file system is a hidden
temporary written beside the target, which ``clean_temporaries`` removes after a crash.

Modes: a folder is private (0700, files 0600) unless its ``flows.yaml`` block names a ``groupe``: then the drop is
opened to that group and to nobody else — folder 2750 (setgid: what is created in it keeps the group), files 0640
(``acces_groupe: depot``: 2770, the group may deposit files, for a partner's inbox). Its parents up to the home
keep ``--x`` for others, so that the group can reach it without listing anything. A declaration changed in
``flows.yaml`` is applied to the drop and its files the next time the hub uses it.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import grp
import hashlib
import os
import re
import socket
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal

from pydantic import field_validator, model_validator

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

_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


class LocalFolderOptions(TransportOptions):
    dossier: str
    #: The system group that may read this drop (a recipient's account, a sender reading its returns); without it
    #: the folder is private to the hub.
    groupe: str | None = None
    #: ``lecture`` (default): the group reads; ``depot``: the group may also write (a partner's inbox).
    acces_groupe: Literal["lecture", "depot"] = "lecture"

    @field_validator("dossier")
    @classmethod
    def _confined(cls, value: str) -> str:
        return confined_folder(value)

    @field_validator("groupe")
    @classmethod
    def _group_name(cls, value: str | None) -> str | None:
        if value is not None and not _GROUP_NAME.match(value):
            raise ValueError("groupe : nom de groupe système attendu (lettres, chiffres, « _ », « - », « . »)")
        return value

    @model_validator(mode="after")
    def _access_needs_group(self) -> LocalFolderOptions:
        if self.acces_groupe != "lecture" and self.groupe is None:
            raise ValueError("acces_groupe sans groupe : nommer le groupe qui dépose (clé « groupe »)")
        return self


@dataclass(frozen=True)
class DropMode:
    """The modes of one drop: private, or opened to a group (read, or deposit)."""

    gid: int | None = None
    deposit: bool = False

    @property
    def folder(self) -> int:
        if self.gid is None:
            return 0o700
        return stat.S_ISGID | (0o770 if self.deposit else 0o750)

    @property
    def file(self) -> int:
        return 0o600 if self.gid is None else 0o640


PRIVATE = DropMode()


def drop_mode(group: str | None, access: str = "lecture", where: str = "") -> DropMode:
    """The modes a declared ``groupe`` gives; an unknown group is a configuration error naming the folder."""
    if group is None:
        return PRIVATE
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigurationError(f"Dossier {where!r} : groupe « {group} » inconnu sur ce serveur "
                                 "(flows.yaml, clé « groupe » ; le créer ou corriger le registre)") from None
    return DropMode(gid, access == "depot")


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

    def __init__(self, home_root: Path, folder: str, *, scratch: Path | None = None, group: str | None = None,
                 group_access: str = "lecture", drop: str | None = None) -> None:
        self.home_root = home_root.resolve()
        self.folder = folder.strip("/")
        self.root = self.home_root / self.folder if self.folder else self.home_root
        # Private, same file system as the home: where stores are written before they are linked into place.
        self.scratch = scratch or self.home_root / "staging" / ".stores"
        # The declared folder (a child such as ``rejets/`` keeps its parent's): its modes apply from it downwards.
        self.drop = (drop if drop is not None else self.folder).strip("/")
        self.group, self.group_access = group, group_access
        self._mode: DropMode | None = None

    @classmethod
    def from_options(cls, options: TransportOptions, home: HubHome) -> LocalFolder:
        assert isinstance(options, LocalFolderOptions)
        return cls(home.root, options.dossier, group=options.groupe, group_access=options.acces_groupe)

    @property
    def mode(self) -> DropMode:
        if self._mode is None:
            self._mode = drop_mode(self.group, self.group_access, self.drop)
        return self._mode

    # -- modes ----------------------------------------------------------------------------------------------------
    def _apply_mode(self, path: Path, info: os.stat_result, depth: int) -> None:
        """Give a folder on the way to (``depth`` < drop depth) or inside the drop the modes it declares."""
        mode, current = self.mode, stat.S_IMODE(info.st_mode)
        if depth < len([p for p in self.drop.split("/") if p]):
            # Above the drop: others may traverse towards a group's drop (never list); private otherwise, which
            # the home's own check already ensures — never narrowed here (another flow's drop may lie below).
            if mode.gid is not None and not current & 0o001:
                self._chmod_folder(path, current | 0o011)
            return
        if current == mode.folder and (mode.gid is None or info.st_gid == mode.gid):
            return
        self._chmod_folder(path, mode.folder, mode.gid)
        # The declaration changed (or the folder is new): the hub's files already there follow it.
        with contextlib.suppress(OSError), os.scandir(path) as scan:
            for entry in scan:
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith(TEMPORARY_PREFIX):
                    with contextlib.suppress(OSError):
                        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                        try:
                            self._set_file_mode(fd)
                        finally:
                            os.close(fd)

    def _chmod_folder(self, path: Path, target: int, gid: int | None = None) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY)
        except OSError as error:
            raise StorageError.from_os(error, path) from None
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, target)
        except PermissionError:
            raise ConfigurationError(f"Dossier {self.folder!r} : le hub ne peut pas donner ce dossier au groupe "
                                     f"« {self.group} » (le compte du hub doit en être membre)") from None
        finally:
            os.close(fd)

    def _set_file_mode(self, fd: int) -> None:
        """A file the hub places in this drop: readable by the drop's group, if any, and nobody else."""
        mode = self.mode
        if mode.gid is not None and os.fstat(fd).st_gid != mode.gid:
            os.fchown(fd, -1, mode.gid)
        os.fchmod(fd, mode.file)

    # -- confinement -------------------------------------------------------------------------------------------
    def _folder(self, create: bool = False) -> Path:
        """The folder, walked down from the home one component at a time: a symbolic link anywhere below the home
        is refused (even one pointing inside it: another recipient's drop, ``keys/``), a file where a folder is
        expected too. Missing folders are created when ``create``."""
        current = self.home_root
        if self.mode.gid is not None:  # the home itself is on the group's way to its drop
            with contextlib.suppress(OSError):
                self._apply_mode(current, os.lstat(current), 0)
        for depth, part in enumerate((p for p in self.folder.split("/") if p), start=1):
            current = current / part
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                if not create:
                    return self.root  # absent: nothing to list or read; created on the first store
                try:
                    os.mkdir(current, 0o700)
                except FileExistsError:
                    pass
                except OSError as error:
                    raise StorageError.from_os(error, current.parent) from None
                info = os.lstat(current)
            if stat.S_ISLNK(info.st_mode):
                raise ConfigurationError(f"Dossier {self.folder!r} : « {part} » est un lien symbolique, refusé "
                                         "(les dossiers du hub sont de vrais dossiers sous SPIE_HUB_HOME)")
            if not stat.S_ISDIR(info.st_mode):
                raise StorageError(f"Dossier {self.folder!r} : « {part} » n'est pas un dossier ; rien n'y est écrit")
            self._apply_mode(current, info, depth)
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
            self._set_file_mode(handle.fileno())
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
            # The staged inode itself takes the drop's modes (its staged name lives in a private folder).
            fd = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                self._set_file_mode(fd)
            finally:
                os.close(fd)
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
                self._set_file_mode(target.fileno())
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
        return LocalFolder(self.home_root, f"{self.folder}/{confined_folder(folder)}".strip("/"), scratch=self.scratch,
                           group=self.group, group_access=self.group_access, drop=self.drop)

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

"""Local-folder transport: the embedded default for inboxes and drop folders.

Thin named verbs, as in Airflow's SFTP hook: ``list_files``, ``retrieve_file``, ``store_file``. A store is
atomic: the file is written under a hidden temporary name, flushed, then renamed, so a partner polling the folder
never sees a half-written file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from spie_hub.core.errors import FatalInputError


def safe_name(name: str) -> str:
    """Refuse names that could escape the folder or confuse a partner's tools."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or any(ord(ch) < 32 for ch in name):
        raise FatalInputError("Nom de fichier refusé (chemin, séparateur ou caractère de contrôle)")
    return name


def printable_name(name: str) -> str:
    """A received file's name as the hub stores and shows it: control characters (a newline could forge a log
    line, an escape sequence could drive a terminal) replaced by '?'."""
    return "".join("?" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in name)[:255]


class LocalFolder:
    def __init__(self, root: Path) -> None:
        self.root = root

    def list_files(self, pattern: str = "*") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.glob(pattern) if p.is_file() and not p.name.startswith("."))

    def path(self, name: str) -> Path:
        return self.root / safe_name(name)

    def retrieve_file(self, name: str, destination: Path) -> Path:
        shutil.copyfile(self.path(name), destination)
        return destination

    @contextmanager
    def store_file(self, name: str, mode: str = "w", **open_kwargs: object) -> Iterator[IO]:
        """Yield a handle on a temporary file; on success it becomes ``name`` atomically, else it vanishes."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(name)
        temporary = final.with_name(f".{final.name}.part")
        handle = open(temporary, mode, **open_kwargs)  # noqa: SIM115 - closed below on every path
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(temporary, final)
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise

    def publish(self, staged: Path, name: str) -> Path:
        """Move a fully written file from the staging area into the folder in one rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(name)
        temporary = final.with_name(f".{final.name}.part")
        shutil.copyfile(staged, temporary)
        os.replace(temporary, final)
        staged.unlink(missing_ok=True)
        return final

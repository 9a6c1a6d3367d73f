"""The hub's small error taxonomy (as in Singer / Airbyte): what failed, and what to do about it.

Messages are in French: they reach DSI teams, DPOs and partners. They never carry an identifier.
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub reports to a user instead of a traceback."""


class ConfigurationError(HubError):
    """A missing or wrong setting; the message names the variable to set."""


class FatalInputError(HubError):
    """The whole input file is unusable (malformed, invalid against its schema): it is quarantined."""

    def __init__(self, message: str, *, element: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.element = element
        self.line = line


class RecordError(HubError):
    """One record is invalid; it is rejected with this reason and the others go on."""


class RetriableError(HubError):
    """A transient failure (network, lock): the orchestrator may retry."""


class StorageError(HubError):
    """The hub could not read or write one of its folders (disk full, read-only, no permission): nothing was
    published; the message names the folder, never a person's data."""

    @classmethod
    def from_os(cls, error: OSError, where: object) -> StorageError:
        import errno
        from pathlib import Path

        folder = Path(str(where))
        if folder.suffix or not folder.is_dir():  # a file: name its folder (a partner's file name is not shown)
            folder = folder.parent
        reason = {
            errno.ENOSPC: "disque plein",
            errno.EDQUOT: "quota disque dépassé",
            errno.EROFS: "système de fichiers en lecture seule",
            errno.EACCES: "permission refusée",
            errno.EPERM: "opération non permise",
            errno.ENOENT: "dossier ou fichier introuvable",
            errno.ENOTDIR: "un élément du chemin n'est pas un dossier",
            errno.EISDIR: "un dossier se trouve à la place d'un fichier",
            errno.ENAMETOOLONG: "nom de fichier trop long",
            errno.EIO: "erreur d'entrée-sortie du disque",
            errno.EEXIST: "un fichier ou un dossier porte déjà ce nom",
            errno.ELOOP: "lien symbolique refusé",
            errno.ENXIO: "fichier spécial sans lecteur (tube)",
            errno.ENOTEMPTY: "dossier non vide",
            errno.EXDEV: "déplacement impossible entre deux systèmes de fichiers",
        }.get(error.errno or 0, f"erreur système n° {error.errno}" if error.errno else "erreur système")
        return cls(f"Écriture ou lecture impossible dans le dossier {folder} : {reason}")

"""Where the hub keeps its state: everything lives under ``SPIE_HUB_HOME`` (default ``./.spie-hub``).

Private by default: nearly everything under the home holds identities (inputs, staged deliveries, archive,
quarantine, the SQLite store, keys). Every entry point sets the process umask to 0o077 (``private_umask``), so
folders are created 0700 and files 0600, and opening the home (``HubHome.ensure``) tightens what an older version,
an operator's copy or a restored backup left readable by others — said once, in one line. The only folders opened
wider are drops a flow declares for a group (``groupe:`` of a local folder transport): their folder carries the
setgid bit, which marks them here (0750/0640 with that group), and their parents keep only "others may traverse"
(0711) so that the group can reach them.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: The checkout (or installed tree) holding flows.yaml and mappings/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_PATH = PROJECT_ROOT / "flows.yaml"
#: Mapping and output specs (``SPIE_HUB_MAPPINGS`` points elsewhere, e.g. a partner's own folder). Read at call
#: time by its users, so that a test can point it at a folder of its own.
MAPPINGS_DIR = Path(os.environ.get("SPIE_HUB_MAPPINGS") or PROJECT_ROOT / "mappings")


log = logging.getLogger("spie_hub.home")

#: The umask of every process of the hub: nothing it creates is readable by another user.
PRIVATE_UMASK = 0o077
#: Roots already checked by this process (the walk runs once per process and home, not at every call).
_SECURED: set[Path] = set()


def private_umask() -> None:
    """Set the process umask to at least 0o077 (an operator's stricter umask is kept)."""
    current = os.umask(PRIVATE_UMASK)
    os.umask(current | PRIVATE_UMASK)


def _fchmod(path: Path, kind: int, target: int) -> bool:
    """Set ``path``'s permission bits to ``target`` through a descriptor opened without following a link (the
    entry is never a link here, and a file swapped for one meanwhile is left alone). False when nothing changed or
    it cannot be changed (another user's file, dropped by a partner)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_DIRECTORY if kind == stat.S_IFDIR else 0))
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if stat.S_IFMT(info.st_mode) != kind or stat.S_IMODE(info.st_mode) == target:
            return False
        os.fchmod(fd, target)
        return True
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EACCES, errno.EROFS):
            raise
        return False
    finally:
        os.close(fd)


def _secure(root: Path) -> tuple[int, bool]:
    """Tighten what ``root`` holds; returns (files changed, whether a shared drop lies inside).

    Inside a shared drop (setgid folder) only others lose their rights and the group its write; elsewhere group
    and others lose everything. A folder above a shared drop keeps ``--x`` for others (traverse, never list). A
    file with several names (a staged delivery linked into a group's drop, an archived input) only loses what
    others had: its other name may be that drop's. Walked with an explicit stack (a partner's deep nesting in an
    inbox is no recursion limit), links never followed."""
    changed, inbox = 0, root / "inbox"
    holds: dict[Path, bool] = {}
    # (folder, inside a shared drop, children done): a folder's own mode is set once what it holds is known.
    stack: list[tuple[Path, bool, int, bool]] = [(root, False, 0, False)]
    while stack:
        folder, shared, mode, done = stack.pop()
        if done:
            if folder != root:
                below = holds.pop(folder, False)
                _fchmod(folder, stat.S_IFDIR, _folder_mode(mode, shared, below))
                holds[folder.parent] = holds.get(folder.parent, False) or shared or below
            continue
        stack.append((folder, shared, mode, True))
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            bits = stat.S_IMODE(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                stack.append((Path(entry.path), shared or bool(bits & stat.S_ISGID), bits, False))
            elif stat.S_ISREG(info.st_mode):
                mask = 0o027 if shared or info.st_nlink > 1 else 0o077
                tightened = _fchmod(Path(entry.path), stat.S_IFREG, bits & ~mask)
                # Said for the hub's own files only: a partner's deposit in an inbox comes with the partner's modes
                # every time (tightened all the same, until the run takes it), and a folder reveals no content.
                changed += tightened and inbox not in Path(entry.path).parents
            # links, sockets, pipes: never followed nor changed (a link's own mode means nothing on Linux)
    return changed, holds.get(root, False)


def _folder_mode(mode: int, shared: bool, holds_shared: bool) -> int:
    if shared:
        return mode & ~0o007  # the group keeps what its drop declared (read, or deposit); others nothing
    if holds_shared:
        return (mode & ~0o066) | 0o011  # others may traverse towards a shared drop, never list
    return mode & ~0o077


def secure_tree(root: Path) -> int:
    """Tighten the modes under ``root`` (and ``root`` itself); the number of the hub's files that others could
    read (folders and a partner's deposits are tightened without being counted)."""
    changed, holds_shared = _secure(root)
    try:
        mode = stat.S_IMODE(os.lstat(root).st_mode)
    except OSError:
        return changed
    _fchmod(root, stat.S_IFDIR, _folder_mode(mode, False, holds_shared))
    return changed


def _user_home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no HOME and no passwd entry (a container's arbitrary uid)
        return None


@dataclass(frozen=True)
class HubHome:
    root: Path

    @classmethod
    def from_env(cls) -> HubHome:
        return cls(Path(os.environ.get("SPIE_HUB_HOME", ".spie-hub")).resolve())

    @property
    def database_url(self) -> str:
        # SQLite is the embedded default; SPIE_HUB_DATABASE_URL selects PostgreSQL (postgresql+psycopg://…).
        return os.environ.get("SPIE_HUB_DATABASE_URL") or f"sqlite:///{self.root / 'hub.sqlite3'}"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def ensure(self) -> HubHome:
        """Create the home's folders (private) and, once per process, tighten what others could read in it."""
        private_umask()
        for folder in (self.root, self.keys, self.inbox, self.outbox, self.quarantine, self.staging):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if folder.stat().st_mode & stat.S_ISGID:
                # Inherited from a collaborative parent folder: the setgid bit marks a declared drop here, and these
                # folders never are one.
                folder.chmod(stat.S_IMODE(folder.stat().st_mode) & ~stat.S_ISGID)
        self.keys.chmod(0o700)
        if self.root not in _SECURED:
            if self.root in (Path("/"), _user_home()):
                # A home set to / or to a user's own folder: never walked and tightened (it is not the hub's alone).
                log.warning("SPIE_HUB_HOME vaut %s : dossier non réservé au hub, droits d'accès non vérifiés", self.root)
            elif changed := secure_tree(self.root):
                log.warning("Droits d'accès resserrés sur %d fichier(s) de %s : ils étaient lisibles par d'autres "
                            "utilisateurs (le hub les garde privés : dossiers 0700, fichiers 0600)",
                            changed, self.root)
            _SECURED.add(self.root)
        return self

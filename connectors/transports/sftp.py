"""SFTP transport: a folder of a partner's SFTP account (paramiko), with the same contract as a local folder.

- **Host key pinned.** The connection's extras name the server's key (``host_key``: ``ssh-ed25519 AAAA…``) or a
  ``known_hosts`` file; any other key, or an unknown host, is refused (``RejectPolicy``, never auto-added) with a
  French error giving the offered key's SHA256 fingerprint, before anything is sent.
- **Key authentication only.** ``private_key`` (OpenSSH PEM text) or ``key_file`` (path); the connection's
  ``password`` is the key's passphrase, never sent to the server (no password authentication, no agent).
- **One SSH connection per transport**, opened on first use and shared with its ``child`` folders; ``close()``.
- **Atomic stores.** A store is spooled in the hub's private staging area (unnamed file: nothing left on a crash),
  uploaded under a hidden temporary name (``TEMPORARY_PREFIX``) in the same folder, flushed to disk
  (``fsync@openssh.com``), then published in one step that never replaces: the plain SFTP rename (OpenSSH performs
  it as link + unlink; the protocol defines it as failing on an existing name); with ``replace``,
  ``posix-rename@openssh.com``. A partner never sees a partial file under its final name.
- **Exactly once across a dropped connection.** The spool is kept until the publication is answered: on a drop the
  transport reconnects (``tentatives``, with backoff). If the publishing rename had been sent, it first looks at its
  OWN temporary: gone means published (even if the recipient has taken the file away since), and nothing is
  published again. Otherwise it removes its temporary and looks at the final name: a file with the same size and
  SHA-256 (read back) is the same delivery. A lost answer with no reconnection is reported as "publication
  incertaine", never as "rien n'a été publié".
- **Reads stream** (prefetch with a bounded number of requests in flight): memory stays flat with file size. Links
  and special files are listed as not regular and never opened.

Modification times over SFTP (version 3) have a one-second resolution and come from the server's clock: inbound
stability (``stabilite_secondes``, 60 by default) must be well above both (``mtime_resolution`` says the first).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fnmatch
import hashlib
import io
import logging
import os
import posixpath
import re
import socket
import stat
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_HANDLE,
    CMD_INIT,
    CMD_NAME,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_VERSION,
    SFTPError,
)
from pydantic import Field, field_validator

from connectors.connections import PartnerConnection, get_connection
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
from spie_hub.core.home import HubHome

log = logging.getLogger("spie_hub.transports.sftp")

T = TypeVar("T")

_CONN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: Reads in flight while streaming a file (32 KiB each): about 2 MiB whatever the file size.
_PREFETCH_REQUESTS = 64
_CHUNK = 1 << 20


class SftpOptions(TransportOptions):
    """``{type: sftp, connexion: sftp-caf, dossier: depot, …}`` in ``flows.yaml``."""

    #: The connection id (Airflow Connection, ``AIRFLOW_CONN_<ID>``, or ``$SPIE_HUB_HOME/connexions/<id>.json``).
    connexion: str
    #: The folder inside the account (relative to where the account starts: its chroot).
    dossier: str
    stabilite_secondes: int = Field(default=60, ge=0)
    #: Socket, handshake and per-request timeout.
    delai_secondes: int = Field(default=30, ge=1, le=3600)
    #: Connection attempts for one operation (a dropped connection is reopened and the operation retried).
    tentatives: int = Field(default=3, ge=1, le=20)

    @field_validator("connexion")
    @classmethod
    def _conn_id(cls, value: str) -> str:
        if not _CONN_ID.match(value):
            raise ValueError("identifiant de connexion attendu (lettres, chiffres, « - », « _ », « . »)")
        return value

    @field_validator("dossier")
    @classmethod
    def _confined(cls, value: str) -> str:
        return confined_folder(value)


class HostKeyRefused(ConfigurationError):
    """The server did not show the pinned host key: nothing was sent, nothing is retried."""


class SftpUnavailable(StorageError):
    """The server could not be reached, or the connection kept dropping: nothing was published (retry later)."""


# -- connection settings ----------------------------------------------------------------------------------------

_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def _private_key(connection: PartnerConnection) -> paramiko.PKey:
    """The client key (``private_key`` text or ``key_file``); ``password`` is its passphrase. Errors never quote it."""
    text, path = connection.setting("private_key"), connection.setting("key_file")
    where = f"Connexion {connection.conn_id}"
    if text and path:
        raise ConfigurationError(f"{where} : « private_key » et « key_file » sont exclusifs (n'en garder qu'un)")
    if not text and not path:
        raise ConfigurationError(f"{where} : clé privée absente (extra « private_key » ou « key_file » ; "
                                 "l'authentification par mot de passe n'est pas utilisée)")
    if path:
        try:
            text = Path(str(path)).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            raise ConfigurationError(f"{where} : fichier de clé « key_file » illisible") from None
    if not isinstance(text, str):
        raise ConfigurationError(f"{where} : « private_key » doit être un texte (clé OpenSSH)")
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), password=connection.password)
        except paramiko.PasswordRequiredException:
            raise ConfigurationError(f"{where} : la clé privée est chiffrée ; sa phrase de passe va dans le mot "
                                     "de passe de la connexion") from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError, struct.error):
            continue
    raise ConfigurationError(f"{where} : clé privée illisible ou phrase de passe fausse (Ed25519, ECDSA ou RSA "
                             "au format OpenSSH ou PEM attendue)")


def _host_label(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _pinned_keys(connection: PartnerConnection, host: str, port: int) -> paramiko.HostKeys:
    """The server keys the hub accepts for this connection: ``host_key`` line(s), or the ``known_hosts`` file."""
    where = f"Connexion {connection.conn_id}"
    keys = paramiko.HostKeys()
    pinned, known = connection.setting("host_key"), connection.setting("known_hosts")
    if pinned:
        lines = pinned if isinstance(pinned, list) else str(pinned).splitlines()
        for line in (str(item).strip() for item in lines):
            if not line:
                continue
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith(("ssh-", "ecdsa-")):
                fields = fields[1:]  # a known_hosts line: the host names come first
            try:
                key = paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1], validate=True))
            except (IndexError, ValueError, binascii.Error, paramiko.SSHException, struct.error):
                raise ConfigurationError(f"{where} : extra « host_key » illisible (attendu : « ssh-ed25519 AAAA… », "
                                         "la ligne de la clé publique du serveur)") from None
            keys.add(_host_label(host, port), key.get_name(), key)
    elif known:
        try:
            keys.load(str(known))
        except (OSError, UnicodeDecodeError):
            raise ConfigurationError(f"{where} : fichier « known_hosts » illisible") from None
    else:
        raise ConfigurationError(f"{where} : clé d'hôte du serveur non épinglée (extra « host_key » : "
                                 "« ssh-ed25519 AAAA… », ou « known_hosts » : chemin) ; la connexion est refusée")
    # A known_hosts without this server is not an error here: the server's key is then refused as unknown, with its
    # fingerprint, which the operator checks with the partner.
    return keys


class _RefuseUnknown(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, saying in French which key was offered (never added)."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyRefused(f"Connexion {self.conn_id} : clé d'hôte inconnue refusée ({key.get_name()} "
                             f"{key.fingerprint}) ; rien n'a été transféré. Si le partenaire a changé de clé, la "
                             "vérifier avec lui puis mettre à jour l'extra « host_key »")


class _Sftp(paramiko.SFTPClient):
    """paramiko's client, keeping the extensions the server announces (paramiko drops them)."""

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        msg = paramiko.Message()
        msg.add_int(3)
        self._send_packet(CMD_INIT, msg)
        kind, data = self._read_packet()
        if kind != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        reply = paramiko.Message(data)
        version = reply.get_int()
        self.extensions = {}
        with contextlib.suppress(Exception):  # a malformed list only means: no extension used
            while reply.get_remainder():
                name = reply.get_text()
                self.extensions[name] = reply.get_binary()
        return version

    def extended(self, name: str, *args: Any) -> None:
        """An ``@openssh.com`` request; ``IOError`` when the server refuses it."""
        self._request(CMD_EXTENDED, name, *(_wire(arg) for arg in args))

    # A partner may write names that are not UTF-8 (a Latin-1 tool). paramiko decodes them strictly and one such
    # name would fail every listing of the folder. Names are read as bytes and decoded with ``surrogateescape``
    # (as a local folder does), and every path sent is encoded the same way: the name listed is the name opened,
    # checked, renamed and removed.
    def _adjust_cwd(self, path: str | bytes) -> bytes:
        return super()._adjust_cwd(_wire(path))  # type: ignore[no-any-return]

    def listdir_attr(self, path: str = ".") -> list[paramiko.SFTPAttributes]:
        kind, msg = self._request(CMD_OPENDIR, self._adjust_cwd(path))
        if kind != CMD_HANDLE or msg is None:
            raise SFTPError("Expected handle")
        handle = msg.get_binary()
        entries: list[paramiko.SFTPAttributes] = []
        try:
            while True:
                try:
                    kind, msg = self._request(CMD_READDIR, handle)
                except EOFError:
                    break  # end of the folder
                if kind != CMD_NAME or msg is None:
                    raise SFTPError("Expected name response")
                for _ in range(msg.get_int()):
                    filename = msg.get_string().decode("utf-8", "surrogateescape")
                    longname = msg.get_string().decode("utf-8", "surrogateescape")
                    attrs = paramiko.SFTPAttributes._from_msg(msg, filename, longname)
                    if filename not in (".", ".."):
                        entries.append(attrs)
        finally:
            with contextlib.suppress(Exception):
                self._request(CMD_CLOSE, handle)
        return entries


def _wire(value: Any) -> Any:
    """A path as sent: text encoded back to the very bytes it was listed from (``surrogateescape``)."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


class _Session:
    """One SSH connection and its SFTP channel, shared by a transport and its children; reopened after a drop."""

    def __init__(self, conn_id: str, timeout: float, home: HubHome | None) -> None:
        self.conn_id, self.timeout, self.home = conn_id, timeout, home
        self.client: paramiko.SSHClient | None = None
        self.sftp: _Sftp | None = None
        self.lock = threading.RLock()

    def open(self) -> _Sftp:
        with self.lock:
            if self.sftp is not None and self.alive():
                return self.sftp
            self.close()
            connection = get_connection(self.conn_id, self.home)
            host = connection.host
            if not host or not connection.login:
                raise ConfigurationError(f"Connexion {self.conn_id} : hôte et identifiant (login) requis")
            port = connection.port or 22
            keys = _pinned_keys(connection, host, port)
            pkey = _private_key(connection)
            client = paramiko.SSHClient()
            for label in keys:
                for kind, key in keys[label].items():
                    client.get_host_keys().add(label, kind, key)
            client.set_missing_host_key_policy(_RefuseUnknown(self.conn_id))
            try:
                client.connect(host, port=port, username=connection.login, pkey=pkey, allow_agent=False,
                               look_for_keys=False, timeout=self.timeout, banner_timeout=self.timeout,
                               auth_timeout=self.timeout, channel_timeout=self.timeout)
                transport = client.get_transport()
                assert transport is not None
                transport.set_keepalive(max(5, int(self.timeout)))
                channel = transport.open_session(timeout=self.timeout)
                channel.settimeout(self.timeout)
                channel.invoke_subsystem("sftp")
                sftp = _Sftp(channel)
            except paramiko.BadHostKeyException as error:
                client.close()
                raise HostKeyRefused(f"Connexion {self.conn_id} : clé d'hôte CHANGÉE refusée (présentée : "
                                     f"{error.key.get_name()} {error.key.fingerprint}, différente de la clé épinglée) ; "
                                     "rien n'a été transféré. Vérifier avec le partenaire avant de mettre à jour "
                                     "l'extra « host_key »") from None
            except HostKeyRefused:
                client.close()
                raise
            except paramiko.AuthenticationException:
                client.close()
                raise ConfigurationError(f"Connexion {self.conn_id} : authentification par clé refusée par le serveur "
                                         "(clé publique du hub absente du compte, ou compte verrouillé)") from None
            except BaseException:
                client.close()
                raise
            self.client, self.sftp = client, sftp
            return sftp

    def alive(self) -> bool:
        transport = self.client.get_transport() if self.client is not None else None
        channel = self.sftp.get_channel() if self.sftp is not None else None
        return bool(transport is not None and transport.is_active() and channel is not None and not channel.closed)

    def close(self) -> None:
        with self.lock:
            sftp, client, self.sftp, self.client = self.sftp, self.client, None, None
            with contextlib.suppress(Exception):
                if sftp is not None:
                    sftp.close()
            with contextlib.suppress(Exception):
                if client is not None:
                    client.close()


_DROPS = (EOFError, paramiko.SSHException, ConnectionError, TimeoutError, socket.timeout)


def _host_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_HOST = _host_hash()
#: Temporaries this process is writing right now (any other of this host and process is a dead attempt's).
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()
#: Partner files that could not be given back under a visible name (see ``_put_back``): never cleaned here.
_KEPT: set[str] = set()


def _temporary_name() -> str:
    return f"{TEMPORARY_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LONGNAME = re.compile(r"^[-bcdlps][-rwxsStTl+.@]{9}\S*\s+(\d+)\s")


def _info(name: str, attrs: paramiko.SFTPAttributes) -> FileInfo:
    mode = attrs.st_mode or 0
    # SFTP v3 attributes carry no link count; a listing's ``longname`` (``ls -l`` form on OpenSSH) does. Without it
    # (a lone LSTAT, another server), 1 is all the transport knows.
    found = _LONGNAME.match(getattr(attrs, "longname", None) or "")
    links = int(found.group(1)) if found else 1
    return FileInfo(name, int(attrs.st_size or 0), float(attrs.st_mtime or 0), stat.S_ISREG(mode), "",
                    max(1, links))


def _abandon(handle: paramiko.SFTPFile) -> None:
    """A handle of a dropped connection: paramiko would try to flush it again when collected (a warning about a
    closed socket at a random moment); its buffered bytes are dropped, the temporary is removed by the retry."""
    with contextlib.suppress(Exception):
        handle._wbuffer = io.BytesIO()
        handle.close()
    handle._closed = True


def _status_errno(error: OSError) -> int | None:
    return error.errno if isinstance(error.errno, int) else None


class SftpFolder(Transport):
    """A folder of an SFTP account (see the module's text)."""

    type: ClassVar[str] = "sftp"
    Options: ClassVar[type[TransportOptions]] = SftpOptions
    #: Modification times have a one-second resolution over SFTP version 3.
    mtime_resolution: ClassVar[float] = 1.0
    #: First pause before a new attempt (doubled each time, at most the timeout).
    backoff_seconds: ClassVar[float] = 1.0

    def __init__(self, conn_id: str, folder: str, *, home: HubHome | None = None, timeout: float = 30.0,
                 attempts: int = 3, session: _Session | None = None) -> None:
        self.conn_id = conn_id
        self.folder = folder.strip("/")
        self.home = home
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.session = session or _Session(conn_id, timeout, home)

    @classmethod
    def from_options(cls, options: TransportOptions, home: HubHome) -> SftpFolder:
        assert isinstance(options, SftpOptions)
        return cls(options.connexion, options.dossier, home=home, timeout=float(options.delai_secondes),
                   attempts=options.tentatives)

    def close(self) -> None:
        """Close the SSH connection (shared with the children); the next operation opens a new one."""
        self.session.close()

    def __enter__(self) -> SftpFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def _path(self, name: str = "") -> str:
        return posixpath.join(self.folder, name) if name else (self.folder or ".")

    def _where(self) -> str:
        return f"sftp://{self.conn_id}/{self.folder}".rstrip("/")

    def _failure(self, error: OSError, what: str) -> StorageError:
        reason = {errno.ENOENT: "dossier ou fichier introuvable", errno.EACCES: "permission refusée"}.get(
            _status_errno(error) or 0, "refus du serveur")
        return StorageError(f"SFTP {self._where()} : {what} impossible ({reason})")

    def _is_drop(self, error: BaseException) -> bool:
        if isinstance(error, _DROPS):
            return True
        # paramiko says "Socket is closed" as a bare OSError: only the connection's state tells it from a refusal.
        return isinstance(error, OSError) and not self.session.alive()

    def _retry(self, what: str, action: Callable[[_Sftp], T], *, on_retry: Callable[[], None] | None = None) -> T:
        """Run ``action`` on a live connection; a dropped one is reopened and the action run again."""
        delay = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            try:
                sftp = self.session.open()
                return action(sftp)
            except (HostKeyRefused, ConfigurationError, FatalInputError):
                raise
            except (OSError, EOFError, paramiko.SSHException) as error:
                if not self._is_drop(error):
                    if isinstance(error, OSError):
                        raise self._failure(error, what) from None
                    raise
                self.session.close()
                log.warning("SFTP %s : connexion perdue pendant « %s » (tentative %d sur %d)", self._where(), what,
                            attempt, self.attempts)
                if attempt == self.attempts:
                    raise SftpUnavailable(f"SFTP {self._where()} : {what} impossible, connexion perdue ou serveur "
                                          f"injoignable après {self.attempts} tentative(s) ; rien n'a été publié, "
                                          "à reprendre au prochain passage") from None
                time.sleep(min(delay, self.timeout))
                delay *= 2
                if on_retry is not None:
                    on_retry()
        raise AssertionError("unreachable")

    @staticmethod
    def _lstat(sftp: _Sftp, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return sftp.lstat(path)
        except OSError as error:
            if _status_errno(error) == errno.ENOENT:
                return None
            raise

    def _ensure_folder(self, sftp: _Sftp) -> None:
        """Create the folder on demand (stores only), one level at a time; a link or a file in the way is refused."""
        current = ""
        for part in (p for p in self.folder.split("/") if p):
            current = posixpath.join(current, part) if current else part
            attrs = self._lstat(sftp, current)
            if attrs is None:
                try:
                    sftp.mkdir(current, 0o700)
                except OSError:
                    attrs = self._lstat(sftp, current)  # made meanwhile by another run
                    if attrs is None:
                        raise
                else:
                    continue
            if not stat.S_ISDIR(attrs.st_mode or 0):
                raise StorageError(f"SFTP {self._where()} : « {part} » n'est pas un dossier (lien ou fichier) ; "
                                   "rien n'y est écrit")

    # -- reading ----------------------------------------------------------------------------------------------------
    def list(self, pattern: str = "*") -> list[FileInfo]:
        def action(sftp: _Sftp) -> list[FileInfo]:
            try:
                entries = sftp.listdir_attr(self._path())
            except OSError as error:
                if _status_errno(error) == errno.ENOENT:
                    return []  # not made yet: created on the first store
                raise
            found = []
            for attrs in entries:
                name = attrs.filename
                if name.startswith(".") or not fnmatch.fnmatchcase(name, pattern):
                    continue
                if stat.S_ISDIR(attrs.st_mode or 0):
                    continue  # a folder is not a file of the flow
                try:
                    entry_name(name)
                except FatalInputError:
                    continue
                found.append(_info(name, attrs))
            return sorted(found, key=lambda e: e.name)

        return self._retry("lecture du dossier", action)

    def stat(self, name: str) -> FileInfo | None:
        path = self._path(entry_name(name))
        attrs = self._retry("lecture d'un fichier", lambda sftp: self._lstat(sftp, path))
        return None if attrs is None else _info(name, attrs)

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        path = self._path(entry_name(name))

        def action(sftp: _Sftp) -> paramiko.SFTPFile:
            attrs = self._lstat(sftp, path)
            if attrs is None:
                raise StorageError(f"SFTP {self._where()} : fichier introuvable")
            if stat.S_ISLNK(attrs.st_mode or 0):
                raise FatalInputError("Lien symbolique refusé : seuls les fichiers ordinaires sont lus")
            if not stat.S_ISREG(attrs.st_mode or 0):
                raise FatalInputError("Fichier spécial refusé (périphérique, tube ou dossier) : seuls les fichiers "
                                      "ordinaires sont lus")
            handle = sftp.open(path, "rb", bufsize=_CHUNK)
            try:
                opened = handle.stat()
                # Swapped for a special file between the check and the open: the handle tells. A change of size or
                # time is the caller's to judge (``opened``: the claim leaves such a file for the next pass).
                if not stat.S_ISREG(opened.st_mode or 0):
                    raise FatalInputError("Fichier spécial refusé (périphérique, tube ou dossier) : seuls les "
                                          "fichiers ordinaires sont lus")
                handle.prefetch(opened.st_size, max_concurrent_requests=_PREFETCH_REQUESTS)
            except BaseException:
                handle.close()
                raise
            return handle

        handle = self._retry("lecture d'un fichier", action)
        stream = _Reading(handle, self)
        try:
            yield stream  # type: ignore[misc]
        finally:
            with contextlib.suppress(Exception):
                handle.close()

    def opened(self, name: str, stream: BinaryIO) -> FileInfo | None:
        """The entry the stream reads (its handle's attributes: a file renamed over meanwhile is another one)."""
        if not isinstance(stream, _Reading):
            return None
        try:
            return _info(name, stream.handle.stat())
        except (OSError, EOFError, paramiko.SSHException):
            return None

    # -- writing ----------------------------------------------------------------------------------------------------
    def _spool(self) -> BinaryIO:
        """Where a store's bytes wait until published: an unnamed file in the hub's private staging area (gone
        with the process on a crash), kept for a retry after a dropped connection."""
        folder = (self.home or HubHome.from_env()).staging / ".sftp"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            return tempfile.TemporaryFile(dir=folder)
        except OSError as error:
            raise StorageError.from_os(error, folder) from None

    @contextmanager
    def store(self, name: str, *, replace: bool = False) -> Iterator[BinaryIO]:
        safe_name(name)
        with self._spool() as spool:
            yield spool
            spool.flush()
            self._publish(name, spool, replace)

    def store_file(self, name: str, source: Path, *, replace: bool = False) -> None:
        safe_name(name)
        try:
            handle = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as error:
            raise StorageError.from_os(error, source.parent) from None
        with handle:
            self._publish(name, handle, replace)

    def _publish(self, name: str, source: BinaryIO, replace: bool) -> None:
        """Upload ``source`` under a temporary, then publish it as ``name``: exactly once, whatever drops."""
        final = self._path(name)
        size = os.fstat(source.fileno()).st_size
        digest: list[str] = []
        temporaries: list[str] = []
        #: The temporary whose publishing request was sent and not answered (``None``: nothing sent, or refused).
        state: dict[str, str | None] = {"sent": None}

        def local_digest() -> str:
            if not digest:
                source.seek(0)
                digest.append(sha256_stream(source))
            return digest[0]

        def forget_temporaries() -> None:
            # The previous attempt's temporary, removed on the new connection.
            if not temporaries:
                return
            with contextlib.suppress(Exception):
                sftp = self.session.open()
                for temporary in list(temporaries):
                    with contextlib.suppress(OSError):
                        sftp.remove(temporary)
                    temporaries.remove(temporary)
                    with _ACTIVE_LOCK:
                        _ACTIVE.discard(temporary)

        def attempt(sftp: _Sftp) -> None:
            self._ensure_folder(sftp)
            sent = state["sent"]
            if sent is not None:
                # The previous attempt sent the publishing rename and lost its answer. The rename moves the hub's OWN
                # temporary to the final name in one step: the temporary gone means published, even when the
                # recipient has already taken the file away (get then delete) during the back-off. Never again.
                if self._lstat(sftp, sent) is None:
                    with contextlib.suppress(ValueError):
                        temporaries.remove(sent)
                    return
                # Still there: OpenSSH links then unlinks; a link made whose unlink failed is published too.
                if self._same_content(sftp, final, size, local_digest):
                    forget_temporaries()
                    return
                state["sent"] = None  # not published: the request never reached the server
            forget_temporaries()
            # Already there? (A previous run's publication, or another writer's file under that name.)
            if self._lstat(sftp, final) is not None:
                if self._same_content(sftp, final, size, local_digest):
                    return
                if not replace:
                    raise FileExists(f"Un autre fichier porte déjà ce nom dans {self._where()} : jamais remplacé")
            temporary = self._path(_temporary_name())
            with _ACTIVE_LOCK:
                _ACTIVE.add(temporary)
            temporaries.append(temporary)
            self._upload(sftp, source, temporary, size)
            if replace and "posix-rename@openssh.com" not in sftp.extensions:
                raise StorageError(f"SFTP {self._where()} : le serveur ne sait pas remplacer un fichier en une "
                                   "étape (extension posix-rename@openssh.com absente) ; rien n'a été remplacé")
            state["sent"] = temporary
            try:
                if replace:
                    sftp.extended("posix-rename@openssh.com", temporary, final)
                else:
                    # SFTP v3 rename fails on an existing name (OpenSSH: link + unlink), and it makes the temporary
                    # disappear: that is what a retry after a lost answer looks at (a hard link would keep it).
                    sftp.rename(temporary, final)
            except OSError as error:
                if self._is_drop(error):
                    raise
                state["sent"] = None  # refused: nothing was published
                if replace or self._lstat(sftp, final) is None:
                    raise
                if not self._same_content(sftp, final, size, local_digest):
                    raise FileExists(f"Un autre fichier porte déjà ce nom dans {self._where()} : "
                                     "jamais remplacé") from None
                forget_temporaries()
                return
            temporaries.remove(temporary)
            with _ACTIVE_LOCK:
                _ACTIVE.discard(temporary)

        try:
            self._retry("dépôt d'un fichier", attempt)
        except SftpUnavailable:
            if state["sent"] is None:
                raise
            # The publishing request reached the network: it may have been carried out. Saying "nothing was
            # published" would tell the operator the opposite of what may have happened.
            raise SftpUnavailable(f"SFTP {self._where()} : dépôt d'un fichier interrompu, connexion perdue après "
                                  f"l'envoi de la publication ({self.attempts} tentative(s)) ; publication "
                                  "incertaine (réponse perdue) : vérifiée au prochain passage") from None
        finally:
            forget_temporaries()
            with _ACTIVE_LOCK:
                _ACTIVE.difference_update(temporaries)

    def _upload(self, sftp: _Sftp, source: BinaryIO, temporary: str, size: int) -> None:
        source.seek(0)
        target = sftp.open(temporary, "wbx", bufsize=_CHUNK)
        try:
            target.set_pipelined(True)
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                target.write(chunk)
            target.flush()
            if "fsync@openssh.com" in sftp.extensions:
                # On disk before it is published (requests are answered in order: the writes come first).
                sftp.extended("fsync@openssh.com", target.handle)
            target.close()
        except BaseException:
            _abandon(target)
            raise
        written = sftp.lstat(temporary)
        if written.st_size != size:
            raise StorageError(f"SFTP {self._where()} : fichier incomplet après envoi ; rien n'a été publié")

    def _same_content(self, sftp: _Sftp, path: str, size: int, local_digest: Callable[[], str]) -> bool:
        attrs = self._lstat(sftp, path)
        if attrs is None or not stat.S_ISREG(attrs.st_mode or 0) or attrs.st_size != size:
            return False
        with sftp.open(path, "rb", bufsize=_CHUNK) as handle:
            handle.prefetch(size, max_concurrent_requests=_PREFETCH_REQUESTS)
            remote = sha256_stream(handle)  # type: ignore[arg-type]
        return remote == local_digest()

    # -- removing, moving -------------------------------------------------------------------------------------------
    def delete(self, name: str, *, expected: FileInfo | None = None) -> bool:
        """Remove ``name``. It is first renamed to a hidden name of this hub's (one atomic step: from then on nobody
        else can replace it), checked against ``expected`` there, then removed; a retry after a drop finds it under
        that name, so that a removal whose answer was lost is still reported as done."""
        path = self._path(entry_name(name))
        aside = self._path(_temporary_name() + "-suppr")
        state = {"sent": False, "moved": False, "putting_back": False}

        def action(sftp: _Sftp) -> bool:
            if state["putting_back"]:
                # A previous attempt was putting a replaced file back when its connection dropped.
                if self._lstat(sftp, aside) is not None:
                    self._put_back(sftp, aside, name)
                state["sent"] = state["moved"] = state["putting_back"] = False
                return False
            if state["sent"] and not state["moved"] and self._lstat(sftp, aside) is not None:
                state["moved"] = True  # renamed aside on a previous attempt, whose answer was lost
            if not state["moved"]:
                state["sent"] = True
                try:
                    sftp.rename(path, aside)  # never replaces (the aside name is new)
                except OSError as error:
                    if self._is_drop(error):
                        raise
                    if self._lstat(sftp, path) is None:
                        return False  # gone: taken by another run
                    raise
                state["moved"] = True
            attrs = self._lstat(sftp, aside)
            if attrs is None:
                return True  # removed on a previous attempt, whose answer was lost
            if expected is not None and not expected.same_file(_info(name, attrs)):
                state["putting_back"] = True  # replaced meanwhile: put back for the next pass
                self._put_back(sftp, aside, name)
                state["sent"] = state["moved"] = state["putting_back"] = False
                return False
            sftp.remove(aside)
            return True

        with _ACTIVE_LOCK:
            _ACTIVE.add(aside)  # not a dead attempt's: clean_temporaries leaves it to this removal
        try:
            return self._retry("suppression d'un fichier", action)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(aside)

    def _put_back(self, sftp: _Sftp, aside: str, name: str) -> None:
        """Give a partner's file moved aside by ``delete`` back under a visible name: its own, or, when the partner
        has written that name again meanwhile, ``<stem>.repris-<uuid><suffix>`` (same suffix: the flow's motif
        still matches, so the next pass takes it). Never left under the hub's temporary name, which
        ``clean_temporaries`` removes: failing that, a French error (the caller's pass stops and says so)."""
        try:
            sftp.rename(aside, self._path(name))  # never replaces
            return
        except OSError as error:
            if self._is_drop(error):
                raise
        stem, suffix = posixpath.splitext(name)
        for _ in range(3):
            visible = f"{stem}.repris-{uuid.uuid4().hex[:12]}{suffix}"
            try:
                sftp.rename(aside, self._path(visible))
            except OSError as error:
                if self._is_drop(error):
                    raise
                continue
            log.warning("SFTP %s : un fichier remplacé pendant sa suppression a été rendu sous un nouveau nom "
                        "(« .repris-… ») : le nom d'origine avait été réécrit par le partenaire", self._where())
            return
        with _ACTIVE_LOCK:
            _KEPT.add(aside)  # a partner's file: this process's clean_temporaries never removes it
        raise StorageError(f"SFTP {self._where()} : un fichier remplacé pendant sa suppression n'a pas pu être rendu "
                           "au partenaire (nom d'origine réécrit, renommage refusé) ; il reste sous un nom "
                           "temporaire du hub : à vérifier avant le prochain nettoyage")

    def move(self, name: str, target: Transport, new_name: str | None = None) -> None:
        """On the same account: one server-side rename that never replaces; elsewhere: stored there, then removed."""
        if not isinstance(target, SftpFolder) or target.conn_id != self.conn_id:
            return super().move(name, target, new_name)
        source, final = self._path(entry_name(name)), target._path(safe_name(new_name or name))

        def action(sftp: _Sftp) -> None:
            target._ensure_folder(sftp)
            if self._lstat(sftp, source) is None and self._lstat(sftp, final) is not None:
                return  # moved before the answer was lost
            try:
                sftp.rename(source, final)
            except OSError as error:
                if self._is_drop(error):
                    raise
                if self._lstat(sftp, final) is not None:
                    raise FileExists(f"Un autre fichier porte déjà ce nom dans {target._where()} : jamais remplacé") from None
                raise

        self._retry("déplacement d'un fichier", action)

    def child(self, folder: str) -> SftpFolder:
        return SftpFolder(self.conn_id, f"{self.folder}/{confined_folder(folder)}".strip("/"), home=self.home,
                          timeout=self.timeout, attempts=self.attempts, session=self.session)

    def uri(self, name: str = "") -> str:
        return f"{self._where()}/{name}" if name else self._where()

    def clean_temporaries(self) -> list[str]:
        """Remove temporaries of dead attempts: this host's whose process is gone or no longer writes them."""

        def action(sftp: _Sftp) -> list[str]:
            removed = []
            try:
                entries = sftp.listdir_attr(self._path())
            except OSError as error:
                if _status_errno(error) == errno.ENOENT:
                    return []
                raise
            for attrs in entries:
                name = attrs.filename
                if not name.startswith(TEMPORARY_PREFIX) or stat.S_ISDIR(attrs.st_mode or 0):
                    continue
                host, _, rest = name.removeprefix(TEMPORARY_PREFIX).partition("-")
                pid = rest.partition("-")[0]
                if host != _HOST or not pid.isdigit():
                    continue  # another hub host's: it alone knows whether its writer lives
                if int(pid) == os.getpid():
                    with _ACTIVE_LOCK:
                        if self._path(name) in _ACTIVE or self._path(name) in _KEPT:
                            continue
                elif _alive(int(pid)):
                    continue
                with contextlib.suppress(OSError):
                    sftp.remove(self._path(name))
                    removed.append(name)
            return removed

        return self._retry("nettoyage des fichiers temporaires", action)


class _Reading(io.RawIOBase):
    """A read-only stream over an SFTP handle; a dropped connection mid-read is a French ``StorageError``."""

    def __init__(self, handle: paramiko.SFTPFile, folder: SftpFolder) -> None:
        super().__init__()
        self.handle, self.folder = handle, folder

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self.handle.read(len(view))
        except (OSError, EOFError, paramiko.SSHException):
            self.folder.session.close()
            raise StorageError(f"SFTP {self.folder._where()} : connexion perdue pendant la lecture d'un fichier ; "
                               "repris au prochain passage") from None
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buffer = bytearray(size)
        count = self.readinto(buffer)
        return bytes(buffer[:count])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.close()
        super().close()

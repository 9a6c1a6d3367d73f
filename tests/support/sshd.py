"""A real OpenSSH ``sshd`` for the SFTP tests: the hub's own SFTP server, one chrooted SFTP-only account per partner.

Layout (everything under ``/srv/spie-hub-tests-<uid>-<random>``, root-owned: a chroot cannot live under /tmp)::

    etc/sshd_config, etc/ssh_host_ed25519_key, etc/authorized_keys/<account>, etc/sshd.log
    chroot/<account>/            root-owned 0755 (sshd's rule for ChrootDirectory)
    chroot/<account>/depot/      owned by the account: what the partner sends (inbound)
    chroot/<account>/retours/    acknowledgements and rejections back to the partner
    chroot/<account>/livraisons/ deliveries to the partner

sshd listens on 127.0.0.1 on a free port, key authentication only (``UsePAM no``, ``PasswordAuthentication no``),
``ForceCommand internal-sftp`` and ``ChrootDirectory`` for the accounts of the test group. Each account authorises
two keys: the partner's (to write as the partner) and the hub's (the transport under test connects with it).

Pytest: ``sshd_server`` (session) starts the server; ``sftp_accounts`` (function) creates accounts on demand and
removes them and their folders after the test. Under ``CI=true`` a missing sshd or missing root rights fail the
test instead of skipping it (``.ci/run`` installs ``openssh-server``).

Dropping a connection: ``TcpProxy`` sits between the hub and sshd; ``cut_after_upload(n)`` cuts the connection once
``n`` bytes went to the server, ``hold_replies()`` stops the answers (the requests still reach the server) until
``cut()``; ``SshdServer.kill_sessions(account)`` kills the account's per-connection sshd processes.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import io
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = Path("/usr/sbin/sshd")
FOLDERS = ("depot", "retours", "livraisons")


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} : requis quand CI=true (.ci/run installe openssh-server)")
    pytest.skip(f"{reason} (définir CI=true pour en faire une erreur)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair (paramiko cannot write an Ed25519 private key: ``cryptography`` holds it)."""

    private: Ed25519PrivateKey

    def text(self, passphrase: str | None = None) -> str:
        """The private key in OpenSSH form, encrypted when ``passphrase`` is given."""
        encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                      else serialization.NoEncryption())
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          encryption).decode()

    @property
    def pkey(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.text()))

    @property
    def public_line(self) -> str:
        return public_line(self.pkey)


def generate_key() -> KeyPair:
    return KeyPair(Ed25519PrivateKey.generate())


def public_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


@dataclass
class Account:
    """One partner's SFTP account: ``root`` is its chroot as seen from this machine."""

    name: str
    root: Path
    uid: int
    gid: int
    partner_key: KeyPair
    hub_key: KeyPair
    server: SshdServer

    def folder(self, name: str) -> Path:
        return self.root / name

    def connection(self, *, port: int | None = None, host_key: str | None = None, passphrase: str | None = None,
                   key: KeyPair | None = None) -> dict[str, object]:
        """The hub's Airflow connection (JSON form) for this account: pinned host key, the hub's private key."""
        extra: dict[str, object] = {"host_key": host_key or self.server.host_key_line,
                                    "private_key": (key or self.hub_key).text(passphrase)}
        connection: dict[str, object] = {"conn_type": "sftp", "host": "127.0.0.1", "port": port or self.server.port,
                                         "login": self.name, "extra": extra}
        if passphrase:
            connection["password"] = passphrase
        return connection

    def connection_json(self, **kwargs: object) -> str:
        return json.dumps(self.connection(**kwargs))  # type: ignore[arg-type]

    @contextlib.contextmanager
    def partner(self) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session as the partner (its own key), as its tools would open one."""
        client = paramiko.SSHClient()
        host_key = self.server.host_key.pkey
        client.get_host_keys().add(f"[127.0.0.1]:{self.server.port}", host_key.get_name(), host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=self.server.port, username=self.name, pkey=self.partner_key.pkey,
                       allow_agent=False, look_for_keys=False, timeout=30)
        try:
            sftp = client.open_sftp()
            try:
                yield sftp
            finally:
                sftp.close()
        finally:
            client.close()

    def put(self, path: str, data: bytes) -> None:
        """Write ``path`` (inside the chroot) as the partner, in one go."""
        with self.partner() as sftp, sftp.open(path, "wb") as handle:
            handle.write(data)

    @contextlib.contextmanager
    def writing(self, path: str) -> Iterator[paramiko.SFTPFile]:
        """A file the partner is still writing: open under its final name, written by the test piece by piece
        (``handle.write`` then ``handle.flush``), closed when the block ends."""
        with self.partner() as sftp, sftp.open(path, "wb") as handle:
            yield handle

    def files(self, folder: str) -> list[str]:
        """What the folder holds, seen from the server's disk (hidden names included)."""
        return sorted(os.listdir(self.root / folder)) if (self.root / folder).is_dir() else []


@dataclass
class SshdServer:
    base: Path
    port: int
    group: str
    host_key: KeyPair
    process: subprocess.Popen[bytes] | None = None
    accounts: list[str] = field(default_factory=list)

    @property
    def host_key_line(self) -> str:
        return self.host_key.public_line

    @property
    def config(self) -> Path:
        return self.base / "etc" / "sshd_config"

    @property
    def log(self) -> Path:
        return self.base / "etc" / "sshd.log"

    # -- life cycle ---------------------------------------------------------------------------------------------
    @classmethod
    def create(cls) -> SshdServer:
        if not SSHD.exists():
            _fail_or_skip("OpenSSH sshd absent (/usr/sbin/sshd, paquet openssh-server)")
        if os.geteuid() != 0:
            _fail_or_skip("sshd avec comptes chrootés : les tests SFTP doivent tourner en root")
        token = secrets.token_hex(3)
        base = Path(f"/srv/spie-hub-tests-{os.getuid()}-{token}")
        group = f"sphub{token}"
        try:
            (base / "etc" / "authorized_keys").mkdir(parents=True, mode=0o755)
            (base / "chroot").mkdir(mode=0o755)
            # Explicit modes: a module that ran HubHome.ensure() first leaves the process umask at 0o077, and the
            # accounts must still read etc/authorized_keys.
            for folder in (base, base / "etc", base / "etc" / "authorized_keys", base / "chroot"):
                os.chmod(folder, 0o755)
            host_key = generate_key()
            key_path = base / "etc" / "ssh_host_ed25519_key"
            key_path.write_text(host_key.text())
            os.chmod(key_path, 0o600)
            _run("groupadd", group)
            server = cls(base, _free_port(), group, host_key)
            server._write_config()
            atexit.register(server.destroy)  # a session ended without its fixture's teardown (KeyboardInterrupt)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        return server

    def _write_config(self) -> None:
        etc = self.base / "etc"
        self.config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {etc}/ssh_host_ed25519_key
PidFile {etc}/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthenticationMethods publickey
AuthorizedKeysFile {etc}/authorized_keys/%u
StrictModes no
PermitRootLogin no
AllowGroups {self.group}
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
MaxStartups 50:30:100
LogLevel VERBOSE
Subsystem sftp internal-sftp
Match Group {self.group}
    ChrootDirectory {self.base}/chroot/%u
    ForceCommand internal-sftp
""")

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        _run(str(SSHD), "-t", "-f", str(self.config))
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd s'est arrêté au démarrage :\n{self.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError("sshd ne répond pas")

    def stop(self) -> None:
        """Stop the listener and every session (SIGTERM to the process group)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the listener and every session at once (SIGKILL to the process group): a crash of the server."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)
        self.kill_sessions()

    def session_pids(self, account: str | None = None) -> list[int]:
        """The per-connection sshd processes (titled ``sshd: <account>…``), of one account or of all of ours."""
        wanted = [account] if account else list(self.accounts)
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if any(title.startswith(f"sshd: {name}") for name in wanted):
                found.append(int(entry.name))
        return found

    def kill_sessions(self, account: str | None = None) -> int:
        """Drop the account's connections by killing their sshd processes; returns how many were killed."""
        pids = self.session_pids(account)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    # -- accounts ---------------------------------------------------------------------------------------------------
    def add_account(self, label: str) -> Account:
        """A partner's chrooted SFTP-only account with its ``depot``, ``retours`` and ``livraisons`` folders."""
        name = f"sph{secrets.token_hex(3)}{label}"[:30]
        _run("useradd", "-M", "-N", "-g", self.group, "-d", "/", "-s", "/usr/sbin/nologin", name)
        _run("usermod", "-p", "*", name)  # locked accounts are refused by sshd without PAM
        self.accounts.append(name)
        user = pwd.getpwnam(name)
        root = self.base / "chroot" / name
        root.mkdir(mode=0o755)
        os.chmod(root, 0o755)
        for folder in FOLDERS:
            (root / folder).mkdir(mode=0o700)
            os.chown(root / folder, user.pw_uid, user.pw_gid)
        partner_key, hub_key = generate_key(), generate_key()
        keys = self.base / "etc" / "authorized_keys" / name
        keys.write_text(f"{partner_key.public_line} partenaire\n{hub_key.public_line} hub\n")
        os.chmod(keys, 0o644)
        return Account(name, root, user.pw_uid, user.pw_gid, partner_key, hub_key, self)

    def remove_account(self, account: Account) -> None:
        self.kill_sessions(account.name)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("userdel", account.name)
        shutil.rmtree(account.root, ignore_errors=True)
        (self.base / "etc" / "authorized_keys" / account.name).unlink(missing_ok=True)
        with contextlib.suppress(ValueError):
            self.accounts.remove(account.name)

    def destroy(self) -> None:
        if not self.base.exists():
            return
        self.kill()
        for name in list(self.accounts):
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("userdel", name)
        with contextlib.suppress(KeyError, subprocess.CalledProcessError):
            grp.getgrnam(self.group)
            _run("groupdel", self.group)
        shutil.rmtree(self.base, ignore_errors=True)


# -- a TCP proxy that can cut a connection ---------------------------------------------------------------------------

class TcpProxy:
    """127.0.0.1:<port> → the server: every accepted connection is relayed until the test cuts it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.uploaded = 0  # bytes sent to the server on the current connections
        self.cut_at: int | None = None
        self.holding = False
        self.cuts = 0
        self.cut_event = threading.Event()
        #: Called right after a cut (what the server's disk holds at that instant is what a partner could see).
        self.on_cut: Callable[[], None] | None = None
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upload: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not upload:
                    while self.holding and not self.closed:
                        if self._dead(source):
                            return
                        time.sleep(0.01)
                target.sendall(data)
                if upload:
                    with self.lock:
                        self.uploaded += len(data)
                        trigger = self.cut_at is not None and self.uploaded >= self.cut_at
                    if trigger:
                        self.cut()
                        return
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _dead(sock: socket.socket) -> bool:
        return sock.fileno() < 0

    def cut_after_upload(self, nbytes: int) -> None:
        """Cut the connection once ``nbytes`` more went towards the server (mid-upload)."""
        with self.lock:
            self.cut_at = self.uploaded + nbytes

    def hold_replies(self) -> None:
        """From now on, the server's answers are held back (requests still go through) until ``cut``."""
        self.holding = True

    def cut(self) -> None:
        """Drop every current connection at once; new ones are relayed normally."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
            self.cut_at = None
            self.uploaded = 0
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self.holding = False  # only now: what was held never reaches the client
        if self.on_cut is not None and pairs:
            self.on_cut()
        self.cut_event.set()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        self.cut()


# -- pytest fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SshdServer]:
    server = SshdServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


class Accounts:
    """Creates partner accounts for one test; all removed after it (the server is restarted if a test stopped it)."""

    def __init__(self, server: SshdServer) -> None:
        self.server = server
        self.made: list[Account] = []

    def __call__(self, label: str = "p") -> Account:
        account = self.server.add_account(label)
        self.made.append(account)
        return account

    def cleanup(self) -> None:
        for account in self.made:
            self.server.remove_account(account)
        self.server.start()


@pytest.fixture
def sftp_accounts(sshd_server: SshdServer) -> Iterator[Accounts]:
    sshd_server.start()
    accounts = Accounts(sshd_server)
    try:
        yield accounts
    finally:
        accounts.cleanup()


@pytest.fixture
def tcp_proxy(sshd_server: SshdServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(sshd_server.port)
    try:
        yield proxy
    finally:
        proxy.close()

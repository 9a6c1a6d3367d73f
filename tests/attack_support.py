"""Helpers of the operator attacks (tests/test_attack_operations.py): a private PostgreSQL server the tests may
restart at will, processes held at a failpoint (SIGSTOP), and a scheduler pass with test-only widening hooks.

Run as a script, this file is one pass of the scheduler in a fresh process, exactly like ``tests/crash_support.py``
(``pending_inputs`` then ``process_inbox_file`` on each reference), with one more test-only switch read from the
environment (never by the hub):

- ``TEST_CLAIM_BARRIER=<folder>``: when the claim is about to remove the inbox file it copied (its last checks
  done), touch ``<folder>/<pid>`` and wait (at most ``TEST_CLAIM_BARRIER_WAIT`` s, 5 by default) until two processes
  are there. It only widens the window a preemption between two system calls gives anyway: a process claiming
  alone goes on after the wait, and the hub's own code runs unchanged.
- ``TEST_SLOW_BESIDE=<folder>``: the first time a store flushes a hidden temporary written beside its target (a drop
  on another file system), touch ``<folder>/en-cours`` and wait (at most 20 s) for ``<folder>/reprendre`` — a slow
  network drop, made deterministic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import crash_support  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")


# -- a private PostgreSQL server ----------------------------------------------------------------------------------
@dataclass
class PrivatePostgres:
    """A throw-away PostgreSQL cluster on its own port, so that restarting it disturbs nothing else."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        return subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o",
                               options, "-l", str(self.folder / "log"), "-w", *args], capture_output=True, text=True,
                              timeout=60)

    def start(self) -> None:
        result = self._ctl("start")
        assert result.returncode == 0, result.stderr + result.stdout

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        """``fast``: a clean restart (sessions terminated); ``immediate``: a crash of the server (recovery at start)."""
        result = self._ctl("-m", mode, "restart")
        assert result.returncode == 0, result.stderr + result.stdout

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"attaque_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres | None]:
    """None when this machine cannot run one (no binaries, not root)."""
    if not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or shutil.which("runuser") is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="spie-attaque-pg-", dir="/tmp"))
    os.chown(folder, *_postgres_ids())
    port = 20000 + os.getpid() % 20000
    server = PrivatePostgres(folder, port)
    init = subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(server.data), "-A", "trust",
                           "-U", "postgres"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        yield None
        return
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


# -- processes held at a failpoint --------------------------------------------------------------------------------
def process_state(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def wait_stopped(process: subprocess.Popen[str], timeout: float = 60) -> bool:
    """True once the process stopped itself (``SPIE_HUB_FAILPOINT_SIGNAL=STOP``); False if it ended or timed out."""
    return crash_support.wait_for(lambda: process.poll() is not None or process_state(process.pid) == "T", timeout) \
        and process.poll() is None


def resume(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGCONT)


# -- the scheduler pass, with the claim barrier --------------------------------------------------------------------
def start_pass(flow: str = crash_support.CAF, **env: str | None) -> subprocess.Popen[str]:
    return subprocess.Popen([crash_support.PYTHON, str(Path(__file__).resolve()), flow], cwd=str(crash_support.REPO),
                            env=crash_support.subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _install_claim_barrier(folder: Path, wait: float) -> None:
    from connectors.transports.local import LocalFolder

    original = LocalFolder.delete

    def delete(self: LocalFolder, name: str, *, expected: Any = None) -> bool:
        if expected is not None:  # the claim's removal of the inbox file it has just copied and checked
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(os.getpid())).touch()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and len(list(folder.iterdir())) < 2:
                time.sleep(0.02)
        return original(self, name, expected=expected)

    LocalFolder.delete = delete  # type: ignore[method-assign]


def _install_slow_beside(folder: Path) -> None:
    from connectors.transports.base import TEMPORARY_PREFIX

    real = os.fsync

    def fsync(fd: int) -> None:
        try:
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        except OSError:
            name = ""
        if name.startswith(TEMPORARY_PREFIX) and not (folder / "en-cours").exists():
            (folder / "en-cours").touch()
            crash_support.wait_for((folder / "reprendre").exists, 20, 0.02)
        real(fd)

    os.fsync = fsync


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("TEST_SLOW_BESIDE"):
        _install_slow_beside(Path(os.environ["TEST_SLOW_BESIDE"]))
    if os.environ.get("TEST_CLAIM_BARRIER"):
        _install_claim_barrier(Path(os.environ["TEST_CLAIM_BARRIER"]), float(os.environ.get("TEST_CLAIM_BARRIER_WAIT", "5")))
    sys.exit(crash_support._main(sys.argv[1:]))

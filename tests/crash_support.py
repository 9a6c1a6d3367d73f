"""Helpers of the crash harness (tests/test_crash.py) and of the hostile-input claim tests (tests/test_inputs_claim.py).

Run as a script, this file is one pass of the scheduler in a fresh process, as the DAG does it: list the inbox
entries the flow would take, then run ``process_inbox_file`` on each (``python tests/crash_support.py <flow>``).
It prints one JSON line per input and ends like the CLI: a ``HubError`` is one French line on stderr and exit 1,
an interruption (SIGINT, SIGTERM) "Interrompu." and exit 130; anything else is a traceback (a bug).

Test-only switches, read from the environment by the script (never by the hub):
- ``TEST_PARALLEL_VALIDATION_BYTES``: lower the size above which the XSD check runs in a child process;
- ``TEST_CLAIM_HOOK=grow:<file>`` / ``replace:<file>`` / ``inplace:<file>``: while the claim copies the inbox file
  (after its first MiB), append ``<file>`` to it, rename ``<file>`` over it keeping its times, or rewrite it in
  place with ``<file>``'s bytes and put its times back — a partner writing during the run;
- ``TEST_SLOW_VALIDATOR=<s>`` (and ``TEST_MARK_RESULT=<file>``): start the XSD child ``<s>`` seconds late (and touch
  ``<file>`` when the run starts waiting for its verdict).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CAF = "caf-vers-departement"
INBOX = "inbox/caf-msa"
RECIPIENTS = ("departement-052", "plateforme-insertion")
INPUT_NAME = "NRSACGIM_RSABEM_052_20261031.xml"
VALIDATOR_MODULE = "connectors.formats.cnaf_vrsb"
#: Where clear data may legitimately be at rest: the partners' drops, the hub's archive and its quarantine.
CLEAR_ALLOWED = ("outbox", "archive", "quarantine")
_NIR_CANDIDATE = re.compile(rb"(?=([0-9]{6}[0-9AB][0-9]{6}))")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- subprocesses -------------------------------------------------------------------------------------------------
def subprocess_env(**extra: str | None) -> dict[str, str]:
    """The test's environment (SPIE_HUB_HOME, keys, SPIE_HUB_DATABASE_URL when set) plus ``extra`` (None removes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPIE_HUB_FAILPOINT", "TEST_", "PYTEST_"))}
    env["PYTHONWARNINGS"] = "ignore"
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    summaries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr or "Traceback" in self.stdout

    def describe(self) -> str:
        return f"code {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def _outcome(process: subprocess.Popen[str], stdout: str, stderr: str) -> Outcome:
    summaries = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                summaries.append(json.loads(line))
    return Outcome(process.returncode, stdout, stderr, summaries)


def start_pass(flow: str = CAF, *, cwd: Path | None = None, **env: str | None) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, str(Path(__file__).resolve()), flow], cwd=str(cwd or REPO), env=subprocess_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_cli(*args: str, cwd: Path | None = None, preexec: Any = None, **env: str | None) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "spie_hub.cli", *args], cwd=str(cwd or REPO), env=subprocess_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> Outcome:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"the process blocked for more than {timeout} s\n{stdout}\n{stderr}") from None
    return _outcome(process, stdout, stderr)


def scheduler_pass(flow: str = CAF, *, timeout: float = 120, **env: str | None) -> Outcome:
    """One pass of the scheduler over the flow's inbox, in a fresh process."""
    return finish(start_pass(flow, **env), timeout)


def cli(*args: str, timeout: float = 120, cwd: Path | None = None, preexec: Any = None, **env: str | None) -> Outcome:
    return finish(start_cli(*args, cwd=cwd, preexec=preexec, **env), timeout)


# -- processes ----------------------------------------------------------------------------------------------------
def processes_mentioning(text: str) -> list[tuple[int, int, list[str]]]:
    """(pid, parent pid, argv) of every live process whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat_fields[0] == "Z":
            continue
        if any(text in a for a in argv):
            found.append((int(entry.name), int(stat_fields[1]), argv))
    return found


def validators_of(home: Path) -> list[tuple[int, int, list[str]]]:
    """The XSD validator children working on a file of this hub home."""
    return [p for p in processes_mentioning(VALIDATOR_MODULE) if any(str(home) in a for a in p[2])]


# -- data ---------------------------------------------------------------------------------------------------------
def nirs_of(flux: Path) -> set[bytes]:
    """Every NIR written in a synthetic flux (malformed ones included): identities to hunt for on disk."""
    return set(re.findall(rb"<NIR>([^<]+)</NIR>", flux.read_bytes()))


def files_with_nirs(home: Path, nirs: set[bytes], *, allowed: Iterable[str] = CLEAR_ALLOWED) -> dict[str, int]:
    """Files under the hub home, outside the allowed folders, holding a NIR of the population: {path: count}."""
    allowed_roots = [home / a for a in allowed]
    found: dict[str, int] = {}
    for path in home.rglob("*"):
        if any(path == root or root in path.parents for root in allowed_roots):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits = {m.group(1) for m in _NIR_CANDIDATE.finditer(data)} & nirs
        if hits:
            found[str(path.relative_to(home))] = len(hits)
    return found


# -- state of the hub ---------------------------------------------------------------------------------------------
def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def staging_leftovers(home: Path) -> list[str]:
    """Anything in staging/ but the empty scratch folder of stores."""
    staging = home / "staging"
    left = []
    for path in sorted(staging.rglob("*")) if staging.is_dir() else []:
        if path == staging / ".stores" and path.is_dir():
            continue
        left.append(str(path.relative_to(home)))
    return left


def drop_problems(home: Path, recipient: str) -> list[str]:
    """What is wrong with a recipient's drop, expected to hold exactly one complete delivery (file + manifest)."""
    drop = home / "outbox" / recipient
    names = listing(drop)
    problems = []
    odd = [n for n in names if n.startswith(".") or n.endswith((".part", ".tmp")) or "tmp" in n.lower()]
    if odd:
        problems.append(f"temporaries in {drop}: {odd}")
    manifests = [n for n in names if n.endswith(".manifest.json")]
    data = [n for n in names if n not in manifests and n not in odd]
    if len(manifests) != 1 or len(data) != 1:
        problems.append(f"expected one file and one manifest in {drop}, found {names}")
        return problems
    manifest = json.loads((drop / manifests[0]).read_text(encoding="utf-8"))
    if manifest.get("fichier") != data[0]:
        problems.append(f"manifest names {manifest.get('fichier')!r}, the drop holds {data[0]!r}")
    if manifest.get("sha256") != sha256(drop / data[0]):
        problems.append(f"manifest sha256 does not match {data[0]}")
    return problems


def temporaries_anywhere(home: Path) -> list[str]:
    """Hidden or temporary files in the partners' folders (drops and sender returns)."""
    outbox = home / "outbox"
    return [str(p.relative_to(home)) for p in outbox.rglob("*")
            if p.name.startswith(".") or p.name.endswith((".part", ".tmp"))] if outbox.is_dir() else []


@dataclass
class StoreState:
    runs: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    events: list[dict[str, Any]]
    verify_ok: bool
    verify_reason: str | None

    def run(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.runs if r["run_id"] == run_id), None)

    def events_of(self, name: str, run_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name and (run_id is None or e["run_id"] == run_id)]

    def payloads(self, name: str, run_id: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(e["payload"]) for e in self.events_of(name, run_id)]


def store_state(database_url: str, home: Path | None = None) -> StoreState:
    """The store's runs, deliveries and log entries; the "livre" decisions (runs' segments under ``home``, the
    environment's hub by default) as one ``decision-livre`` event per (run, recipient). A segment no ``lot`` row
    names (an orphan a crash left and no recovery removed) makes the audit fail here."""
    from sqlalchemy import select

    from spie_hub.audit import segments
    from spie_hub.audit.chain import verify
    from spie_hub.store import audit_log, deliveries, open_store, runs

    home = home or Path(os.environ["SPIE_HUB_HOME"])

    engine = open_store(database_url)
    try:
        with engine.connect() as connection:
            run_rows = [dict(r._mapping) for r in connection.execute(select(runs).order_by(runs.c.started_at))]
            delivery_rows = [dict(r._mapping) for r in connection.execute(select(deliveries))]
            events = [dict(r._mapping) for r in connection.execute(
                select(audit_log.c.seq, audit_log.c.run_id, audit_log.c.event, audit_log.c.recipient,
                       audit_log.c.payload).order_by(audit_log.c.seq))]
        livre = sorted({(e.run_id, e.recipient) for e in segments.iter_events(home, event="decision")
                        if '"decision":"livre"' in e.payload})
        events += [{"seq": None, "run_id": run_id, "event": "decision-livre", "recipient": recipient, "payload": "{}"}
                   for run_id, recipient in livre]
        # The per-person events of audited actions (consent imports, withdrawal propagation) of committed batches.
        committed_now = segments.committed_lots(engine)
        events += [{"seq": None, "run_id": e.run_id, "event": e.event, "recipient": e.recipient, "payload": e.payload}
                   for e in segments.iter_events(home) if e.event not in segments.RECORD_EVENTS
                   and e.path_rel in committed_now]
        result = verify(engine)
        ok, reason = result.ok, result.reason
        committed = segments.committed_lots(engine)
        for path in segments.segment_files(home):
            rel = path.relative_to(home).as_posix()
            if rel not in committed:
                ok, reason = False, (reason or "") + f" ; lot sans entrée au journal (orphelin) : {rel}"
            elif problem := segments.verify_segment(home, committed[rel]):
                ok, reason = False, (reason or "") + f" ; {problem}"
        if (home / segments.LOTS).is_dir() and (left := [p.name for p in (home / segments.LOTS).rglob(".*.tmp")]):
            ok, reason = False, (reason or "") + f" ; lot temporaire laissé : {left}"
    finally:
        engine.dispose()
    return StoreState(run_rows, delivery_rows, events, ok, reason)


def untruthful_decisions(state: StoreState) -> list[tuple[str, str]]:
    """(run, recipient) of "livre" decisions whose run neither delivered to that recipient nor was annulled."""
    delivered = {(d["run_id"], d["recipient"]) for d in state.deliveries}
    annulled = {e["run_id"] for e in state.events_of("execution-annulee")}
    return sorted((e["run_id"], e["recipient"]) for e in state.events_of("decision-livre")
                  if (e["run_id"], e["recipient"]) not in delivered and e["run_id"] not in annulled)


def database_url(home: Path) -> str:
    return os.environ.get("SPIE_HUB_DATABASE_URL") or f"sqlite:///{home / 'hub.sqlite3'}"


def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# -- the scheduler pass, in its own process ----------------------------------------------------------------------
def _install_claim_hook(spec: str) -> None:
    """A partner writing the inbox file while the claim copies it (once: the hook file is consumed)."""
    from spie_hub.run import claim

    action, _, source = spec.partition(":")
    source_path = Path(source)
    original = claim._copy

    def act(target: Path) -> None:
        if not source_path.exists():
            return
        if action == "grow":
            with open(target, "ab") as out:
                out.write(source_path.read_bytes())
                out.flush()
            source_path.unlink()
        elif action == "replace":
            info = os.stat(target)
            os.utime(source_path, ns=(info.st_atime_ns, info.st_mtime_ns))
            os.replace(source_path, target)
        elif action == "inplace":  # rewritten in the same file (rsync --inplace -t): same inode, times put back
            info = os.stat(target)
            with open(target, "r+b") as out:
                out.write(source_path.read_bytes())
                out.truncate()
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
            source_path.unlink()
        else:
            raise SystemExit(f"unknown claim hook {action}")

    def hooked(stream: Any, destination: Path) -> tuple[str, int]:
        name = Path(os.readlink(f"/proc/self/fd/{stream.fileno()}"))

        class Reader:
            chunks = 0

            def read(self, size: int = -1) -> bytes:
                data = stream.read(size)
                Reader.chunks += 1
                if Reader.chunks == 1:
                    act(name)
                return data

        return original(Reader(), destination)  # type: ignore[arg-type]

    claim._copy = hooked  # type: ignore[assignment]


def _slow_validator(seconds: float, marker: str | None) -> None:
    """The real XSD child, started ``seconds`` late (so that a signal lands while it runs); ``marker`` is created
    when the run starts waiting for its verdict. The run's own code (spawn options, cancel, result) is unchanged."""
    import types

    from connectors.formats import cnaf_vrsb

    real = subprocess

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        if args[1:3] == ["-m", VALIDATOR_MODULE]:
            code = (f"import runpy, sys, time; time.sleep({seconds}); sys.argv = ['{VALIDATOR_MODULE}', *sys.argv[1:]]; "
                    f"runpy.run_module('{VALIDATOR_MODULE}', run_name='__main__')")
            args = [args[0], "-c", code, *args[3:]]
        return real.Popen(args, **kwargs)

    cnaf_vrsb.subprocess = types.SimpleNamespace(Popen=popen, PIPE=real.PIPE, DEVNULL=real.DEVNULL)  # type: ignore[assignment]
    if marker:
        result = cnaf_vrsb.BackgroundValidation.result

        def marked(self: Any) -> list[str]:
            Path(marker).touch()
            return result(self)

        cnaf_vrsb.BackgroundValidation.result = marked  # type: ignore[method-assign]


def _main(argv: list[str]) -> int:
    from sqlalchemy.exc import OperationalError

    from spie_hub.core.errors import ConfigurationError, HubError
    from spie_hub.core.home import HubHome
    from spie_hub.registry import get_flow
    from spie_hub.run import flow_run
    from spie_hub.run.lifecycle import pending_inputs, process_inbox_file

    if os.environ.get("TEST_PARALLEL_VALIDATION_BYTES"):
        flow_run.PARALLEL_VALIDATION_BYTES = int(os.environ["TEST_PARALLEL_VALIDATION_BYTES"])
    if os.environ.get("TEST_SLOW_VALIDATOR"):
        _slow_validator(float(os.environ["TEST_SLOW_VALIDATOR"]), os.environ.get("TEST_MARK_RESULT"))
    if os.environ.get("TEST_CLAIM_HOOK"):
        _install_claim_hook(os.environ["TEST_CLAIM_HOOK"])
    code = 0
    try:
        home = HubHome.from_env().ensure()
        flow = get_flow(argv[0] if argv else CAF)
        for ref in pending_inputs(flow, home):
            summary = process_inbox_file(flow, ref, home)
            print(json.dumps(summary.for_xcom() | {"message": summary.message}, ensure_ascii=False), flush=True)
            if summary.statut == "livraison-en-attente":  # as the CLI (74) and the DAG's task (failed): said, then on
                print(f"Erreur : {summary.message}", file=sys.stderr)
                code = 74
    except ConfigurationError as error:
        print(f"Erreur de configuration : {error}", file=sys.stderr)
        return 2
    except HubError as error:
        print(f"Erreur : {error}", file=sys.stderr)
        return 1
    except OperationalError as error:
        print(f"Base de données injoignable : {type(error.orig).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrompu.", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(_main(sys.argv[1:]))

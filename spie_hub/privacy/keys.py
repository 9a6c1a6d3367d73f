"""Pseudonymisation key material, injected by name (as in dlt) and never logged.

Lookup order: ``SPIE_HUB_PSEUDO_KEY`` (``kid:base64``, or several separated by commas, the current one first),
``SPIE_HUB_PSEUDO_KEY_FILE`` (JSON file), the Airflow Variable or Connection ``spie_hub_pseudo_key`` when running
inside an Airflow task, then ``$SPIE_HUB_HOME/keys/pseudonymisation.json``.

Rotation: a key ring holds the current key and the previous ones still within their retention period. New
pseudonyms use the current key; the previous keys keep old pseudonyms resolvable (consents stored under an old
pivot, data delivered under an old recipient pseudonym) until they are retired (docs/pseudonymisation.md).

Fail-safe registry (table ``pseudo_keys``): every key id the hub has used is kept with a keyed fingerprint of its
secret. A ring whose secret changed behind a known id, or that lacks a known key never retired, is refused at load:
either would make every consent, opposition and withdrawal stored under that key silently stop applying. A key is
retired only once nothing in the store depends on it, and its id is never given to another secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, insert, or_, select, update

from spie_hub.core.errors import ConfigurationError, HubError
from spie_hub.core.home import HubHome
from spie_hub.store import audit_log, consents, metadata, pseudo_keys, revocations

ENV_KEY = "SPIE_HUB_PSEUDO_KEY"
ENV_KEY_FILE = "SPIE_HUB_PSEUDO_KEY_FILE"
AIRFLOW_VARIABLE = "spie_hub_pseudo_key"
KID_PATTERN = re.compile(r"^[a-z0-9-]{1,16}$")


def parse_kid_secret(text: str, origin: str) -> tuple[str, bytes]:
    """``kid:base64`` (the form every key takes in a variable) → (kid, secret bytes)."""
    kid, sep, encoded = text.strip().partition(":")
    if not sep:
        raise ConfigurationError(f"{origin} : format attendu 'identifiant:secret_base64'")
    try:
        return kid, base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ConfigurationError(f"{origin} : le secret n'est pas du base64 valide") from None


def find_key_source(env: str, env_file: str, airflow_name: str, default: Path, what: str) -> tuple[str, str | Path]:
    """Where a key is, in the hub's lookup order: (origin, "kid:base64") from the environment or Airflow, or
    ("fichier", path) from the file variable or the default file. Its absence names the variables to set."""
    if value := os.environ.get(env):
        return f"Variable d'environnement {env}", value
    if path := os.environ.get(env_file):
        return "fichier", Path(path)
    if value := secret_from_airflow(airflow_name):
        return f"Variable Airflow {airflow_name}", value
    if default.exists():
        return "fichier", default
    raise ConfigurationError(f"Aucune {what} : définissez {env} ('kid:base64') ou {env_file}, "
                             f"ou créez {default} avec 'spie-hub cles init'.")


def read_key_file(path: Path, secret_field: str, what: str) -> tuple[str, bytes]:
    """A single-key JSON file {"kid", <secret_field>: base64} → (kid, secret bytes)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["kid"], base64.b64decode(data[secret_field], validate=True)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigurationError(f"Fichier de {what} illisible : {path} (attendu : JSON avec 'kid' et '{secret_field}')") from None


@dataclass(frozen=True)
class PseudonymisationKey:
    kid: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not KID_PATTERN.match(self.kid):
            raise ConfigurationError(
                "Identifiant de clé invalide : 1 à 16 caractères parmi a-z, 0-9 et '-' (ex. 'k2026a')"
            )
        if len(self.secret) < 32:
            raise ConfigurationError("Clé de pseudonymisation trop courte : 32 octets aléatoires au minimum")

    def __str__(self) -> str:
        return f"PseudonymisationKey(kid={self.kid}, secret=***)"

    @classmethod
    def parse(cls, text: str, origin: str) -> PseudonymisationKey:
        return cls(*parse_kid_secret(text, origin))

    @classmethod
    def from_file(cls, path: Path) -> PseudonymisationKey:
        return cls(*read_key_file(path, "secret_b64", "clé de pseudonymisation"))


@dataclass(frozen=True)
class KeyRing:
    current: PseudonymisationKey
    previous: tuple[PseudonymisationKey, ...] = ()

    def __post_init__(self) -> None:
        kids = [k.kid for k in self.keys]
        if len(set(kids)) != len(kids):
            raise ConfigurationError("Trousseau de clés : deux clés portent le même identifiant")

    @property
    def keys(self) -> tuple[PseudonymisationKey, ...]:
        return (self.current, *self.previous)

    @classmethod
    def parse(cls, text: str, origin: str) -> KeyRing:
        keys = [PseudonymisationKey.parse(part, origin) for part in text.split(",") if part.strip()]
        if not keys:
            raise ConfigurationError(f"{origin} : aucune clé")
        return cls(keys[0], tuple(keys[1:]))

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if "cles" not in data:  # a single key
                return cls(PseudonymisationKey.from_file(path))
            keys = {kid: PseudonymisationKey(kid, base64.b64decode(b64, validate=True)) for kid, b64 in data["cles"].items()}
            return cls(keys[data["actuelle"]], tuple(k for kid, k in keys.items() if kid != data["actuelle"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigurationError(
                f"Fichier de clé illisible : {path} (attendu : JSON avec 'actuelle' et 'cles', ou 'kid' et 'secret_b64')"
            ) from None

    def write(self, path: Path) -> None:
        """Write the ring (mode 0600) atomically."""
        data = {"actuelle": self.current.kid, "cles": {k.kid: base64.b64encode(k.secret).decode() for k in self.keys}}
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        tmp.replace(path)


def generate_key_file(path: Path, kid: str = "k1") -> PseudonymisationKey:
    """Write a new random key (mode 0600) unless one exists; return the current key in the file."""
    if path.exists():
        return KeyRing.from_file(path).current
    key = PseudonymisationKey(kid, secrets.token_bytes(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    KeyRing(key).write(path)
    return key


def secret_from_airflow(name: str) -> str | None:
    """A secret from the Airflow secrets backend: Variable ``name`` ("kid:base64"), or Connection ``name``
    (login = kid, password = base64). Only inside a running task, never at DAG parse time or outside Airflow."""
    if "AIRFLOW_CTX_DAG_ID" not in os.environ:
        return None
    from airflow.sdk import Connection, Variable

    try:
        value = Variable.get(name, default=None)
    except Exception:  # noqa: BLE001 - no Variable of that name, or no backend: try the Connection
        value = None
    if value:
        return str(value)
    try:
        connection = Connection.get(name)
    except Exception:  # noqa: BLE001 - no Connection of that name either: fall through to the file
        return None
    return f"{connection.login}:{connection.password}" if connection.login and connection.password else None


def load_keyring(home: HubHome | None = None) -> KeyRing:
    """The ring from wherever the hub finds its key (no check against the store: see ``load_checked_keyring``)."""
    return load_keyring_from(key_source(home))


def key_file(home: HubHome | None = None) -> Path:
    """The key-ring file that rotation and retirement rewrite."""
    return Path(os.environ.get(ENV_KEY_FILE) or (home or HubHome.from_env()).keys / "pseudonymisation.json")


def load_key(home: HubHome | None = None) -> PseudonymisationKey:
    """The current pseudonymisation key."""
    return load_keyring(home).current


# --- where the key lives ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySource:
    """Where the hub found its pseudonymisation key: ``origin`` names it for a person; ``value`` is the
    "kid:base64" text of a variable, or the file's path."""

    origin: str
    value: str | Path = field(repr=False)
    #: the hub's own key file ($SPIE_HUB_HOME/keys/pseudonymisation.json), the only one the hub may rewrite
    hub_file: bool = False


def key_source(home: HubHome | None = None) -> KeySource:
    default = (home or HubHome.from_env()).keys / "pseudonymisation.json"
    origin, value = find_key_source(ENV_KEY, ENV_KEY_FILE, AIRFLOW_VARIABLE, default, "clé de pseudonymisation")
    if isinstance(value, Path):
        own = value.resolve() == default.resolve()
        return KeySource(f"le fichier {value}" if own else f"le fichier {value} (variable {ENV_KEY_FILE})", value, own)
    return KeySource(origin[0].lower() + origin[1:], value)


def load_keyring_from(source: KeySource) -> KeyRing:
    return KeyRing.from_file(source.value) if isinstance(source.value, Path) else KeyRing.parse(source.value, source.origin)


# --- the registry of used keys ------------------------------------------------------------------------------------

_FINGERPRINT_MESSAGE = b"empreinte-cle"


def fingerprint(key: PseudonymisationKey) -> str:
    """A keyed fingerprint of the secret (HMAC, never the secret nor a plain hash of it, which a leaked store would
    let anyone test guesses against): the same secret always gives the same fingerprint."""
    return hmac.new(key.secret, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _day(timestamp: str | None) -> str:
    return (timestamp or "?")[:10]


def _claim(connection: Connection, key: PseudonymisationKey) -> None:
    """Record a key id with its fingerprint unless the id is known (two processes at once: one row wins)."""
    values = {"kid": key.kid, "fingerprint": fingerprint(key), "first_seen_at": _now()}
    if connection.dialect.name in ("postgresql", "sqlite"):
        if connection.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        connection.execute(upsert(pseudo_keys).values(**values).on_conflict_do_nothing(index_elements=["kid"]))
    else:  # pragma: no cover - the hub runs on SQLite or PostgreSQL
        connection.execute(insert(pseudo_keys).values(**values))


def check_keyring(engine: Engine, ring: KeyRing, origin: str) -> None:
    """Refuse a ring that would make stored consents, oppositions or withdrawals stop matching, with a French
    error naming the key id: a secret changed behind a known id (a used id given to a new secret included), or a key
    the hub used and never retired missing from the ring. Keys seen for the first time are recorded."""
    with engine.connect() as connection:
        known = {row.kid: row for row in connection.execute(select(pseudo_keys))}
    # Everything known checked before anything is recorded: a refused ring leaves no trace in the registry.
    _compare(ring, known, origin)
    new = [key for key in ring.keys if key.kid not in known]
    if new:
        with engine.begin() as connection:
            for key in new:
                _claim(connection, key)
            # Re-read: another process may have recorded the same id first, with another secret.
            known = {row.kid: row for row in connection.execute(select(pseudo_keys))}
        _compare(ring, known, origin)


def _compare(ring: KeyRing, known: dict[str, Row[Any]], origin: str) -> None:
    for key in ring.keys:
        row = known.get(key.kid)
        if row is not None and not hmac.compare_digest(row.fingerprint, fingerprint(key)):
            retired = f", retirée le {_day(row.retired_at)}" if row.retired_at else ""
            raise ConfigurationError(
                f"la clé de pseudonymisation « {key.kid} » lue dans {origin} n'a pas le secret sous lequel le hub "
                f"l'a utilisée (depuis le {_day(row.first_seen_at)}{retired}). Sous ce secret, les consentements, "
                "oppositions et retraits enregistrés ne s'appliqueraient plus et les destinataires recevraient de "
                f"nouveaux pseudonymes sous le même identifiant : exécution refusée. Rétablissez le secret d'origine "
                f"de « {key.kid} » ; pour changer de secret, donnez à la nouvelle clé un identifiant jamais utilisé, "
                f"en gardant « {key.kid} » comme clé précédente (docs/pseudonymisation.md).")
    kids = {key.kid for key in ring.keys}
    missing = sorted(kid for kid, row in known.items() if row.retired_at is None and kid not in kids)
    if missing:
        raise ConfigurationError(
            f"{_plural(len(missing), 'la clé de pseudonymisation', 'les clés de pseudonymisation')} "
            f"{', '.join(f'« {kid} »' for kid in missing)}, utilisée(s) par le hub et jamais retirée(s), manque(nt) "
            f"dans {origin} : les consentements, oppositions et retraits enregistrés sous ces clés ne "
            "s'appliqueraient plus : exécution refusée. Remettez-les dans le trousseau comme clés précédentes "
            f"(l'actuelle en premier : « {ring.current.kid}:…,{missing[0]}:… »), ou retirez-les proprement avec "
            f"« spie-hub cles retirer --kid {missing[0]} » (refusé tant que quelque chose en dépend).")


def load_checked_keyring(engine: Engine, home: HubHome | None = None) -> KeyRing:
    source = key_source(home)
    ring = load_keyring_from(source)
    check_keyring(engine, ring, source.origin)
    return ring


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


# --- rotation ---------------------------------------------------------------------------------------------------


def _rotation_elsewhere(source: KeySource, ring: KeyRing | None, kid: str) -> str:
    current = ring.current.kid if ring else "actuelle"
    kept = ",".join(f"{k.kid}:…" for k in ring.keys) if ring else f"{current}:…"
    secret = ("python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())'")
    if source.origin.startswith("variable d'environnement"):
        how = (f"mettez la nouvelle clé en premier et gardez les autres : {ENV_KEY}=\"{kid}:<nouveau secret>,{kept}\" "
               "partout où le hub s'exécute (ligne de commande, Airflow, services)")
    elif source.origin.startswith("variable airflow"):
        how = (f"modifiez la Variable Airflow {AIRFLOW_VARIABLE} : « {kid}:<nouveau secret>,{kept} » "
               f"(airflow variables set {AIRFLOW_VARIABLE} …)")
    elif source.origin.startswith("connexion airflow"):
        how = (f"une Connexion Airflow ne porte qu'une clé : passez à la Variable Airflow {AIRFLOW_VARIABLE} avec "
               f"« {kid}:<nouveau secret>,{kept} », puis supprimez la Connexion")
    else:
        how = (f"écrivez la nouvelle clé actuelle dans ce fichier en gardant les autres : "
               f"{{\"actuelle\": \"{kid}\", \"cles\": {{\"{kid}\": \"<nouveau secret>\", …}}}}")
    return (f"rotation refusée : la clé de pseudonymisation en service (« {current} ») vient de {source.origin}, que "
            f"le hub ne modifie pas (le fichier {HubHome.from_env().keys / 'pseudonymisation.json'} n'est pas utilisé). "
            f"Pour la rotation, {how} ; secret de 32 octets aléatoires, par exemple : {secret}. Le hub enregistre la "
            "nouvelle clé à sa première utilisation.")


@contextmanager
def _ring_lock(home: HubHome | None) -> Iterator[None]:
    """Two key operations at once (rotation, retirement) must not each rewrite the ring from what it read."""
    folder = (home or HubHome.from_env()).keys
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".verrou-trousseau", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def rotate_hub_key(engine: Engine, kid: str, home: HubHome | None = None) -> KeyRing:
    """Make a new random key current in the hub's own key file; the previous ones stay in the ring. Refused when
    the key in service comes from anywhere else, when the file is not what the hub has been running with, or when
    ``kid`` was ever used."""
    with _ring_lock(home):
        return _rotate(engine, kid, home)


def _rotate(engine: Engine, kid: str, home: HubHome | None) -> KeyRing:
    source = key_source(home)
    ring = load_keyring_from(source)
    if not source.hub_file:
        raise ConfigurationError(_rotation_elsewhere(source, ring, kid))
    try:
        check_keyring(engine, ring, source.origin)
    except ConfigurationError as error:
        raise ConfigurationError(
            f"rotation refusée : {error} (si les exécutions du hub lisent leur clé ailleurs — variable "
            f"d'environnement {ENV_KEY}, Variable Airflow {AIRFLOW_VARIABLE} —, faites la rotation là)") from None
    new = PseudonymisationKey(kid, secrets.token_bytes(32))
    with engine.connect() as connection:
        used = connection.execute(select(pseudo_keys).where(pseudo_keys.c.kid == kid)).first()
    if used is not None or kid in {k.kid for k in ring.keys}:
        since = f" depuis le {_day(used.first_seen_at)}" if used is not None else ""
        raise ConfigurationError(
            f"l'identifiant de clé « {kid} » est déjà utilisé{since} : un identifiant ne désigne jamais deux "
            "secrets (les pseudonymes et consentements enregistrés sous cet identifiant deviendraient ambigus). "
            "Choisissez un identifiant nouveau (ex. « k" + dt.date.today().strftime("%Y%m") + " »).")
    rotated = KeyRing(new, ring.keys)
    # The file first, then the registry: a key recorded but never written would be "a known key missing" and stop
    # every run; a run that reads the new file in between records the same fingerprint, which is fine.
    path: Path = source.value  # type: ignore[assignment]  # hub_file: a path
    rotated.write(path)
    with engine.begin() as connection:
        _claim(connection, new)
        winner = connection.execute(select(pseudo_keys.c.fingerprint).where(pseudo_keys.c.kid == kid)).scalar_one()
    if not hmac.compare_digest(winner, fingerprint(new)):  # another rotation took the id meanwhile
        ring.write(path)
        raise ConfigurationError(f"l'identifiant de clé « {kid} » vient d'être pris par une autre rotation ; "
                                 "trousseau inchangé")
    return rotated


# --- retirement -------------------------------------------------------------------------------------------------


class KeyInUseError(HubError):
    """A key still needed to apply what is stored under it (consents, oppositions, withdrawals, audit)."""


@dataclass(frozen=True)
class KeyDependents:
    """What, stored under a key, would stop applying or become unreachable if the key were retired."""

    consentements: int = 0  # consents whose latest version is stored only under that key
    oppositions: int = 0  # of which oppositions or refusals
    retraits: int = 0  # withdrawals not yet propagated that need the key to name what recipients hold
    journal: int = 0  # audit entries under the key's pseudonyms (deliveries, notices, subject access)
    autres: dict[str, int] = field(default_factory=dict)  # rows of other tables keyed by a pseudonym of that key

    @property
    def empty(self) -> bool:
        return not (self.consentements or self.retraits or self.journal or any(self.autres.values()))


#: Where the runs' segments of per-record events are kept (spie_hub/audit/segments.py, a layer above: its format is
#: read here by name only, so that retiring a key never misses the decisions recorded under it).
LOTS = "audit/lots"


def lot_subjects(home: HubHome, prefix: str) -> int:
    """Per-record events (leaves of the runs' segments) under a pseudonym starting with ``prefix``, through each
    segment's index on ``subject``; a segment that cannot be read counts as one, to stay on the safe side.
    ``segments.count_subject_prefix`` says the same (tests/test_segments.py keeps them equal)."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    total = 0
    root = home.root / LOTS
    for path in sorted(root.glob("*/*/*/*.sqlite3")) if root.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            db = sqlite3.connect(f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro", uri=True)
            try:
                total += int(db.execute("SELECT count(*) FROM leaves WHERE subject >= ? AND subject < ?",
                                        (prefix, upper)).fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:
            total += 1
    return total


def key_dependents(engine: Engine, kid: str, home: HubHome | None = None) -> KeyDependents:
    """What is still recorded under ``kid``'s pseudonyms; ``home``: where the runs' segments of per-record events
    are (the environment's hub by default), counted with the log's entries."""
    prefix = f"{kid}.%"
    with engine.connect() as connection:
        latest = (select(consents.c.emetteur, consents.c.consent_id, func.max(consents.c.version).label("version"))
                  .group_by(consents.c.emetteur, consents.c.consent_id).subquery())
        heads = connection.execute(
            select(consents.c.kind, consents.c.decision, consents.c.rules)
            .join(latest, (consents.c.emetteur == latest.c.emetteur) & (consents.c.consent_id == latest.c.consent_id)
                  & (consents.c.version == latest.c.version))
            .where(consents.c.subject.like(prefix))).all()
        refusing = sum(1 for h in heads if h.kind == "opposition" or '"deny"' in (h.rules or "")
                       or (h.decision == "deny" and h.rules in ("[]", "", None)))
        pending = connection.execute(select(func.count()).select_from(revocations).where(
            revocations.c.propagated_at.is_(None),
            or_(revocations.c.subject.like(prefix), revocations.c.aliases.like(f'%"{kid}.%')))).scalar_one()
        journal = connection.execute(select(func.count()).select_from(audit_log)
                                     .where(audit_log.c.subject.like(prefix))).scalar_one()
        # The decisions under the key's pseudonyms live in the runs' segments now: they count as journal entries.
        journal += lot_subjects(home or HubHome.from_env(), f"{kid}.")
        # Tables added later that key rows by a person's pseudonym ("subject"): counted whole, to stay on the safe side.
        others = {}
        for table in metadata.sorted_tables:
            if table.name in ("consents", "revocations", "audit_log") or "subject" not in table.c:
                continue
            if n := connection.execute(select(func.count()).select_from(table)
                                       .where(table.c.subject.like(prefix))).scalar_one():
                others[table.name] = n
    return KeyDependents(len(heads), refusing, pending, journal, others)


def _describe(kid: str, deps: KeyDependents) -> str:
    lines = [f"la clé « {kid} » ne peut pas être retirée : des données enregistrées sous elle cesseraient de "
             "s'appliquer ou deviendraient introuvables."]
    if deps.consentements:
        lines.append(f"  - {deps.consentements} consentement(s) dont la dernière version n'est enregistrée que sous "
                     f"« {kid} », dont {deps.oppositions} opposition(s) ou refus : faites-les réémettre par leur émetteur, "
                     f"ou relogez-les sous la clé actuelle avec « spie-hub cles reloger --kid {kid} » (NIR des "
                     "personnes lus sur l'entrée standard, un par ligne) ;")
    if deps.retraits:
        lines.append(f"  - {deps.retraits} retrait(s) pas encore propagé(s) : lancez « spie-hub consent propager » ;")
    if deps.journal:
        lines.append(f"  - {deps.journal} entrée(s) du journal d'audit sous des pseudonymes de « {kid} » (livraisons, "
                     "avis de suppression, droit d'accès) : la clé reste nécessaire jusqu'à leur purge à la fin de la "
                     "durée de conservation du journal (« spie-hub purge ») ;")
    for table, n in deps.autres.items():
        lines.append(f"  - {n} ligne(s) de la table {table} sous des pseudonymes de « {kid} » ;")
    lines.append("Aucune option ne contourne cette vérification.")
    return "\n".join(lines)


@dataclass(frozen=True)
class Retirement:
    ring: KeyRing
    #: the key still sits in a source the hub cannot rewrite: the operator removes it there
    still_in: str | None = None


def retire_hub_key(engine: Engine, kid: str, home: HubHome | None = None) -> Retirement:
    """Retire ``kid`` once nothing stored depends on it: marked retired in the registry (its id stays used
    forever) and removed from the hub's own key file; in any other source, the operator removes it."""
    with _ring_lock(home):
        return _retire(engine, kid, home)


def _retire(engine: Engine, kid: str, home: HubHome | None) -> Retirement:
    source = key_source(home)
    ring = load_keyring_from(source)
    if kid == ring.current.kid:
        raise ConfigurationError(f"la clé « {kid} » est la clé actuelle : faites d'abord une rotation")
    with engine.connect() as connection:
        row = connection.execute(select(pseudo_keys).where(pseudo_keys.c.kid == kid)).first()
    in_ring = kid in {k.kid for k in ring.keys}
    if row is None and not in_ring:
        raise ConfigurationError(f"clé « {kid} » inconnue : ni dans {source.origin}, ni parmi les clés utilisées par le hub")
    if row is not None and row.retired_at is not None and not in_ring:
        raise ConfigurationError(f"la clé « {kid} » est déjà retirée (le {_day(row.retired_at)})")
    deps = key_dependents(engine, kid, home)
    if not deps.empty:
        raise KeyInUseError(_describe(kid, deps))
    if in_ring:
        check_keyring(engine, ring, source.origin)  # the ring really is the one the hub used (records kid if new)
    with engine.begin() as connection:
        connection.execute(update(pseudo_keys).where(pseudo_keys.c.kid == kid, pseudo_keys.c.retired_at.is_(None))
                           .values(retired_at=_now()))
    remaining = KeyRing(ring.current, tuple(k for k in ring.previous if k.kid != kid))
    if source.hub_file:
        if in_ring:
            remaining.write(source.value)  # type: ignore[arg-type]
        return Retirement(remaining)
    return Retirement(remaining, source.origin if in_ring else None)

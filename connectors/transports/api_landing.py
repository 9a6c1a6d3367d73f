"""HTTPS partner APIs as a transport (``type: api-https``): what an API answers is *landed* as files, and what the hub
delivers to an API is pushed line by line — so that the run sees files either way, with their usual life cycle.

``flows.yaml``::

    transport: {type: api-https, connexion: ft-api, api: france-travail, ressource: usagers}

**As a source** (``usagers`` of France Travail, ``evenements`` of i-milo), ``list()`` first lands what the API has
that is new into ONE JSON Lines file, stored atomically in the landing folder (``atterrissage``, by default
``atterrissage/<connexion>/<ressource>`` under ``SPIE_HUB_HOME``) under ``<ressource>_<AAAAMMJJTHHMMSSZ>_<sha12>.jsonl``;
only once that file is durable does it consume the API's side (i-milo: acknowledge each event; France Travail: remove
the "demandes" files it answered). What is landed but not yet consumed is first written to a durable journal
(``.a-consommer.json`` in the landing folder): a failed ack or a kill midway is finished at the next pass, before
anything new is asked, so that an event or a demande is never landed twice in two files of different bytes. A crash
between storing the file and writing the journal re-lands the same data at the next pass — never loses it.
Everything else (open, delete, ``rejets/``…)
delegates to the landing folder (a ``LocalFolder``). The API is asked at most once per ``intervalle_secondes``.

- France Travail ``usagers``: the persons to look up come from "demandes" files (``*.jsonl``, one
  ``{"nir", "date_naissance"}`` per line) dropped in ``<atterrissage>/demandes/`` (by the Département, or by this
  transport itself after it pushed orientations); each landed line is ``{"demande": {…}, "codeRetour", "resultat",
  "topIdentiteCertifiee", "statut", "diagnostic", "freins", "orientation", "rendez_vous"}`` (S002/S003 recorded as
  the person's outcome; R… codes are errors that stop the landing).
- i-milo ``evenements``: one line per event, ``{"evenement": {"id", "type", "action", "idDossier", "idType",
  "date"}, "dossier": {…} | null}``, then each event is acknowledged.

**As a recipient** (``orientations`` of France Travail), ``store(name)`` of a ``.jsonl`` delivery stages it
privately; when the block ends, each line (``nir``, ``date_naissance``, ``parcours`` PED/PSO/PSP, ``organisme``…) is
pushed — lookup by NIR and birth date, then ``POST`` of the orientation with ``Idempotency-Key`` = sha256(file sha +
line number). Each answer is appended (and flushed to disk) to ``<name>.reponses.jsonl`` in ``<atterrissage>/en-cours``:
after a failure, the next attempt resumes after the last answered line and never pushes a line twice (a line whose
answer was lost is sent again with the same key, which the API deduplicates). A person France Travail does not know
(S002) or finds twice (S003) is an answer, not a failure. Only when every line is answered are the file and its
answers made visible in ``<atterrissage>/envois/``, and a "demandes" file naming the persons pushed is written for the
``usagers`` landing (``demandes``, default ``atterrissage/<connexion>/usagers/demandes``), so that the Département
gets France Travail's view of them back. Other files (the manifest) are stored in ``envois/`` as they are. A push
that cannot go on raises ``ApiPushError`` (a retriable ``StorageError``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from pydantic import Field, field_validator, model_validator

from connectors.apis.common import ClientHooks
from connectors.apis.france_travail import PARCOURS, PARCOURS_WEBRSA
from connectors.apis.registry import RESSOURCES, client_for
from connectors.connections import get_connection
from connectors.http.errors import ApiError, ApiFatalError, ApiRetriableError
from connectors.transports.base import (
    FileExists,
    FileInfo,
    Transport,
    TransportOptions,
    confined_folder,
    safe_name,
    sha256_stream,
)
from connectors.transports.local import LocalFolder
from spie_hub.core.errors import RecordError, RetriableError, StorageError
from spie_hub.core.failpoints import failpoint
from spie_hub.core.home import HubHome

log = logging.getLogger("spie_hub.transports.api")

#: A demandes line longer than this is refused (a person is two short fields).
MAX_DEMANDE_LINE = 1 << 14
#: A staged delivery line longer than this is refused (one person's orientation).
MAX_DELIVERY_LINE = 1 << 20
#: Answers to a push that refuse the line itself (its data), not the whole push.
LINE_REFUSALS = {400, 409, 422}


class ApiPushError(StorageError, RetriableError):
    """A push to a partner API stopped before its end: nothing is visible in ``envois/``; the next attempt resumes."""


class ApiOptions(TransportOptions):
    """``{type: api-https, connexion: ft-api, api: france-travail, ressource: usagers}`` in ``flows.yaml``."""

    connexion: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    api: str
    ressource: str
    atterrissage: str | None = None
    #: Recipient: where the persons pushed are asked back (the usagers landing's ``demandes/``).
    demandes: str | None = None
    #: Source: the API is asked at most once per this many seconds (the run lists its inbox several times a pass).
    intervalle_secondes: int = Field(default=60, ge=0)

    @field_validator("atterrissage", "demandes")
    @classmethod
    def _confined(cls, value: str | None) -> str | None:
        return None if value is None else confined_folder(value)

    @model_validator(mode="after")
    def _known(self) -> ApiOptions:
        if self.api not in RESSOURCES:
            raise ValueError(f"api « {self.api} » inconnue (connues : {', '.join(sorted(RESSOURCES))})")
        if self.ressource not in RESSOURCES[self.api]:
            raise ValueError(f"ressource « {self.ressource} » inconnue pour {self.api} "
                             f"(connues : {', '.join(sorted(RESSOURCES[self.api]))})")
        return self

    @property
    def folder(self) -> str:
        return self.atterrissage or f"atterrissage/{self.connexion}/{self.ressource}"

    @property
    def is_source(self) -> bool:
        return RESSOURCES[self.api][self.ressource] == "source"


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Spool:
    """A private file being written in the hub's scratch area (named as ``LocalFolder``'s, so that the hub's own
    cleaning removes it after a crash), hashed as it is written."""

    def __init__(self, scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = scratch / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"
        self.handle = open(self.path, "xb")  # noqa: SIM115 - closed by ``seal`` or ``discard``
        self.digest = hashlib.sha256()
        self.lines = 0

    def write_line(self, item: Any) -> None:
        data = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        self.handle.write(data)
        self.digest.update(data)
        self.lines += 1

    def seal(self) -> str:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return self.digest.hexdigest()

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


class ApiLanding(Transport):
    type: ClassVar[str] = "api-https"
    Options: ClassVar[type[TransportOptions]] = ApiOptions

    def __init__(self, home_root: Path, options: ApiOptions, *, client_factory: Callable[[], Any] | None = None,
                 hooks: ClientHooks | None = None) -> None:
        self.home_root = Path(home_root).resolve()
        self.options = options
        self.base = options.folder
        self.folder = LocalFolder(self.home_root, self.base if options.is_source else f"{self.base}/envois")
        self.scratch = self.home_root / "staging" / ".stores"
        self._client_factory = client_factory
        self.hooks = hooks

    @classmethod
    def from_options(cls, options: TransportOptions, home: HubHome) -> ApiLanding:
        assert isinstance(options, ApiOptions)
        return cls(home.root, options)

    # -- the API client -------------------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        connection = get_connection(self.options.connexion, HubHome(self.home_root))
        return client_for(self.options.api, connection, self.hooks)

    def _base_path(self) -> Path:
        path = self.home_root / self.base
        LocalFolder(self.home_root, self.base)._folder(create=True)  # created one component at a time, links refused
        return path

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One landing or push at a time for this folder (the DAG's detection and a run may list together)."""
        lock_path = self._base_path() / ".verrou"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- source ---------------------------------------------------------------------------------------------------
    def list(self, pattern: str = "*") -> list[FileInfo]:
        if self.options.is_source:
            self.land()
        return self.folder.list(pattern)

    def _due(self) -> bool:
        if self.options.intervalle_secondes == 0:
            return True
        try:
            last = os.stat(self.home_root / self.base / ".dernier-atterrissage").st_mtime
        except FileNotFoundError:
            return True
        return time.time() - last >= self.options.intervalle_secondes

    def land(self) -> str | None:
        """Land what is new now (whatever the interval); the name of the landed file, or None when nothing was new."""
        if not self._due():
            return None
        with self._exclusive():
            client = self._client()
            try:
                if self.options.ressource == "evenements":
                    name = self._land_events(client)
                else:
                    name = self._land_usagers(client)
            finally:
                client.close()
            marker = self._base_path() / ".dernier-atterrissage"
            marker.touch(mode=0o600)
            os.utime(marker)
        return name

    def _store_landed(self, spool: _Spool) -> str:
        """The landed file, atomically in the landing folder; returns its name."""
        sha = spool.seal()
        name = f"{self.options.ressource}_{_utc_stamp()}_{sha[:12]}.jsonl"
        try:
            self.folder.store_file(name, spool.path)
        finally:
            spool.path.unlink(missing_ok=True)
        log.info("API %s, %s : %d ligne(s) atterrie(s) dans %s", self.options.api, self.options.ressource, spool.lines, name)
        return name

    # -- the journal of what was landed but not yet consumed on the API's side -----------------------------------
    def _journal_path(self) -> Path:
        return self._base_path() / ".a-consommer.json"

    def _pending(self) -> dict[str, Any]:
        return _read_state(self._journal_path()) or {}

    def _record_pending(self, pending: dict[str, Any]) -> None:
        """Durable before any ack or delete: a failed ack or a kill midway is finished at the next pass, never
        landed again in a new file (whose other bytes the run's hash idempotence would not recognise)."""
        _write_state(self._journal_path(), pending)

    def _consumed(self) -> None:
        self._journal_path().unlink(missing_ok=True)
        _fsync_dir(self._journal_path().parent)

    def _land_events(self, client: Any) -> str | None:
        pending = self._pending()
        if pending.get("evenements"):
            # A previous pass landed these events and stopped while acknowledging them: finish first (an ack already
            # done is answered 404, accepted).
            for identifiant in pending["evenements"]:
                client.acquitter(identifiant)
            self._consumed()
        events = client.evenements()
        if not events:
            return None
        spool = _Spool(self.scratch)
        try:
            for event in events:
                id_dossier = event.get("idDossier")
                line: dict[str, Any] = {"evenement": {"id": event.get("identifiant"), "type": event.get("type"),
                                                      "action": event.get("action"), "idDossier": id_dossier,
                                                      "idType": event.get("idType"), "date": event.get("date")},
                                        "dossier": None}
                try:
                    line["dossier"] = client.dossier(id_dossier) if id_dossier is not None else None
                except ApiError as error:
                    if not error.about_one:
                        raise
                    # This event's dossier cannot be had (an idDossier that is not an id, a 403 on it): the event is
                    # landed without it, with the reason (the mapping rejects it), and acknowledged with the others.
                    line["motif"] = str(error)
                spool.write_line(line)
        except BaseException:
            spool.discard()
            raise
        name = self._store_landed(spool)
        # The landed file is durable (fsynced, linked, folder fsynced): only now may the queue forget the events.
        self._record_pending({"fichier": name, "evenements": [event.get("identifiant") for event in events]})
        failpoint("api-avant-acquittement")
        for event in events:
            client.acquitter(event.get("identifiant"))
        self._consumed()
        return name

    def _demandes(self) -> LocalFolder:
        return LocalFolder(self.home_root, f"{self.base}/demandes")

    def _land_usagers(self, client: Any) -> str | None:
        demandes = self._demandes()
        pending = self._pending()
        if pending.get("demandes"):
            # A previous pass landed these demandes and stopped before deleting them all: delete the rest (only the
            # very files answered: same name, size, time and identity) before asking anything.
            for item in pending["demandes"]:
                demandes.delete(str(item["nom"]), expected=FileInfo(str(item["nom"]), int(item["taille"]),
                                                                    float(item["mtime"]), True, str(item["identite"])))
            self._consumed()
        entries = [e for e in demandes.list("*.jsonl") if e.regular]
        if not entries:
            return None
        spool = _Spool(self.scratch)
        seen: set[tuple[str, str]] = set()
        try:
            for entry in entries:
                with demandes.open(entry.name) as stream:
                    for demande in _demande_lines(stream):
                        key = (str(demande.get("nir")), str(demande.get("date_naissance")))
                        if "motif" not in demande and key in seen:
                            continue  # asked twice (two files, or twice in one): looked up once
                        seen.add(key)
                        spool.write_line({"demande": demande} | self._usager(client, demande))
        except BaseException:
            spool.discard()
            raise
        name = self._store_landed(spool) if spool.lines else None
        if name is None:
            spool.discard()
        self._record_pending({"fichier": name, "demandes": [
            {"nom": e.name, "taille": e.size, "mtime": e.mtime, "identite": e.identity} for e in entries]})
        failpoint("api-avant-suppression-demandes")
        for entry in entries:
            demandes.delete(entry.name, expected=entry)
        self._consumed()
        return name

    @staticmethod
    def _usager(client: Any, demande: dict[str, Any]) -> dict[str, Any]:
        if "motif" in demande:
            return {"codeRetour": None, "resultat": "demande-invalide", "motif": demande.pop("motif")}
        try:
            return client.usager(str(demande.get("nir") or ""), str(demande.get("date_naissance") or ""))
        except RecordError as error:  # NIR or date refused before any call: the reason, never the value
            return {"codeRetour": None, "resultat": "demande-invalide", "motif": str(error)}
        except ApiError as error:
            if not error.about_one:
                raise  # the service (retriable, credentials, TLS): the pass stops, the demandes stay
            # A fatal answer about this person only (R997, 403 on her diagnostic, an endless pagination): her line
            # records it (never S001, so the mapping rejects it with its motif) and the others go on.
            return {"codeRetour": _shown_code(error), "resultat": "erreur", "motif": str(error)}

    # -- recipient ------------------------------------------------------------------------------------------------
    @contextmanager
    def store(self, name: str, *, replace: bool = False) -> Iterator[BinaryIO]:
        if self.options.is_source or not name.endswith(".jsonl"):
            with self.folder.store(name, replace=replace) as handle:
                yield handle
            return
        safe_name(name)
        spool = _Spool(self.scratch)
        try:
            yield spool.handle  # type: ignore[misc]
            spool.seal()
            self._deliver(name, spool.path, replace)
        finally:
            spool.discard()

    def _deliver(self, name: str, staged: Path, replace: bool) -> None:
        with staged.open("rb") as handle:
            sha = sha256_stream(handle)
        existing = self.folder.stat(name)
        if existing is not None:
            with self.folder.open(name) as handle:
                if sha256_stream(handle) == sha:
                    return  # delivered already (a retry after the answer was lost)
            if not replace:
                raise FileExists(f"Un autre fichier porte déjà ce nom dans {self.folder.location()} : jamais remplacé")
        with self._exclusive():
            work = self._base_path() / "en-cours"
            LocalFolder(self.home_root, f"{self.base}/en-cours")._folder(create=True)
            state_path, answers_path = work / f"{name}.etat.json", work / f"{name}.reponses.jsonl"
            state = _read_state(state_path)
            if state is not None and state.get("sha256") != sha:
                if not replace:
                    raise FileExists(f"Un autre envoi du même nom est en cours vers l'API {self.options.api} : jamais remplacé")
                answers_path.unlink(missing_ok=True)
                state = None
            if state is None:
                _write_state(state_path, {"fichier": name, "sha256": sha, "debut": _utc_stamp()})
            answered = _answered(answers_path)
            self._push(name, staged, sha, answers_path, answered)
            self._ask_back(staged, answers_path, sha)
            # Every line answered: the answers, then the file, become visible.
            self.folder.store_file(f"{name.removesuffix('.jsonl')}.reponses.jsonl", answers_path, replace=True)
            self.folder.store_file(name, staged, replace=replace)
            answers_path.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)

    def _push(self, name: str, staged: Path, sha: str, answers_path: Path, answered: set[int]) -> None:
        client = None
        done = len(answered)
        try:
            with staged.open("rb") as lines, open(answers_path, "ab") as answers:
                for number, raw in enumerate(_lines(lines, MAX_DELIVERY_LINE), start=1):
                    if number in answered:
                        continue
                    if client is None:
                        client = self._client()
                    answer = self._push_line(client, sha, number, raw)
                    answers.write(json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
                    answers.flush()
                    os.fsync(answers.fileno())
                    done += 1
                    failpoint("api-apres-ligne-poussee")
        except (ApiError, RetriableError) as error:
            raise ApiPushError(f"Envoi vers l'API {self.options.api} ({self.options.ressource}) interrompu après {done} "
                               f"ligne(s) transmise(s) ; reprise à la ligne suivante au prochain essai. Cause : {error}") from None
        except OSError as error:
            raise StorageError.from_os(error, answers_path) from None
        finally:
            if client is not None:
                client.close()

    def _push_line(self, client: Any, sha: str, number: int, raw: bytes | None) -> dict[str, Any]:
        key = hashlib.sha256(f"{sha}:{number}".encode()).hexdigest()
        answer: dict[str, Any] = {"ligne": number, "cle": key}
        try:
            item = json.loads(raw) if raw is not None else None
        except ValueError:
            item = None
        if not isinstance(item, dict):
            return answer | {"resultat": "refusee", "motif": "ligne illisible (objet JSON attendu)"}
        if "nir" not in item and "parcours" not in item and "orientation" not in item:
            return answer | {"resultat": "ignoree", "motif": "ligne sans personne (en-tête)"}
        parcours = item.get("parcours", item.get("orientation"))
        parcours = PARCOURS_WEBRSA.get(str(parcours), parcours)
        if parcours not in PARCOURS:
            return answer | {"resultat": "refusee", "motif": "parcours absent ou inconnu (PED, PSO ou PSP attendu)"}
        try:
            found = client.rechercher_usager(str(item.get("nir") or ""), str(item.get("date_naissance") or ""))
        except RecordError as error:
            return answer | {"resultat": "refusee", "motif": str(error)}
        except ApiError as error:
            if not error.about_one:
                raise
            # France Travail's fatal answer about this person (R997…): her line's answer, never retried; the push
            # goes on with the next line.
            return answer | {"resultat": "erreur", "codeRetour": _shown_code(error), "motif": str(error)}
        answer["codeRetour"] = found.code_retour
        if found.jeton is None:
            # Not found (S002) or several (S003): France Travail's answer about this person, kept, never retried.
            return answer | {"resultat": found.resultat}
        try:
            response = client.ecrire_orientation(found.jeton, parcours, idempotency_key=key,
                                                 origine=str(item.get("origine") or "INSCRIPTION_CONSEILLER_CD"),
                                                 organisme=str(item.get("organisme") or "CD"))
        except ApiFatalError as error:
            if error.status not in LINE_REFUSALS:
                raise
            return answer | {"resultat": "refusee", "http": error.status, "motif": str(error)}
        data = response.data if isinstance(response.data, dict) else {}
        return answer | {"resultat": "poussee", "http": response.status,
                         "reponse": {k: v for k, v in data.items() if k in ("idOrientation", "parcours", "etat")}}

    def _ask_back(self, staged: Path, answers_path: Path, sha: str) -> None:
        """A demandes file for the usagers landing: the persons whose orientation France Travail took."""
        pushed = {a.get("ligne") for a in _answer_lines(answers_path) if a.get("resultat") == "poussee"}
        if not pushed:
            return
        folder = LocalFolder(self.home_root, self.options.demandes or f"atterrissage/{self.options.connexion}/usagers/demandes")
        with staged.open("rb") as lines, folder.store(f"orientations_{sha[:12]}.jsonl", replace=True) as target:
            for number, raw in enumerate(_lines(lines, MAX_DELIVERY_LINE), start=1):
                if number not in pushed or raw is None:
                    continue
                item = json.loads(raw)
                target.write(json.dumps({"nir": item.get("nir"), "date_naissance": item.get("date_naissance")},
                                        ensure_ascii=False).encode("utf-8") + b"\n")

    # -- everything else: the folder's ----------------------------------------------------------------------------
    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        with self.folder.open(name) as handle:
            yield handle

    def opened(self, name: str, stream: BinaryIO) -> FileInfo | None:
        return self.folder.opened(name, stream)

    def stat(self, name: str) -> FileInfo | None:
        return self.folder.stat(name)

    def delete(self, name: str, *, expected: FileInfo | None = None) -> bool:
        return self.folder.delete(name, expected=expected)

    def exists(self, name: str) -> bool:
        return self.folder.exists(name)

    def child(self, folder: str) -> Transport:
        return self.folder.child(folder)

    def uri(self, name: str = "") -> str:
        return self.folder.uri(name)

    def location(self, name: str = "") -> str:
        return self.folder.location(name)

    def clean_temporaries(self) -> list[str]:
        return self.folder.clean_temporaries()


def _shown_code(error: ApiError) -> str | None:
    """The ``codeRetour`` of a business error, as already checked by the client (never the partner's free text)."""
    code = getattr(error, "code", None)
    return code if isinstance(code, str) and code != "inattendu" else None


# -- small file helpers --------------------------------------------------------------------------------------------
def _lines(stream: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Non-blank lines of a stream, each bounded by ``limit`` bytes (None for a longer one, whose rest is skipped)."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        if line.strip():
            yield line


def _demande_lines(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """The persons of a demandes file; a line that is not ``{"nir", "date_naissance"}`` comes with a ``motif``."""
    for raw in _lines(stream, MAX_DEMANDE_LINE):
        try:
            item = json.loads(raw) if raw is not None else None
        except ValueError:
            item = None
        if not isinstance(item, dict) or not isinstance(item.get("nir"), str) or not isinstance(item.get("date_naissance"), str):
            yield {"nir": None, "date_naissance": None, "motif": "ligne de demande illisible ({\"nir\", \"date_naissance\"} attendu)"}
            continue
        yield {"nir": item["nir"], "date_naissance": item["date_naissance"]}


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise StorageError(f"État d'envoi illisible dans {path.parent} : à examiner avant toute reprise") from None
    return data if isinstance(data, dict) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _answer_lines(path: Path) -> Iterator[dict[str, Any]]:
    with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
        for raw in handle:
            try:
                item = json.loads(raw)
            except ValueError:
                continue  # a line torn by a crash: its line is pushed again (same key: deduplicated by the API)
            if isinstance(item, dict):
                yield item


def _answered(path: Path) -> set[int]:
    """Line numbers already answered; a torn last line is cut off so that appends start on a clean line."""
    numbers: set[int] = set()
    if not path.exists():
        return numbers
    good = 0
    with path.open("rb") as handle:
        for raw in handle:
            try:
                item = json.loads(raw)
            except ValueError:
                break
            if not raw.endswith(b"\n") or not isinstance(item, dict) or not isinstance(item.get("ligne"), int):
                break
            numbers.add(item["ligne"])
            good += len(raw)
    with path.open("r+b") as handle:
        handle.truncate(good)
    return numbers


__all__ = ["ApiLanding", "ApiOptions", "ApiPushError", "ApiRetriableError"]

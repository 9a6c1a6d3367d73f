"""Stage 1, records: a partner file's bytes → shared records with their pivot pseudonym, or readable rejections.

The format's reader (named by the flow, looked up in the format registry) streams partner records; the flow's
mapping turns each into a ``PersonneSPIE``; the pseudonymiser gives its pivot. Nothing here knows a concrete format.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError

from connectors.formats.base import BadRecord, InputFacts, Reader, ReaderSettings
from connectors.formats.registry import reader_class
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import RecordError
from spie_hub.mapping.compiler import CompiledMapping
from spie_hub.privacy.pseudonym import Pivot, Pseudonymiser

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mapped:
    record: PersonneSPIE
    pivot: Pivot
    position: str


@dataclass(frozen=True)
class Rejected:
    position: str
    line: int | None
    reason: str


def reader_for(format_name: str, mapping: CompiledMapping) -> Reader:
    return reader_class(format_name)(ReaderSettings(record_tag=mapping.record_tag, columns=mapping.columns))


def _readable(error: ValidationError) -> str:
    # Field locations and messages only: pydantic's own str() would echo the input value (an identifier).
    return " ; ".join(f"{'.'.join(str(p) for p in e['loc'])} : {e['msg']}" for e in error.errors(include_input=False))


def to_record(mapping: CompiledMapping, pseudonymiser: Pseudonymiser, element: Any, parent: Any,
              provenance: dict[str, Any]) -> tuple[PersonneSPIE, Pivot]:
    """Map one partner record to the shared schema with its pivot pseudonym; ``RecordError`` if it cannot be,
    including for an error nobody foresaw (a bug, a third-party library's surprise): that record alone is rejected,
    the run goes on."""
    try:
        return _to_record(mapping, pseudonymiser, element, parent, provenance)
    except (RecordError, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - one record's surprise must not stop the file
        # Only the class name: the message of a third-party error may quote the record (a NIR, a name).
        _log.warning("Enregistrement rejeté sur une erreur inattendue (%s) : %s", type(error).__name__,
                     provenance.get("position", "?"))
        raise RecordError(f"erreur inattendue à la lecture de l'enregistrement ({type(error).__name__}) : "
                          "enregistrement rejeté, signalé à l'exploitant du hub") from None


def _to_record(mapping: CompiledMapping, pseudonymiser: Pseudonymiser, element: Any, parent: Any,
               provenance: dict[str, Any]) -> tuple[PersonneSPIE, Pivot]:
    data = mapping.map(element, parent)
    nir = (data.get("identite") or {}).get("nir")
    if nir is not None:
        pivot = pseudonymiser.pivot_from_nir(nir)
    elif (parts := mapping.fallback_parts(element, parent)) is not None:
        pivot = pseudonymiser.pivot_fallback(*parts)
    else:
        raise RecordError("ni NIR ni identifiants de repli (organisme, matricule, rôle, naissance, prénom)")
    data["pseudonyme"] = pivot.pseudonyme
    data["provenance"] = provenance
    try:
        return PersonneSPIE.model_validate(data), pivot
    except ValidationError as error:
        raise RecordError(_readable(error)) from None


class SeenPivots:
    """Which people a file already had, on disk so memory stays flat: keyed pivot digests only, never an identifier,
    in the run's private staging folder (deleted with it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS vus (cle BLOB PRIMARY KEY, position TEXT) WITHOUT ROWID")

    def add(self, digest: bytes, position: str) -> str | None:
        """Record the person; return the position where they were first seen if already there."""
        row = self.db.execute("SELECT position FROM vus WHERE cle = ?", (digest[:16],)).fetchone()
        if row is not None:
            return str(row[0])
        self.db.execute("INSERT INTO vus VALUES (?, ?)", (digest[:16], position))
        return None

    def close(self) -> None:
        self.db.close()


def read_records(reader: Reader, mapping: CompiledMapping, pseudonymiser: Pseudonymiser, stream: BinaryIO,
                 facts: InputFacts, provenance: dict[str, Any], *, validate: bool = True,
                 seen: SeenPivots | None = None) -> Iterator[Mapped | Rejected]:
    """Every record of the file, in order, mapped or rejected. ``provenance`` gets the file's reference date as
    soon as the reader has seen it. ``FatalInputError`` (from the reader) stops the whole file."""
    for item in reader.records(stream, facts, validate=validate):
        if isinstance(item, BadRecord):
            yield Rejected(item.position, item.line, item.problem)
            continue
        provenance_now = dict(provenance, date_reference=facts.date_reference, position=item.position)
        try:
            record, pivot = to_record(mapping, pseudonymiser, item.element, item.parent, provenance_now)
            if seen is not None and (first := seen.add(pivot.digest, item.position)) is not None:
                raise RecordError(f"doublon : même personne qu'en {first}")
        except RecordError as error:
            yield Rejected(item.position, item.line, str(error))
            continue
        yield Mapped(record, pivot, item.position)

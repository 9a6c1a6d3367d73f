"""What a partner format offers the run: a reader (bytes → partner records, header facts) and a writer (shared
records → bytes). The run names formats only by the names ``flows.yaml`` and the output specs declare
(``connectors/formats/registry.py``); it imports no concrete format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from connectors.formats.dictionary import DictionaryEntry
from schemas.categories import CategorieDonnees
from schemas.spie_v1 import PersonneSPIE


@dataclass
class InputFacts:
    """What a file says about itself (a CNAF header and trailer, a CSV's line count) and what looked odd."""

    date_reference: str | None = None
    unites_annoncees: int | None = None
    unites_lues: int = 0
    anomalies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PartnerRecord:
    """One partner record, ready for its mapping: ``element`` and the ``parent`` its shared fields are read from
    (a CNAF ``Personne`` and its ``InfosFoyerRSA``; a CSV row, for both)."""

    element: Any
    parent: Any
    position: str
    line: int | None


@dataclass(frozen=True)
class BadRecord:
    """A unit the format itself could not turn into a record (a CSV row with the wrong number of cells)."""

    position: str
    line: int | None
    problem: str


@dataclass(frozen=True)
class ReaderSettings:
    """What a mapping tells the reader about the layout: the repeated record element, the expected columns."""

    record_tag: str | None = None
    columns: tuple[str, ...] = ()


class BackgroundCheck(ABC):
    """A whole-file check running beside the read (a child process on the other core)."""

    @abstractmethod
    def result(self) -> list[str]:
        """Errors found (empty when the file is valid); waits for the check to end."""

    @abstractmethod
    def cancel(self) -> None: ...


class Reader(ABC):
    #: The name ``flows.yaml`` gives this format (``source.format``) and the mappings declare (``format``).
    format: ClassVar[str]

    def __init__(self, settings: ReaderSettings) -> None:
        self.settings = settings

    @abstractmethod
    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        """Stream the file's records; a file that cannot be read at all raises ``FatalInputError``."""

    def background_check(self, path: Path) -> BackgroundCheck | None:
        """Start a whole-file check on ``path`` (a private copy) to run while ``records(validate=False)`` streams;
        ``None`` when the format has none (then ``records`` validates inline)."""
        return None


class RecordWriter(ABC):
    """Writes the rows of one delivery to a binary stream."""

    @abstractmethod
    def write(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> None:
        """Write one record, leaving out every field whose category is not in ``allowed``."""

    @abstractmethod
    def close(self) -> None:
        """Finish the file (closing elements, flush); the stream itself stays open."""


class OutputFormat(ABC):
    """An outbound format as an output spec (``mappings/sorties/*.yaml``) configures it."""

    #: The ``format`` an output spec names.
    format: ClassVar[str]
    #: The file extension of a delivery (``.csv``), and what the manifest says about its encoding.
    extension: ClassVar[str]
    name: str

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: dict[str, Any]) -> OutputFormat:
        """Build the format from its output spec (``mappings/sorties/<name>.yaml``); ``ConfigurationError`` if wrong."""

    @abstractmethod
    def open(self, stream: BinaryIO) -> RecordWriter: ...

    @abstractmethod
    def media(self) -> dict[str, str]:
        """Encoding facts for the manifest (``encodage``, ``separateur``…)."""

    @abstractmethod
    def dictionary(self) -> list[DictionaryEntry]:
        """One entry per field the format writes (``connectors/formats/dictionary.py``): the run publishes it as the
        delivery's data dictionary, named in the signed manifest."""

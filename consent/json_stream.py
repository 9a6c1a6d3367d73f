"""Read the entries of a FHIR Bundle one at a time, in bounded memory and linear time, whatever the file holds.

An initial migration may carry millions of consents, and a bundle comes from a partner: it may also be hostile.
The reader never hands the whole file, nor an unbounded value, to the JSON decoder. It scans each value itself
(strings, escapes and brackets, with regular expressions over fixed-size chunks), keeping its text as a list of
pieces (never concatenating a growing buffer), and only then decodes it:

* nesting deeper than ``MAX_DEPTH`` is a clear error, never a ``RecursionError``;
* an entry larger than ``MAX_ENTRY_CHARS`` is refused alone (scanned to its end without being kept);
* a top-level member other than ``entry`` larger than ``MAX_MEMBER_CHARS`` makes the file unreadable;
* ``entry`` must be an array; a key given twice, anything after the closing brace, a truncated file are errors;
* ``resourceType`` after ``entry``: the entries are skipped (scanned, not kept), then the file is read a second
  time from its start, so memory stays bounded whatever the order of the members.

Errors are ``ValueError`` with a French message that never quotes the file's content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

CHUNK = 1 << 16
#: A Consent is a few kilobytes; 1 MiB leaves room for long proof texts while bounding what one entry may cost.
MAX_ENTRY_CHARS = 1 << 20
#: Bundle members other than ``entry`` (``resourceType``, ``type``, ``id``, ``meta``...) are small.
MAX_MEMBER_CHARS = 1 << 16
#: FHIR Consent resources nest a handful of levels; deeper is an attack or a broken generator.
MAX_DEPTH = 64

_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()
_STRUCTURE = re.compile(r'["\[\]{}]')
_IN_STRING = re.compile(r'["\\]')
_PRIMITIVE_END = re.compile(r"[,\]}\s\[{\":]")


class TooLarge:
    """Marker returned in place of a value larger than its bound (the value was skipped, not kept)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit


@dataclass
class _Budget:
    limit: int
    used: int = 0
    over: bool = False


class _Reader:
    def __init__(self, handle: IO[str]) -> None:
        self.handle, self.text, self.pos, self.eof = handle, "", 0, False

    def _more(self) -> bool:
        """Replace the consumed buffer by the next chunk (the unconsumed tail is always empty when called)."""
        if self.eof:
            return False
        chunk = self.handle.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos:] + chunk  # the tail is at most a few characters: linear overall
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            text, pos = self.text, self.pos
            while pos < len(text) and text[pos] in _WHITESPACE:
                pos += 1
            self.pos = pos
            if pos < len(text):
                return text[pos]
            if not self._more():
                return ""

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise ValueError(f"JSON invalide ou tronqué : « {char} » attendu {what}")
        self.pos += 1

    def value(self, limit: int) -> Any:
        """Scan the next JSON value to its end and decode it; ``TooLarge`` if it exceeds ``limit`` characters."""
        first = self.peek()
        if first == "":
            raise ValueError("JSON invalide ou tronqué : valeur attendue")
        if first in "[{" and limit > 0:
            # Fast path: the C decoder, once, on what is already buffered (bounded by the chunk size, so linear
            # overall). A value not complete in the buffer, too deep for the decoder or too large falls back to
            # the scan below, which gives the reason.
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except (json.JSONDecodeError, RecursionError):
                pass
            else:
                if end - self.pos <= limit:
                    self.pos = end
                    return value
        pieces: list[str] = []
        budget = _Budget(limit)
        if first in "[{":
            self._scan_nested(pieces, budget)
        elif first == '"':
            self.pos += 1
            self._keep(pieces, budget, '"')
            self._scan_string(pieces, budget)
        else:
            self._scan_primitive(pieces, budget)
        if budget.over:
            return TooLarge(limit)
        try:
            return json.loads("".join(pieces))
        except RecursionError:  # pragma: no cover - depth is bounded above; kept as a last guard
            raise ValueError(f"JSON trop imbriqué (plus de {MAX_DEPTH} niveaux)") from None
        except ValueError:
            raise ValueError("JSON invalide ou tronqué") from None

    @staticmethod
    def _keep(pieces: list[str], budget: _Budget, piece: str) -> None:
        budget.used += len(piece)
        if budget.used > budget.limit:
            if not budget.over:
                budget.over = True
                pieces.clear()  # what was kept is released: the rest is only scanned
            return
        pieces.append(piece)

    def _keep_rest(self, pieces: list[str], budget: _Budget) -> None:
        """Keep what is left of the buffer and read on: the end of the file inside a value means a truncated file."""
        self._keep(pieces, budget, self.text[self.pos:])
        self.pos = len(self.text)
        if not self._more():
            raise ValueError("JSON invalide ou tronqué")

    def _scan_string(self, pieces: list[str], budget: _Budget) -> None:
        """From just after an opening quote to just after the closing one."""
        while True:
            match = _IN_STRING.search(self.text, self.pos)
            if match is None:
                self._keep_rest(pieces, budget)
                continue
            end = match.end()
            if match.group() == '"':
                self._keep(pieces, budget, self.text[self.pos:end])
                self.pos = end
                return
            # A backslash: keep it with the escaped character, which may start the next chunk.
            if end >= len(self.text):
                self._keep(pieces, budget, self.text[self.pos:end])
                self.pos = end
                if not self._more():
                    raise ValueError("JSON invalide ou tronqué")
                self._keep(pieces, budget, self.text[0])
                self.pos = 1
            else:
                self._keep(pieces, budget, self.text[self.pos:end + 1])
                self.pos = end + 1

    def _scan_nested(self, pieces: list[str], budget: _Budget) -> None:
        depth = 0
        while True:
            match = _STRUCTURE.search(self.text, self.pos)
            if match is None:
                self._keep_rest(pieces, budget)
                continue
            end = match.end()
            self._keep(pieces, budget, self.text[self.pos:end])
            self.pos = end
            char = match.group()
            if char == '"':
                self._scan_string(pieces, budget)
            elif char in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise ValueError(f"JSON trop imbriqué (plus de {MAX_DEPTH} niveaux)")
            else:
                depth -= 1
                if depth == 0:
                    return

    def _scan_primitive(self, pieces: list[str], budget: _Budget) -> None:
        """A number, ``true``, ``false`` or ``null``: up to the next delimiter (possibly in a later chunk)."""
        while True:
            match = _PRIMITIVE_END.search(self.text, self.pos)
            end = match.start() if match else len(self.text)
            self._keep(pieces, budget, self.text[self.pos:end])
            self.pos = end
            if match is not None or not self._more():
                return


def _skip_entries(reader: _Reader) -> int:
    """Scan an ``entry`` array without keeping its items; return how many it holds."""
    reader.expect("[", "après « entry »")
    count = 0
    if reader.peek() == "]":
        reader.pos += 1
        return 0
    while True:
        reader.value(0)  # scanned, released at once
        count += 1
        if reader.peek() == ",":
            reader.pos += 1
            continue
        reader.expect("]", "à la fin de « entry »")
        return count


def _entries(reader: _Reader, start: int) -> Iterator[tuple[str, Any]]:
    reader.expect("[", "après « entry »")
    index = start
    if reader.peek() == "]":
        reader.pos += 1
        return
    while True:
        index += 1
        entry = reader.value(MAX_ENTRY_CHARS)
        if isinstance(entry, TooLarge):
            yield f"entrée {index}", entry
        else:
            yield f"entrée {index}", entry.get("resource") if isinstance(entry, dict) else None
        if reader.peek() == ",":
            reader.pos += 1
            continue
        reader.expect("]", "à la fin de « entry »")
        return


def _document(handle: IO[str], *, emit: bool) -> Iterator[tuple[str, Any] | dict[str, Any]]:
    """One pass over the file: entries (when ``emit`` and the type is already known), then the top members."""
    reader = _Reader(handle)
    if reader.peek() != "{":
        raise ValueError("un objet JSON FHIR est attendu")
    reader.pos += 1
    top: dict[str, Any] = {}
    seen: set[str] = set()
    while reader.peek() != "}":
        if seen:
            reader.expect(",", "entre deux membres")
        if reader.peek() != '"':
            raise ValueError("JSON invalide ou tronqué : nom de membre attendu")
        key = reader.value(256)
        if not isinstance(key, str):
            raise ValueError("JSON invalide : nom de membre trop long")
        if key in seen:
            raise ValueError("membre de premier niveau en double")
        seen.add(key)
        reader.expect(":", "après un nom de membre")
        if key == "entry":
            if reader.peek() != "[":
                raise ValueError("« entry » doit être un tableau d'entrées")
            if emit and top.get("resourceType") == "Bundle":
                yield from _entries(reader, 0)
                top["entry"] = True
            else:
                top["entry"] = _skip_entries(reader)
            continue
        value = reader.value(MAX_MEMBER_CHARS)
        if isinstance(value, TooLarge):
            raise ValueError(f"membre de premier niveau trop volumineux (plus de {MAX_MEMBER_CHARS} caractères)")
        if len(seen) > 256:
            raise ValueError("trop de membres au premier niveau du document")
        top[key] = value
    reader.pos += 1
    if reader.peek() != "":
        raise ValueError("contenu inattendu après la fin du document JSON")
    yield top


def bundle_entries(handle: IO[str]) -> Iterator[tuple[str, Any]]:
    """Yield ("entrée N", resource) for each entry of a Bundle, or ("entrée 1", resource) for a lone Consent.

    An entry larger than ``MAX_ENTRY_CHARS`` is yielded as a ``TooLarge`` marker (the importer refuses it alone).
    """
    last: Any = None
    for item in _document(handle, emit=True):
        if isinstance(item, tuple):
            yield item
        else:
            last = item
    top: dict[str, Any] = last
    kind = top.get("resourceType")
    if kind == "Bundle":
        if "entry" in top and not isinstance(top["entry"], bool) and top["entry"]:
            # resourceType came after the entries: they were only counted; read the file again from its start.
            if not handle.seekable():
                raise ValueError("« resourceType » doit précéder « entry » (fichier non relisible)")
            handle.seek(0)
            yield from _second_pass(handle)
    elif kind == "Consent" and "entry" not in top:
        if sum(len(json.dumps(v)) for v in top.values()) > MAX_ENTRY_CHARS:
            yield "entrée 1", TooLarge(MAX_ENTRY_CHARS)
        else:
            yield "entrée 1", top
    else:
        raise ValueError("un Bundle FHIR (ou une ressource Consent) est attendu")


def _second_pass(handle: IO[str]) -> Iterator[tuple[str, Any]]:
    """The entries of a Bundle whose ``resourceType`` comes after ``entry`` (known from the first pass)."""
    reader = _Reader(handle)
    reader.expect("{", "au début du document")
    first = True
    while reader.peek() != "}":
        if not first:
            reader.expect(",", "entre deux membres")
        first = False
        key = reader.value(256)
        reader.expect(":", "après un nom de membre")
        if key == "entry":
            yield from _entries(reader, 0)
        else:
            reader.value(MAX_MEMBER_CHARS)

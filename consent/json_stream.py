"""Read the entries of a FHIR Bundle one at a time, so importing a bundle of millions of consents (an initial
migration) keeps memory flat: only one entry is decoded at once, whatever the order of the Bundle's keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
CHUNK = 1 << 16


class _Buffer:
    def __init__(self, handle: IO[str]) -> None:
        self.handle, self.text, self.pos, self.eof = handle, "", 0, False

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.handle.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos:] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._more():
                return ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"JSON : « {char} » attendu")
        self.pos += 1

    def value(self) -> Any:
        """Decode the next JSON value, reading more of the file until it is complete."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if self._more():
                    continue
                raise ValueError("JSON invalide ou tronqué") from None
            # A number at the very end of the buffer may continue in the next chunk.
            if end == len(self.text) and not self.eof and isinstance(value, int | float) and self._more():
                continue
            self.pos = end
            return value


def bundle_entries(handle: IO[str]) -> Iterator[tuple[str, Any]]:
    """Yield ("entrée N", resource) for each entry of a Bundle, or ("entrée 1", resource) for a lone resource.

    Top-level members other than ``entry`` are small and kept; ``entry`` items are decoded and yielded one by one
    (held back only in the rare file whose ``resourceType`` comes after its entries)."""
    buffer = _Buffer(handle)
    if buffer.peek() != "{":
        raise ValueError("un objet JSON FHIR est attendu")
    buffer.expect("{")
    top: dict[str, Any] = {}
    held: list[Any] = []
    index = 0
    while buffer.peek() not in ("}", ""):
        key = buffer.value()
        buffer.expect(":")
        if key == "entry" and buffer.peek() == "[":
            buffer.expect("[")
            while buffer.peek() not in ("]", ""):
                index += 1
                entry = buffer.value()
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if top.get("resourceType") == "Bundle":
                    yield f"entrée {index}", resource
                else:
                    held.append(resource)
                if buffer.peek() == ",":
                    buffer.expect(",")
            buffer.expect("]")
        else:
            top[key] = buffer.value()
        if buffer.peek() == ",":
            buffer.expect(",")
    buffer.expect("}")
    kind = top.get("resourceType")
    if kind == "Bundle":
        yield from ((f"entrée {i}", r) for i, r in enumerate(held, start=1))
    elif kind == "Consent" and not held:
        yield "entrée 1", top
    else:
        raise ValueError("un Bundle FHIR (ou une ressource Consent) est attendu")

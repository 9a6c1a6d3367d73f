"""Streaming reader of the CNAF "flux bénéficiaires" RSA XML (``vrsb0801.xsd``), sent by CAF and MSA.

The file is validated against the XSD *while* it is parsed (libxml2 schema validation in ``iterparse``), so a
file of any size is read in one pass with flat memory: each ``InfosFoyerRSA`` is handed out, then cleared. A
DOCTYPE is refused before parsing starts, so no entity can be declared; the parser loads no DTD and fetches nothing.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, ClassVar

from lxml import etree

from connectors.formats.base import BackgroundCheck, BadRecord, InputFacts, PartnerRecord, Reader
from connectors.formats.xml_errors import translate_schema_message, translate_syntax_message
from spie_hub.core.errors import FatalInputError

XSD_PATH = Path(__file__).resolve().parent.parent / "xsd" / "vrsb0801.xsd"
_PROLOGUE_BYTES = 4096
_SNIFF_BYTES = 1 << 20
_MISC = re.compile(rb"(?:\s+|<\?.*?\?>|<!--.*?-->)*", re.DOTALL)


@lru_cache(maxsize=1)
def schema() -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.parse(str(XSD_PATH), parser))


def release(element: etree._Element) -> None:
    """Free a streamed element and the siblings read before it, so memory stays flat however long the file."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def _check_prologue(stream: BinaryIO) -> str | None:
    """Refuse empty files and DTDs; return the encoding to force when the file declares none.

    CNAF files are specified in ISO-8859-1 and sent as windows-1252; a file without an XML declaration whose first
    megabyte is not valid UTF-8 is read as windows-1252 rather than rejected.
    """
    head = stream.read(_SNIFF_BYTES)
    stream.seek(0)
    if not head.strip():
        raise FatalInputError("Fichier vide : aucun contenu XML")
    # A DTD can only stand before the root element: skip the declaration, comments and PIs and look at what comes
    # next. Refusing every DTD here is what keeps entity expansion (XXE, billion laughs) out of the parser.
    skipped = _MISC.match(head.lstrip(b"\xef\xbb\xbf"))
    after = head.lstrip(b"\xef\xbb\xbf")[skipped.end() if skipped else 0:]
    if after.startswith(b"<!"):
        raise FatalInputError("Déclaration DOCTYPE/ENTITY interdite dans un flux CNAF")
    if not after[:1] == b"<":
        raise FatalInputError("Prologue XML invalide : l'élément racine est introuvable au début du fichier")
    prologue = head[:_PROLOGUE_BYTES]
    first_line = prologue.split(b"?>", 1)[0] if prologue.lstrip().startswith(b"<?xml") else b""
    if b"encoding" in first_line or head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not merely a multi-byte character cut by the sniffing window
            return "windows-1252"
    return None


_WRAPPED = re.compile(r"^line (\d+): b(['\"])(.*)\2$", re.DOTALL)


def _located(error: etree.XMLSyntaxError, stream: BinaryIO, encoding: str | None) -> FatalInputError:
    # The exception's own message, not error_log (lxml's log can still hold an earlier parse's errors). libxml2
    # wraps well-formedness errors as "line N: b'…'"; schema errors come with no line, and lxml may have handed out
    # later foyers before raising: a second pass then finds the first invalid foyer and its line.
    message, line = str(error.msg or error).strip(), error.lineno or None
    if wrapped := _WRAPPED.match(message):
        line, message = int(wrapped.group(1)), wrapped.group(3)
    foyer = None
    if not line:
        found = _first_invalid_foyer(stream, encoding)
        if found is not None:
            foyer, line, message = found
    element = message.split("Element '", 1)[1].split("'", 1)[0] if "Element '" in message else None
    # libxml2 speaks English: its common messages are translated for the sender's notice (values never quoted).
    if "Element '" in message:
        message = translate_schema_message(message)[1]
    elif wrapped is not None:
        message = translate_syntax_message(message, line).message
    else:
        message = mask_values(message)
    place = ", ".join(filter(None, [f"élément <{element}>" if element else None,
                                    f"foyer n° {foyer}" if foyer else None, f"ligne {line}" if line else None]))
    return FatalInputError(f"Fichier non conforme au schéma vrsb0801.xsd{f' ({place})' if place else ''} : {message}",
                           element=element, line=line)


_KEEP = re.compile(r"^(xs:\w+|\d{1,3})$")


def mask_values(message: str) -> str:
    """Mask the data values libxml2 quotes in its messages (a birth date, a NIR): names, types and lengths stay.

    These messages reach the audit, the logs and rejection notices, which must never carry a person's data.
    """

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        start = match.start()
        before = message[max(0, start - 10):start]
        if before.endswith(("Element ", "Entity ", "facet ", "attribute ", "pattern ")) or _KEEP.match(text[1:-1]):
            return text
        return "'[valeur masquée]'"

    masked = re.sub(r"'[^']*'", replace, message)
    return re.sub(r"Bytes: (0x[0-9A-Fa-f]{2} ?)+", "Bytes: [masqués]", masked)


_TRAILER = (b"<TransmissionFlux><NBTOTDOSRSATRANSM>00000001</NBTOTDOSRSATRANSM>"
            b"<NBTOTDOSRSATRANSMANO>00000000</NBTOTDOSRSATRANSMANO></TransmissionFlux>")


def _first_invalid_foyer(stream: BinaryIO, encoding: str | None) -> tuple[int, int, str] | None:
    """Validate foyer by foyer (each wrapped in a minimal document) to locate a schema error; only after a failure."""
    stream.seek(0)
    xsd, trailer, header, index = schema(), etree.fromstring(_TRAILER), None, 0
    try:
        for _event, element in etree.iterparse(stream, events=("end",), tag=("IdentificationFlux", "InfosFoyerRSA"),
                                               encoding=encoding, no_network=True, load_dtd=False, huge_tree=False):
            if element.tag == "IdentificationFlux":
                header = copy.deepcopy(element)
                continue
            index += 1
            document = etree.Element("Racine")
            document.extend([copy.deepcopy(header) if header is not None else etree.Element("IdentificationFlux"),
                             copy.deepcopy(element), copy.deepcopy(trailer)])
            if not xsd.validate(document):
                last = xsd.error_log.last_error
                return index, last.line, last.message
            release(element)
    except etree.XMLSyntaxError:
        return None
    return None


#: xsd:date's lexical form: a date, then an optional time zone (``Z``, ``+14:00``, ``-05:30``).
_XSD_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:Z|[+-]\d{2}:\d{2})?")


def reference_day(text: str | None) -> str | None:
    """The reference date of the file as ``AAAA-MM-JJ``, or ``None`` when it is absent or unreadable.

    The XSD accepts a time zone after the date (``2022-02-28+14:00``): the reference date is the date part. The
    result is always a real calendar date written by the hub (it ends up in file names), never the partner's text.
    """
    match = _XSD_DATE.fullmatch((text or "").strip())
    if match is None:
        return None
    try:
        day = dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None
    return day.isoformat() if 1900 <= day.year <= 2999 else None


def read_foyers(stream: BinaryIO, entete: InputFacts, *, validate: bool = True) -> Iterator[etree._Element]:
    """Yield each ``InfosFoyerRSA`` element; fill ``entete`` as the header and trailer are read.

    Raises ``FatalInputError`` (with the element and line) on the first XSD or well-formedness error. With
    ``validate=False`` only well-formedness is checked: the caller validates elsewhere (``BackgroundValidation``).
    """
    forced_encoding = _check_prologue(stream)
    context = etree.iterparse(
        stream,
        encoding=forced_encoding,
        events=("end",),
        tag=("Racine", "IdentificationFlux", "InfosFoyerRSA", "TransmissionFlux"),
        schema=schema() if validate else None,
        # resolve_entities=False is deliberately absent: with a schema, lxml 6.1 then stops reporting premature
        # end of data (a truncated file would pass). Entities cannot be declared anyway: the DOCTYPE is refused
        # above and no DTD is loaded; a closed root is checked below as a second guard.
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    root_closed = False
    try:
        for _event, element in context:
            if element.tag == "Racine":
                root_closed = True
                continue
            if element.tag == "InfosFoyerRSA":
                entete.unites_lues += 1
                yield element
            elif element.tag == "IdentificationFlux":
                stated = element.findtext("DTREF")
                entete.date_reference = reference_day(stated)
                if stated and stated.strip() and entete.date_reference is None:
                    # XSD-valid (xs:date allows 12026-10-31 or -0001-10-31) yet no day the file can be dated by:
                    # never a silent substitution by the run's day.
                    raise FatalInputError("Date de référence du fichier (<DTREF>, en-tête) inutilisable : une date "
                                          "AAAA-MM-JJ d'une année entre 1900 et 2999 est attendue", element="DTREF")
            else:
                announced = element.findtext("NBTOTDOSRSATRANSM")
                entete.unites_annoncees = int(announced) if announced and announced.strip().isdigit() else None
            release(element)
    except etree.XMLSyntaxError as error:
        raise _located(error, stream, forced_encoding) from None
    if not root_closed:
        raise FatalInputError("Fichier tronqué : l'élément racine <Racine> n'est jamais fermé", element="Racine")
    if entete.unites_annoncees is not None and entete.unites_annoncees != entete.unites_lues:
        # Real CNAF files disagree with their own trailer (RSABEM.xml announces 1 foyer and holds 2): every
        # foyer read is processed and accounted for, and the discrepancy is reported, not fatal.
        entete.anomalies.append(
            f"L'en-queue TransmissionFlux annonce {entete.unites_annoncees} foyer(s), "
            f"le fichier en contient {entete.unites_lues}"
        )


def validate_file(path: Path) -> tuple[InputFacts, list[str]]:
    """Validate a whole file in one streaming pass; return its header and the errors found (empty when valid)."""
    entete = InputFacts()
    try:
        with path.open("rb") as stream:
            for _foyer in read_foyers(stream, entete):
                pass
    except FatalInputError as error:
        return entete, [str(error)]
    except OSError as error:
        return entete, [f"Fichier illisible : {error.strerror}"]
    return entete, []


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to kill it when the run that started it dies (even by SIGKILL), so that
    no validator outlives its run. Elsewhere, a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class BackgroundValidation(BackgroundCheck):
    """XSD validation of a whole file in a child process, on the other core, while the caller streams it.

    The caller reads without the schema (about 40 % cheaper) and commits its output only if ``result()`` reports
    no error. The child streams too, so its memory stays flat.
    """

    def __init__(self, path: Path, module: str = "connectors.formats.cnaf_vrsb", *arguments: str) -> None:
        # ``module`` is run as ``python -m module *arguments path`` and prints {"erreurs": [...]} (any XML format).
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *arguments, str(path.resolve())],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=str(Path(__file__).resolve().parents[2]), preexec_fn=_die_with_parent,
        )

    def result(self) -> list[str]:
        out, _ = self.process.communicate()
        try:
            return list(json.loads(out)["erreurs"])
        except (ValueError, KeyError, TypeError):
            return [f"La validation XSD n'a pas pu aboutir (code {self.process.returncode})"]

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


class CnafReader(Reader):
    """CNAF / MSA "flux bénéficiaires": one record per ``settings.record_tag`` (``Personne``) of each foyer."""

    format: ClassVar[str] = "cnaf-vrsb0801"

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        tag = self.settings.record_tag or "Personne"
        for foyer in read_foyers(stream, facts, validate=validate):
            for index, element in enumerate(foyer.findall(tag), start=1):
                yield PartnerRecord(element, foyer, f"foyer {facts.unites_lues}, personne {index}", element.sourceline)

    def background_check(self, path: Path) -> BackgroundCheck | None:
        return BackgroundValidation(path)


def _main(argv: list[str]) -> int:
    entete, errors = validate_file(Path(argv[0]))
    print(json.dumps({"erreurs": errors, "foyers": entete.unites_lues}, ensure_ascii=False))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

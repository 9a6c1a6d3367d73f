"""Streaming readers of the WebRSA "ALI" XML exchange (``connectors/xsd/ali/``), validated against its XSDs.

* ``webrsa-ali`` (``WebRSA-ALI.xsd``): the Département's WebRSA export to a referent structure's software ("ALI"):
  per ``dossier``, the person (``allocataire``), référents de parcours, contact modes, orientations, CER, DSP.
* ``ali-webrsa`` (``ALI-WebRSA.xsd``): a referent structure's return to WebRSA: rendez-vous, CER, DSP,
  changements d'orientation, formulaires D1 / D2 / B7.

One record per ``dossier`` (the mapping's ``enregistrement``; another tag, e.g. ``rendez_vous``, gives one record per
such element inside each dossier, its dossier being the parent read by ``foyer:`` paths). The file is read in one
streaming pass (``lxml.etree.iterparse``), each dossier cleared once handed out, so memory stays flat whatever the
size; a DOCTYPE is refused before parsing (no entity can be declared), no DTD is loaded, nothing is fetched, huge
trees are off.

Validation: the whole file against its XSD, by libxml2's streaming validator during the same pass (or, for a large
file, by the same pass in a child process on the other core while the run reads: ``background_check``). An invalid
or malformed file stops whole (``FatalInputError``): a second streaming pass then locates the first problems, each
dossier validated on its own so every error has its line, and the message lists them in French
(``connectors/formats/xml_errors.py``) for the sender's notice.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, ClassVar

from lxml import etree

from connectors.formats.base import BackgroundCheck, InputFacts, PartnerRecord, Reader
from connectors.formats.cnaf_vrsb import BackgroundValidation, reference_day, release
from connectors.formats.xml_errors import XmlProblem, schema_problem, summary, translate_syntax_message
from spie_hub.core.errors import FatalInputError

XSD_DIR = Path(__file__).resolve().parent.parent / "xsd" / "ali"
XS = "{http://www.w3.org/2001/XMLSchema}"
#: How many problems a refusal lists: enough to fix a file in one go, few enough to read.
MAX_PROBLEMS = 20
_SNIFF_BYTES = 4096
_MISC = re.compile(rb"(?:\s+|<\?.*?\?>|<!--.*?-->)*", re.DOTALL)


@dataclass(frozen=True)
class AliKind:
    """One direction of the exchange: its root element, its XSD and a minimal valid header (for locating errors)."""

    format: str
    root: str
    xsd: str
    header: tuple[tuple[str, str], ...]

    @property
    def path(self) -> Path:
        return XSD_DIR / self.xsd


WEBRSA_ALI = AliKind("webrsa-ali", "WebRSA-ALI", "WebRSA-ALI.xsd", (
    ("date_generation", "2000-01-01 00:00:00"), ("id_structure_ali", "1"), ("libelle_ali", "-"), ("fichier_stock", "0")))
ALI_WEBRSA = AliKind("ali-webrsa", "ALI-WebRSA", "ALI-WebRSA.xsd", (
    ("date_generation", "2000-01-01 00:00:00"), ("id_structure_ali", "1"), ("fichier_stock", "0")))
KINDS: dict[str, AliKind] = {k.format: k for k in (WEBRSA_ALI, ALI_WEBRSA)}


@lru_cache(maxsize=4)
def schema(kind: AliKind) -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.parse(str(kind.path), parser))


@lru_cache(maxsize=4)
def required_children(kind: AliKind) -> dict[str, tuple[str, ...]]:
    """For each element path of the XSD (``WebRSA-ALI/dossiers/dossier/allocataire``), its required children:
    libxml2's "Missing child element(s)" lists every child still possible in an ``xs:all``, optional ones too;
    the notice names only those really missing."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    tree = etree.parse(str(kind.path), parser)
    out: dict[str, tuple[str, ...]] = {}

    def walk(declaration: etree._Element, path: str) -> None:
        group = declaration.find(f"{XS}complexType/{XS}all")
        if group is None:
            group = declaration.find(f"{XS}complexType/{XS}sequence")
        if group is None:
            return
        children = group.findall(f"{XS}element")
        out[path] = tuple(c.get("name", "") for c in children if c.get("minOccurs", "1") != "0")
        for child in children:
            walk(child, f"{path}/{child.get('name')}")

    for top in tree.getroot().findall(f"{XS}element"):
        walk(top, str(top.get("name")))
    return out


def _check_prologue(stream: BinaryIO) -> None:
    """Refuse an empty file and any DTD before parsing: entity expansion (XXE, billion laughs) never starts."""
    head = stream.read(_SNIFF_BYTES)
    stream.seek(0)
    if not head.strip():
        raise FatalInputError("Fichier vide : aucun contenu XML")
    body = head.lstrip(b"\xef\xbb\xbf")
    skipped = _MISC.match(body)
    after = body[skipped.end() if skipped else 0:]
    if after.startswith(b"<!"):
        raise FatalInputError("Déclaration DOCTYPE/ENTITY interdite dans un fichier WebRSA-ALI / ALI-WebRSA")
    if after and not after.startswith(b"<"):
        raise FatalInputError("Prologue XML invalide : l'élément racine est introuvable au début du fichier")


def _parse(stream: BinaryIO, tags: tuple[str, ...] | None, xsd: etree.XMLSchema | None) -> etree.iterparse:
    return etree.iterparse(
        stream, events=("end",), tag=tags, schema=xsd,
        # resolve_entities=False is left out as in the CNAF reader: with a schema, lxml then stops reporting a
        # premature end of data; entities cannot be declared anyway (DOCTYPE refused, no DTD loaded), and a root
        # never closed is checked by hand.
        no_network=True, load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True,
    )


def _header_wrapper(kind: AliKind) -> etree._Element:
    root = etree.Element(kind.root)
    entete = etree.SubElement(root, "entete")
    for name, value in kind.header:
        etree.SubElement(entete, name).text = value
    return root


def _problems_of(kind: AliKind, document: etree._Element) -> list[XmlProblem]:
    """Validate a small document (one dossier, or the file's skeleton) and translate its errors."""
    xsd = schema(kind)
    if xsd.validate(document):
        return []
    required = required_children(kind)
    problems = []
    for error in xsd.error_log:
        problem = schema_problem(error.message, error.line)
        if "Missing child element" in error.message and error.path:
            found = document.getroottree().xpath(error.path)
            if found:
                key = re.sub(r"\[\d+\]", "", error.path).strip("/")
                present = {c.tag for c in found[0]}
                missing = [n for n in required.get(key, ()) if n not in present]
                if missing:
                    problem = XmlProblem(problem.line, problem.element, "élément(s) obligatoire(s) manquant(s) : "
                                         + ", ".join(f"<{n}>" for n in missing))
        problems.append(problem)
    return problems


def locate_problems(stream: BinaryIO, kind: AliKind, limit: int = MAX_PROBLEMS) -> tuple[list[XmlProblem], bool]:
    """Second pass over an invalid file: its first ``limit`` problems with their lines (and whether there are more).

    Streams the file without the schema: each dossier is validated alone inside a minimal valid document (so that
    every error of every dossier is found, with its line), and a skeleton of the file (its root, header, and any
    element out of place, without the dossiers) is validated for the problems of the file's own structure.
    """
    stream.seek(0)
    problems: list[XmlProblem] = []
    skeleton: etree._Element | None = None
    skeleton_dossiers: etree._Element | None = None
    context = _parse(stream, None, None)
    root: etree._Element | None = None
    try:
        for _event, element in context:
            parent = element.getparent()
            if parent is None:  # the root: end of file
                root = element
                break
            if parent.getparent() is None:  # a child of the root
                if skeleton is None:
                    skeleton = etree.Element(parent.tag)
                    skeleton.sourceline = parent.sourceline
                if element.tag == "entete":
                    skeleton.append(copy.deepcopy(element))
                elif element.tag == "dossiers":
                    if skeleton_dossiers is None:
                        skeleton_dossiers = etree.SubElement(skeleton, "dossiers")
                        skeleton_dossiers.sourceline = element.sourceline
                else:
                    stray = etree.SubElement(skeleton, element.tag)
                    stray.sourceline = element.sourceline
                release(element)
                continue
            if parent.getparent() is not None and parent.getparent().getparent() is None and parent.tag == "dossiers":
                if skeleton is None:
                    skeleton = etree.Element(parent.getparent().tag)
                if skeleton_dossiers is None:
                    skeleton_dossiers = etree.SubElement(skeleton, "dossiers")
                    skeleton_dossiers.sourceline = parent.sourceline
                if element.tag == "dossier":
                    wrapper = _header_wrapper(kind)
                    etree.SubElement(wrapper, "dossiers").append(copy.deepcopy(element))
                    problems.extend(_problems_of(kind, wrapper))
                else:
                    stray = etree.SubElement(skeleton_dossiers, element.tag)
                    stray.sourceline = element.sourceline
                release(element)
                if len(problems) > limit:
                    break
    except etree.XMLSyntaxError as error:
        problems.append(translate_syntax_message(str(error.msg or error), error.lineno or None))
    if skeleton is None and root is not None:
        skeleton = etree.Element(root.tag)
        skeleton.sourceline = root.sourceline
    if skeleton is not None:
        structural = _problems_of(kind, skeleton)
        for problem in structural:
            if problem.message == "élément racine inconnu du schéma":
                problem = XmlProblem(problem.line, problem.element,
                                     f"élément racine inconnu du schéma (racine attendue : <{kind.root}>)")
            problems.append(problem)
    problems.sort(key=lambda p: p.line or 0)
    return problems[:limit], len(problems) > limit


def _refusal(stream: BinaryIO, kind: AliKind, fallback: str) -> FatalInputError:
    problems, more = locate_problems(stream, kind)
    if not problems:
        problems = [XmlProblem(None, None, fallback)]
    first = problems[0]
    return FatalInputError(summary(kind.xsd, problems, more), element=first.element, line=first.line)


def read_dossiers(stream: BinaryIO, facts: InputFacts, kind: AliKind, *, validate: bool = True) -> Iterator[etree._Element]:
    """Yield each ``dossier`` element (cleared once the caller resumes); fill ``facts`` from the header.

    Raises ``FatalInputError`` (the first problems, in French, with their lines) when the file is malformed or, with
    ``validate``, invalid against the XSD. The records already handed out are then void: the run quarantines the file.
    """
    _check_prologue(stream)
    context = _parse(stream, (kind.root, "entete", "dossier"), schema(kind) if validate else None)
    root_closed = False
    try:
        for _event, element in context:
            if element.tag == "dossier":
                facts.unites_lues += 1
                yield element
                release(element)
            elif element.tag == "entete":
                facts.date_reference = reference_day((element.findtext("date_generation") or "")[:10])
            elif element.getparent() is None:
                root_closed = element.tag == kind.root
    except etree.XMLSyntaxError as error:
        raise _refusal(stream, kind, translate_syntax_message(str(error.msg or error)).message) from None
    if not root_closed:
        raise _refusal(stream, kind, f"fichier tronqué ou racine inattendue : l'élément <{kind.root}> n'est "
                                     "jamais fermé")


def validate_file(path: Path, kind: AliKind) -> tuple[InputFacts, list[str]]:
    """Validate a whole file in one streaming pass; return its header facts and the refusal (empty when valid)."""
    facts = InputFacts()
    try:
        with path.open("rb") as stream:
            for _dossier in read_dossiers(stream, facts, kind):
                pass
    except FatalInputError as error:
        return facts, [str(error)]
    except OSError as error:
        return facts, [f"Fichier illisible : {error.strerror}"]
    return facts, []


class _AliReader(Reader):
    kind: ClassVar[AliKind]

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord]:
        tag = self.settings.record_tag or "dossier"
        for dossier in read_dossiers(stream, facts, self.kind, validate=validate):
            if tag == "dossier":
                yield PartnerRecord(dossier, dossier, f"dossier {facts.unites_lues}", dossier.sourceline)
                continue
            for index, element in enumerate(dossier.iter(tag), start=1):
                yield PartnerRecord(element, dossier, f"dossier {facts.unites_lues}, {tag} {index}", element.sourceline)

    def background_check(self, path: Path) -> BackgroundCheck | None:
        # The CNAF reader's child-process check, running this module (on the other core, memory flat).
        return BackgroundValidation(path, "connectors.formats.webrsa_ali", self.kind.format)


class WebrsaAliReader(_AliReader):
    """WebRSA → ALI export (``WebRSA-ALI.xsd``), as the Département sends it."""

    format: ClassVar[str] = "webrsa-ali"
    kind: ClassVar[AliKind] = WEBRSA_ALI


class AliWebrsaReader(_AliReader):
    """ALI → WebRSA return (``ALI-WebRSA.xsd``), as a referent structure sends it."""

    format: ClassVar[str] = "ali-webrsa"
    kind: ClassVar[AliKind] = ALI_WEBRSA


def _main(argv: list[str]) -> int:
    facts, errors = validate_file(Path(argv[1]), KINDS[argv[0]])
    print(json.dumps({"erreurs": errors, "dossiers": facts.unites_lues}, ensure_ascii=False))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

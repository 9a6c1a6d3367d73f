"""Streaming reader of JSON Lines files (reader ``jsonl``): one JSON object per line, UTF-8.

Used for the API answers the HTTPS transport lands (France Travail ``usagers``, i-milo ``evenements``) and for the
Cap emploi exchange format (``schemas/cap_emploi/``, ``docs/formats/cap-emploi.md``). The mapping (``lecture: json``)
reads each object by dotted paths.

Read line by line, never as a whole: memory stays flat with the file's size. What is wrong with a *line* rejects
that line only, with its number and a French reason: a line over ``LINE_LIMIT`` bytes, bytes that are not UTF-8,
invalid JSON, ``NaN``/``Infinity`` or a number out of range, a repeated key, something other than an object, nesting
deeper than ``DEPTH_LIMIT`` or more than ``VALUES_LIMIT`` values (hostile JSON), and — for a format whose JSON Schema
the hub publishes — a line the schema refuses. A blank line is skipped. What is wrong with the *file* stops it whole
(``FatalInputError``): empty, UTF-16/32, or, when the mapping asks for a header line (``entete``), a missing or
unreadable header, another format, or a major version the hub does not know.

The header line: ``{"format": "cap-emploi", "version": "1.0.0", "date_production": "…"}``. A later minor version
of the same major is read (noted as an anomaly): its lines are validated against the hub's own schema.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import schemas
from connectors.formats.base import BadRecord, InputFacts, PartnerRecord, Reader
from spie_hub.core.errors import ConfigurationError, FatalInputError

#: A line's size limit, in bytes: a Cap emploi person or a landed API answer weighs a few KiB.
LINE_LIMIT = 1024 * 1024
#: Nesting limit (objects and lists within one another): the deepest legitimate line (i-milo) has 4 levels.
DEPTH_LIMIT = 32
#: Values limit per line (every key's value and every list item, nested ones included).
VALUES_LIMIT = 20_000

#: Formats whose JSON Schema the hub publishes, by major version: their lines are validated against it.
SCHEMAS_DIR = Path(schemas.__file__).resolve().parent
KNOWN_SCHEMAS: dict[str, dict[int, Path]] = {
    "cap-emploi": {1: SCHEMAS_DIR / "cap_emploi" / "cap-emploi-v1.schema.json"},
}

_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})\.(\d{1,4})$")
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")

#: Python's English JSON errors, in French (the message never quotes the line: it may hold a NIR or a name).
_JSON_ERRORS = {
    "Expecting value": "valeur attendue",
    "Expecting property name enclosed in double quotes": "nom de clé entre guillemets doubles attendu",
    "Expecting ',' delimiter": "virgule attendue",
    "Expecting ':' delimiter": "deux-points attendu",
    "Unterminated string starting at": "chaîne non refermée",
    "Invalid control character at": "caractère de contrôle dans une chaîne",
    "Invalid \\escape": "séquence d'échappement invalide",
    "Invalid \\uXXXX escape": "séquence \\u invalide",
    "Extra data": "données en trop après l'objet",
}
_TYPES = {"object": "objet", "array": "liste", "string": "texte", "boolean": "booléen (true ou false)",
          "integer": "entier", "number": "nombre", "null": "null"}


class _LineProblem(ValueError):
    """What rejects one line, in French."""


def _refuse_constant(name: str) -> float:
    raise _LineProblem(f"valeur {name} interdite (JSON n'a ni NaN ni Infinity)")


def _no_repeated_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key are read differently by different parsers: refused rather than guessed.
    built = dict(pairs)
    if len(built) != len(pairs):
        raise _LineProblem("clé répétée dans un même objet")
    return built


def _check_shape(value: dict[str, Any]) -> None:
    """Depth and size limits, and no non-finite number (``1e400`` parses as infinity)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        if depth > DEPTH_LIMIT:
            raise _LineProblem(f"imbrication de plus de {DEPTH_LIMIT} niveaux")
        items = node.values() if isinstance(node, dict) else node
        count += len(node)
        if count > VALUES_LIMIT:
            raise _LineProblem(f"plus de {VALUES_LIMIT} valeurs dans la ligne")
        for item in items:
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, float) and not math.isfinite(item):
                raise _LineProblem("nombre hors des limites (infini)")


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """One line's object; ``None`` for a blank line; ``_LineProblem`` with the French reason otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _LineProblem(f"encodage : UTF-8 attendu (octet invalide en position {error.start + 1})") from None
    text = text.strip()
    if not text:
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_repeated_key)
    except _LineProblem:
        raise
    except json.JSONDecodeError as error:
        reason = next((fr for en, fr in _JSON_ERRORS.items() if error.msg.startswith(en)), "syntaxe invalide")
        raise _LineProblem(f"JSON invalide : {reason} (colonne {error.colno})") from None
    except RecursionError:
        raise _LineProblem(f"imbrication de plus de {DEPTH_LIMIT} niveaux") from None
    except ValueError:  # a number of more than 4,300 digits (Python's own limit)
        raise _LineProblem("nombre hors des limites") from None
    if not isinstance(value, dict):
        kind = {list: "une liste", str: "un texte", bool: "un booléen", type(None): "null"}.get(type(value), "un nombre")
        raise _LineProblem(f"la ligne est {kind}, un objet JSON {{…}} est attendu")
    _check_shape(value)
    return value


@cache
def _validator(path: Path) -> Any:
    from jsonschema import Draft202012Validator, FormatChecker

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigurationError(f"Schéma JSON introuvable ou illisible : {path}") from None
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _where(error: Any) -> str:
    return ".".join(str(p) for p in error.absolute_path)


def _french(error: Any) -> str:
    """One JSON Schema error in French, naming the field (a schema name) and never quoting the value."""
    where = _where(error)
    at = f"{where} : " if where else ""
    kind = error.validator
    if kind == "required":
        missing = [r for r in error.validator_value if isinstance(error.instance, dict) and r not in error.instance]
        return f"champ obligatoire absent : {'.'.join(filter(None, [where, ', '.join(missing)]))}"
    if kind == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known] if isinstance(error.instance, dict) else []
        shown = [k for k in extra if _SAFE_NAME.match(k)]
        # A key that does not look like a field name is not shown: a hostile file could put a person's name there.
        named = ", ".join(shown) + (" et d'autres" if len(shown) < len(extra) and shown else "") if shown else ""
        return f"{at}champ non prévu par le format" + (f" : {named}" if named else "")
    if kind == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{at}type attendu : {' ou '.join(_TYPES.get(t, t) for t in expected)}"
    if kind == "enum":
        return f"{at}valeur hors de la liste ({', '.join(json.dumps(v, ensure_ascii=False) for v in error.validator_value)})"
    if kind == "const":
        return f"{at}valeur attendue : {json.dumps(error.validator_value, ensure_ascii=False)}"
    if kind == "format":
        return f"{at}format invalide ({'date AAAA-MM-JJ' if error.validator_value == 'date' else error.validator_value})"
    if kind == "pattern":
        return f"{at}format invalide"
    if kind in ("minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "minProperties"):
        return f"{at}taille ou valeur hors des bornes du format ({kind} {error.validator_value})"
    return f"{at}non conforme au schéma ({kind})"


def schema_problems(validator: Any, value: dict[str, Any], limit: int = 3) -> list[str]:
    """Up to ``limit`` French reasons why ``value`` does not follow the schema (empty when it does)."""
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [_french(e) for e in errors[:limit]]


def _check_start(stream: BinaryIO, facts: InputFacts) -> None:
    head = stream.read(4)
    if not head:
        raise FatalInputError("fichier vide (0 octet)")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head in (b"\x00\x00\xfe\xff",):
        raise FatalInputError("fichier encodé en UTF-16 ou UTF-32 : UTF-8 attendu")
    if head.startswith(b"\xef\xbb\xbf"):  # tolerated, as JSON (RFC 8259 §8.1) lets a parser ignore it
        facts.anomalies.append("marque d'ordre d'octets (BOM) UTF-8 en tête de fichier : ignorée")
        stream.seek(3)
    else:
        stream.seek(0)


class _Header:
    """The header line a mapping asks for (``entete: {format, version}``), checked against the file's own."""

    def __init__(self, expected: tuple[str, ...]) -> None:
        self.format, self.version = expected
        match = _VERSION.match(self.version)
        if match is None:
            raise ConfigurationError(f"Version d'en-tête JSON Lines invalide dans le mapping : {self.version}")
        self.major, self.minor = int(match.group(1)), int(match.group(2))

    def check(self, value: dict[str, Any] | None, facts: InputFacts) -> Path | None:
        """Refuse the file unless its header names this format and a known major version; the schema to validate
        its lines with, if the hub publishes one."""
        shape = f'{{"format": "{self.format}", "version": "{self.version}"}}'
        if value is None or "format" not in value or "version" not in value:
            raise FatalInputError(f"en-tête absent : la première ligne doit être {shape}", line=1)
        found = value["format"]
        if found != self.format:
            said = f"« {found} »" if isinstance(found, str) and _SAFE_NAME.match(found) else "inattendu"
            raise FatalInputError(f"en-tête : format {said} au lieu de « {self.format} »", line=1)
        version = value["version"]
        match = _VERSION.match(version) if isinstance(version, str) else None
        if match is None:
            raise FatalInputError("en-tête : version illisible (attendue sous la forme 1.0.0)", line=1)
        if int(match.group(1)) != self.major:
            raise FatalInputError(f"en-tête : version {version} inconnue du hub (versions {self.major}.x acceptées)",
                                  line=1)
        if int(match.group(2)) > self.minor:
            facts.anomalies.append(f"version {version} plus récente que celle du hub ({self.version}) : un champ "
                                   "ajouté depuis fait rejeter sa ligne")
        produced = value.get("date_production")
        if isinstance(produced, str):
            try:
                facts.date_reference = (dt.date.fromisoformat(produced) if len(produced) == 10
                                        else dt.datetime.fromisoformat(produced).date()).isoformat()
            except ValueError:
                facts.anomalies.append("en-tête : date_production illisible, ignorée")
        schema = KNOWN_SCHEMAS.get(self.format, {}).get(self.major)
        if schema is not None:
            header_problems = schema_problems(_header_validator(schema), value)
            if header_problems:
                raise FatalInputError(f"en-tête non conforme : {' ; '.join(header_problems)}", line=1)
        return schema


@cache
def _header_validator(path: Path) -> Any:
    from jsonschema import Draft202012Validator, FormatChecker

    schema = json.loads(path.read_text(encoding="utf-8"))
    header = dict(schema["$defs"]["entete"], **{"$defs": schema["$defs"]})
    return Draft202012Validator(header, format_checker=FormatChecker())


def read_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) for each physical line; ``None`` for a line over ``LINE_LIMIT`` (skipped unread)."""
    number = 0
    while raw := stream.readline(LINE_LIMIT + 1):
        number += 1
        if len(raw) > LINE_LIMIT:
            while raw and not raw.endswith(b"\n"):  # drain the rest of the line, a chunk at a time
                raw = stream.readline(LINE_LIMIT)
            yield number, None
            continue
        yield number, raw


class JsonLinesReader(Reader):
    """JSON Lines: one record per non-blank line (an object), read by the mapping's dotted paths."""

    format: ClassVar[str] = "jsonl"

    def records(self, stream: BinaryIO, facts: InputFacts, *, validate: bool = True) -> Iterator[PartnerRecord | BadRecord]:
        # ``columns`` carries what the file must open with (the mapping's ``entete``: format and version).
        header = _Header(self.settings.columns) if self.settings.columns else None
        if isinstance(stream, io.RawIOBase):
            stream = io.BufferedReader(stream)  # type: ignore[assignment]
        _check_start(stream, facts)
        validator = None
        for number, raw in read_lines(stream):
            position = f"ligne {number}"
            try:
                if raw is None:
                    raise _LineProblem(f"ligne de plus de {LINE_LIMIT // 1024} Kio")
                value = parse_line(raw)
            except _LineProblem as problem:
                if header is not None:
                    raise FatalInputError(f"en-tête illisible (ligne {number}) : {problem}", line=number) from None
                facts.unites_lues += 1
                yield BadRecord(position, number, str(problem))
                continue
            if value is None:
                continue  # a blank line is not a record
            if header is not None:
                schema = header.check(value, facts)
                header = None
                if schema is not None and validate:
                    validator = _validator(schema)
                continue
            facts.unites_lues += 1
            if validator is not None and (problems := schema_problems(validator, value)):
                yield BadRecord(position, number, "non conforme au format : " + " ; ".join(problems))
                continue
            yield PartnerRecord(value, value, position, number)
        if header is not None:
            raise FatalInputError(f"en-tête absent : fichier sans ligne (format « {header.format} » attendu)")

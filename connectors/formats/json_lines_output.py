"""The JSON Lines output format (writer ``jsonl``), configured in ``mappings/sorties/*.yaml``: one JSON object per
line, its keys picked from the shared record.

    sortie: jsonl_cap_emploi
    format: jsonl
    entete: {format: cap-emploi, version: "1.0.0"}      # optional first line, written as given
    champs:
      - {cle: nir, champ: identite.nir}                  # a dotted key nests: orientation.parcours
      - {cle: nir, champ: identite.nir, valeur: nir15}   # the NIR with its key (France Travail's APIs)
      - {cle: identifiant_cap_emploi, champ: identite.identifiants, identifiant: cap-emploi}
      - {cle: orientation.parcours, champ: orientation.type, correspondance: {pro: PED, socio-pro: PSO, social: PSP}}
      - {cle: contraintes, champ: diagnostic.freins,     # a list of structures, key by key
         elements: {code: {champ: frein, correspondance: {…}}, impact: {champ: impact, correspondance: {…}}}}

A key's data category is the category of the schema block it reads. A key whose category is not permitted for the
person is *absent* from the line — never ``null``, never a placeholder that would say a value exists; so is a key
without a value, and an object left empty. Keys come in the order of the spec. The same ``cle`` may be listed twice
for a list (``contraintes`` from ``diagnostic.freins`` and from ``sante_handicap.freins``): each part follows its
own category and the allowed parts are joined. Every line is written during its own ``write`` call (the run gives
each recipient its lines in an order of its own).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, BinaryIO, ClassVar

from pydantic import BaseModel

from connectors.formats.base import OutputFormat, RecordWriter
from connectors.formats.dictionary import DictionaryEntry, _field, entry
from schemas.categories import CATEGORIE_DU_BLOC, CategorieDonnees
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.nir import cle_nir

Render = Callable[[Any], Any]


def _plain(value: Any) -> Any:
    """A shared-schema value as JSON writes it: codes as their code, dates as AAAA-MM-JJ, structures as objects."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _converter(spec: dict[str, Any], champ: str, where: str) -> Render:
    """How one value is written: its code (default), its French label, the NIR with its key, or a code of the
    recipient's vocabulary (``correspondance``, checked against the shared code list when the field has one)."""
    if "correspondance" in spec:
        table = {str(k): v for k, v in (spec["correspondance"] or {}).items()}
        annotation, _ = _field(champ)
        members = _enum_of(annotation)
        if members is not None and (missing := sorted(m.value for m in members if m.value not in table)):
            raise ConfigurationError(f"Format de sortie {where} : correspondance de {champ} sans valeur pour "
                                     f"{', '.join(missing)}")

        def mapped(value: Any) -> Any:
            code = value.value if isinstance(value, Enum) else str(value)
            if code not in table:
                raise ConfigurationError(f"Format de sortie {where} : correspondance de {champ} sans valeur pour {code}")
            return table[code]

        return mapped
    kind = spec.get("valeur")
    if kind == "libelle":
        return lambda value: value.libelle if isinstance(value, Enum) else _plain(value)
    if kind == "nir15":
        return lambda value: f"{value}{cle_nir(value):02d}"
    if kind is not None:
        raise ConfigurationError(f"Format de sortie {where} : valeur inconnue {kind!r} (libelle ou nir15)")
    return _plain


def _enum_of(annotation: Any) -> type[Enum] | None:
    from connectors.formats.dictionary import _unwrap

    kind = _unwrap(annotation) if annotation is not None else None
    return kind if isinstance(kind, type) and issubclass(kind, Enum) else None


def _walk(record: Any, path: list[str]) -> Any:
    value = record
    for part in path:
        if value is None:
            return None
        if part.isdigit():
            value = value[int(part)] if int(part) < len(value) else None
        else:
            value = getattr(value, part)
    return value


@dataclass(frozen=True)
class JsonField:
    """One key of the line: ``entete`` is the key as written (the name the DPO's subject access shows)."""

    entete: str
    champ: str
    category: CategorieDonnees | None
    get: Callable[[PersonneSPIE, str], Any]
    describe: list[DictionaryEntry] = field(default_factory=list)


def _json_field(spec: dict[str, Any], where: str) -> JsonField:
    key, champ = str(spec["cle"]), str(spec["champ"])
    path = champ.split(".")
    if path == ["pseudonyme"]:
        return JsonField(key, champ, None, lambda record, pseudonym: pseudonym, [entry(key, champ)])
    if path[0] not in CATEGORIE_DU_BLOC and path[0] != "version_schema":
        raise ConfigurationError(f"Format de sortie {where} : champ inconnu {champ!r}")
    category = CATEGORIE_DU_BLOC.get(path[0])
    identifier = spec.get("identifiant")
    if identifier is not None:
        described = replace(entry(key, champ, description=spec.get("description")), type="texte", valeurs="")
        described = replace(described, description=f"{described.description} ({identifier})")

        def get_identifier(record: PersonneSPIE, _pseudonym: str) -> Any:
            return next((i.valeur for i in _walk(record, path) or [] if i.systeme == identifier), None)

        return JsonField(key, champ, category, get_identifier, [described])
    if "elements" in spec:
        parts = [(str(sub), f"{champ}.{s['champ']}", s["champ"].split("."), _converter(s, f"{champ}.{s['champ']}", where))
                 for sub, s in spec["elements"].items()]

        def get_items(record: PersonneSPIE, _pseudonym: str) -> Any:
            items = []
            for item in _walk(record, path) or []:
                built: dict[str, Any] = {}
                for sub, _, sub_path, convert in parts:
                    if (value := _walk(item, sub_path)) is None:
                        continue
                    if (written := convert(value)) is None:  # a code the recipient's vocabulary lacks: item left out
                        break
                    built[sub] = written
                else:
                    if built:
                        items.append(built)
            return items or None

        described = [_described(f"{key}[].{sub}", full, spec["elements"][sub]) for sub, full, _, _ in parts]
        return JsonField(key, champ, category, get_items, described)
    convert = _converter(spec, champ, where)

    def get(record: PersonneSPIE, _pseudonym: str) -> Any:
        value = _walk(record, path)
        if value is None or value == []:
            return None
        return [convert(v) for v in value] if isinstance(value, list) else convert(value)

    return JsonField(key, champ, category, get, [_described(key, champ, spec)])


def _described(name: str, champ: str, spec: dict[str, Any]) -> DictionaryEntry:
    described = entry(name, champ, description=spec.get("description"))
    if "correspondance" in spec:
        members = _enum_of(_field(champ)[0])
        table = {str(k): v for k, v in spec["correspondance"].items()}
        labels = {m.value: getattr(m, "libelle", m.value) for m in members} if members else {}
        values = " | ".join(f"{v} = {labels.get(k, k)}" for k, v in table.items())
        return replace(described, type="code", valeurs=values)
    if spec.get("valeur") == "libelle" and described.valeurs:
        return replace(described, type="libellé", valeurs=" | ".join(
            v.split(" = ", 1)[-1] for v in described.valeurs.split(" | ")))
    if spec.get("valeur") == "nir15":
        return replace(described, description=f"{described.description} (15 caractères, avec la clé)")
    return described


class _Tree:
    """The keys of a line, nested by their dots, in the order of the spec."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Tree | list[JsonField]] = {}

    def add(self, parts: list[str], json_field: JsonField, where: str) -> None:
        head, rest = parts[0], parts[1:]
        node = self.nodes.get(head)
        if rest:
            if node is None:
                node = self.nodes[head] = _Tree()
            if not isinstance(node, _Tree):
                raise ConfigurationError(f"Format de sortie {where} : la clé {head} est à la fois valeur et objet")
            node.add(rest, json_field, where)
            return
        if isinstance(node, _Tree):
            raise ConfigurationError(f"Format de sortie {where} : la clé {head} est à la fois valeur et objet")
        self.nodes.setdefault(head, []).append(json_field)  # type: ignore[union-attr]

    def render(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, node in self.nodes.items():
            if isinstance(node, _Tree):
                if inner := node.render(record, pseudonym, allowed):
                    out[key] = inner
                continue
            values = [f.get(record, pseudonym) for f in node if f.category is None or f.category in allowed]
            values = [v for v in values if v is not None]
            if not values:
                continue
            if all(isinstance(v, list) for v in values):
                out[key] = [item for v in values for item in v]
            else:
                out[key] = values[0]
        return out


def _line(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


class JsonLinesWriter(RecordWriter):
    def __init__(self, output: JsonLinesOutput, stream: BinaryIO) -> None:
        self.output, self.stream = output, stream
        if output.header:
            stream.write(_line(output.header))
        self.rows = 0

    def write(self, record: PersonneSPIE, pseudonym: str, allowed: frozenset[CategorieDonnees]) -> None:
        """Write one line, without any key whose category is not in ``allowed``."""
        self.stream.write(_line(self.output.tree.render(record, pseudonym, allowed)))
        self.rows += 1

    def close(self) -> None:
        if isinstance(self.stream, io.IOBase):
            self.stream.flush()


class JsonLinesOutput(OutputFormat):
    """A JSON Lines delivery: UTF-8 without BOM, LF, one object per person, keys picked from the shared record."""

    format: ClassVar[str] = "jsonl"
    extension: ClassVar[str] = ".jsonl"

    def __init__(self, name: str, header: dict[str, Any] | None, fields: tuple[JsonField, ...]) -> None:
        self.name, self.header, self.fields = name, header, fields
        self.tree = _Tree()
        for json_field in fields:
            self.tree.add(json_field.entete.split("."), json_field, name)

    @property
    def columns(self) -> tuple[JsonField, ...]:
        """The keys, as the CSV format's columns (``entete``, ``category``): what the DPO's subject access lists."""
        return self.fields

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> JsonLinesOutput:
        where = repr(spec.get("sortie"))
        try:
            header = spec.get("entete")
            if header is not None and not (isinstance(header, dict) and all(isinstance(v, str) for v in header.values())):
                raise ConfigurationError(f"Format de sortie {where} : entete attendu comme une table de textes")
            return cls(spec["sortie"], header, tuple(_json_field(c, where) for c in spec["champs"]))
        except (KeyError, TypeError, AttributeError) as error:
            raise ConfigurationError(f"Format de sortie {where} : clé manquante ou mal formée ({error})") from None

    def open(self, stream: BinaryIO) -> JsonLinesWriter:
        return JsonLinesWriter(self, stream)

    def media(self) -> dict[str, str]:
        return {"encodage": "UTF-8 sans BOM", "type_media": "application/jsonl"}

    def dictionary(self) -> list[DictionaryEntry]:
        return [d for f in self.fields for d in f.describe]
